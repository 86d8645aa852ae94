"""The task interface shared by ES, GRPO and evaluation, the task registry, and the errors.

A task owns named splits of examples (plain dicts), turns an example into a prompt (raw text, or a chat
conversation rendered with the tokenizer's chat template), and scores a completion:
``task.reward(completion, example, truncated=False) -> (reward, parts)``. ``parts`` is a dict of floats that
always holds ``"answer"`` (1.0 when the answer is correct); ``task.correct(parts)`` is the accuracy notion.

Rewards read untrusted model output: they never raise, never execute it, and run in linear time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from esjax.common.errors import EsjaxError
from esjax.generation.prompts import render

Example = dict[str, Any]
Messages = list[dict[str, str]]


class TaskDataError(EsjaxError, ValueError):
    """Bad task data: a malformed record (the message names the file and line), an empty split, a bad option."""


class UnknownTaskError(EsjaxError, KeyError, ValueError):
    """An unknown task or split name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def as_text(completion: Any) -> str:
    """Coerce a completion to ``str`` without raising (``None`` -> "", bytes decoded leniently)."""
    if isinstance(completion, str):
        return completion
    if completion is None:
        return ""
    if isinstance(completion, (bytes, bytearray)):
        return bytes(completion).decode("utf-8", errors="replace")
    try:
        return str(completion)
    except Exception:  # a hostile __str__; the reward must not raise
        return ""


class Task:
    """Base class. Subclasses set ``name``, ``reward_range``, ``part_names`` and implement ``prompt`` and ``score``.

    ``splits`` maps a split name to a list of examples, or to a zero-argument callable that builds the list on
    first use. ``truncated_reward``: the reward of a completion that hit ``max_new_tokens`` (``None``: score it
    like any other completion).
    """

    name: str = ""
    reward_range: tuple[float, float] = (0.0, 1.0)
    part_names: tuple[str, ...] = ("answer",)
    truncated_reward: float | None = 0.0
    chat: bool = False  # whether prompt() returns chat messages

    def __init__(self, splits: Mapping[str, Sequence[Example] | Callable[[], Sequence[Example]]] | None = None):
        self._splits: dict[str, Any] = dict(splits or {})
        for split, rows in self._splits.items():
            if not callable(rows) and not rows:
                raise TaskDataError(f"split {split!r} of task {self.name!r} is empty")

    # -- data --------------------------------------------------------------------------------------------
    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def split(self, name: str) -> list[Example]:
        """The examples of split ``name`` (a new list; the example dicts are shared)."""
        if name not in self._splits:
            raise UnknownTaskError(f"task {self.name!r} has no split {name!r}; known splits: {sorted(self._splits)}")
        rows = self._splits[name]
        if callable(rows):
            rows = self._splits[name] = list(rows())
        if not rows:
            raise TaskDataError(f"split {name!r} of task {self.name!r} is empty")
        return list(rows)

    # -- prompts -----------------------------------------------------------------------------------------
    def prompt(self, example: Example) -> str | Messages:
        raise NotImplementedError

    def render_prompt(self, example: Example, tokenizer: Any = None) -> str:
        """The prompt as text: raw prompts as they are, chat prompts through the tokenizer's chat template."""
        prompt = self.prompt(example)
        if not isinstance(prompt, str) and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"task {self.name!r} has chat prompts: pass a tokenizer that has a chat template")
        return render(tokenizer, prompt)

    # -- scoring -----------------------------------------------------------------------------------------
    def score(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        raise NotImplementedError

    def reward(self, completion: Any, example: Example, truncated: bool = False) -> tuple[float, dict[str, float]]:
        """``(reward, parts)`` of a completion; never raises on any completion text.

        ``truncated=True`` (the completion hit ``max_new_tokens``) gives ``truncated_reward`` with every part 0
        and ``parts["truncated"] = 1.0``, unless the task's ``truncated_reward`` is ``None``.
        """
        if truncated and self.truncated_reward is not None:
            parts = dict.fromkeys(self.part_names, 0.0)
            parts["truncated"] = 1.0
            return float(self.truncated_reward), parts
        return self.score(as_text(completion), example)

    def correct(self, parts: Mapping[str, float]) -> bool:
        """The accuracy notion, read from a completion's reward parts: the answer is correct (``"answer" >= 1``).

        Scoring calls :meth:`reward` once per completion and derives correctness from its parts with this."""
        return parts.get("answer", 0.0) >= 1.0

    def is_correct(self, completion: Any, example: Example, truncated: bool = False) -> bool:
        """Whether a completion is correct (:meth:`correct` of its reward parts)."""
        return self.correct(self.reward(completion, example, truncated=truncated)[1])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} splits={list(self._splits)}>"


# -- registry ----------------------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., Task]] = {}
_LOADED_FILES: dict[str, list[str]] = {}


def register(name: str, *, replace: bool = False) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: ``@register("my_task")`` on a Task subclass or a factory ``(**options) -> Task``."""
    if not isinstance(name, str) or not name:
        raise ValueError("a task name must be a non-empty string")

    def decorator(factory: Callable[..., Task]) -> Callable[..., Task]:
        if name in _REGISTRY and _REGISTRY[name] is not factory and not replace:
            raise ValueError(f"task {name!r} is already registered (pass replace=True to override it)")
        _REGISTRY[name] = factory
        return factory

    return decorator


def names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_REGISTRY)


def load_task_file(path: str | Path) -> list[str]:
    """Import a Python file that registers tasks with ``esjax.tasks.register``; returns the names it added.

    A file is imported once per process (a second call returns the same names).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    key = str(path)
    if key in _LOADED_FILES:
        return list(_LOADED_FILES[key])
    before = set(_REGISTRY)
    module_name = "esjax_user_tasks_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskDataError(f"cannot import task file {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise TaskDataError(f"{path}:{e.lineno}: cannot import task file: syntax error: {e.msg}") from None
    except Exception as e:  # the file's own code failed: report it on one line, naming the file
        where = next((f"{path}:{t.lineno}" for t in reversed(traceback.extract_tb(e.__traceback__))
                      if t.filename == str(path)), str(path))
        raise TaskDataError(f"{where}: cannot import task file: {type(e).__name__}: {e}") from None
    added = sorted(set(_REGISTRY) - before)
    _LOADED_FILES[key] = added
    return list(added)


def _check_options(name: str, factory: Callable[..., Task], options: Mapping[str, Any]) -> None:
    """Raise :class:`TaskDataError` naming an option the task's factory does not take."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no introspectable signature: the factory checks its own options
        return
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    known = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TaskDataError(f"task {name!r}: unknown option {unknown[0]!r} (options: {', '.join(known) or 'none'})")


def get(name: str, **options: Any) -> Task:
    """Build the task registered as ``name`` with ``options``.

    ``name`` may also be ``"path/to/file.py:task_name"``: the file is imported first (see ``load_task_file``).
    """
    if isinstance(name, str) and ".py:" in name and name not in _REGISTRY:
        file, _, name = name.rpartition(":")
        load_task_file(file)
    if name not in _REGISTRY:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {names()}")
    _check_options(name, _REGISTRY[name], options)
    try:
        task = _REGISTRY[name](**options)
    except (TaskDataError, UnknownTaskError):
        raise
    except (TypeError, ValueError) as e:  # an option of the wrong type or out of range
        raise TaskDataError(f"task {name!r}: invalid options {options}: {e}") from None
    if not all(callable(getattr(task, a, None)) for a in ("reward", "split", "prompt")):
        raise TypeError(f"the factory of task {name!r} returned {type(task).__name__}, not a Task")
    if not getattr(task, "name", ""):
        task.name = name
    return task

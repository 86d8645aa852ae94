"""Countdown: combine the given numbers with + - * / to reach a target, each number used exactly once.

Two formats:

- ``countdown`` (Qiu et al., the ES paper): raw-text prompt (the row's ``context``, ending with ``<think>``);
  ``reward = 0.1 * format + answer`` on ``"<think>" + completion`` as the paper's reference code defines it:

  * format = 1.0 if the text matches ``^<think>.*?</think>\\n<answer>.*?</answer>$`` (DOTALL; ``$`` also
    matches before one final newline), else 0.1 if it holds a ``<think>...</think>`` block plus 0.5 if it holds
    an ``<answer>...</answer>`` block;
  * answer = 1.0 if the LAST ``<answer>...</answer>`` block (``re.findall`` semantics) holds only digits,
    ``+ - * / ( )`` and spaces (one trailing newline allowed, as the reference's ``$`` allowed it), uses exactly
    the given numbers once each, and evaluates (``safe_eval``, never ``eval``) to the target within 1e-5.

  Targets are parsed as numbers. ``paper_compat=True`` reproduces the reference, whose caller kept a target
  only when ``target.isdigit()``, so the 58 non-integer or negative test targets could never score.
  Deliberate differences from the reference's ``eval``: ``**`` and ``//`` are rejected, and answers longer
  than 256 characters score 0. All scans are ``str.find``-based: linear time, no regex backtracking.
  The paper's training script scored the decoded prompt + completion, so the prompt's own "<think> </think>"
  and "<answer> </answer>" gave every completion format >= 0.6; esjax scores the completion. ``paper_script=True``
  scores as that script did instead (:func:`script_reward`), to reproduce its numbers exactly.

(``countdown_boxed``, the ES-vs-GRPO paper's format, is in ``countdown_boxed.py``.)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from esjax.tasks.arithmetic import MAX_LENGTH, PY_CHARS, digit_runs, number_literals, python_value, safe_eval
from esjax.tasks.base import Example, TaskDataError, register
from esjax.tasks.io import FileTask, data_path

PAPER_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process in your mind and then provide the "
    "user with the answer.Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
    "tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.Let "
    "me solve this step by step.\n<think>"
)
PAPER_FILE = "countdown_paper.json"
_ALLOWED = frozenset("0123456789+-*/() ")
_OPEN, _CLOSE = "<answer>", "</answer>"


def format_numbers(numbers: Sequence[int]) -> str:
    """Numbers as the paper's prompts print them (numpy style, right-aligned): ``[ 4 50 92 11]``."""
    width = max((len(str(n)) for n in numbers), default=0)
    return "[" + " ".join(str(n).rjust(width) for n in numbers) + "]"


def paper_prompt(numbers: Sequence[int], target: Any) -> str:
    """The paper's prompt text for a problem (identical to every ``context`` of the paper's file)."""
    return PAPER_PROMPT.format(numbers=format_numbers(numbers), target=target)


def format_score(completion: str, end_token: str | None = None) -> float:
    """The paper's format reward of ``"<think>" + completion`` (1.0, or 0.1 * think + 0.5 * answer)."""
    text = "<think>" + completion
    if end_token and text.endswith(end_token):
        text = text[:-len(end_token)]
    k = text.find("</think>\n<answer>", 7)
    if k >= 0:
        body = k + 17
        n = len(text)
        if (text.endswith(_CLOSE) and n - 9 >= body) or (text.endswith(_CLOSE + "\n") and n - 10 >= body):
            return 1.0
    reward = 0.0
    if text.find("</think>", 7) >= 0:
        reward += 0.1
    o = text.find(_OPEN)
    if o >= 0 and text.find(_CLOSE, o + 8) >= 0:
        reward += 0.5
    return reward


def last_answer_block(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>``, exactly ``re.findall(r"<answer>(.*?)</answer>", DOTALL)[-1]``.

    The last findall match is the one that covers the last opening tag before the last closing tag; it starts
    at the first opening tag after the closing tag that precedes that opening tag.
    """
    last_close = text.rfind(_CLOSE)
    if last_close < 0:
        return None
    last_open = text.rfind(_OPEN, 0, last_close)
    if last_open < 0:
        return None
    prev_close = text.rfind(_CLOSE, 0, last_open)
    start = text.find(_OPEN, prev_close + 9 if prev_close >= 0 else 0) + 8
    return text[start:text.find(_CLOSE, start)]


def target_value(target: Any, paper_compat: bool = False) -> float | None:
    """A target as a float; ``paper_compat``: only digit-only targets (the reference's ``str.isdigit`` rule)."""
    if paper_compat:
        s = str(target)
        return float(int(s)) if s.isascii() and s.isdigit() and len(s) < 20 else None
    if isinstance(target, bool):
        return None
    if isinstance(target, (int, float)):
        value = float(target)
    elif isinstance(target, str) and len(target) < 64:
        try:
            value = float(target)
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def expression_value(expression: str, numbers: Sequence[int]) -> float | None:
    """The value of ``expression`` if it uses exactly ``numbers`` once each and evaluates, else ``None``."""
    literals = number_literals(expression)
    if literals is None or sorted(literals) != sorted(numbers):
        return None
    return safe_eval(expression)


def expression_matches(expression: str, numbers: Sequence[int], target: float | None) -> bool:
    """``expression`` uses exactly ``numbers`` once each and evaluates to ``target`` within 1e-5."""
    if target is None:
        return False
    value = expression_value(expression, numbers)
    return value is not None and abs(value - target) < 1e-5


def answer_expression(completion: str) -> str | None:
    """The last <answer> block's expression if it is well formed (allowed characters, <= 256 long), else None."""
    content = last_answer_block(completion)
    if not content or len(content) > MAX_LENGTH:
        return None
    body = content[:-1] if content.endswith("\n") else content
    return body if body and _ALLOWED.issuperset(body) else None


def answer_value(completion: str, numbers: Sequence[int]) -> float | None:
    """The value of the last <answer> block if it is well formed and uses exactly ``numbers``, else None."""
    body = answer_expression(completion)
    return None if body is None else expression_value(body, numbers)


def closeness_score(value: float | None, target: Any) -> float:
    """Partial credit in [0, 1] of an answer's :func:`answer_value`: ``max(0, 1 - |value - target| / max(|target|,
    1))``, 0.0 when there is no value (malformed, or not exactly the given numbers)."""
    goal = target_value(target)
    if value is None or goal is None:
        return 0.0
    return max(0.0, 1.0 - abs(value - goal) / max(abs(goal), 1.0))


def countdown_reward(completion: str, numbers: Sequence[int], target: Any, *, paper_compat: bool = False,
                     end_token: str | None = None, partial_credit: float = 0.0) -> tuple[float, dict[str, float]]:
    """``(0.1 * format + answer, {"format": ..., "answer": ...})``, the paper's reward; with ``partial_credit``
    w > 0, a wrong answer adds ``w * closeness`` and the parts hold ``"closeness"`` (:func:`closeness_score`)."""
    fmt = format_score(completion, end_token)
    value = answer_value(completion, numbers)  # parsed and evaluated once for both scores
    ans = _hit(value, target_value(target, paper_compat))
    if not partial_credit:
        return 0.1 * fmt + ans, {"format": fmt, "answer": ans}
    close = closeness_score(value, target)
    return 0.1 * fmt + ans + (0.0 if ans else partial_credit * close), {"format": fmt, "answer": ans,
                                                                          "closeness": close}


def prompt_numbers(prompt: str) -> list[int]:
    """The numbers as the paper's script read them: the digit-only words between the prompt's first ``[`` and
    its first ``]`` (``[44 19 35]`` -> [44, 19, 35])."""
    start, end = prompt.find("["), prompt.find("]")
    if start < 0 or end < 0:
        return []
    return [int(w) for w in prompt[start + 1:end].split() if w.isascii() and w.isdigit() and len(w) < 20]


def script_reward(prompt: str, completion: str, target: Any,
                  end_token: str | None = None) -> tuple[float, dict[str, float]]:
    """``(0.1 * format + answer, parts)`` as the paper's training script computed it.

    The text is the decoded prompt + completion, from after its last ``assistant:`` (stripped) if it has one;
    format as :func:`format_score` of that text; answer 1.0 if the last ``<answer>`` block (one trailing newline
    allowed) holds only digits, ``+ - * / ( )`` and spaces, its numbers are :func:`prompt_numbers`, and its value
    with Python's arithmetic (``**``, ``//``; :func:`esjax.tasks.arithmetic.python_value`, never ``eval``) is
    within 1e-5 of a digit-only target.
    """
    text = prompt + completion
    if "assistant:" in text:
        text = text.split("assistant:")[-1].strip()
    fmt = format_score(text, end_token)
    content = last_answer_block(text) or ""
    body = content[:-1] if content.endswith("\n") else content
    ans = 0.0
    runs = digit_runs(body)
    if body and PY_CHARS.issuperset(body) and runs is not None and sorted(runs) == sorted(prompt_numbers(prompt)):
        value, goal = python_value(body), target_value(target, paper_compat=True)
        try:
            ans = _hit(None if value is None else float(value), goal)
        except OverflowError:
            ans = 0.0
    return 0.1 * fmt + ans, {"format": fmt, "answer": ans}


def _hit(value: float | None, target: float | None) -> float:
    """1.0 if both are known and within 1e-5, else 0.0."""
    return 1.0 if value is not None and target is not None and abs(value - target) < 1e-5 else 0.0


def check_partial_credit(weight: Any) -> float:
    """``weight`` as a float in [0, 1) (so a wrong answer always scores below a right one), else TaskDataError."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight < 1.0:
        raise TaskDataError(f"partial_credit must be a number in [0, 1), got {weight!r}")
    return float(weight)


def validate_countdown_row(row: dict[str, Any]) -> dict[str, Any]:
    """Check a Countdown record; ``nums`` (the Hugging Face Countdown layout) is accepted for ``numbers``."""
    field = "nums" if "numbers" not in row and "nums" in row else "numbers"  # errors name the file's own column
    numbers = row.get(field)
    if (not isinstance(numbers, list) or not numbers
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)):
        raise ValueError(f"field {field!r} must be a non-empty list of non-negative integers, got {numbers!r:.60}")
    if field == "nums":
        row = {**row, "numbers": numbers}
    if target_value(row.get("target")) is None:
        raise ValueError(f"field 'target' must be a finite number or a numeric string, got {row.get('target')!r:.60}")
    if "context" in row and not isinstance(row["context"], str):
        raise ValueError("field 'context' must be a string")
    return row


def find_paper_file() -> Path | None:
    """The paper's Countdown file: ``$ESJAX_COUNTDOWN_PATH``, else ``countdown_paper.json`` in ``./``,
    ``./data/`` or ``~/.cache/esjax/``."""
    env = os.environ.get("ESJAX_COUNTDOWN_PATH")
    candidates = [Path(env)] if env else []
    candidates += [Path(PAPER_FILE), Path("data") / PAPER_FILE, Path.home() / ".cache" / "esjax" / PAPER_FILE]
    return next((p for p in candidates if p.is_file()), None)


@register("countdown")
class CountdownTask(FileTask):
    """Countdown in the ES paper's format (see the module docstring).

    Data options as ``FileTask``: rows {id, context, numbers, target, solution}; ``path`` defaults to the
    paper's file (see ``find_paper_file``), train = its first 200 rows, test = its last 2000. Also
    ``paper_compat``; ``end_token`` (stripped from the end before the format check, as the reference did);
    ``truncated_reward`` defaults to ``None`` (truncation is ignored, as in the paper); ``partial_credit`` w in
    [0, 1) adds ``w * closeness`` to a wrong answer's reward (:func:`countdown_reward`; 0: the paper's reward);
    ``paper_script`` scores as the paper's training script did (:func:`script_reward`; not with partial credit).
    """

    name = "countdown"
    reward_range = (0.0, 1.1)
    paper_script = False

    def __init__(self, path: str | Path | None = None, *, train_size: int | None = 200,
                 test_size: int | None = 2000, paper_compat: bool = False, end_token: str | None = None,
                 truncated_reward: float | None = None, partial_credit: float = 0.0, paper_script: bool = False,
                 **options: Any):
        self.paper_compat, self.end_token = paper_compat, end_token
        self.partial_credit = check_partial_credit(partial_credit)
        if not isinstance(paper_script, bool) or (paper_script and self.partial_credit):
            raise TaskDataError(f"paper_script must be true or false, without partial_credit, got {paper_script!r}")
        self.paper_script = paper_script
        super().__init__(path, train_size=train_size, test_size=test_size, truncated_reward=truncated_reward,
                         **options)

    def default_data(self) -> tuple[Path, None]:
        path = find_paper_file()
        if path is None:
            raise TaskDataError(
                f"task 'countdown' needs the paper's data file: pass path=..., set ESJAX_COUNTDOWN_PATH, or put "
                f"{PAPER_FILE} in ./, ./data/ or ~/.cache/esjax/ (a small example in this format: "
                f"{data_path('countdown_example.json')}; for generated problems use 'countdown_procedural')")
        return path, None

    validate_row = staticmethod(validate_countdown_row)

    def prompt(self, example: Example) -> str:
        context = example.get("context")
        return context if isinstance(context, str) else paper_prompt(example["numbers"], example["target"])

    def score(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        if self.paper_script:
            return script_reward(self.prompt(example), completion, example["target"], self.end_token)
        return countdown_reward(completion, example["numbers"], example["target"], paper_compat=self.paper_compat,
                                end_token=self.end_token, partial_credit=self.partial_credit)

    @property
    def part_names(self) -> tuple[str, ...]:
        return ("format", "answer", "closeness") if self.partial_credit else ("format", "answer")

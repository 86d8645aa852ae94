"""Resuming a run from its own saved settings, and the record of every change made on resume.

``RUN/config.yaml`` always holds the run's current settings. ``esjax train --out RUN --resume`` without CONFIG or
``--set`` continues exactly that run. Given a CONFIG or ``--set`` (applied on top of the saved settings when there
is no CONFIG), every difference from the saved settings is refused, naming each changed key, unless the user allows
changes; growing the iteration budget (``train.iterations``, a stage's ``iterations``) is always allowed, and no
budget may end before the iterations already done. The device placement (``train.devices``,
``train.model_parallel``) may change too: the run continues on the new devices (ES bitwise as an uninterrupted run
on them; see docs/training.md). Applied changes are appended to ``RUN/settings_history.jsonl``
with the iteration from which they take effect, and ``config.yaml`` is rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from esjax.common.errors import EsjaxError
from esjax.methods import registry
from esjax.run.settings import RunSettings, TaskSettings, load_settings, save_settings, to_dict

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "settings_history.jsonl"
_BUDGET_KEYS = ("train.iterations",)  # plus every "...iterations" key of a task or stage
PLACEMENT_KEYS = ("train.devices", "train.model_parallel")  # where the run computes, not what: free on resume
FREE_KEYS = (*PLACEMENT_KEYS, "train.compile_ahead")  # and when it compiles: free too


class ResumeError(EsjaxError, ValueError):
    """A resume the saved run does not allow; the message names the run directory and the keys."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists of dicts) as ``{"a.b": leaf, "stages[0].name": leaf}``."""
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {k: v for i, sub in enumerate(value) for k, v in flatten(sub, f"{prefix[:-1]}[{i}].").items()}
    return {prefix[:-1]: value}


def settings_changes(old: RunSettings, new: RunSettings) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` for every setting that differs (None: absent on that side)."""
    a, b = flatten(to_dict(_explicit(old))), flatten(to_dict(_explicit(new)))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _explicit(settings: RunSettings) -> RunSettings:
    """The settings with the default task written out (``task: null`` without stages trains the default task)."""
    if settings.task is None and not settings.stages:
        return dataclasses.replace(settings, task=TaskSettings())
    return settings


def total_iterations(settings: RunSettings) -> int:
    default = settings.train.iterations
    return sum(st.iterations if st.iterations is not None else default for st in settings.task_stages())


def completed_iterations(run_dir: Path) -> int:
    """The iteration of the run's last finished checkpoint (0 if none): where a resume starts."""
    directory = run_dir / "checkpoints"
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()] if directory.is_dir() else []
    return max(steps, default=0)


def _is_budget(key: str) -> bool:
    return key in _BUDGET_KEYS or key.endswith("iterations") and key.startswith(("task.", "stages["))


def _describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} ({json.dumps(a, default=str)} -> {json.dumps(b, default=str)})"
                     for k, (a, b) in changes.items())


def task_files(settings: RunSettings) -> list[str]:
    """The Python files the settings' tasks are imported from (``task.file`` or a ``file.py:name`` task name)."""
    return [st.file or st.name.rpartition(":")[0] for st in settings.task_stages()
            if st.file or ".py:" in st.name]


def resume_settings(run_dir: str | Path, config: str | Path | None = None, overrides: Sequence[str] = (),
                    allow_changes: bool = False, trust_task_files: bool = False
                    ) -> tuple[RunSettings, dict[str, tuple[Any, Any]]]:
    """The settings to resume ``run_dir`` with, and how they differ from its saved ones.

    Raises :class:`ResumeError` when there is nothing to resume, when a setting other than the iteration budget,
    the device placement or ``train.compile_ahead`` changes without ``allow_changes``, when the budget ends before
    the iterations already done, and when the saved settings name a Python task file and neither CONFIG nor
    ``trust_task_files`` says to import it.
    """
    run_dir = Path(run_dir)
    saved_file = run_dir / CONFIG_FILE
    if not saved_file.is_file():
        raise ResumeError(f"{run_dir}: nothing to resume (no {CONFIG_FILE})")
    saved = load_settings(saved_file)
    settings = load_settings(config, overrides) if config is not None else load_settings(saved_file, overrides)
    if config is None and not trust_task_files:
        files = [f for f in task_files(settings) if f in task_files(saved)]
        if files:
            raise ResumeError(f"{saved_file}: the run's task is defined by the Python file {files[0]!r}; pass "
                              f"--trust-task-file to import (run) it, or give CONFIG")
    changes = settings_changes(saved, settings)
    done = completed_iterations(run_dir)
    if total_iterations(settings) < done:
        raise ResumeError(f"{run_dir}: {_describe({k: v for k, v in changes.items() if _is_budget(k)})} ends "
                          f"before the {done} iterations this run has done")
    if any(_is_budget(k) for k in changes):
        _check_schedule_covers(run_dir, settings)
    refused = {k: v for k, v in changes.items() if not _is_budget(k) and k not in FREE_KEYS}
    if refused and not allow_changes:
        raise ResumeError(f"{run_dir}: these settings differ from the run's {CONFIG_FILE}: {_describe(refused)}; "
                          f"resume without CONFIG/--set, or pass --allow-changes to apply them (recorded in "
                          f"{HISTORY_FILE})")
    return settings, changes


def _check_schedule_covers(run_dir: Path, settings: RunSettings) -> None:
    """A decaying step-size schedule saved with the run's old length must not end before a grown budget (the
    extra iterations would take steps of size 0)."""
    cfg, method = settings.method_config, settings.method
    spec = registry.get(method)
    schedule = getattr(cfg, spec.schedule_key) if spec.schedule_key else "constant"
    steps = total_iterations(settings) * spec.steps_per_iteration(cfg)
    if schedule != "constant" and cfg.total_steps is not None and cfg.total_steps < steps:
        raise ResumeError(f"{run_dir}: the {schedule} schedule ends at {method}.total_steps={cfg.total_steps}, "
                          f"before the new budget of {steps} steps; set {method}.total_steps too (--allow-changes)")


def record_changes(run_dir: str | Path, settings: RunSettings, changes: Mapping[str, tuple[Any, Any]],
                   iteration: int) -> dict[str, Any]:
    """Append the changes (taking effect at ``iteration``) to ``settings_history.jsonl`` and save ``settings`` as
    the run's ``config.yaml``; returns the history entry."""
    run_dir = Path(run_dir)
    entry = {"iteration": int(iteration), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "changes": {k: [a, b] for k, (a, b) in changes.items()}}
    with (run_dir / HISTORY_FILE).open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    save_settings(settings, run_dir / CONFIG_FILE)
    return entry


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

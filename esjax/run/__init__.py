"""A training or evaluation run, above the methods and tasks:

    settings, settings_yaml   YAML + ``--set`` overrides -> a typed, checked ``RunSettings``
    plan, memory              the start-of-run report: devices, mesh, work and memory per device
    directory, resume         the run directory (new or resumed) and what a resume may change
    loop                      ``train`` / ``Run``: the stages, the iterations, evaluation, checkpoints
    checkpoints, metrics      orbax checkpoints of the state; ``metrics.jsonl`` + TensorBoard
    plots                     the run's PNGs
    scoring, evaluate         decoding and scoring completions; greedy evaluation of a split
    embedded                  the packaged tiny model and its task (the demo's)

Names below load their module on first use, so that importing one module stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunSettings": "settings", "load_settings": "settings", "SettingsError": "settings_yaml",
    "Run": "loop", "train": "loop", "evaluate": "evaluate", "EvalResult": "evaluate", "PromptSet": "evaluate",
    "RunCheckpoints": "checkpoints", "load_embedded": "embedded", "embedded_task": "embedded",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"esjax.run.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'esjax.run' has no attribute {name!r}")

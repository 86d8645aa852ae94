"""A training or evaluation run, above the methods and tasks:

    settings, settings_yaml   YAML + ``--set`` overrides -> a typed, checked ``RunSettings`` (no devices)
    plan                      the device plan made when a run starts; the report: devices, mesh, work, memory
    directory, resume         the run directory (new or resumed) and what a resume may change
    setup, stages             starting a run (model, tokenizer, run directory); stages, prompts, batches
    loop                      ``train`` / ``Run``: the iterations of every stage
    stage_eval, finish        evaluation during a run, accuracy matrices; stage models, plots, summary
    checkpoints, metrics      orbax checkpoints of the state; ``metrics.jsonl`` (appended) + TensorBoard
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
    "MeshPlan": "plan", "plan_devices": "plan",
    "Run": "loop", "train": "loop", "evaluate": "evaluate", "EvalResult": "evaluate", "PromptSet": "evaluate",
    "RunCheckpoints": "checkpoints", "load_embedded": "embedded", "embedded_task": "embedded",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"esjax.run.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'esjax.run' has no attribute {name!r}")

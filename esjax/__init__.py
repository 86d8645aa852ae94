"""esjax: Evolution Strategies (and a matching GRPO baseline) for full-parameter LLM fine-tuning in JAX.

Layers, bottom to top: ``common``; ``distributed`` (processes and meshes); ``es`` and ``grpo`` (the methods'
formulas); ``models`` and ``generation`` (the decoder, Hugging Face in/out, KV-cache sampling); one step of each
method and ``methods`` (the protocol the loop drives, the registry of method descriptions); ``tasks``; ``run``
(settings, the loop, checkpoints, evaluation); ``analysis``; ``cli`` (docs/architecture.md). The most used entry
points are re-exported here and load on first use::

    settings = esjax.load_settings("configs/tiny_es_full.yaml", overrides=["train.iterations=5"])
    summary = esjax.train(settings, "runs/tiny")
    model = esjax.load_model("Qwen/Qwen2.5-0.5B-Instruct")        # a folder, an esjax checkpoint or a Hub ID
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_settings": "esjax.run.settings", "RunSettings": "esjax.run.settings", "train": "esjax.run.loop",
    "Run": "esjax.run.loop", "evaluate": "esjax.run.evaluate", "load_model": "esjax.models.store",
    "save_model": "esjax.models.store",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'esjax' has no attribute {name!r}")

"""What fine-tuning did to a model: update geometry, KL drift, interpolation, and the ``esjax analyze`` report.

    geometry       norms / cosines / top-k energy of updates per layer and module type; ES displacement law
    kl             KL(fine-tuned || base) with k1, k3 and exact per-token estimates on sampled completions
    interpolation  accuracy along (1 - a) theta_A + a theta_B and along theta_0 + t u
    analyze        every section for a base and named models on tasks -> a report dict
    report         report.json, PNG plots and report.md

The ``esjax analyze`` subcommand itself is :mod:`esjax.cli.analyze`.

Submodules and the names below load on first use, so that importing the CLI stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

SECTIONS = ("geometry", "svd", "accuracy", "kl", "drift", "interp", "probes")

_EXPORTS = {
    "Analysis": "analyze", "Options": "analyze", "analyze": "analyze", "load": "analyze",
    "update_geometry": "geometry", "norm_stats": "geometry", "cosine_stats": "geometry", "energy_stats": "geometry",
    "es_theory_norm": "geometry", "leaf_sq_norms": "geometry", "leaf_inner": "geometry",
    "leaf_singular_values": "geometry", "topk_energy": "geometry",
    "kl_drift": "kl", "token_kl": "kl", "estimators": "kl", "KLResult": "kl",
    "lerp": "interpolation", "along": "interpolation", "curve": "interpolation", "barrier": "interpolation",
    "unit_direction": "interpolation", "random_unit_direction": "interpolation",
    "write_report": "report", "find_run": "runs",
}
__all__ = ["SECTIONS", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"esjax.analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'esjax.analysis' has no attribute {name!r}")

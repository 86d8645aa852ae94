"""Shared benchmark helpers: model shapes, device peaks, timing, JSON results."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import jax

from esjax.models import config_from_hf

SHAPES = {
    # Qwen2.5-0.5B-Instruct's config.json fields (random weights)
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768,
                         eos_token_id=151645),
    "tiny": dict(model_type="qwen2", vocab_size=272, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                 tie_word_embeddings=True, max_position_embeddings=2048, eos_token_id=0),
}

SHAPE_NAMES = (*SHAPES, "embedded")

# Dense peak (bf16 FLOP/s, HBM bytes/s) by device kind, from the vendors' data sheets (SXM parts).
DEVICE_PEAKS = {
    "NVIDIA H100 80GB HBM3": (989e12, 3.35e12),
    "NVIDIA H100": (989e12, 3.35e12),
    "NVIDIA H200": (989e12, 4.8e12),
    "TPU v5 lite": (197e12, 0.819e12),
    "TPU v4": (275e12, 1.2e12),
}


def model_config(shape: str):
    """The ModelConfig of a named shape; "embedded" is the demo's model (esjax/assets/tiny_countdown)."""
    if shape == "embedded":
        from esjax.embedded import EMBEDDED_MODEL_DIR
        return config_from_hf(json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text()), where="embedded")
    return config_from_hf(SHAPES[shape], where=f"shape {shape}")


def device_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__, "host": platform.node(), "cpu": platform.processor() or platform.machine()}


def device_peaks() -> tuple[float, float] | None:
    kind = jax.devices()[0].device_kind
    for name, peaks in DEVICE_PEAKS.items():
        if kind.startswith(name):
            return peaks
    return None


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first call seconds incl. compilation, best of ``repeats`` steady-state seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return first, best


def peak_memory_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))

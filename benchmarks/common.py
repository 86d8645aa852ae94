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
    # Qwen2.5-1.5B-Instruct's config.json fields (random weights)
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768,
                         eos_token_id=151645),
    "tiny": dict(model_type="qwen2", vocab_size=272, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                 tie_word_embeddings=True, max_position_embeddings=2048, eos_token_id=0),
}

SHAPE_NAMES = (*SHAPES, "embedded")

# Dense peak (bf16 FLOP/s, HBM bytes/s) per device, from the vendors' data sheets, keyed by the start of
# jax's ``device_kind`` (the first match wins: the more specific names first).
DEVICE_PEAKS = {
    "NVIDIA H100 PCIe": (756e12, 2.0e12),
    "NVIDIA H100 NVL": (835e12, 3.9e12),
    "NVIDIA H100": (989e12, 3.35e12),  # SXM, "NVIDIA H100 80GB HBM3"
    "NVIDIA H200": (989e12, 4.8e12),
    "NVIDIA A100-SXM4-80GB": (312e12, 2.039e12),
    "NVIDIA A100 80GB PCIe": (312e12, 1.935e12),
    "NVIDIA A100": (312e12, 1.555e12),  # 40 GB, SXM4 or PCIe
    "TPU v4": (275e12, 1.2e12),
    "TPU v5 lite": (197e12, 0.819e12),  # v5e
    "TPU v5p": (459e12, 2.765e12),
    "TPU v5": (459e12, 2.765e12),  # v5p
    "TPU v6 lite": (918e12, 1.64e12),  # v6e (Trillium)
}


def model_config(shape: str):
    """The ModelConfig of a named shape; "embedded" is the demo's model (esjax/assets/tiny_countdown)."""
    if shape == "embedded":
        from esjax.run.embedded import EMBEDDED_MODEL_DIR
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


def write_random_hf_model(shape: str, out_dir: str | Path, dtype: str = "bfloat16",
                          max_shard_bytes: int = 300 * 2**20, seed: int = 0) -> Path:
    """A random-weight HF checkpoint of a named shape, laid out as transformers saves one: ``config.json`` from
    transformers' config class, tensor names and [out, in] shapes from the transformers model (built on the meta
    device, no memory), weights in ``model-0000k-of-0000n.safetensors`` shards + index written by the safetensors
    library, one shard in memory at a time. Returns ``out_dir``."""
    import ml_dtypes
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = dict(SHAPES[shape])
    hf_config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields, torch_dtype=dtype)
    hf_config.save_pretrained(out)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    tensors = [(n, tuple(t.shape)) for n, t in model.state_dict().items()
               if not (n == "lm_head.weight" and hf_config.tie_word_embeddings)]
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    shards, current, used = [], [], 0
    for name, tshape in tensors:
        size = int(np.prod(tshape)) * np_dtype.itemsize
        if current and used + size > max_shard_bytes:
            shards.append(current)
            current, used = [], 0
        current.append((name, tshape))
        used += size
    shards.append(current)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        arrays = {name: (rng.standard_normal(tshape, np.float32) * 0.02).astype(np_dtype) for name, tshape in shard}
        save_file(arrays, str(out / fname), metadata={"format": "pt"})
        total += sum(a.nbytes for a in arrays.values())
        weight_map |= {name: fname for name in arrays}
        del arrays
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out

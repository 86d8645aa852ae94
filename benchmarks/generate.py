"""Batched greedy decoding throughput (tokens/s), compile time apart, roofline fraction where peaks are known.

    python benchmarks/generate.py --shape tiny --batch 32 --compare-hf          # CPU, next to transformers
    python benchmarks/generate.py --shape qwen2.5-0.5b --batch 256 --dtype bfloat16   # GPU

Writes ``benchmarks/results/generate-<shape>-<platform>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import (  # noqa: E402
    SHAPE_NAMES, device_info, device_peaks, model_config, peak_memory_bytes, timed, write_result)
from esjax.models import init_params  # noqa: E402
from esjax.sampling import SamplingConfig, generate_jit  # noqa: E402


def roofline_step_seconds(config, batch: int, context: float, dtype_bytes: int, peaks) -> float:
    """max(bytes moved / bandwidth, FLOPs / peak) for one decode step at an average context length."""
    flops_peak, bandwidth = peaks
    params = config.num_params()
    cache = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype_bytes * batch * context
    flops = 2 * params * batch
    return max((params * dtype_bytes + cache) / bandwidth, flops / flops_peak)


def hf_generate_seconds(config, params, batch, prompt, new_tokens, repeats) -> float:
    import torch
    import transformers

    from esjax.models import save_hf
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(config, params, Path(tmp) / "m")
        model = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "m", dtype=torch.float32).eval()
    ids = torch.tensor(prompt, dtype=torch.long)
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=1)
    best = float("inf")
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=SHAPE_NAMES)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare-hf", action="store_true", help="also time transformers' generate (CPU torch)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    config = model_config(args.shape)
    params = jax.jit(init_params, static_argnums=(0, 2))(config, jax.random.key(0), args.dtype)
    rng = np.random.default_rng(0)
    prompt = rng.integers(2, min(config.vocab_size, 250), (args.batch, args.prompt_len)).astype(np.int32)
    tokens, mask = jnp.asarray(prompt), jnp.ones_like(jnp.asarray(prompt))
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, eos_token_ids=(), pad_token_id=1)
    prefill = SamplingConfig(max_new_tokens=1, eos_token_ids=(), pad_token_id=1)

    first, best = timed(lambda: generate_jit(config, params, tokens, mask, jax.random.key(0), sampling).tokens,
                        args.repeats)
    _, prefill_s = timed(lambda: generate_jit(config, params, tokens, mask, jax.random.key(0), prefill).tokens,
                         args.repeats)
    step_s = (best - prefill_s) / (args.new_tokens - 1)
    generated = args.batch * args.new_tokens
    result = {
        "benchmark": "generate", "shape": args.shape, "params": config.num_params(), "batch": args.batch,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "dtype": args.dtype, **device_info(),
        "compile_plus_first_run_s": round(first, 3), "generate_s": round(best, 4),
        "tokens_per_s": round(generated / best, 1), "decode_step_ms": round(step_s * 1e3, 3),
        "peak_memory_bytes": peak_memory_bytes(),
    }
    peaks = device_peaks()
    if peaks:
        bytes_per = jnp.dtype(args.dtype).itemsize
        roof = roofline_step_seconds(config, args.batch, args.prompt_len + args.new_tokens / 2, bytes_per, peaks)
        result |= {"roofline_step_ms": round(roof * 1e3, 4), "roofline_fraction": round(roof / step_s, 3)}
    if args.compare_hf:
        hf_s = hf_generate_seconds(config, params, args.batch, prompt, args.new_tokens, args.repeats)
        result |= {"transformers_generate_s": round(hf_s, 4), "transformers_tokens_per_s": round(generated / hf_s, 1),
                   "speedup_vs_transformers": round(hf_s / best, 2)}
    out = args.out or Path(__file__).parent / f"generate-{args.shape}-{result['platform']}.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

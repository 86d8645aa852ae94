"""Batched greedy decoding throughput (tokens/s), compile time apart, roofline fraction where peaks are known.

    python benchmarks/generate.py --shape tiny --batch 32 --compare-hf          # CPU, next to transformers
    python benchmarks/generate.py --shape qwen2.5-0.5b --batch 8 32 --new-tokens 32 --dtype bfloat16 --compare-hf
    python benchmarks/generate.py --shape qwen2.5-0.5b --batch 256 --dtype bfloat16   # GPU

Writes ``benchmarks/generate-<shape>[-<dtype>]-<platform>.json`` (one entry per batch size under "runs" when
several are given). Also records the dtype the decode computes in (float32 for 16-bit weights on CPU) and XLA's
temporary buffer size for the compiled program next to the weights' size.
"""

from __future__ import annotations

import argparse
import json
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
    SHAPE_NAMES, device_info, device_peaks, model_config, peak_memory_bytes, write_result)
from esjax.models import init_params  # noqa: E402
from esjax.generation.sampling import SamplingConfig, decode_dtype, generate_jit  # noqa: E402


def roofline_step_seconds(config, batch: int, context: float, dtype_bytes: int, peaks) -> float:
    """The fastest a decode step can be: max(bytes moved / HBM bandwidth, FLOPs / peak FLOP/s).

    Bytes moved = every weight once (d params x dtype bytes) + the KV cache read at the mean context C:
    batch x C x 2 (K, V) x layers x kv_heads x head_dim x dtype bytes; FLOPs = 2 d per generated token.
    roofline_fraction = this / the measured step (1.0: at the device's peak)."""
    flops_peak, bandwidth = peaks
    params = config.num_params()
    cache = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype_bytes * batch * context
    flops = 2 * params * batch
    return max((params * dtype_bytes + cache) / bandwidth, flops / flops_peak)


def hf_model(config, params, dtype: str):
    """transformers' model of the same weights (exported by esjax), in ``dtype``."""
    import torch
    import transformers

    from esjax.models import save_hf
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(config, params, Path(tmp) / "m")
        return transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "m", dtype=getattr(torch, dtype)).eval()


def hf_generate_fn(model, prompt, new_tokens):
    """A no-argument call of transformers' greedy ``generate`` for ``prompt``, exactly ``new_tokens`` new tokens."""
    import torch
    ids = torch.tensor(prompt, dtype=torch.long)
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=1)

    def run():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return run


def best_interleaved(fns: dict, repeats: int) -> dict:
    """Best of ``repeats`` seconds per function, the functions taking turns (a load change hits all of them)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure_generate(config, params, batch: int, prompt_len: int, new_tokens: int, repeats: int = 3, hf=None,
                     memory: bool = True) -> dict:
    """Greedy decoding of ``batch`` random prompts to exactly ``new_tokens`` (no EOS): tokens/s, the decode step
    (prefill timed apart), the roofline fraction where the device's peaks are known, XLA's temporary bytes
    (``memory``: one more compilation) and, with ``hf`` (a transformers model), transformers' generate, timed in
    turns with esjax's (best of ``repeats`` each)."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(2, min(config.vocab_size, 250), (batch, prompt_len)).astype(np.int32)
    tokens, mask = jnp.asarray(prompt), jnp.ones_like(jnp.asarray(prompt))
    sampling = SamplingConfig(max_new_tokens=new_tokens, eos_token_ids=(), pad_token_id=1)
    prefill = SamplingConfig(max_new_tokens=1, eos_token_ids=(), pad_token_id=1)
    fns = {"esjax": lambda: generate_jit(config, params, tokens, mask, jax.random.key(0), sampling).tokens,
           "prefill": lambda: generate_jit(config, params, tokens, mask, jax.random.key(0), prefill).tokens}
    if hf is not None:
        fns["transformers"] = hf_generate_fn(hf, prompt, new_tokens)
    start = time.perf_counter()
    jax.block_until_ready(fns["esjax"]())
    first = time.perf_counter() - start
    for name in fns.keys() - {"esjax"}:  # warm-up (prefill compilation)
        jax.block_until_ready(fns[name]())
    times = best_interleaved(fns, repeats)
    best, prefill_s = times["esjax"], times["prefill"]
    # the decode steps after the prefill; at tiny sizes timing noise can hide them: then the whole run per token
    step_s = (best - prefill_s) / (new_tokens - 1) if best > 1.5 * prefill_s else best / new_tokens
    generated = batch * new_tokens
    result = {"batch": batch, "compile_plus_first_run_s": round(first, 3), "generate_s": round(best, 4),
              "tokens_per_s": round(generated / best, 1), "decode_step_ms": round(step_s * 1e3, 3),
              "decode_tokens_per_s": round(batch / step_s, 1), "peak_memory_bytes": peak_memory_bytes()}
    if memory:
        compiled = generate_jit.lower(config, params, tokens, mask, jax.random.key(0), sampling).compile()
        result["xla_temp_mib"] = round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)
    peaks = device_peaks()
    if peaks:
        bytes_per = jnp.dtype(jax.tree.leaves(params)[0].dtype).itemsize
        roof = roofline_step_seconds(config, batch, prompt_len + new_tokens / 2, bytes_per, peaks)
        result |= {"roofline_step_ms": round(roof * 1e3, 4), "roofline_fraction": round(roof / step_s, 3)}
    if hf is not None:
        hf_s = times["transformers"]
        result |= {"transformers_generate_s": round(hf_s, 4), "transformers_tokens_per_s": round(generated / hf_s, 1),
                   "speedup_vs_transformers": round(hf_s / best, 2)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=SHAPE_NAMES)
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare-hf", action="store_true", help="also time transformers' generate (CPU torch, same dtype)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    config = model_config(args.shape)
    params = jax.jit(init_params, static_argnums=(0, 2))(config, jax.random.key(0), args.dtype)
    hf = hf_model(config, params, args.dtype) if args.compare_hf else None
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    result = {
        "benchmark": "generate", "shape": args.shape, "params": config.num_params(), "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "dtype": args.dtype, "decode_dtype": str(decode_dtype(params)),
        "weights_mib": round(weights / 2**20, 1), **device_info(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }
    runs = []
    for batch in args.batch:
        runs.append(measure_generate(config, params, batch, args.prompt_len, args.new_tokens, args.repeats, hf))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # progress
    result |= runs[0] if len(runs) == 1 else {"runs": runs}
    dtype_tag = "" if args.dtype == "float32" else f"-{args.dtype}"
    out = args.out or Path(__file__).parent / f"generate-{args.shape}{dtype_tag}-{result['platform']}.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

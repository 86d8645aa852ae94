"""bf16 weights decoded on CPU: esjax (computing in float32, its CPU default, or in bfloat16) against transformers
(bfloat16, and float32 for reference), greedy, the same random Qwen2.5-0.5B-shaped weights, taking turns.

    python benchmarks/bf16_cpu.py --batch 8 32 --prompt-len 32 --new-tokens 32 --repeats 5

Each round runs every variant once (A B C D, A B C D, ...); the JSON holds each one's median, min and max wall
seconds and median CPU seconds, the ``/proc/loadavg`` before and after each batch size, and greedy-token agreement
with float32 decoding of the same weights: rows whose every token equals esjax float32's (and transformers
float32's for the transformers variants). Writes ``benchmarks/generate-qwen2.5-0.5b-bfloat16-cpu.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import device_info, model_config, write_result  # noqa: E402
from benchmarks.es_costs import alternate, load, stats  # noqa: E402
from benchmarks.generate import hf_generate_fn, hf_model  # noqa: E402
from esjax.generation.sampling import SamplingConfig, generate_jit  # noqa: E402
from esjax.models import init_params  # noqa: E402


def measure(config, params, hf: dict, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    prompt = np.random.default_rng(batch).integers(2, 250, (batch, prompt_len)).astype(np.int32)
    tokens, mask = jnp.asarray(prompt), jnp.ones((batch, prompt_len), jnp.int32)
    sampling = SamplingConfig(max_new_tokens=new_tokens, eos_token_ids=(), pad_token_id=1)

    def esjax(dtype):
        return lambda: generate_jit(config, params, tokens, mask, jax.random.key(0), sampling, compute_dtype=dtype)
    fns = {"esjax_float32": esjax(jnp.float32), "esjax_bfloat16": esjax(jnp.bfloat16)}
    fns |= {f"transformers_{name}": hf_generate_fn(model, prompt, new_tokens) for name, model in hf.items()}
    outputs = {name: np.asarray(fn() if name.startswith("transformers") else fn().tokens)
               for name, fn in fns.items()}
    outputs = {k: v[:, -new_tokens:] for k, v in outputs.items()}  # transformers returns prompt + new tokens
    before = load()
    wall, cpu = alternate(fns, repeats)
    generated = batch * new_tokens
    result = {"batch": batch, "load_before": before, "load_after": load()}
    for name in fns:
        result[name] = stats(wall[name], cpu[name]) | {
            "tokens_per_s": round(generated / float(np.median(wall[name])), 1),
            "rows_equal_to_esjax_float32": int(np.all(outputs[name] == outputs["esjax_float32"], axis=1).sum())}
        if "transformers_float32" in outputs:
            result[name]["rows_equal_to_transformers_float32"] = int(
                np.all(outputs[name] == outputs["transformers_float32"], axis=1).sum())
    for name in [n for n in fns if n != "transformers_bfloat16"]:
        if "transformers_bfloat16" in fns:
            result[f"{name}_over_transformers_bfloat16_speed"] = round(
                float(np.median(wall["transformers_bfloat16"]) / np.median(wall[name])), 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-hf-float32", action="store_true", help="skip transformers float32 (saves memory)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    config = model_config(args.shape)
    params = jax.jit(init_params, static_argnums=(0, 2))(config, jax.random.key(0), "bfloat16")
    hf = {"bfloat16": hf_model(config, params, "bfloat16")}
    if not args.no_hf_float32:
        hf["float32"] = hf_model(config, params, "float32")
    result = {"benchmark": "bf16_cpu", "shape": args.shape, "params": config.num_params(), "dtype": "bfloat16",
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), **device_info(),
              "cpu_flags": sorted({f for f in Path("/proc/cpuinfo").read_text().split()
                                   if f in ("avx512_bf16", "amx_bf16", "avx512f", "amx_tile")}),
              "runs": [measure(config, params, hf, b, args.prompt_len, args.new_tokens, args.repeats)
                       for b in args.batch]}
    out = args.out or Path(__file__).parent / f"generate-{args.shape}-bfloat16-{result['platform']}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()

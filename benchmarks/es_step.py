"""ES iteration cost: population rollout throughput vs plain batched generation, and the update's share.

Ratio = (generated tokens/s of the perturbed population) / (tokens/s of plain batched generation of the same
N x B sequences with the unperturbed weights), both measured in this run on the same device.

    python benchmarks/es_step.py --shape tiny --population 8 --prompts 16 --new-tokens 32     # CPU
    python benchmarks/es_step.py --shape qwen2.5-0.5b --population 30 --prompts 200 --new-tokens 1024 \\
        --dtype bfloat16 --noise full lowrank                                                 # GPU: the paper's shape
    python benchmarks/es_step.py --shape embedded --population 64 --prompts 50 --prompt-len 32 \\
        --new-tokens 24                                                                      # the demo's shape

Writes ``benchmarks/es_step-<shape>-<platform>.json`` beside this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import (  # noqa: E402
    SHAPE_NAMES, device_info, model_config, peak_memory_bytes, timed, write_result)
from esjax.es import ESConfig  # noqa: E402
from esjax.es.step import es_init, make_runner  # noqa: E402
from esjax.models import init_params  # noqa: E402
from esjax.generation.sampling import SamplingConfig, generate_jit  # noqa: E402


def measure_es(config, params, population: int, prompts: int, prompt_len: int, new_tokens: int,
               noises=("full", "lowrank"), rank: int = 1, chunk: str | int = "auto", repeats: int = 2,
               plain: bool = True) -> dict:
    """Population rollout and update seconds per noise kind on one device; with ``plain``, also one batched
    generate of the same N x B sequences with the unperturbed weights and the rollout/plain throughput ratio."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, min(config.vocab_size, 250), (prompts, prompt_len)).astype(np.int32)
    mask = np.ones_like(tokens)
    sampling = SamplingConfig(max_new_tokens=new_tokens, eos_token_ids=(), pad_token_id=1)
    n, b, t = population, prompts, new_tokens
    tokens_total = n * b * t
    dtype = jax.tree.leaves(params)[0].dtype
    result = {"population": n, "prompts": b, "prompt_len": prompt_len, "new_tokens": t, "dtype": str(dtype)}
    base_s = None
    if plain:  # the same N x B sequences, unperturbed weights, one batched generate
        flat = jnp.asarray(np.tile(tokens, (n, 1)))
        base_first, base_s = timed(lambda: generate_jit(config, params, flat, jnp.ones_like(flat), jax.random.key(0),
                                                        sampling).tokens, repeats)
        result |= {"plain_generate_s": round(base_s, 4), "plain_tokens_per_s": round(tokens_total / base_s, 1),
                   "plain_compile_plus_first_s": round(base_first, 2), "peak_memory_bytes_plain": peak_memory_bytes()}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("population",))
    for noise in noises:
        es = ESConfig(population_size=n, sigma=1e-3, alpha=5e-4, noise=noise, rank=rank,
                      population_chunk=chunk if chunk == "auto" else int(chunk), master_fp32=dtype != jnp.float32)
        runner = make_runner(es, config, sampling, mesh, params, tokens.shape)
        state = es_init(runner, params, jax.random.key(1))
        roll = lambda: runner.rollout(state.params, state.run_key, state.iteration, jnp.asarray(tokens),  # noqa: E731
                                      jnp.asarray(mask), jax.random.key(2)).tokens
        first, roll_s = timed(roll, repeats)
        fitness = jnp.asarray(rng.normal(size=n), jnp.float32)
        update_first, update_s = timed(lambda: runner.update(jax.tree.map(jnp.copy, state), fitness)[0].params,
                                       repeats)
        result[noise] = {
            "population_chunk": runner.rollout.chunk, "rollout_s": round(roll_s, 4),
            "rollout_tokens_per_s": round(tokens_total / roll_s, 1), "update_s": round(update_s, 4),
            "update_fraction_of_iteration": round(update_s / (roll_s + update_s), 4),
            "rollout_compile_plus_first_s": round(first, 2), "update_compile_plus_first_s": round(update_first, 2),
            "peak_memory_bytes": peak_memory_bytes(),
        }
        if base_s is not None:
            result[noise]["ratio_vs_plain_generation"] = round(base_s / roll_s, 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=SHAPE_NAMES)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--noise", nargs="+", default=["full", "lowrank"], choices=["full", "lowrank"])
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--chunk", default="auto", help="population_chunk for full rank")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    config = model_config(args.shape)
    params = jax.jit(init_params, static_argnums=(0, 2))(config, jax.random.key(0), args.dtype)
    result = {"benchmark": "es_step", "shape": args.shape, "params": config.num_params(), **device_info(),
              **measure_es(config, params, args.population, args.prompts, args.prompt_len, args.new_tokens,
                           args.noise, args.rank, args.chunk, args.repeats)}
    out = args.out or Path(__file__).parent / f"es_step-{args.shape}-{result['platform']}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()

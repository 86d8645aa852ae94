"""XLA's compiled memory of the ES rollout and update at the paper's shape, next to the scaling model's prediction.

    python benchmarks/compiled_memory.py          # Qwen2.5-0.5B and 1.5B, model axis 1 and 2 (~10 min on 2 cores)

Nothing is run or allocated: the programs are lowered for ``jax.ShapeDtypeStruct`` params (bf16, fp32 master) and
compiled on simulated CPU devices (``--xla_force_host_platform_device_count=2``; a model axis of 2 puts each
leaf's split half on each device), and ``compiled.memory_analysis()`` reports the bytes ONE device needs:
arguments, outputs, aliased (donated) and temporaries. Shapes: 200 prompts of 128 tokens, 1024 new tokens (the
ES paper's Countdown batch), bf16 weights; the rollout of one population group holding 2 members (N = 30 on 15
groups), full rank one member at a time (``population_chunk: 1``) or low rank both together; the update of a
population of 30. The prediction is ``scaling_model.es_memory`` (docs/scaling.md), the same formulas as the
per-device memory table in tpu/README.md. Writes ``benchmarks/compiled_memory-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import device_info, model_config  # noqa: E402
from benchmarks.scaling_model import MODELS, es_memory  # noqa: E402
from esjax import distributed  # noqa: E402
from esjax.es import ESConfig  # noqa: E402
from esjax.es.step import make_runner  # noqa: E402
from esjax.es.update import init_state  # noqa: E402
from esjax.models.decoder import param_shapes  # noqa: E402
from esjax.models.sharding import param_shardings  # noqa: E402
from esjax.generation.sampling import SamplingConfig  # noqa: E402

SHAPES = {"qwen2.5-0.5b": "Qwen2.5-0.5B", "qwen2.5-1.5b": "Qwen2.5-1.5B"}
GiB = 1 << 30


def placed(tree, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def analysis(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def measure(shape: str, noise: str, mp: int, prompts: int, prompt_len: int, new_tokens: int, members: int,
            population: int) -> dict:
    config = model_config(shape)
    mesh = distributed.build_mesh([("population", 1)] + ([("model", mp)] if mp > 1 else []),
                                  jax.devices()[:mp])
    params = placed(param_shapes(config, jnp.bfloat16), param_shardings(mesh, config, jnp.bfloat16))
    sampling = SamplingConfig(max_new_tokens=new_tokens, eos_token_ids=(), pad_token_id=1)
    rollout_es = ESConfig(population_size=members, sigma=1e-3, alpha=5e-4, noise=noise, population_chunk=1,
                          master_fp32=True)
    t0 = time.perf_counter()
    rollout = make_runner(rollout_es, config, sampling, mesh, params, (prompts, prompt_len)).rollout
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    spec = lambda s, d: jax.ShapeDtypeStruct(s, d, sharding=replicated)  # noqa: E731
    key = jax.random.key(0)
    roll = analysis(rollout.fn.lower(params, key, jnp.zeros((), jnp.int32), spec((prompts, prompt_len), jnp.int32),
                                     spec((prompts, prompt_len), jnp.int32), key).compile())
    rollout_s = time.perf_counter() - t0
    update_es = ESConfig(population_size=population, sigma=1e-3, alpha=5e-4, noise=noise, master_fp32=True)
    runner = make_runner(update_es, config, sampling, mesh, params, (prompts, prompt_len))
    state = jax.eval_shape(lambda p: init_state(update_es, p, jax.random.key(0)), params)
    t0 = time.perf_counter()
    fitness = spec((population,), jnp.float32)
    upd = analysis(runner.update.lower(placed(state, runner.state_sharding), fitness).compile())
    update_s = time.perf_counter() - t0
    m = MODELS[SHAPES[shape]]
    at_once = 1 if noise == "full" else members
    predicted = es_memory(m, mp, at_once, prompts, prompt_len + new_tokens, noise)
    weights_master = predicted["weights"] + predicted["master_fp32"]
    return {
        "shape": shape, "noise": noise, "model_parallel": mp, "members_on_device": members,
        "members_decoded_at_once": at_once, "prompts": prompts, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "rollout_compiled": roll, "update_compiled": upd, "compile_s": round(rollout_s + update_s, 1),
        "predicted": {k: int(v) for k, v in predicted.items()},
        # the rollout program holds the bf16 weights (argument) + copies, KV cache, activations (temporaries)
        "rollout_predicted_bytes": int(predicted["weights"] + predicted["perturbed_copies"] + predicted["kv_cache"]),
        "rollout_compiled_over_predicted": round(roll["peak"] / (predicted["weights"] + predicted["perturbed_copies"]
                                                                  + predicted["kv_cache"]), 3),
        # the update program holds the state (bf16 params + fp32 master) + its leaf-by-leaf transients
        "update_predicted_bytes": int(weights_master + predicted["update_transient"]),
        "update_compiled_over_predicted": round(upd["peak"] / (weights_master + predicted["update_transient"]), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--noise", nargs="+", default=["full", "lowrank"], choices=["full", "lowrank"])
    ap.add_argument("--model-parallel", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=1024)
    ap.add_argument("--members", type=int, default=2, help="members on the device (N / population groups)")
    ap.add_argument("--population", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parent / "compiled_memory-cpu.json"))
    args = ap.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"benchmark": "compiled_memory", **device_info(),
                                                                  "method": __doc__.split("\n\n")[1], "rows": []}
    for shape, noise, mp in [(s, n, m) for s in args.shapes for n in args.noise for m in args.model_parallel]:
        row = measure(shape, noise, mp, args.prompts, args.prompt_len, args.new_tokens, args.members, args.population)
        same = lambda r: (r["shape"], r["noise"], r["model_parallel"]) == (shape, noise, mp)  # noqa: E731
        result["rows"] = [r for r in result["rows"] if not same(r)] + [row]
        out.write_text(json.dumps(result, indent=2) + "\n")  # after every row: a long run keeps what it measured
        print(f"{shape} {noise:7s} mp={mp}: rollout {row['rollout_compiled']['peak'] / GiB:.2f} GiB "
              f"(predicted {row['rollout_predicted_bytes'] / GiB:.2f}), update "
              f"{row['update_compiled']['peak'] / GiB:.2f} GiB (predicted "
              f"{row['update_predicted_bytes'] / GiB:.2f}), compiled in {row['compile_s']} s", flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

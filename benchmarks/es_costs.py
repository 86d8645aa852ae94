"""What an ES run costs beyond decoding, in one JSON: start-up with a cold and a warm compilation cache, the update
against the ES paper's update loop and against moving the parameters once, and the rollout against plain generation.

    python benchmarks/es_costs.py                 # CPU: the demo's shape + a Qwen2.5-0.5B-shaped short run
    python benchmarks/es_costs.py --quick         # fewer repeats, no 0.5B shape (a minute or two)

Every comparison alternates the things compared in one process (A B C A B C ...) and reports the median and the
spread (min, max) of each, with ``/proc/loadavg`` before and after: on a shared machine only ratios of medians
taken side by side mean anything.

1. ``start``: ``esjax demo`` (4 iterations) and ``esjax generate`` as separate processes, each pair on a fresh
   cache folder: the first process compiles (cold), the second loads its programs from XLA's persistent cache
   (warm). First iteration = the metrics' ``seconds`` of iteration 0 (rollout + scoring + update, compilation
   included: by default the step compiles in background threads beside the stage's first evaluation, see
   ``train.compile_ahead``); steady = the median of the later iterations. The same pair with
   ``train.compile_ahead=false`` (``demo_plain_*``: each program compiled when first called), and each round a
   process of the ES paper's loop on the demo's shape (``reference_loop.py``: PyTorch eager, nothing to
   compile), whose first iteration is the yardstick of esjax's cold one. Wall and CPU seconds per process.
2. ``update``: the jitted ES update (``es.update.update_state``) of N members against (a) the ES paper's loop
   (github.com/VsonicV/es-fine-tuning-paper: per parameter, per member, ``torch.manual_seed``, ``torch.randn``,
   ``mul_``, ``add_``; PyTorch on the same CPU, same shapes and N) and (b) one jitted pass that reads and writes
   every parameter once (the memory-bound floor of any update).
3. ``rollout``: ``make_runner(...).rollout`` (N members x B prompts, full and low rank) against one plain
   batched ``generate`` of the same N x B sequences with the unperturbed weights; ratio = plain s / rollout s.

Writes ``benchmarks/es_costs-<platform>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import device_info, model_config, write_result  # noqa: E402
from esjax.es import ESConfig  # noqa: E402
from esjax.es.update import init_state, update_state  # noqa: E402
from esjax.models import init_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CODE = [ROOT]  # the checkout whose esjax the start-up processes run (--code: compare another one)


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where /proc is missing)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def stats(seconds: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    """Median, min and max wall seconds (and the median CPU seconds of this process, all threads)."""
    out = {"median_s": round(float(np.median(seconds)), 4), "min_s": round(min(seconds), 4),
           "max_s": round(max(seconds), 4), "runs": len(seconds)}
    return out | ({"cpu_median_s": round(float(np.median(cpu)), 4)} if cpu else {})


def alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Each function once to warm up (compile), then ``repeats`` rounds calling them in turn: (wall seconds, CPU
    seconds of this process) per call. CPU time is the steadier figure on a machine other jobs load."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


# ------------------------------------------------------------------------------------------------ 1. start-up
def _cli(args: list[str], cache: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``esjax ARGS`` with ``cache`` as the compilation cache: (wall s, CPU s of the process, the run)."""
    env = {**os.environ, "ESJAX_COMPILATION_CACHE": str(cache), "PYTHONPATH": str(CODE[0])}
    return _timed([sys.executable, "-m", "esjax.cli", *args], env)


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode:
        raise RuntimeError(f"{' '.join(command[1:4])} failed: {run.stderr[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, run


def demo_run(out: Path, cache: Path, iterations: int, ahead: bool = True) -> dict[str, float]:
    """One ``esjax demo`` process (``ahead``: ``train.compile_ahead``): its wall and CPU time, the first and steady
    iteration seconds, and how the first iteration split into rollout and update."""
    wall, cpu, _ = _cli(["demo", "--out", str(out), "--no-progress", "--set", f"train.iterations={iterations}",
                         "--set", f"train.checkpoint_every={iterations}", "--set",
                         f"train.compile_ahead={str(ahead).lower()}"], cache)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in sorted(records, key=lambda r: r["iteration"]) if "seconds" in r]
    seconds = [r["seconds"] for r in steps]
    steady = float(np.median(seconds[1:]))
    return {"process_s": round(wall, 2), "process_cpu_s": round(cpu, 2), "first_iteration_s": round(seconds[0], 3),
            "first_rollout_s": round(steps[0]["time/rollout_s"], 3),
            "first_update_s": round(steps[0]["time/update_s"], 3), "steady_iteration_s": round(steady, 3),
            "first_over_steady": round(seconds[0] / steady, 2)}


def reference_run(iterations: int) -> dict[str, Any]:
    """One process of the ES paper's loop on the demo's shape (``benchmarks/reference_loop.py``)."""
    wall, cpu, run = _timed([sys.executable, str(Path(__file__).parent / "reference_loop.py"), "--iterations",
                             str(iterations)], {**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(run.stdout.strip().splitlines()[-1]) | {"process_cpu_s": round(cpu, 2)}


def measure_start(repeats: int, iterations: int = 4, demo: bool = True, model: str | None = None,
                  reference: bool = False, plain: bool = False) -> dict:
    """Cold and warm processes of ``esjax demo`` (if ``demo``) and ``esjax generate`` (24 new tokens, greedy, from
    ``model``, default the demo's embedded model), ``repeats`` cold/warm pairs, each pair on a fresh cache; with
    ``plain``, a demo pair with ``train.compile_ahead=false`` too (its own fresh cache); with ``reference``, a
    process of the ES paper's loop on the demo's shape (``reference_loop.py``) each round."""
    from esjax.run.embedded import EMBEDDED_MODEL_DIR
    model = model or str(EMBEDDED_MODEL_DIR)
    result: dict[str, Any] = {"load_before": load(), "demo_iterations": iterations if demo else 0}
    kinds = [("", True)] + ([("_plain", False)] if demo and plain else [])
    runs: dict[str, list] = {f"demo{k}_{label}": [] for k, _ in kinds for label in ("cold", "warm")}
    runs |= {"generate_cold": [], "generate_warm": [], "reference": [], "load": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            runs["load"].append(load())
            if reference and demo:
                runs["reference"].append(reference_run(iterations))
            for kind, ahead in kinds:
                cache = Path(tmp) / f"cache{r}{kind}"
                for label in ("cold", "warm"):
                    if demo:
                        runs[f"demo{kind}_{label}"].append(demo_run(Path(tmp) / f"run{r}{kind}{label}", cache,
                                                                    iterations, ahead))
                    if kind:
                        continue
                    wall, cpu, _ = _cli(["generate", "--model", model, "--prompt", "Numbers: 3 5 7. Target: 22.",
                                         "--max-new-tokens", "24", "--greedy"], cache)
                    runs[f"generate_{label}"].append({"process_s": round(wall, 2), "process_cpu_s": round(cpu, 2)})
    for name, rows in runs.items():
        if name.startswith("demo") and rows:
            first = [r["first_iteration_s"] for r in rows]
            steady = [r["steady_iteration_s"] for r in rows]
            result[name] = {"first_iteration": stats(first), "steady_iteration": stats(steady),
                            "first_over_steady_median": round(np.median(first) / np.median(steady), 2),
                            "process": stats([r["process_s"] for r in rows]),
                            "process_cpu": stats([r["process_cpu_s"] for r in rows])}
    for label in ("cold", "warm"):
        rows = runs[f"generate_{label}"]
        result[f"generate_{label}_process"] = stats([r["process_s"] for r in rows])
        result[f"generate_{label}_process_cpu"] = stats([r["process_cpu_s"] for r in rows])
    if runs["reference"]:
        ref = runs["reference"]
        first = float(np.median([r["first_iteration_s"] for r in ref]))
        result["reference"] = {"first_iteration": stats([r["first_iteration_s"] for r in ref]),
                               "steady_iteration": stats([r["steady_iteration_s"] for r in ref]),
                               "process": stats([r["process_s"] for r in ref]),
                               "torch_threads": ref[0]["torch_threads"]}
        for kind, _ in kinds:  # per round: this round's cold first iteration over the reference's
            cold = runs[f"demo{kind}_cold"]
            result[f"demo{kind}_cold_first_over_reference_first"] = {
                "median": round(result[f"demo{kind}_cold"]["first_iteration"]["median_s"] / first, 2),
                "per_round": [round(c["first_iteration_s"] / r["first_iteration_s"], 2) for c, r in zip(cold, ref)]}
    result["runs"] = runs
    result["load_after"] = load()
    return result


# ------------------------------------------------------------------------------------------------- 2. update
def reference_update(shapes: list[tuple[int, ...]], population: int, alpha: float = 5e-4) -> Callable[[], None]:
    """The ES paper's update loop in PyTorch on float32 tensors of ``shapes`` (its ``es_fine-tuning`` script)."""
    import torch
    params = [torch.zeros(s) for s in shapes]
    seeds = np.random.default_rng(0).integers(0, 2 ** 30, population)
    rewards = np.random.default_rng(1).normal(size=population)

    def run() -> None:
        for param in params:
            gen = torch.Generator(device=param.device)
            update = torch.zeros_like(param)
            for i in range(population):
                gen.manual_seed(int(seeds[i]))
                noise = torch.randn(param.shape, generator=gen, device=param.device, dtype=param.dtype)
                noise.mul_(float(rewards[i]))
                update.add_(noise)
            update.div_(population)
            param.data.add_(alpha * update)
    return run


def measure_update(config, params, population: int, antithetic: bool, repeats: int, reference: bool) -> dict:
    """The jitted ES update against a read-write pass over the parameters (and the paper's loop)."""
    es = ESConfig(population_size=population, sigma=1e-3, alpha=5e-4, antithetic=antithetic, noise="full",
                  master_fp32=jax.tree.leaves(params)[0].dtype != jnp.float32)
    state = init_state(es, params, jax.random.key(1))
    fitness = jnp.asarray(np.random.default_rng(0).normal(size=population), jnp.float32)
    update = jax.jit(lambda s, f: update_state(es, s, f)[0].params)
    touch = jax.jit(lambda p: jax.tree.map(lambda x: x * jnp.asarray(1.0001, x.dtype), p))
    fns = {"esjax_update": lambda: update(state, fitness), "read_write_params": lambda: touch(params)}
    if reference:
        import torch
        fns["reference_update"] = reference_update([x.shape for x in jax.tree.leaves(params)], population)
    before = load()
    times, cpu = alternate(fns, repeats)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    med = {k: float(np.median(v)) for k, v in times.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    result = {"population": population, "antithetic": antithetic, "noise_draws": population // (1 + antithetic),
              "param_count": sum(x.size for x in jax.tree.leaves(params)), "param_bytes": nbytes,
              **{k: stats(v, cpu[k]) for k, v in times.items()},
              "update_over_read_write": round(med["esjax_update"] / med["read_write_params"], 1),
              "update_over_read_write_cpu": round(med_cpu["esjax_update"] / med_cpu["read_write_params"], 1),
              "read_write_bytes_per_s": round(2 * nbytes / med["read_write_params"]),
              "load_before": before, "load_after": load()}
    if reference:
        result["reference_over_esjax"] = round(med["reference_update"] / med["esjax_update"], 2)
        result["reference_over_esjax_cpu"] = round(med_cpu["reference_update"] / med_cpu["esjax_update"], 2)
        result["torch_threads"] = torch.get_num_threads()
    return result


# ------------------------------------------------------------------------------------------------ 3. rollout
def measure_rollout(config, params, population: int, prompts: int, prompt_len: int, new_tokens: int,
                    repeats: int, noises: tuple[str, ...] = ("full", "lowrank")) -> dict:
    """ES rollouts (each noise kind) against plain generation of the same N x B sequences, alternated."""
    from esjax.es.step import es_init, make_runner
    from esjax.generation.sampling import SamplingConfig, generate_jit
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(2, min(config.vocab_size, 250), (prompts, prompt_len)), jnp.int32)
    mask = jnp.ones_like(tokens)
    sampling = SamplingConfig(max_new_tokens=new_tokens, eos_token_ids=(), pad_token_id=1)
    flat = jnp.tile(tokens, (population, 1))
    fns = {"plain": lambda: generate_jit(config, params, flat, jnp.ones_like(flat), jax.random.key(0),
                                         sampling).tokens}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("population",))
    chunks = {}
    for noise in noises:
        es = ESConfig(population_size=population, sigma=1e-3, alpha=5e-4, noise=noise, antithetic=True,
                      master_fp32=jax.tree.leaves(params)[0].dtype != jnp.float32)
        runner = make_runner(es, config, sampling, mesh, params, tokens.shape)
        state = es_init(runner, params, jax.random.key(1))
        chunks[noise] = runner.rollout.chunk
        fns[noise] = (lambda r, s: lambda: r.rollout(s.params, s.run_key, s.iteration, tokens, mask,
                                                     jax.random.key(2)).tokens)(runner, state)
    before = load()
    times, cpu = alternate(fns, repeats)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    total = population * prompts * new_tokens
    result = {"population": population, "prompts": prompts, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "plain": stats(times["plain"], cpu["plain"]) | {"tokens_per_s": round(total / med["plain"], 1)}}
    for noise in noises:
        result[noise] = stats(times[noise], cpu[noise]) | {
            "tokens_per_s": round(total / med[noise], 1), "members_at_once": chunks[noise],
            "ratio_vs_plain_generation": round(med["plain"] / med[noise], 3),
            "ratio_vs_plain_generation_cpu": round(med_cpu["plain"] / med_cpu[noise], 3),
            "ratio_per_round": [round(p / t, 3) for p, t in zip(times["plain"], times[noise])]}
    return result | {"load_before": before, "load_after": load()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, the demo's shape only")
    ap.add_argument("--sections", nargs="+", default=["start", "update", "rollout"],
                    choices=["start", "update", "rollout"])
    ap.add_argument("--code", default=None, help="start-up: run the esjax of this checkout (an A/B comparison)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.code:
        CODE[0] = Path(args.code).resolve()
    repeats = 3 if args.quick else 7
    result: dict[str, Any] = {"benchmark": "es_costs", **device_info(), "code": str(CODE[0])}
    out = Path(args.out or Path(__file__).parent / f"es_costs-{result['platform']}.json")
    if out.is_file():  # the parts not re-measured stay as they were (with their own loads)
        previous = json.loads(out.read_text())
        kept = {k: v for k, v in previous.items() if k.split("_")[0] in {"start", "update", "rollout"} - set(
            args.sections)}
        result |= kept | ({"kept_from_previous_run": sorted(kept)} if kept else {})

    def record(name: str, fn: Callable[..., dict], *fn_args) -> None:  # the JSON is rewritten after each part
        result[name] = fn(*fn_args)
        out.write_text(json.dumps(result, indent=2) + "\n")

    from esjax.models import load_model
    from esjax.run.embedded import EMBEDDED_MODEL_DIR
    demo = model_config("embedded")
    demo_params = load_model(str(EMBEDDED_MODEL_DIR)).params
    big = None if args.quick else model_config("qwen2.5-0.5b")
    if "start" in args.sections:
        record("start", measure_start, 1 if args.quick else 3, 4, True, None, True, True)
    if "update" in args.sections:
        # the demo: N = 64 antithetic (32 noise draws); the paper's loop has no antithetic pairs, so it draws 64
        record("update_demo", measure_update, demo, demo_params, 64, True, repeats, True)
        record("update_demo_plain", measure_update, demo, demo_params, 64, False, repeats, True)
    if "rollout" in args.sections:
        record("rollout_demo", measure_rollout, demo, demo_params, 64, 50, 32, 24, repeats)
    if big is not None and "update" in args.sections:
        params = jax.jit(init_params, static_argnums=(0, 2))(big, jax.random.key(0), "float32")
        record("update_qwen2.5-0.5b", measure_update, big, params, 2, False, 3, False)
        del params
    if big is not None and "rollout" in args.sections:
        params = jax.jit(init_params, static_argnums=(0, 2))(big, jax.random.key(0), "float32")
        record("rollout_qwen2.5-0.5b", measure_rollout, big, params, 2, 4, 16, 16, 3)
    write_result(out, result)


if __name__ == "__main__":
    main()

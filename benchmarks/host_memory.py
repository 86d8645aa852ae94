"""Peak host memory of loading, converting and training a real-size model on CPU, each stage in its own process.

    python benchmarks/host_memory.py --shape qwen2.5-0.5b                       # every stage (~10 min on 2 cores)
    python benchmarks/host_memory.py --shape qwen2.5-0.5b --stages convert load_hf

A random-weight checkpoint of the shape's real config is written as transformers lays one out (bf16, sharded
safetensors + index, ``common.write_random_hf_model``). Each stage then runs in a fresh subprocess that imports
everything, starts the CPU backend, reads its resident set size (baseline), resets the kernel's high-water mark
(``/proc/self/clear_refs``), runs, and reports ``VmHWM - baseline``: the host memory the stage itself needed.

Stages: ``convert`` (``esjax convert`` HF -> esjax checkpoint), ``load_hf`` (``models.load_hf``, params kept),
``load_checkpoint`` (the converted checkpoint restored, leaf by leaf into its sharding), ``export`` (``esjax export``
of that checkpoint to HF safetensors, streamed from its zarr arrays; the written tensors are then compared with the
source's, byte for byte), ``es_full`` / ``es_lowrank`` (the checkpoint restored, one ES iteration: a few members,
prompts and new tokens), ``grpo`` (the checkpoint restored, one GRPO step).
Each stage records the 1-minute load average when it started. Writes ``benchmarks/host_memory-<shape>-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("convert", "load_hf", "load_checkpoint", "export", "es_full", "es_lowrank", "grpo")
MiB = 1 << 20


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _score(tokens, lengths, finished, prompt):
    import numpy as np
    rewards = (tokens[:, 0] % 2 == 0).astype(np.float32)
    return rewards, rewards > 0


def _run_stage(stage: str, hf_dir: str, ckpt: str, job: dict) -> dict:
    """The stage's work; runs inside the measured process."""
    import jax
    import numpy as np

    from esjax import models
    from esjax.cli import main as esjax_main

    if stage == "convert":
        code = esjax_main(["convert", "--from-hf", hf_dir, "--out", ckpt, "--overwrite"])
        return {"exit_code": code}
    if stage == "load_hf":
        _, params = models.load_hf(hf_dir, dtype=None)
        return {"leaves": len(jax.block_until_ready(jax.tree.leaves(params)))}
    if stage == "export":
        out = Path(ckpt).parent / "exported"
        code = esjax_main(["export", ckpt, "--to-hf", str(out), "--overwrite"])
        return {"exit_code": code}
    loaded = models.load_model(ckpt)
    if stage == "load_checkpoint":
        return {"leaves": len(jax.block_until_ready(jax.tree.leaves(loaded.params)))}
    from esjax.generation.sampling import SamplingConfig
    rng = np.random.default_rng(0)
    tokens = rng.integers(8, 1000, (job["prompts"], job["prompt_len"])).astype(np.int32)
    mask = np.ones_like(tokens)
    if stage.startswith("es_"):
        from esjax.es import ESConfig
        from esjax.es.step import es_init, es_step, make_runner
        es = ESConfig(population_size=job["population"], sigma=1e-3, alpha=5e-4, noise=stage.removeprefix("es_"),
                      master_fp32=True)
        sampling = SamplingConfig(max_new_tokens=job["new_tokens"], eos_token_ids=(), pad_token_id=1)
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("population",))
        runner = make_runner(es, loaded.config, sampling, mesh, loaded.params, tokens.shape)
        state = es_init(runner, loaded.params, jax.random.key(0))
        del loaded  # the state owns its copy
        state, result = es_step(runner, state, tokens, mask, _score)
        jax.block_until_ready(state)
        return {"members_at_once": runner.rollout.chunk, "rollout_s": round(result.metrics["time/rollout_s"], 2),
                "update_s": round(result.metrics["time/update_s"], 2)}
    from esjax.grpo import GRPOConfig, grpo_init, grpo_step, make_runner
    config = GRPOConfig(num_generations=job["generations"], learning_rate=1e-6, logprob_chunk_size=job["new_tokens"])
    sampling = SamplingConfig(max_new_tokens=job["new_tokens"], temperature=1.0, eos_token_ids=(), pad_token_id=1)
    runner = make_runner(config, loaded.config, sampling)
    state = grpo_init(runner, loaded.params, jax.random.key(0))
    del loaded
    state, result = grpo_step(runner, state, tokens, mask, _score)
    jax.block_until_ready(state)
    return {"metrics": {k: float(f"{v:.4g}") for k, v in result.metrics.items() if "loss" in k or "length" in k}}


def _worker(stage: str, hf_dir: str, ckpt: str, job: dict) -> None:
    import jax

    import esjax.cli.commands  # noqa: F401 - everything the stage imports, before the baseline
    from esjax.es import step  # noqa: F401
    from esjax.grpo import step as grpo_step  # noqa: F401
    jax.block_until_ready(jax.numpy.zeros(8) + 1)  # the CPU client exists
    baseline = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    extra = _run_stage(stage, hf_dir, ckpt, job)
    seconds = time.perf_counter() - start
    peak = _proc_status_kib("VmHWM")
    print("HOST_MEMORY " + json.dumps({"stage": stage, "baseline_mib": round(baseline / 1024, 1),
                                       "peak_above_baseline_mib": round((peak - baseline) / 1024, 1),
                                       "seconds": round(seconds, 1), **extra}), flush=True)


def measure_stage(stage: str, hf_dir: Path, ckpt: Path, job: dict, timeout: float = 1800) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu",
                                                                       "TOKENIZERS_PARALLELISM": "false"}
    load = round(os.getloadavg()[0], 2)
    run = subprocess.run([sys.executable, __file__, "--_worker", stage, str(hf_dir), str(ckpt), json.dumps(job)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("HOST_MEMORY ")]
    if run.returncode or not lines:
        raise RuntimeError(f"stage {stage} failed:\n{run.stderr[-3000:]}")
    return {**json.loads(lines[-1].removeprefix("HOST_MEMORY ")), "load_avg_1m": load}


def _same_tensors(source: Path, exported: Path) -> bool:
    """Every safetensors file of ``source`` in ``exported`` with the same tensors, byte for byte (memory-mapped)."""
    import numpy as np

    from esjax.models.safetensors_io import iter_tensors
    files = sorted(p.name for p in source.glob("*.safetensors"))
    if files != sorted(p.name for p in exported.glob("*.safetensors")):
        return False
    for name in files:
        ours, theirs = dict(iter_tensors(exported / name)), dict(iter_tensors(source / name))
        if ours.keys() != theirs.keys() or any(ours[k].dtype != theirs[k].dtype or ours[k].shape != theirs[k].shape
                                               or not (ours[k].view(np.uint8) == theirs[k].view(np.uint8)).all()
                                               for k in ours):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--population", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--shard-mib", type=int, default=300, help="safetensors shard size of the written model")
    ap.add_argument("--_worker", nargs=4, metavar=("STAGE", "HF", "CKPT", "JOB"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args._worker:
        stage, hf_dir, ckpt, job = args._worker
        return _worker(stage, hf_dir, ckpt, json.loads(job))

    from benchmarks.common import device_info, write_random_hf_model
    job = {"population": args.population, "prompts": args.prompts, "generations": args.generations,
           "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    with tempfile.TemporaryDirectory(prefix="esjax-host-memory-") as tmp:
        hf_dir = write_random_hf_model(args.shape, Path(tmp) / "hf", max_shard_bytes=args.shard_mib * MiB)
        model_bytes = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
        shards = len(list(hf_dir.glob("*.safetensors")))
        ckpt = Path(tmp) / "ckpt"
        stages = [s for s in STAGES if s in args.stages]
        if "convert" not in stages and any(s not in ("convert", "load_hf") for s in stages):
            stages.insert(0, "convert")  # the other stages start from the converted checkpoint
        result = {"benchmark": "host_memory", "shape": args.shape, "dtype": "bfloat16", **device_info(),
                  "model_mib": round(model_bytes / MiB, 1), "safetensors_shards": shards, "job": job,
                  "method": "peak RSS (VmHWM after resetting it) minus RSS before the stage, fresh process each",
                  "stages": {}}
        for stage in stages:
            row = measure_stage(stage, hf_dir, ckpt, job)
            row["peak_over_model"] = round(row["peak_above_baseline_mib"] * MiB / model_bytes, 3)
            if stage == "export":
                row["tensors_equal_source"] = _same_tensors(hf_dir, ckpt.parent / "exported")
            result["stages"][stage] = row
            print(stage, row, flush=True)
    out = Path(args.out or Path(__file__).parent / f"host_memory-{args.shape}-cpu.json")
    if out.is_file():  # keep the stages this run did not measure
        kept = json.loads(out.read_text())["stages"]
        result["stages"] = {s: result["stages"].get(s, kept.get(s)) for s in STAGES if s in result["stages"] or s in kept}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Throughput scaling of an ES and a GRPO iteration with the number of devices: an analytic model for the papers'
shapes, and (``--measure``) timings of the real steps on simulated CPU devices.

    python benchmarks/scaling_model.py                     # the model: table + benchmarks/scaling_model.json
    python benchmarks/scaling_model.py --measure           # + CPU timings with 1/2/4/8 simulated devices (tiny model)
    python benchmarks/scaling_model.py --measure-multiprocess   # + all-gather cost over 2 local processes (gloo)

The model (see docs/scaling.md for the derivation). Per ES iteration, with D devices in groups of ``mp`` (model
axis), G = D / mp population groups, m = ceil(N / G) members per group, b = prompts per decode (es.prompt_chunk):

    rollout_full  = ceil(m / c) * B/b * [prefill(c*b rows) + T * max((c*W + KV(c*b rows)) / (mp*BW), 2*c*b*d / (mp*F))]
    rollout_low   = B/b * [prefill(m*b rows) + T * max((W + KV(m*b rows)) / (mp*BW), 2*m*b*d / (mp*F))]
    perturb       = m * 10 * d / (mp*BW)                     (draw fp32 eps, read W, write the member's copy)
    update        = N * 8 * d / (mp*BW)                      (every device regenerates all N members' noise for its
                                                              slice: does NOT shrink with D)
    communication = all-gather of N fitness values (latency only) + tp all-reduces inside the decode

and per GRPO iteration (K = prompts * G rows over the data axis, fp32 gradient all-reduce of the whole model):

    rollout = prefill + T * max((W + KV(K/Gd rows)) / (mp*BW), 2*(K/Gd)*d / (mp*F))
    train   = (6 + 2*[mu>1] + 2*[beta>0]) * d * K * S / (D * F * MFU)
    allreduce = 2 * (Gd - 1) / Gd * 4 * d / mp / link_BW,   optimizer = 16 * d / (mp*BW)

W = parameter bytes, d = parameter count, BW/F = HBM bandwidth / peak bf16 FLOP/s per device, c = full-rank members
decoded at once (what fits in memory), b = B when the KV cache of all B prompts fits (one member for full rank, all m
for low rank), else the largest divisor of B that does; S = P + T. Decode is weight-bandwidth bound at these batch
sizes, so each prompt chunk streams the weights again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# --measure needs simulated devices, set before JAX starts (ignored on accelerators)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esjax.common import memory  # noqa: E402

GiB = 1 << 30

# Published config.json fields of the papers' models.
MODELS = {
    "Qwen2.5-0.5B": dict(layers=24, hidden=896, heads=14, kv_heads=2,
                         head_dim=64, inter=4864, vocab=151936, tied=True, bias=True),
    "Qwen2.5-1.5B": dict(layers=28, hidden=1536, heads=12, kv_heads=2,
                         head_dim=128, inter=8960, vocab=151936, tied=True, bias=True),
    "Qwen2.5-3B": dict(layers=36, hidden=2048, heads=16, kv_heads=2,
                       head_dim=128, inter=11008, vocab=151936, tied=True, bias=True),
    "Qwen2.5-7B": dict(layers=28, hidden=3584, heads=28, kv_heads=4,
                       head_dim=128, inter=18944, vocab=152064, tied=False, bias=True),
    "Llama-3.2-1B": dict(layers=16, hidden=2048, heads=32, kv_heads=8,
                         head_dim=64, inter=8192, vocab=128256, tied=True, bias=False),
    "Llama-3.2-3B": dict(layers=28, hidden=3072, heads=24, kv_heads=8,
                         head_dim=128, inter=8192, vocab=128256, tied=True, bias=False),
    "Llama-3.1-8B": dict(layers=32, hidden=4096, heads=32, kv_heads=8,
                         head_dim=128, inter=14336, vocab=128256, tied=False, bias=False),
}

# name: (HBM bytes, HBM bytes/s, bf16 FLOP/s, intra-slice link bytes/s, devices per host, inter-host bytes/s per device)
DEVICES = {
    "TPU v5e (v5litepod)": (16 * GiB, 819e9, 197e12, 200e9, 4, 25e9),  # ICI 1600 Gbps/chip; hosts of 4 chips
    "NVIDIA H100 SXM": (80 * 1e9, 3.35e12, 989e12, 450e9, 8, 50e9),  # NVLink 900 GB/s bidir; 400 Gb/s IB per GPU
}
USABLE = 0.85  # of HBM, after XLA's own buffers


def num_params(m: dict) -> int:
    d, f, h, kv, hd = m["hidden"], m["inter"], m["heads"], m["kv_heads"], m["head_dim"]
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d + (h * hd + 2 * kv * hd) * m["bias"]
    layer = attn + 3 * d * f + 2 * d
    return m["layers"] * layer + m["vocab"] * d * (1 if m["tied"] else 2) + d


def kv_bytes_per_token(m: dict, dtype_bytes: int = 2) -> int:
    """2 (K and V) * layers * kv_heads * head_dim * bytes."""
    return memory.kv_bytes_per_token(m["layers"], m["kv_heads"], m["head_dim"], dtype_bytes)


def kv_split(m: dict, mp: int) -> int:
    """How many ways the KV cache splits over the model axis (KV heads that do not divide it are replicated)."""
    return memory.kv_split(m["kv_heads"], mp)


def es_memory(m: dict, mp: int, members: int, prompts: int, seq: int, noise: str, dtype_bytes: int = 2,
              master_fp32: bool = True) -> dict:
    """Per-device bytes of an ES rollout decoding ``members`` at once (full rank: one weight copy each)."""
    largest_leaf = max(m["vocab"] * m["hidden"], m["hidden"] * m["inter"])
    return memory.es_memory(num_params(m), largest_leaf, kv_bytes_per_token(m, dtype_bytes), m["kv_heads"], mp,
                            members, prompts, seq, noise, dtype_bytes, master_fp32)


def max_chunk(m: dict, mp: int, device: tuple, prompts: int, seq: int, noise: str, members: int) -> int:
    """Most members one device decodes at once (0: not even one fits)."""
    hbm = device[0] * USABLE
    for c in range(members, 0, -1):
        if es_memory(m, mp, c, prompts, seq, noise)["total"] <= hbm:
            return c
    return 0


def fit(m: dict, mp: int, device: tuple, prompts: int, seq: int, noise: str, members: int) -> tuple[int, int] | None:
    """(prompt chunk, members at once): all ``prompts`` if one member (full rank) or all ``members`` (low rank, which
    decodes them together) fit with them, else the largest divisor of ``prompts`` that does (es.prompt_chunk);
    None if not even one prompt fits."""
    need = 1 if noise == "full" else members
    for pc in (p for p in range(prompts, 0, -1) if prompts % p == 0):
        chunk = max_chunk(m, mp, device, pc, seq, noise, members)
        if chunk >= need:
            return pc, chunk
    return None


def es_iteration(m: dict, device: tuple, devices: int, mp: int, population: int = 30, prompts: int = 200,
                 prompt_len: int = 128, new_tokens: int = 1024, noise: str = "full") -> dict | None:
    hbm, bw, flops, link, per_host, dcn = device
    d = num_params(m)
    weights, seq = 2 * d, prompt_len + new_tokens
    groups = devices // mp
    members = math.ceil(population / groups)
    fitted = fit(m, mp, device, prompts, seq, noise, members)
    if fitted is None:
        return None
    pc, chunk = fitted
    kv_tok = kv_bytes_per_token(m) / kv_split(m, mp)
    tp_latency = 0.0 if mp == 1 else 2 * m["layers"] * 10e-6  # two all-reduces per layer per decode step
    avg_ctx = prompt_len + new_tokens / 2

    def decode(rows, weight_copies):
        step_bytes = weight_copies * weights / mp + rows * avg_ctx * kv_tok
        return new_tokens * (max(step_bytes / bw, 2 * rows * d / mp / flops) + tp_latency)

    prefill = lambda rows: 2 * rows * prompt_len * d / mp / (0.5 * flops)  # noqa: E731  50% MFU
    passes = prompts // pc  # prompt chunks; each streams the member chunk's weights again
    if noise == "full":  # weights built once per member chunk, then its prompt chunks decoded one after the other
        rollout = math.ceil(members / chunk) * passes * (prefill(chunk * pc) + decode(chunk * pc, chunk))
        perturb = members * 10 * d / mp / bw
    else:
        rollout = passes * (prefill(members * pc) + decode(members * pc, 1))
        perturb = 0.0
    update = population * 8 * d / mp / bw
    hosts = max(1, devices // per_host)
    gather = 0.0 if hosts == 1 else 2 * math.ceil(math.log2(hosts)) * 50e-6  # N floats: latency only
    readback = members * prompts * new_tokens * 4 / 10e9  # this host's own members' tokens over PCIe
    total = rollout + perturb + update + gather + readback
    return {"devices": devices, "model_parallel": mp, "population_groups": groups, "members_per_group": members,
            "members_at_once": chunk, "member_passes": math.ceil(members / chunk) if noise == "full" else 1,
            "prompt_chunk": pc,
            "rollout_s": rollout, "perturb_s": perturb, "update_s": update, "fitness_allgather_s": gather,
            "token_readback_s": readback, "iteration_s": total, "network_bytes": 4 * population * hosts,
            "completions_per_s": population * prompts / total}


def grpo_iteration(m: dict, device: tuple, devices: int, mp: int, prompts: int = 32, generations: int = 8,
                   prompt_len: int = 128, new_tokens: int = 1024, mfu: float = 0.4) -> dict:
    hbm, bw, flops, link, per_host, dcn = device
    d = num_params(m)
    rows = prompts * generations
    groups = devices // mp
    local = math.ceil(rows / groups)
    kv_tok = kv_bytes_per_token(m) / kv_split(m, mp)
    step = max((2 * d / mp + local * (prompt_len + new_tokens / 2) * kv_tok) / bw, 2 * local * d / mp / flops)
    rollout = 2 * local * prompt_len * d / mp / (0.5 * flops) + new_tokens * step
    train = 6 * d * rows * (prompt_len + new_tokens) / (devices * flops * mfu)
    grad_bytes = 4 * d / mp
    ring = link if devices <= per_host else dcn
    allreduce = 0.0 if groups == 1 else 2 * (groups - 1) / groups * grad_bytes / ring
    optimizer = 16 * d / mp / bw
    state = memory.grpo_memory(d, kv_tok, m["kv_heads"], mp, 0, 0)["state"]  # bf16, fp32 master, Adam, grads
    total = rollout + train + allreduce + optimizer
    return {"devices": devices, "model_parallel": mp, "rows_per_group": local, "rollout_s": rollout, "train_s": train,
            "grad_allreduce_s": allreduce, "optimizer_s": optimizer, "iteration_s": total,
            "network_bytes_per_device": 2 * (groups - 1) / groups * grad_bytes if groups > 1 else 0,
            "state_bytes_per_device": state, "fits": state < hbm * USABLE,
            "completions_per_s": rows / total}


def smallest_mp(m: dict, device: tuple, noise: str, prompts: int = 200, seq: int = 1152) -> int | None:
    """Smallest model axis with which one member (its weights or factors, and the KV cache of its prompts,
    micro-batched down to one prompt if need be) fits."""
    for mp in (1, 2, 4, 8, 16):
        if fit(m, mp, device, prompts, seq, noise, 1):
            return mp
    return None


def model_report(device_counts=(1, 2, 4, 8, 16, 32, 64)) -> dict:
    report = {"assumptions": {
        "devices": {k: {"hbm_bytes": v[0], "hbm_bytes_per_s": v[1], "bf16_flops": v[2], "link_bytes_per_s": v[3],
                        "devices_per_host": v[4], "inter_host_bytes_per_s": v[5]} for k, v in DEVICES.items()},
        "es": {"population": 30, "prompts": 200, "prompt_len": 128, "new_tokens": 1024, "dtype": "bfloat16",
               "master_fp32": True},
        "grpo": {"prompts": 32, "generations": 8, "prompt_len": 128, "new_tokens": 1024, "mfu": 0.4},
        "usable_hbm_fraction": USABLE}, "models": {}}
    for name, m in MODELS.items():
        d = num_params(m)
        entry = {"params": d, "bf16_bytes": 2 * d, "kv_bytes_per_token": kv_bytes_per_token(m), "devices": {}}
        for dev_name, dev in DEVICES.items():
            per = {"min_model_parallel_full": smallest_mp(m, dev, "full"),
                   "min_model_parallel_lowrank": smallest_mp(m, dev, "lowrank"), "es_full": [], "es_lowrank": [],
                   "grpo": []}
            for noise in ("full", "lowrank"):  # per device count: the fastest model axis that fits
                for n in device_counts:
                    rows = [es_iteration(m, dev, n, mp, noise=noise) for mp in (1, 2, 4, 8, 16) if mp <= n]
                    rows = [r for r in rows if r]
                    if rows:
                        per[f"es_{noise}"].append(min(rows, key=lambda r: r["iteration_s"]))
            gmp = next((mp for mp in (1, 2, 4, 8, 16) if grpo_iteration(m, dev, mp, mp)["fits"]), None)
            per["grpo_min_model_parallel"] = gmp
            per["grpo"] = [grpo_iteration(m, dev, n, gmp) for n in device_counts if gmp and n >= gmp]
            entry["devices"][dev_name] = per
        report["models"][name] = entry
    return report


def print_report(report: dict) -> None:
    prompts = report["assumptions"]["es"]["prompts"]
    pc = lambda r: f",pc{r['prompt_chunk']}" if r.get("prompt_chunk", prompts) < prompts else ""  # noqa: E731
    for name, entry in report["models"].items():
        print(f"\n{name}: {entry['params'] / 1e9:.2f}B params, {entry['bf16_bytes'] / GiB:.1f} GiB bf16, "
              f"KV {entry['kv_bytes_per_token'] / 1024:.0f} KiB/token")
        for dev, per in entry["devices"].items():
            print(f"  {dev}: min model axis full={per['min_model_parallel_full']} "
                  f"lowrank={per['min_model_parallel_lowrank']} grpo={per['grpo_min_model_parallel']}")
            for key in ("es_full", "es_lowrank", "grpo"):
                cells = " ".join(f"{r['devices']}(mp{r['model_parallel']}{pc(r)}):{r['iteration_s']:.0f}s"
                                 for r in per[key])
                print(f"    {key:10s} {cells}")


# ----------------------------------------------------------------------------------------------- measurement
def measure(repeats: int = 3) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.common import device_info, model_config
    from esjax import distributed
    from esjax.es import ESConfig
    from esjax.es.step import es_init, es_step, make_runner
    from esjax import grpo as grpo_lib
    from esjax.models import init_params
    from esjax.generation.sampling import SamplingConfig

    config = model_config("tiny")
    params = jax.device_get(jax.jit(init_params, static_argnums=0)(config, jax.random.key(0)))
    rng = np.random.default_rng(0)
    n_pop, prompts, prompt_len, new_tokens = 16, 16, 16, 32
    tokens = rng.integers(2, 250, (prompts, prompt_len)).astype(np.int32)
    mask = np.ones_like(tokens)

    def score(t, lengths, finished, prompt):
        r = ((t.astype(np.int64) * np.arange(1, t.shape[1] + 1)).sum(1) % 17 / 16.0).astype(np.float32)
        return r, r > 0.5

    out = {**device_info(), "shape": "tiny", "params": config.num_params(), "population": n_pop, "prompts": prompts,
           "prompt_len": prompt_len, "new_tokens": new_tokens, "cpu_cores": os.cpu_count(), "es": [], "grpo": []}
    layouts = [(1, 1), (2, 1), (4, 1), (8, 1), (4, 2), (2, 4)]
    sampling = SamplingConfig(max_new_tokens=new_tokens, eos_token_ids=(), pad_token_id=1)
    for noise in ("full", "lowrank"):
        es = ESConfig(population_size=n_pop, sigma=0.05, alpha=0.01, noise=noise, rank=1)
        for pop, mp in layouts:
            mesh = distributed.build_mesh([("population", pop)] + ([("model", mp)] if mp > 1 else []))
            runner = make_runner(es, config, sampling, mesh, params, tokens.shape)
            state = es_init(runner, params, jax.random.key(1))
            t0 = time.perf_counter()
            state, _ = es_step(runner, state, tokens, mask, score)
            first = time.perf_counter() - t0
            rows = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                state, result = es_step(runner, state, tokens, mask, score)
                rows.append((time.perf_counter() - t0, result.metrics["time/rollout_s"],
                             result.metrics["time/update_s"]))
            best = min(rows)
            out["es"].append({"noise": noise, "population_devices": pop, "model_parallel": mp,
                              "step_s": round(best[0], 4), "rollout_s": round(best[1], 4), "update_s": round(best[2], 4),
                              "compile_plus_first_s": round(first, 2)})
            print(out["es"][-1], flush=True)
    grpo = grpo_lib.GRPOConfig(num_generations=4, learning_rate=1e-3)
    gsampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, eos_token_ids=(), pad_token_id=1)
    # K = 64 rows: grpo_step repeats each of the 16 prompts G = 4 times
    for data, mp in layouts:
        mesh = distributed.build_mesh([("data", data)] + ([("model", mp)] if mp > 1 else []))
        runner = grpo_lib.make_runner(grpo, config, gsampling, mesh)
        state = grpo_lib.grpo_init(runner, jax.tree.map(jnp.asarray, params), jax.random.key(0))
        t0 = time.perf_counter()
        state, _ = grpo_lib.grpo_step(runner, state, tokens, mask, score)
        first = time.perf_counter() - t0
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, _ = grpo_lib.grpo_step(runner, state, tokens, mask, score)
            best = min(best, time.perf_counter() - t0)
        out["grpo"].append({"data_devices": data, "model_parallel": mp, "step_s": round(best, 4),
                            "compile_plus_first_s": round(first, 2)})
        print(out["grpo"][-1], flush=True)
    return out


def measure_multiprocess(repeats: int = 20) -> dict:
    """Two local processes x 2 CPU devices (gloo) vs what crosses processes: time of the ES fitness all-gather
    (N x 6 float64 per-member statistics) and of a GRPO reward all-gather (K floats), and one ES step."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESJAX_", "SLURM_"))}
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "ESJAX_COORDINATOR": f"127.0.0.1:{port}", "ESJAX_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen([sys.executable, __file__, "--_worker", str(repeats)],
                              env=env | {"ESJAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return json.loads(outs[0].strip().splitlines()[-1])


def _multiprocess_worker(repeats: int) -> None:
    import jax
    import numpy as np

    from esjax import distributed

    distributed.initialize()
    from benchmarks.common import model_config
    from esjax.es import ESConfig
    from esjax.es.step import es_init, es_step, make_runner
    from esjax.models import init_params
    from esjax.models.sharding import shard_tree
    from esjax.generation.sampling import SamplingConfig

    def best(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(min(times) * 1e3, 3), round(float(np.median(times)) * 1e3, 3)

    ids = np.arange(jax.process_index() * 15, (jax.process_index() + 1) * 15)
    stats = np.random.default_rng(0).normal(size=(15, 6))
    fitness = best(lambda: distributed.gather_rows(ids, stats, 30))
    rewards = best(lambda: distributed.gather_rows(np.arange(128) + 128 * jax.process_index(),
                                                   np.ones((128, 3), np.float32), 256))
    config = model_config("tiny")
    params = jax.device_get(jax.jit(init_params, static_argnums=0)(config, jax.random.key(0)))
    tokens = np.random.default_rng(0).integers(2, 250, (16, 16)).astype(np.int32)
    es = ESConfig(population_size=16, sigma=0.05, alpha=0.01)
    runner = make_runner(es, config, SamplingConfig(max_new_tokens=32, pad_token_id=1),
                         distributed.build_mesh({"population": -1}), params, tokens.shape)
    state = es_init(runner, shard_tree(params, runner.replicated.mesh), jax.random.key(1))
    score = lambda t, n, f, s: (((t.astype(np.int64) * np.arange(1, t.shape[1] + 1)).sum(1) % 17 / 16.0  # noqa: E731
                                 ).astype(np.float32),) * 2
    state, _ = es_step(runner, state, tokens, np.ones_like(tokens), score)
    steps = []
    for _ in range(3):
        t0 = time.perf_counter()
        state, result = es_step(runner, state, tokens, np.ones_like(tokens), score)
        steps.append((time.perf_counter() - t0, result.metrics["time/score_s"]))
    if jax.process_index() == 0:
        print(json.dumps({"processes": 2, "devices_per_process": 2, "collectives": "gloo (localhost)",
                          "fitness_allgather_ms_best_median": fitness, "reward_allgather_256_ms_best_median": rewards,
                          "es_step_s": round(min(steps)[0], 4), "es_score_plus_allgather_s": round(min(steps)[1], 4)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", action="store_true", help="also time the real steps on simulated CPU devices")
    ap.add_argument("--measure-multiprocess", action="store_true", help="also time the all-gathers over 2 processes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--_worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "scaling_model.json"))
    args = ap.parse_args()
    if args._worker is not None:
        return _multiprocess_worker(args._worker)
    report = model_report()
    print_report(report)
    path = Path(args.out)
    if args.measure:
        report["measured_cpu"] = measure(args.repeats)
    if args.measure_multiprocess:
        report["measured_cpu_two_processes"] = measure_multiprocess()
        print(report["measured_cpu_two_processes"])
    if path.is_file():  # keep earlier measurements
        old = json.loads(path.read_text())
        for key in ("measured_cpu", "measured_cpu_two_processes"):
            if key in old and key not in report:
                report[key] = old[key]
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

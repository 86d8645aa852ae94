"""One command that measures whatever accelerator JAX finds, in under 8 minutes, at the Qwen2.5-0.5B shape.

    python benchmarks/device_check.py            # GPU / TPU: writes benchmarks/device_check-<device>.json + a table
    python benchmarks/device_check.py --smoke    # the same code on CPU at tiny shapes (tests/test_benchmarks.py)

Random weights of the real Qwen2.5-0.5B config in bf16, on ONE device (the first; ``device_count`` says how many
the host has). Stages, each reusing a benchmark of this directory:

1. decode (``generate.measure_generate``): greedy decoding at batch 64 and 256, 128 prompt + 256 new tokens;
   tokens/s and the roofline fraction = (the fastest possible step) / (the measured step), where the fastest step
   is max(bytes / HBM bandwidth, 2 d batch / peak FLOP/s) and bytes = d params x 2 bytes (every weight once)
   + batch x C x 2 x layers x kv_heads x head_dim x 2 bytes (the KV cache at the mean context C = 128 + 128).
   Peaks by ``device_kind`` from ``common.DEVICE_PEAKS`` (data sheets: H100/H200/A100, TPU v4/v5e/v5p/v6e).
2. ES rollout (``es_step.measure_es``): N = 30 members x 8 prompts x 128 new tokens, full and low rank, against
   plain generation of the same 240 sequences: throughput as a fraction of plain generation, and the update;
   then ``es_costs.measure_update``: the update of N = 30 members against one read + write of the parameters
   (the memory-bound floor), and ``es_costs.measure_start``: ``esjax generate`` (and, on an accelerator, the demo's
   first iterations) as a cold and a warm process sharing a fresh compilation cache.
3. ES iteration at the paper's shape (N = 30, 200 prompts, 128 prompt + 1024 new tokens, full rank): run with
   ``T_run`` new tokens, the largest multiple of 64 up to 1024 that the time left allows (predicted from stage 2's
   measured throughput); time per iteration = rollout(T_run) x 1024 / T_run + update. Decode dominates and every
   step costs about the same, so this is linear in T (it slightly underestimates: the KV cache grows with T).
4. GRPO step at the same lengths (32 prompts x 8 completions, 128 + 1024 tokens; ``grpo_step.measure_grpo``; the
   loss in micro-batches of 8 rows, log-probs 32 positions at a time), with the same ``T_run`` rule and
   extrapolation for its rollout and train parts.

Time: ``benchmarks/scaling_model.py`` puts one H100 at 28 s per full-rank ES iteration and 3 s per GRPO step of
this shape at its roofline; at a quarter of the roofline, with ~30 s of compilation per program (about 9
programs), stages 1-2 take ~4 minutes and stages 3-4 share what is left of the 450 s budget (``--budget-s``), each
shortening ``T_run`` to fit. A watchdog writes the JSON gathered so far and exits (code 3) if the whole check
reaches the budget, so it ends within 8 minutes whatever the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from benchmarks.common import device_info, device_peaks, model_config  # noqa: E402
from benchmarks.es_costs import measure_start, measure_update  # noqa: E402
from benchmarks.es_step import measure_es  # noqa: E402
from benchmarks.generate import measure_generate  # noqa: E402
from benchmarks.grpo_step import measure_grpo  # noqa: E402
from esjax.models import init_params  # noqa: E402

ROOFLINE = ("roofline_step = max((d * dtype_bytes + batch * C * kv_bytes_per_token) / HBM_bytes_per_s, "
            "2 * d * batch / peak_flops); C = prompt_len + new_tokens / 2; "
            "kv_bytes_per_token = 2 * layers * kv_heads * head_dim * dtype_bytes; "
            "roofline_fraction = roofline_step / measured decode step")


@dataclasses.dataclass(frozen=True)
class Plan:
    shape: str
    decode_batches: tuple[int, ...]
    decode_prompt_len: int
    decode_new_tokens: int
    es_population: int
    es_prompts: int
    es_prompt_len: int
    es_new_tokens: int
    paper_prompts: int
    paper_prompt_len: int
    paper_new_tokens: int
    grpo_prompts: int
    grpo_generations: int
    token_step: int  # T_run is a multiple of this
    budget_s: float


FULL = Plan("qwen2.5-0.5b", (64, 256), 128, 256, 30, 8, 128, 128, 200, 128, 1024, 32, 8, 64, 450.0)
SMOKE = Plan("tiny", (4, 8), 8, 8, 4, 2, 8, 8, 4, 8, 32, 2, 4, 8, 300.0)


def tokens_that_fit(full_tokens: int, step: int, seconds_per_token: float, fixed_s: float, allowed_s: float) -> int:
    """The largest multiple of ``step`` (at least ``step``, at most ``full_tokens``) whose predicted time
    ``fixed_s + tokens * seconds_per_token`` fits in ``allowed_s``."""
    fit = int(max(0.0, allowed_s - fixed_s) / max(seconds_per_token, 1e-12))
    return max(step, min(full_tokens, fit // step * step))


class Check:
    """The result dict, the clock and the watchdog of one device check."""

    def __init__(self, plan: Plan, out: Path, smoke: bool):
        self.plan, self.out, self.start = plan, out, time.perf_counter()
        peaks = device_peaks()
        self.result = {"benchmark": "device_check", "smoke": smoke, "shape": plan.shape, "dtype": "bfloat16",
                       **device_info(), "devices_used": 1, "budget_s": plan.budget_s,
                       "peak_bf16_flops": peaks[0] if peaks else None,
                       "peak_hbm_bytes_per_s": peaks[1] if peaks else None, "roofline_formula": ROOFLINE,
                       "stage_seconds": {}, "complete": False}
        self.lock = threading.Lock()
        self.watchdog = threading.Timer(plan.budget_s, self._time_out)
        self.watchdog.daemon = True
        self.watchdog.start()

    def left(self) -> float:
        return self.plan.budget_s - (time.perf_counter() - self.start)

    def stage(self, name: str, fn, *args):
        """``fn(*args)``, its value recorded under ``name`` and the JSON rewritten."""
        t0 = time.perf_counter()
        self.result["running"] = name
        value = fn(*args)
        with self.lock:
            self.result[name] = value
            self.result["stage_seconds"][name] = round(time.perf_counter() - t0, 1)
            self.write()
        return value

    def write(self) -> None:
        self.result["total_s"] = round(time.perf_counter() - self.start, 1)
        self.out.write_text(json.dumps(self.result, indent=2) + "\n")

    def _time_out(self) -> None:
        with self.lock:
            self.result["timed_out_in"] = self.result.get("running")
            self.write()
        print(f"device check: budget of {self.plan.budget_s:.0f} s reached in stage {self.result.get('running')}; "
              f"partial results in {self.out}", file=sys.stderr, flush=True)
        os._exit(3)

    def finish(self) -> None:
        self.watchdog.cancel()
        with self.lock:
            self.result.pop("running", None)
            self.result["complete"] = True
            self.write()


def decode_sweep(config, params, plan: Plan) -> list[dict]:
    return [measure_generate(config, params, b, plan.decode_prompt_len, plan.decode_new_tokens, repeats=2,
                             memory=False)
            for b in plan.decode_batches]


def paper_es(config, params, plan: Plan, check: Check, es_ratio: dict) -> dict:
    """One full-rank ES iteration at the paper's shape, T_run new tokens, extrapolated to the full T."""
    n, b, full_t = plan.es_population, plan.paper_prompts, plan.paper_new_tokens
    measured = es_ratio["full"]
    per_token = n * b / measured["rollout_tokens_per_s"]  # seconds per new token of all N x B rows
    compile_s = (measured["rollout_compile_plus_first_s"] - measured["rollout_s"]
                 + measured["update_compile_plus_first_s"])
    # two rollouts (the first compiles) and this stage gets half of what is left (GRPO needs the rest)
    t_run = tokens_that_fit(full_t, plan.token_step, 2 * per_token, compile_s, 0.5 * check.left())
    run = measure_es(config, params, n, b, plan.paper_prompt_len, t_run, noises=("full",), repeats=1, plain=False)
    full = run["full"]
    return {"population": n, "prompts": b, "prompt_len": plan.paper_prompt_len, "new_tokens": full_t,
            "new_tokens_run": t_run, "fraction_run": round(t_run / full_t, 4), "measured": run,
            "rollout_s_extrapolated": round(full["rollout_s"] * full_t / t_run, 4),
            "iteration_s_extrapolated": round(full["rollout_s"] * full_t / t_run + full["update_s"], 4),
            "completions_per_s_extrapolated": round(n * b / (full["rollout_s"] * full_t / t_run + full["update_s"]), 1)}


def paper_grpo(config, params, plan: Plan, check: Check, decode: list[dict]) -> dict:
    """One GRPO step at the paper's lengths, T_run new tokens, extrapolated to the full T (``params`` donated)."""
    rows, full_t = plan.grpo_prompts * plan.grpo_generations, plan.paper_new_tokens
    widest = max(decode, key=lambda r: r["batch"])
    # rollout ~ rows / decode tokens/s per token; the train pass ~ as much again; compilation ~ 3 decode programs
    per_token = 2 * rows / widest["decode_tokens_per_s"]
    compile_s = 3 * (widest["compile_plus_first_run_s"] - widest["generate_s"])
    t_run = tokens_that_fit(full_t, plan.token_step, 2 * per_token, compile_s, check.left() - 15)
    run = measure_grpo(config, params, plan.grpo_prompts, plan.grpo_generations, plan.paper_prompt_len, t_run,
                       chunk=min(32, t_run), repeats=1, devices=jax.devices()[:1],
                       grad_accum_steps=max(1, rows // 8))  # 8 rows per micro-batch: activations fit 80 GB
    scale = full_t / t_run
    context = (plan.paper_prompt_len + full_t) / (plan.paper_prompt_len + t_run)
    step = run["rollout_s"] * scale + run["train_s"] * context
    return {"prompts": plan.grpo_prompts, "generations": plan.grpo_generations, "prompt_len": plan.paper_prompt_len,
            "new_tokens": full_t, "new_tokens_run": t_run, "fraction_run": round(t_run / full_t, 4),
            "measured": {k: v for k, v in run.items() if k != "final_metrics"},
            "step_s_extrapolated": round(step, 4), "completions_per_s_extrapolated": round(rows / step, 1),
            "extrapolation": "rollout x T / T_run + train x (P + T) / (P + T_run)"}


def print_table(r: dict) -> None:
    rows = [("device", f"{r['device_kind']} ({r['platform']}, {r['device_count']} on this host, 1 used), "
                       f"jax {r['jax']}")]
    for d in r.get("decode", []):
        roof = f", roofline fraction {d['roofline_fraction']:.2f}" if "roofline_fraction" in d else ""
        rows.append((f"decode batch {d['batch']}", f"{d['decode_tokens_per_s']:,.0f} tokens/s "
                                                    f"({d['decode_step_ms']:.2f} ms/step{roof})"))
    if "es_rollout" in r:
        e = r["es_rollout"]
        for noise in ("full", "lowrank"):
            label = f"ES N={e['population']} {'low' if noise == 'lowrank' else 'full'} rank"
            rows.append((label, f"{e[noise]['ratio_vs_plain_generation']:.2f} of "
                         f"plain generation ({e[noise]['rollout_tokens_per_s']:,.0f} tokens/s), update "
                         f"{e[noise]['update_s']:.3f} s"))
    if "es_update" in r:
        u = r["es_update"]
        rows.append((f"ES update N={u['population']}", f"{u['esjax_update']['median_s']:.3g} s = "
                     f"{u['update_over_read_write']:.1f}x one read + write of the parameters "
                     f"({u['read_write_params']['median_s']:.3g} s)"))
    if "start" in r:
        st = r["start"]
        if "demo_cold" in st:
            rows.append(("demo first iteration", f"cold {st['demo_cold']['first_iteration']['median_s']:.3g} s, "
                         f"warm {st['demo_warm']['first_iteration']['median_s']:.3g} s, steady "
                         f"{st['demo_warm']['steady_iteration']['median_s']:.3g} s"))
        rows.append(("esjax generate process", f"cold {st['generate_cold_process']['median_s']:.3g} s, "
                     f"warm {st['generate_warm_process']['median_s']:.3g} s"))
    if "es_paper" in r:
        p = r["es_paper"]
        rows.append((f"ES iteration N={p['population']}x{p['prompts']}x{p['new_tokens']}",
                     f"{p['iteration_s_extrapolated']:.3g} s (run at T={p['new_tokens_run']}, "
                     f"x{1 / p['fraction_run']:.1f})"))
    if "grpo_paper" in r:
        g = r["grpo_paper"]
        rows.append((f"GRPO step {g['prompts']}x{g['generations']}x{g['new_tokens']}",
                     f"{g['step_s_extrapolated']:.3g} s (run at T={g['new_tokens_run']}, "
                     f"x{1 / g['fraction_run']:.1f})"))
    rows.append(("total", f"{r.get('total_s', 0):.0f} s of {r['budget_s']:.0f} s budget"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks that the code runs")
    ap.add_argument("--budget-s", type=float, default=None, help="hard time limit of the whole check")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.smoke:
        jax.config.update("jax_platforms", "cpu")
    plan = SMOKE if args.smoke else FULL
    if args.budget_s:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    kind = jax.devices()[0].device_kind.replace(" ", "_").replace("/", "_")
    out = Path(args.out or Path(__file__).parent / f"device_check-{'smoke' if args.smoke else kind}.json")
    check = Check(plan, out, args.smoke)
    config = model_config(plan.shape)
    params = jax.jit(init_params, static_argnums=(0, 2))(config, jax.random.key(0), "bfloat16")
    check.result["params"] = config.num_params()
    decode = check.stage("decode", decode_sweep, config, params, plan)
    es_ratio = check.stage("es_rollout", measure_es, config, params, plan.es_population, plan.es_prompts,
                           plan.es_prompt_len, plan.es_new_tokens)
    check.stage("es_update", measure_update, config, params, plan.es_population, False, 3, False)
    check.stage("start", measure_start, 1, 4, not args.smoke)  # cold / warm compilation cache, separate processes
    check.stage("es_paper", paper_es, config, params, plan, check, es_ratio)
    check.stage("grpo_paper", paper_grpo, config, params, plan, check, decode)  # donates params: last
    check.finish()
    print_table(check.result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

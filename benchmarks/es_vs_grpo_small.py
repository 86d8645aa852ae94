"""ES vs GRPO at small scale: do the findings of *Matching Accuracy, Different Geometry* (Hoy, Wang, Pan,
arXiv 2604.01499) hold for the embedded tiny model on CPU?

    python benchmarks/es_vs_grpo_small.py                 # trains 3 runs (~15-20 min on 2 CPU cores), analyses
    python benchmarks/es_vs_grpo_small.py --es-iterations 10 --out /tmp/quick --runs-dir /tmp/quick-runs

ES (``configs/tiny_es_full.yaml``) and GRPO (``configs/tiny_grpo.yaml``) fine-tune the embedded 330k-parameter
Qwen2 on procedural Countdown with shortened, matched budgets of generated completions (ES: iterations x
population x prompts; GRPO: steps x prompts x group size). Then ``esjax.analysis`` measures both against the base:
accuracy on held-out problems, update norms and cosines, KL(model || base) on Countdown (on-task) and conciseness
(off-task) prompts, the linear path ES -> GRPO, and direction probes. Each finding of the paper is checked with a
stated numeric criterion and reported as holding or not. A supplementary ES run with ``--es-long-factor``
times the budget (default 3) is checked against the same GRPO model, since the paper compares at matched accuracy.
Runs go to ``--runs-dir`` (resumed if interrupted); the committed output (``report.json``, ``report.md``, PNGs)
goes to ``--out`` (default ``benchmarks/es_vs_grpo_small/``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from benchmarks.common import device_info  # noqa: E402
from esjax import tasks  # noqa: E402
from esjax.analysis import analyze as an  # noqa: E402
from esjax.analysis.report import write_report  # noqa: E402
from esjax.run.settings import load_settings  # noqa: E402
from esjax.run.loop import train  # noqa: E402
from esjax.run.stages import load_task  # noqa: E402

ON, OFF = "countdown_procedural", "conciseness"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--es-iterations", type=int, default=60)
    p.add_argument("--es-prompts", type=int, default=50, help="prompts every ES member sees per iteration")
    p.add_argument("--grpo-prompts", type=int, default=64, help="prompts per GRPO step (x group size 8)")
    p.add_argument("--es-long-factor", type=int, default=3,
                   help="also train ES with this many times the budget (supplement; 0: skip)")
    p.add_argument("--limit", type=int, default=500, help="held-out problems for accuracy, KL and paths")
    p.add_argument("--kl-samples", type=int, default=4)
    p.add_argument("--grid", default="-0.2:1.2:15")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "es_vs_grpo_small"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix("")))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def budgets(args) -> dict[str, dict]:
    """Overrides of the two tiny configs with matched numbers of generated completions."""
    es = load_settings(ROOT / "configs" / "tiny_es_full.yaml")
    grpo = load_settings(ROOT / "configs" / "tiny_grpo.yaml")
    es_samples = args.es_iterations * es.es.population_size * args.es_prompts
    group = grpo.grpo.num_generations
    steps = max(1, round(es_samples / (args.grpo_prompts * group)))
    common = ["train.eval_every=0", "train.checkpoint_every=20", "task.eval_limit=500"]
    es_run = lambda factor: {"config": "configs/tiny_es_full.yaml", "samples": factor * es_samples,  # noqa: E731
                             "overrides": common + [f"train.iterations={factor * args.es_iterations}",
                                                    f"train.prompts_per_iteration={args.es_prompts}"]}
    plan = {"es": es_run(1),
            "grpo": {"config": "configs/tiny_grpo.yaml", "samples": steps * args.grpo_prompts * group,
                     "overrides": common + [f"train.iterations={steps}",
                                            f"train.prompts_per_iteration={args.grpo_prompts}"]}}
    if args.es_long_factor > 0:
        plan[f"es_{args.es_long_factor}x"] = es_run(args.es_long_factor)
    return plan


def train_runs(args, plan) -> dict[str, dict]:
    out = {}
    for method, spec in plan.items():
        run_dir = Path(args.runs_dir) / method
        settings = load_settings(ROOT / spec["config"], spec["overrides"])
        summary = train(settings, run_dir, resume=(run_dir / "config.yaml").is_file(), progress=not args.no_progress)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        out[method] = {**spec, "run_dir": str(run_dir),
                       "train_seconds": round(sum(r.get("seconds", 0.0) for r in records), 1),  # training steps
                       "test_accuracy_before": summary.get("test_accuracy_before"),
                       "test_accuracy_after": summary.get("test_accuracy_after"), "final_model": summary["final_model"]}
        print(f"{method}: {summary.get('test_accuracy_before')} -> {summary.get('test_accuracy_after')} "
              f"({out[method]['train_seconds']} s)", flush=True)
    return out


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def findings(report: dict, es: str = "es", grpo: str = "grpo") -> list[dict]:
    """The paper's five findings for models ``es`` and ``grpo``: the numbers measured here, a criterion, a verdict."""
    acc, geo, kl = report["accuracy"], report["geometry"], report["kl"]
    n = acc[es][ON]["num_examples"]
    a_es, a_grpo, a_base = (acc[m][ON]["accuracy"] for m in (es, grpo, "base"))
    se_diff = math.hypot(_se(a_es, n), _se(a_grpo, n))
    norm_es, norm_grpo = geo["norms"][es]["global"], geo["norms"][grpo]["global"]
    ratio = norm_es / norm_grpo
    layer_ratios = [geo["norms"][es]["per_layer"][k] / v for k, v in geo["norms"][grpo]["per_layer"].items() if v]
    kl_es, kl_grpo = kl[es][OFF], kl[grpo][OFF]
    on_es, on_grpo = kl[es][ON]["exact"], kl[grpo][ON]["exact"]
    kl_se = math.hypot(kl_es["exact_stderr"], kl_grpo["exact_stderr"])
    cos = geo["cosine"][f"{es} vs {grpo}"]["global"]
    cos_layers = [v for v in geo["cosine"][f"{es} vs {grpo}"]["per_layer"].values() if v is not None]
    path = report["interpolation"][f"{es}->{grpo}"][ON]
    mid = [p["accuracy"] for p in path["points"] if 0 < p["x"] < 1]
    tol = max(2 * _se(max(a_es, a_grpo), n), 0.02)
    verdict = lambda ok, partly=False: "holds" if ok else ("partly" if partly else "does not hold")  # noqa: E731
    return [
        {"finding": "similar accuracy", "paper": "ES matches GRPO's accuracy on each task",
         "measured": f"test accuracy ES {a_es:.3f} vs GRPO {a_grpo:.3f} (base {a_base:.3f}; n={n}); "
                     f"difference {a_es - a_grpo:+.3f}, 2 SE = {2 * se_diff:.3f}",
         "criterion": "abs(ES - GRPO) <= 2 standard errors of the difference",
         "verdict": verdict(abs(a_es - a_grpo) <= 2 * se_diff),
         "values": {"es": a_es, "grpo": a_grpo, "base": a_base, "n": n, "se_diff": se_diff}},
        {"finding": "ES update norm much larger", "paper": "‖dθ_ES‖ about 90x ‖dθ_GRPO‖",
         "measured": f"‖dθ_ES‖ = {norm_es:.3g}, ‖dθ_GRPO‖ = {norm_grpo:.3g}: ratio {ratio:.2f}x "
                     f"(per layer {min(layer_ratios):.2f}x to {max(layer_ratios):.2f}x)",
         "criterion": "ratio >= 10 (partly: > 1)", "verdict": verdict(ratio >= 10, ratio > 1),
         "values": {"es": norm_es, "grpo": norm_grpo, "ratio": ratio}},
        {"finding": "ES off-task KL larger", "paper": "ES drifts more from the base on off-task prompts",
         "measured": f"exact KL per token on {OFF} prompts: ES {kl_es['exact']:.4g} vs GRPO {kl_grpo['exact']:.4g} "
                     f"(ratio {kl_es['exact'] / max(kl_grpo['exact'], 1e-30):.2f}x; k3 {kl_es['k3']:.4g} vs "
                     f"{kl_grpo['k3']:.4g}); on-task ({ON}) ES {on_es:.4g} vs GRPO {on_grpo:.4g}; off-task / "
                     f"on-task: ES {kl_es['exact'] / on_es:.1f}x, GRPO {kl_grpo['exact'] / on_grpo:.1f}x",
         "criterion": "ES - GRPO > 2 standard errors (exact KL)",
         "verdict": verdict(kl_es["exact"] - kl_grpo["exact"] > 2 * kl_se),
         "values": {"es": kl_es["exact"], "grpo": kl_grpo["exact"], "se_diff": kl_se, "on_task_es": on_es,
                    "on_task_grpo": on_grpo}},
        {"finding": "near-orthogonal updates", "paper": "cos(dθ_ES, dθ_GRPO) close to 0",
         "measured": f"global cosine {cos:.4f} (per layer {min(cos_layers):.3f} to {max(cos_layers):.3f}); two "
                     f"random directions in d dims: about +-{1 / math.sqrt(report['geometry_d']):.4f}",
         "criterion": "abs(cos) < 0.1", "verdict": verdict(abs(cos) < 0.1), "values": {"cosine": cos}},
        {"finding": "no barrier on the linear path", "paper": "ES and GRPO solutions are linearly connected",
         "measured": f"accuracy along (1 - a) ES + a GRPO: ES {a_es:.3f} -> GRPO {a_grpo:.3f}; lowest interior "
                     f"point {min(mid):.3f}; barrier (largest drop below the straight line) {path['barrier']:.3f}",
         "criterion": f"barrier <= max(2 SE, 0.02) = {tol:.3f}", "verdict": verdict(path["barrier"] <= tol),
         "values": {"barrier": path["barrier"], "min_interior": min(mid), "tolerance": tol}},
    ]


def _findings_table(items: list[dict]) -> list[str]:
    return ["| finding | paper | measured here | criterion | verdict |", "|---|---|---|---|---|"] + [
        f"| {f['finding']} | {f['paper']} | {f['measured']} | {f['criterion']} | **{f['verdict']}** |" for f in items]


def findings_markdown(report: dict, runs: dict, wall: float) -> str:
    lines = ["## Findings of ESvsGRPO (arXiv 2604.01499) at this scale", "",
             f"ES and GRPO with the same budget of generated completions ({runs['es']['samples']:,} vs "
             f"{runs['grpo']['samples']:,}):", ""] + _findings_table(report["findings"])
    for name, items in report.get("findings_supplement", {}).items():
        lines += ["", f"Supplement: **{name}**, ES with {runs[name]['samples']:,} completions "
                      f"({runs[name]['samples'] / runs['grpo']['samples']:.1f}x GRPO's budget), against the same GRPO "
                      "model:", ""] + _findings_table(items)
    theory = report["geometry"].get("theory", {}).get("es")
    lines += ["", "### Setup", "",
              "Embedded tiny Qwen2 (330k parameters) on procedural Countdown (3 numbers in 1..30, short prompts); "
              "off-task prompts: the conciseness task's test split. Matched budgets of generated completions:", ""]
    for m, r in runs.items():
        lines.append(f"- **{m}**: `{r['config']}` with `{' '.join(r['overrides'])}` -> {r['samples']:,} completions, "
                     f"{r['train_seconds']:.0f} s of training steps; test accuracy during training (500 problems) "
                     f"{r['test_accuracy_before']:.3f} -> {r['test_accuracy_after']:.3f}")
    if theory:
        lines += ["", f"ES displacement: measured {theory['actual']:.3g} vs alpha sqrt(dT/N) = {theory['theory']:.3g} "
                      f"(alpha {theory['alpha']}, d {theory['trained_params']:,}, T {theory['iterations']}, "
                      f"N {theory['population']}; ratio {theory['ratio']:.2f}; antithetic pairs with opposite "
                      f"fitness can double the per-step variance)."]
    train_minutes = sum(r["train_seconds"] for r in runs.values()) / 60
    lines += ["", f"Device: {report['device']['platform']} ({report['device']['cpu']}); training steps "
                  f"{train_minutes:.1f} min in all, analysis {wall / 60:.1f} min. "
                  "Verdicts follow from the numbers by the stated criteria. Reproduce: "
                  "`python benchmarks/es_vs_grpo_small.py` (runs in `runs/es_vs_grpo_small/` are resumed, not redone).",
              ""]
    return "\n".join(lines)


def _relative(obj):
    """The report with paths inside the repository written relative to it (the output is committed)."""
    if isinstance(obj, dict):
        return {k: _relative(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_relative(v) for v in obj]
    return obj.removeprefix(f"{ROOT}/") if isinstance(obj, str) else obj


def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = train_runs(args, budgets(args))
    start = time.perf_counter()
    base = an.load(an.BASE, "embedded")
    order = sorted(runs, key=lambda m: m == "grpo")  # ES models first: pairs are "<es> vs grpo", "<es>->grpo"
    models = {m: an.load(m, runs[m]["final_model"]) for m in order}
    run_settings = load_settings(Path(runs["es"]["run_dir"]) / "config.yaml")
    task_set = {ON: load_task(run_settings.task_stages()[0]), OFF: tasks.get(OFF)}
    options = an.Options(limit=args.limit, batch_size=500, kl_samples=args.kl_samples,
                         grid=tuple(an.interpolation.parse_grid(args.grid, ())), progress=not args.no_progress)
    report = an.Analysis(base, models, task_set, options).run()
    report["geometry_d"] = sum(int(x.size) for x in jax.tree.leaves(base.params))
    report["device"] = device_info()
    report["runs"] = runs
    report["findings"] = findings(report)
    report["findings_supplement"] = {name: findings(report, name) for name in runs if name not in ("es", "grpo")}
    report = _relative(report)
    wall = time.perf_counter() - start
    report["analysis_seconds"] = round(wall, 1)
    write_report(report, args.out, preface=findings_markdown(report, runs, wall),
                 title="ES vs GRPO at small scale (embedded tiny model, CPU)")
    for name, items in {"es": report["findings"], **report["findings_supplement"]}.items():
        for f in items:
            print(f"[{name}] {f['finding']}: {f['verdict']} -- {f['measured']}")
    print(f"wrote {args.out}/report.md")
    return report


if __name__ == "__main__":
    main()

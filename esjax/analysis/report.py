"""Writing an analysis report: ``report.json`` (everything), PNG plots, and a short ``report.md`` embedding them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from esjax.run.plots import pyplot, plot_matrix


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows] + [""]


def _grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str, title: str,
                  path: Path, log: bool = False) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(groups) * max(1, len(series)) + 2), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in values], width,
               label=label)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(curves: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, title: str, ax,
           marks: dict[str, float] | None = None) -> None:
    for label, (x, y) in curves.items():
        ax.plot(x, y, marker="o", ms=3, ls="--" if label.startswith("random(") else "-", label=label)
    for label, x in (marks or {}).items():
        ax.axvline(x, color="grey", lw=0.6, ls=":")
        ax.text(x, ax.get_ylim()[1], label, rotation=90, va="top", ha="right", fontsize=7, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plots(report: dict[str, Any], out_dir: Path) -> dict[str, list[Path]]:
    """Every plot the report's sections allow, by section."""
    plt = pyplot()
    out: dict[str, list[Path]] = {}
    if geo := report.get("geometry"):
        norms = geo["norms"]
        layers = list(dict.fromkeys(k for n in norms.values() for k in n["per_layer"]))
        modules = list(dict.fromkeys(k for n in norms.values() for k in n["per_module"]))
        out["geometry"] = [
            _grouped_bars(layers, {m: [n["per_layer"].get(k) for k in layers] for m, n in norms.items()},
                          "||delta|| (L2)", "update norm per layer", out_dir / "norms_per_layer.png", log=True),
            _grouped_bars(modules, {m: [n["per_module"].get(k) for k in modules] for m, n in norms.items()},
                          "||delta|| (L2)", "update norm per module type", out_dir / "norms_per_module.png", log=True)]
        if geo["cosine"]:
            c_layers = list(dict.fromkeys(k for c in geo["cosine"].values() for k in c["per_layer"]))
            out["geometry"].append(_grouped_bars(
                c_layers, {f"{p} (global {_fmt(c['global'], '.3f')})": [c["per_layer"].get(k) for k in c_layers]
                           for p, c in geo["cosine"].items()},
                "cosine", "cosine similarity of updates per layer", out_dir / "cosine_per_layer.png"))
        if energy := geo.get("energy"):
            k = energy[next(iter(energy))]["ks"][0]
            mods = list(dict.fromkeys(m for e in energy.values() for m in e["per_module"]))
            out["geometry"].append(_grouped_bars(
                mods, {n: [e["per_module"].get(m, {}).get(f"top{k}") for m in mods] for n, e in energy.items()},
                f"energy fraction in top-{k} singular directions", f"low-rankness of the update (top-{k})",
                out_dir / "energy_topk.png"))
        if geo.get("theory"):
            fig, ax = plt.subplots(figsize=(6, 4))
            for name, th in geo["theory"].items():
                t = np.linspace(0, max(p["iterations"] for p in th["points"]), 100)
                curve = [th["alpha"] * math.sqrt(th["trained_params"] * x / th["population"]) for x in t]
                line = ax.plot(t, curve, ls="--", label=f"{name}: alpha sqrt(d T / N)")[0]
                pts = [p for p in th["points"] if p["norm"] is not None] or [{"iterations": th["iterations"],
                                                                             "norm": th["actual"]}]
                ax.plot([p["iterations"] for p in pts], [p["norm"] for p in pts], "o", color=line.get_color(),
                        label=f"{name}: measured")
            ax.set_xlabel("ES iterations T")
            ax.set_ylabel("||theta_T - theta_0||")
            ax.set_title("ES displacement against theory")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            out["geometry"].append(_save(fig, out_dir / "displacement.png"))
    if kl := report.get("kl"):
        tasks = list(next(iter(kl.values())))
        out["kl"] = [plot_matrix(np.array([[kl[m][t]["exact"] for t in tasks] for m in kl]), list(kl), tasks,
                                 "KL(model || base) per token (exact)", out_dir / "kl_exact.png", fmt="{:.3g}")]
    if drift := report.get("drift"):
        out["drift"] = [plot_matrix(np.array(d["exact"]), [f"after {s}" for s in d["stages"]], d["tasks"],
                                    f"{run}: KL(stage k || stage k-1) per token", out_dir / f"drift_{run}.png",
                                    fmt="{:.3g}") for run, d in drift.items()]
    if interp := report.get("interpolation"):
        out["interpolation"] = []
        for task in dict.fromkeys(t for v in interp.values() for t in v):
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            for ax, key in zip(axes, ("accuracy", "mean_reward")):
                curves = {p: ([q["x"] for q in v[task]["points"]], [q[key] for q in v[task]["points"]])
                          for p, v in interp.items() if task in v}
                _lines(curves, "a  (theta = (1 - a) A + a B)", key, f"{task}: linear paths A->B", ax)
                ax.axvspan(0, 1, color="grey", alpha=0.06)
            out["interpolation"].append(_save(fig, out_dir / f"interp_{task}.png"))
    if probes := report.get("probes"):
        out["probes"] = []
        for task, curves in probes["tasks"].items():
            fig, ax = plt.subplots(figsize=(6.5, 4))
            _lines({label: ([q["x"] for q in pts], [q["accuracy"] for q in pts]) for label, pts in curves.items()},
                   "t (distance from the base along a unit direction)", "accuracy", f"{task}: direction probes", ax,
                   {f"||delta {n}||": v for n, v in probes["update_norms"].items()})
            out["probes"].append(_save(fig, out_dir / f"probes_{task}.png"))
    return out


def markdown(report: dict[str, Any], images: dict[str, list[Path]], preface: str = "",
             title: str = "esjax analysis") -> str:
    """A short markdown summary of ``report`` embedding ``images`` (paths relative to the report)."""
    img = lambda section: [f"![{p.stem}]({p.name})" for p in images.get(section, [])] + [""]  # noqa: E731
    lines = [f"# {title}", "", preface.strip(), "" if preface else None,
             f"Base: `{report['base']['path']}`; split `{report['settings']['split']}`, "
             f"greedy evaluation, {report['settings']['max_new_tokens']} new tokens.", ""]
    lines += _table(["model", "path", "method", "trained tasks"],
                    [[n, f"`{m['path']}`", m["method"], ", ".join(m["trained_tasks"] or []) or None]
                     for n, m in report["models"].items()])
    if geo := report.get("geometry"):
        lines += ["## Update geometry", ""]
        lines += _table(["model", "‖delta‖", *(f"top-{k} energy" for k in geo.get("energy", {}).get(
            next(iter(geo["norms"])), {}).get("ks", []))],
            [[n, v["global"], *(geo.get("energy", {}).get(n, {}).get("global", {}).values())]
             for n, v in geo["norms"].items()])
        if geo["cosine"]:
            lines += _table(["pair", "cosine (global)"], [[p, c["global"]] for p, c in geo["cosine"].items()])
        if geo.get("theory"):
            lines += _table(["model", "alpha", "N", "T", "d", "measured", "alpha sqrt(dT/N)", "ratio"],
                            [[n, t["alpha"], t["population"], t["iterations"], t["trained_params"], t["actual"],
                              t["theory"], t["ratio"]] for n, t in geo["theory"].items()])
        lines += img("geometry")
    if acc := report.get("accuracy"):
        tasks = list(next(iter(acc.values())))
        lines += ["## Accuracy (greedy)", ""]
        lines += _table(["model", *tasks], [[n, *(f"{v[t]['accuracy']:.3f} (r {v[t]['mean_reward']:.3g})"
                                                  for t in tasks)] for n, v in acc.items()])
    if kl := report.get("kl"):
        tasks = list(next(iter(kl.values())))
        lines += ["## KL(model || base) per completion token", "",
                  "exact / k1 / k3 (mean over completion tokens; k3 +- standard error).", ""]
        where = {True: " (on-task)", False: " (off-task)", None: ""}
        lines += _table(["model", *tasks], [[n, *(f"{v[t]['exact']:.4g} / {v[t]['k1']:.4g} / {v[t]['k3']:.4g} "
                                                  f"+- {v[t]['k3_stderr']:.2g}{where[v[t]['on_task']]}"
                                                  for t in tasks)] for n, v in kl.items()])
        lines += img("kl")
    if drift := report.get("drift"):
        lines += ["## Incremental drift in continual runs (exact KL(stage k || stage k-1))", ""]
        for run, d in drift.items():
            lines += [f"`{d['run_dir']}`", ""] + _table(["after", *d["tasks"]],
                                                         [[s, *row] for s, row in zip(d["stages"], d["exact"])])
        lines += img("drift")
    if interp := report.get("interpolation"):
        lines += ["## Linear interpolation", "", "Barrier: the largest drop of accuracy below the straight line "
                  "between the endpoints, over interior grid points.", ""]
        lines += _table(["path", "task", "acc(a=0)", "acc(a=1)", "min acc in [0,1]", "barrier"],
                        [[p, t, *_endpoints(v["points"]), v["barrier"]] for p, tv in interp.items()
                         for t, v in tv.items()])
        lines += img("interpolation")
    if report.get("probes"):
        lines += ["## Direction probes", "", "theta_0 + t u for each unit update direction u and a random unit "
                  "direction with the same per-leaf norm profile; t in parameter-norm units.", ""]
        lines += img("probes")
    lines += [f"Timing (s): {', '.join(f'{k} {v}' for k, v in report.get('timing_s', {}).items())}", ""]
    return "\n".join(line for line in lines if line is not None)


def _endpoints(points: Sequence[dict[str, float]]) -> list[float | None]:
    by_x = {p["x"]: p["accuracy"] for p in points}
    inner = [v for x, v in by_x.items() if 0 <= x <= 1]
    return [by_x.get(0.0), by_x.get(1.0), min(inner) if inner else None]


def write_report(report: dict[str, Any], out_dir: str | Path, preface: str = "", title: str = "esjax analysis"
                 ) -> dict[str, Path]:
    """Write ``report.json``, the PNGs and ``report.md`` (``title``, then ``preface`` markdown) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = plots(report, out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
    (out_dir / "report.md").write_text(markdown(report, images, preface, title))
    return {"json": out_dir / "report.json", "markdown": out_dir / "report.md",
            **{p.stem: p for ps in images.values() for p in ps}}


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (Path, np.ndarray)):
        return str(x) if isinstance(x, Path) else x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")

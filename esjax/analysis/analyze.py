"""The analysis of a base model and fine-tuned models: one function that runs every section and returns a report.

    report = analyze("embedded", {"es": "runs/es/stages/0-countdown_procedural", "grpo": "runs/grpo"},
                     ["countdown_procedural", "conciseness"], "out/analysis")

Sections (``Options.skip`` drops any): ``geometry`` (update norms, cosines, ES displacement against theory),
``svd`` (top-k energy of each matrix update), ``accuracy`` (greedy, every model on every task), ``kl``
(KL(model || base) on every task's prompts), ``drift`` (continual runs: KL(stage k || stage k-1) per task),
``interp`` (linear paths base -> model and model -> model), ``probes`` (base + t u along unit update directions
and random directions with the same per-leaf norm profile).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from esjax.common.errors import InputError
from esjax.analysis import SECTIONS, geometry, interpolation, kl, runs
from esjax.run.evaluate import EvalResult, PromptSet, evaluate
from esjax.generation.inference import sampling_for
from esjax.models import load_model

BASE = "base"


@dataclasses.dataclass(frozen=True)
class Options:
    """What to measure and how much. ``max_new_tokens`` None: the runs' evaluation setting, else 128.
    ``probe_grid``: distances t as fractions of the largest update norm."""

    split: str = "test"
    limit: int | None = 200
    max_new_tokens: int | None = None
    batch_size: int = 256
    grid: tuple[float, ...] = tuple(round(float(a), 10) for a in np.linspace(0.0, 1.0, 11))
    probe_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
    kl_samples: int = 1
    kl_batch_size: int = 64
    kl_chunk: int = 64
    topk: tuple[int, ...] = (1, 4, 16)
    seed: int = 0
    skip: frozenset[str] = frozenset()
    progress: bool = False

    def __post_init__(self):
        unknown = sorted(set(self.skip) - set(SECTIONS))
        if unknown:
            raise InputError(f"--skip {','.join(unknown)}: unknown section (known: {', '.join(SECTIONS)})")
        if self.limit is not None and self.limit < 1 or self.kl_samples < 1 or self.batch_size < 1:
            raise InputError("--limit, --kl-samples and --batch-size must be >= 1")

    def runs(self, section: str) -> bool:
        return section not in self.skip


@dataclasses.dataclass
class Model:
    name: str
    path: Path
    config: Any
    params: Any
    tokenizer_dir: Path | None
    run: runs.RunInfo | None


def load(name: str, path: str | Path) -> Model:
    """Load a model path (any form :func:`esjax.analysis.runs.model_dir` accepts) with its run, if any."""
    directory = runs.model_dir(path)
    loaded = load_model(directory)
    return Model(name, directory, loaded.config, loaded.params, loaded.tokenizer_dir, runs.find_run(directory))


def _check_compatible(base: Model, model: Model) -> None:
    shapes = lambda p: jax.tree.map(lambda x: tuple(x.shape), p)  # noqa: E731
    same_tree = jax.tree.structure(base.params) == jax.tree.structure(model.params)
    if not same_tree or shapes(base.params) != shapes(model.params):
        raise InputError(f"model {model.name!r} ({model.path}) does not have the base model's architecture")


def _bar(options: Options, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not options.progress, leave=False, dynamic_ncols=True)


def _eval_summary(result: EvalResult) -> dict[str, float]:
    return {"accuracy": result.accuracy, "mean_reward": result.mean_reward, "num_examples": result.num_examples}


class Analysis:
    """State shared by the sections: models, tokenizer, tasks, prompt sets, sampling, cached evaluations."""

    def __init__(self, base: Model, models: Mapping[str, Model], tasks: Mapping[str, Any], options: Options,
                 es_hparams: Mapping[str, tuple[float, int, int]] | None = None):
        if not models:
            raise InputError("give at least one --model NAME=PATH")
        if BASE in models:
            raise InputError(f"--model: the name {BASE!r} is reserved for --base")
        for model in models.values():
            _check_compatible(base, model)
        unknown = sorted(set(es_hparams or {}) - set(models))
        if unknown:
            raise InputError(f"--es-hparams {unknown[0]}: no --model of that name")
        self.base, self.models, self.tasks, self.options = base, dict(models), dict(tasks), options
        self.es_hparams = dict(es_hparams or {})
        tok_dir = next((m.tokenizer_dir for m in (base, *models.values()) if m.tokenizer_dir is not None), None)
        if tok_dir is None:
            raise InputError(f"{base.path}: no tokenizer files next to the base model or any model")
        from esjax.generation.tokenizer import load_tokenizer
        self.tokenizer = load_tokenizer(tok_dir)
        self.config = base.config
        self.sampling = sampling_for(self.config, self.tokenizer, max_new_tokens=self._max_new_tokens())
        self.prompts = {name: PromptSet(task, self.tokenizer, task.split(options.split)[: options.limit],
                                        self.sampling.pad_token_id) for name, task in self.tasks.items()}
        self.evals: dict[tuple[str, str], EvalResult] = {}
        self._stage_params: dict[Path, Any] = {}

    def _max_new_tokens(self) -> int:
        if self.options.max_new_tokens is not None:
            return self.options.max_new_tokens
        for model in self.models.values():
            if model.run is not None:
                s = model.run.settings.sampling
                return s.eval_max_new_tokens or s.max_new_tokens
        return 128

    def params(self, name: str) -> Any:
        return self.base.params if name == BASE else self.models[name].params

    def stage_params(self, path: Path) -> Any:
        """Params of a run's stage directory (the loaded model's own when it is one of them)."""
        path = Path(path).resolve()
        for model in (self.base, *self.models.values()):
            if Path(model.path).resolve() == path:
                return model.params
        if path not in self._stage_params:
            self._stage_params[path] = load_model(path).params
        return self._stage_params[path]

    def evaluate(self, name: str, task: str) -> EvalResult:
        if (name, task) not in self.evals:
            self.evals[name, task] = evaluate(self.config, self.params(name), self.tokenizer, self.tasks[task],
                                              self.prompts[task], self.sampling, self.options.batch_size)
        return self.evals[name, task]

    # ---------------------------------------------------------------------------------------------- sections
    def geometry(self) -> dict[str, Any]:
        params = {name: m.params for name, m in self.models.items()}
        out = geometry.update_geometry(self.base.params, params, self.options.topk, spectra=self.options.runs("svd"))
        out["theory"] = {}
        for name, model in self.models.items():
            inputs = runs.es_theory_inputs(model.run, model.params, self.es_hparams.get(name))
            if inputs is None:
                continue
            actual = out["norms"][name]["global"]
            theory = geometry.es_theory_norm(inputs["alpha"], inputs["trained_params"], inputs["iterations"],
                                             inputs["population"])
            out["theory"][name] = {**inputs, "actual": actual, "theory": theory, "ratio": actual / theory,
                                   "points": self._theory_points(model, inputs)}
        return out

    def _theory_points(self, model: Model, inputs: dict[str, Any]) -> list[dict[str, float]]:
        """Actual displacement at the end of every stage of the model's run (one point for a single stage)."""
        run = model.run
        if run is None or inputs["source"] == "flags":
            return [{"iterations": inputs["iterations"], "norm": None}]
        points = []
        for k in range(run.stage + 1):
            sq = geometry.leaf_sq_norms(self.base.params, self.stage_params(run.stage_dirs[k]))
            points.append({"iterations": run.iterations_through(k), "norm": geometry.norm_stats(sq)["global"]})
        return points

    def accuracy(self) -> dict[str, Any]:
        names = [BASE, *self.models]
        with _bar(self.options, len(names) * len(self.tasks), "accuracy") as bar:
            out = {}
            for name in names:
                out[name] = {}
                for task in self.tasks:
                    out[name][task] = _eval_summary(self.evaluate(name, task))
                    bar.update(1)
        return out

    def kl(self) -> dict[str, Any]:
        rows = sum(len(p) for p in self.prompts.values()) * self.options.kl_samples * len(self.models)
        out: dict[str, Any] = {}
        with _bar(self.options, rows, "kl") as bar:
            for name, model in self.models.items():
                trained = set(model.run.trained_tasks()) if model.run is not None else None
                out[name] = {task: {**self._kl(model.params, self.base.params, task, name, bar).summary(),
                                    "on_task": None if trained is None else task in trained} for task in self.tasks}
        return out

    def _kl(self, ft: Any, base: Any, task: str, label: str, bar: Any) -> kl.KLResult:
        """KL(ft || base) on ``task``'s prompts; the samples depend on (seed, label, task) only."""
        salt = zlib.crc32(f"{label}\0{task}".encode()) & 0x7FFFFFFF
        key = jax.random.fold_in(jax.random.key(self.options.seed), salt)
        return kl.kl_drift(self.config, ft, base, self.prompts[task], self.sampling, key,
                           samples_per_prompt=self.options.kl_samples, batch_size=self.options.kl_batch_size,
                           chunk_size=self.options.kl_chunk, progress=bar)

    def drift(self) -> dict[str, Any]:
        """For every continual run among the models: rows "after stage k", columns tasks,
        KL(stage k || stage k-1) (stage -1: the run's base model)."""
        continual: dict[Path, runs.RunInfo] = {}
        for model in self.models.values():
            if model.run is not None and len(model.run.stage_settings()) > 1:
                prev = continual.get(model.run.run_dir)
                continual[model.run.run_dir] = model.run if prev is None or model.run.stage > prev.stage else prev
        out = {}
        for run_dir, run in continual.items():
            try:
                run_base = self.stage_params(runs.model_dir(run.settings.model.path))
            except FileNotFoundError:  # the run's model path was relative to another directory
                run_base = self.base.params
            chain = [run_base] + [self.stage_params(run.stage_dirs[k]) for k in range(run.stage + 1)]
            labels = [d.name for d in run.stage_dirs[: run.stage + 1]]
            matrices: dict[str, list[list[float]]] = {"exact": [], "k1": [], "k3": []}
            total = sum(len(p) for p in self.prompts.values()) * self.options.kl_samples * len(labels)
            with _bar(self.options, total, f"drift {run_dir.name}") as bar:
                for k in range(len(labels)):
                    results = [self._kl(chain[k + 1], chain[k], task, f"{run_dir}#{k}", bar) for task in self.tasks]
                    for est in matrices:
                        matrices[est].append([getattr(res, est) for res in results])
            out[run_dir.name] = {"run_dir": str(run_dir), "stages": labels, "tasks": list(self.tasks), **matrices}
        return out

    def pairs(self) -> list[tuple[str, str]]:
        names = list(self.models)
        return [(BASE, n) for n in names] + [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]

    def interp(self) -> dict[str, Any]:
        grid, pairs = self.options.grid, self.pairs()
        out: dict[str, Any] = {}
        with _bar(self.options, len(grid) * len(pairs) * len(self.tasks), "interpolation") as bar:
            for a, b in pairs:
                out[f"{a}->{b}"] = {}
                for task in self.tasks:
                    known = {x: self.evals[n, task] for x, n in ((0.0, a), (1.0, b)) if (n, task) in self.evals}
                    points = interpolation.curve(
                        self.config, self.tokenizer, self.tasks[task], self.prompts[task], self.sampling,
                        lambda x, a=a, b=b: interpolation.lerp(self.params(a), self.params(b), x), grid,
                        self.options.batch_size, known, bar)
                    out[f"{a}->{b}"][task] = {"points": points, "barrier": interpolation.barrier(points),
                                             "barrier_reward": interpolation.barrier(points, "mean_reward")}
        return out

    def probes(self) -> dict[str, Any]:
        norms = {n: float(np.sqrt(sum(float(v) for v in jax.tree.leaves(geometry.leaf_sq_norms(self.base.params,
                                                                                             m.params)))))
                 for n, m in self.models.items()}
        scale = max(norms.values())
        ts = [round(f * scale, 10) for f in self.options.probe_grid]
        directions = {}
        for name, model in self.models.items():
            key = jax.random.fold_in(jax.random.key(self.options.seed), zlib.crc32(f"random\0{name}".encode()) >> 1)
            directions[name] = interpolation.unit_direction(self.base.params, model.params)
            directions[f"random({name})"] = interpolation.random_unit_direction(key, self.base.params, model.params)
        out: dict[str, Any] = {"t": ts, "fractions": list(self.options.probe_grid), "update_norms": norms, "tasks": {}}
        with _bar(self.options, len(ts) * len(directions) * len(self.tasks), "probes") as bar:
            for task in self.tasks:
                known = {0.0: self.evals[BASE, task]} if (BASE, task) in self.evals else {}
                out["tasks"][task] = {
                    label: interpolation.curve(
                        self.config, self.tokenizer, self.tasks[task], self.prompts[task], self.sampling,
                        lambda t, u=u: interpolation.along(self.base.params, u, t), ts, self.options.batch_size,
                        known, bar)
                    for label, u in directions.items()}
        return out

    def run(self) -> dict[str, Any]:
        """Every section not skipped, in order; returns the report dict (JSON-ready)."""
        report: dict[str, Any] = {
            "base": {"path": str(self.base.path)},
            "models": {n: {"path": str(m.path), "method": m.run.method if m.run else None,
                           "run_dir": str(m.run.run_dir) if m.run else None,
                           "stage": m.run.stage if m.run else None,
                           "trained_tasks": m.run.trained_tasks() if m.run else None} for n, m in self.models.items()},
            "tasks": {n: {"split": self.options.split, "num_prompts": len(self.prompts[n])} for n in self.tasks},
            "settings": {**{k: (sorted(v) if isinstance(v, frozenset) else v)
                            for k, v in dataclasses.asdict(self.options).items() if k != "progress"},
                         "max_new_tokens": self.sampling.max_new_tokens},
            "timing_s": {},
        }
        order = [("geometry", "geometry"), ("accuracy", "accuracy"), ("kl", "kl"), ("drift", "drift"),
                 ("interpolation", "interp"), ("probes", "probes")]
        for key, method in order:
            if not self.options.runs(method):
                continue
            start = time.perf_counter()
            result = getattr(self, method)()
            if result:
                report[key] = result
            report["timing_s"][key] = round(time.perf_counter() - start, 2)
        return report


def analyze(base: str | Path, models: Mapping[str, str | Path], tasks: Sequence[str], out_dir: str | Path | None,
            options: Options = Options(), task_options: Mapping[str, Mapping[str, Any]] | None = None,
            es_hparams: Mapping[str, tuple[float, int, int]] | None = None, trust_task_files: bool = False
            ) -> dict[str, Any]:
    """Load ``base`` and ``models`` ({name: path}), resolve ``tasks`` (options from ``task_options``, else from the
    models' runs), run :class:`Analysis`, and write ``report.json``, ``report.md`` and PNGs to ``out_dir``
    (unless None). Missing paths raise FileNotFoundError, bad input ValueError. A task file named by a run's
    config.yaml is imported only with ``trust_task_files``."""
    from esjax.analysis.report import write_report
    if BASE in models:
        raise InputError(f"--model: the name {BASE!r} is reserved for --base")
    paths = {BASE: base, **models}
    found = [r for r in (runs.find_run(runs.model_dir(p)) for p in paths.values()) if r is not None]
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise NotADirectoryError(f"--out {out_dir}: exists and is not a directory")
    # bad paths and tasks fail before any weights load
    resolved = runs.resolve_tasks(tasks, found, task_options, trust_task_files)
    loaded = {name: load(name, path) for name, path in paths.items()}
    report = Analysis(loaded.pop(BASE), loaded, resolved, options, es_hparams).run()
    if out_dir is not None:
        write_report(report, out_dir)
    return report

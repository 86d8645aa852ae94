"""Inputs of an analysis: ``NAME=PATH`` model specs, the training run a model came from, tasks, ES theory inputs.

A model path may be an HF directory, an esjax checkpoint, ``embedded``, a run directory (its last stage) or a
stage of a run (``RUN/stages/<k>-<task>``). For a model inside a run, :func:`find_run` reads the run's
``config.yaml``: the method, ES hyperparameters (alpha, N, iterations), the tasks and their options.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from esjax.common.errors import InputError
from esjax.es import ESConfig, trainable_mask
from esjax.run.settings import RunSettings, TaskSettings, load_settings
from esjax.run.stages import load_task, resolve_model_path

_STAGE = re.compile(r"(\d+)-(.+)")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """The run a model belongs to: its settings, which stage the model ends, and the run's stage directories."""

    run_dir: Path
    settings: RunSettings
    stage: int
    stage_dirs: tuple[Path, ...]  # in stage order, the stages saved so far

    @property
    def method(self) -> str:
        return self.settings.method

    def stage_settings(self) -> tuple[TaskSettings, ...]:
        return self.settings.task_stages()

    def iterations_through(self, stage: int) -> int:
        """Iterations trained from the base to the end of ``stage`` (cumulative over a continual run)."""
        default = self.settings.train.iterations
        return sum(st.iterations if st.iterations is not None else default for st in self.stage_settings()[:stage + 1])

    def trained_tasks(self) -> list[str]:
        return [st.name for st in self.stage_settings()[:self.stage + 1]]


def _stage_dirs(run_dir: Path) -> tuple[Path, ...]:
    found = [(int(m.group(1)), p) for p in (run_dir / "stages").iterdir()
             if p.is_dir() and (m := _STAGE.fullmatch(p.name))] if (run_dir / "stages").is_dir() else []
    return tuple(p for _, p in sorted(found))


def find_run(path: str | Path) -> RunInfo | None:
    """The run of a run directory or of one of its stage directories; None for any other path."""
    path = Path(path).resolve()
    if (path / "config.yaml").is_file() and (path / "stages").is_dir():
        run_dir, stage_dir = path, None
    elif path.parent.name == "stages" and (path.parent.parent / "config.yaml").is_file():
        run_dir, stage_dir = path.parent.parent, path
    else:
        return None
    dirs = _stage_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(f"{run_dir}: the run has no finished stage (no stages/<k>-<task> directory)")
    stage_dir = stage_dir or dirs[-1]
    m = _STAGE.fullmatch(stage_dir.name)
    if m is None:
        raise InputError(f"{stage_dir}: not a stage directory (expected stages/<k>-<task>)")
    return RunInfo(run_dir, load_settings(run_dir / "config.yaml"), int(m.group(1)), dirs)


def model_dir(path: str | Path) -> Path:
    """The model directory a path names: ``embedded``, a run directory's last stage, or the path itself."""
    resolved = resolve_model_path(str(path))
    if not resolved.exists():
        raise FileNotFoundError(f"{path}: no such model directory or checkpoint")
    run = find_run(resolved)
    return run.stage_dirs[run.stage] if run is not None and resolved == run.run_dir.resolve() else resolved


def parse_named(items: Iterable[str], what: str = "--model") -> dict[str, str]:
    """``["NAME=PATH", ...]`` -> ``{NAME: PATH}``; malformed items and repeated names raise ValueError."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value or not re.fullmatch(r"[\w.\-+]+", name):
            raise InputError(f"{what} {item!r}: expected NAME=PATH (NAME: letters, digits, _ . - +)")
        if name in out:
            raise InputError(f"{what}: the name {name!r} is given twice")
        out[name] = value
    return out


def trained_param_count(params: Any, es_config: ESConfig | None = None) -> int:
    """d: elements ES perturbs and updates (all float leaves, minus those ``es_config`` freezes)."""
    leaves = jax.tree.leaves(params)
    if es_config is None:
        return int(sum(np.size(x) for x in leaves if np.issubdtype(x.dtype, np.inexact)))
    mask = jax.tree.leaves(trainable_mask(es_config, params))
    return int(sum(np.size(x) for x, keep in zip(leaves, mask) if keep))


def es_theory_inputs(run: RunInfo | None, params: Any, override: tuple[float, int, int] | None = None
                     ) -> dict[str, Any] | None:
    """``{"alpha", "population", "iterations", "trained_params", "source", ...}`` for the ES displacement law, from
    ``override = (alpha, N, T)`` (``--es-hparams``) or an ES run's config.yaml; None for anything else."""
    if override is not None:
        alpha, population, iterations = override
        return {"alpha": float(alpha), "population": int(population), "iterations": int(iterations),
                "trained_params": trained_param_count(params), "source": "flags"}
    cfg = run.settings.method_config if run is not None else None
    if not isinstance(cfg, ESConfig):  # the displacement law is ES's
        return None
    return {"alpha": cfg.alpha, "population": cfg.population_size, "iterations": run.iterations_through(run.stage),
            "trained_params": trained_param_count(params, cfg), "source": str(run.run_dir / "config.yaml"),
            "antithetic": cfg.antithetic, "shaping": cfg.shaping, "optimizer": cfg.optimizer}


def parse_es_hparams(items: Iterable[str]) -> dict[str, tuple[float, int, int]]:
    """``["NAME=ALPHA,N,T", ...]`` -> ``{NAME: (alpha, N, T)}``."""
    out = {}
    for name, value in parse_named(items, "--es-hparams").items():
        try:
            alpha, population, iterations = value.split(",")
            out[name] = (float(alpha), int(population), int(iterations))
        except ValueError:
            raise InputError(f"--es-hparams {name}={value}: expected NAME=ALPHA,N,T (e.g. es=5e-4,30,500)") from None
    return out


def parse_task_options(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["TASK.KEY=VALUE", ...]`` -> ``{TASK: {KEY: value}}`` (values parsed as YAML)."""
    from esjax.run.settings import parse_yaml
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        task, dot, option = key.strip().partition(".")
        if not sep or not dot or not task or not option:
            raise InputError(f"--task-option {item!r}: expected TASK.KEY=VALUE (e.g. countdown_procedural.counts=[3])")
        out.setdefault(task, {})[option] = parse_yaml(value, f"--task-option {key.strip()}")
    return out


def resolve_tasks(names: Iterable[str], runs: Iterable[RunInfo], options: Mapping[str, Mapping[str, Any]] | None = None,
                  trust_task_files: bool = False) -> dict[str, Any]:
    """``{name: Task}``: options from ``options[name]`` if given, else from the first run that trained a task of
    that name, else the task's defaults. Unknown names raise :class:`esjax.tasks.UnknownTaskError`.

    A run directory may come from anyone: the Python task file its config.yaml names is imported only with
    ``trust_task_files`` (``--trust-task-file``); otherwise such a task is refused with a ValueError."""
    from esjax import tasks
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise InputError("--tasks: give at least one task name")
    stages: dict[str, tuple[RunInfo, TaskSettings]] = {}
    for run in runs:
        for st in run.stage_settings():
            stages.setdefault(st.name, (run, st))
    out = {}
    for name in dict.fromkeys(names):
        if options and name in options:
            out[name] = tasks.get(name, **options[name])
        elif name in stages:
            run, st = stages[name]
            code = st.file or (st.name.rpartition(":")[0] if ".py:" in st.name else None)
            if code and not trust_task_files:
                raise InputError(f"{run.run_dir / 'config.yaml'}: task {name!r} is defined by the Python file "
                                 f"{code!r}; pass --trust-task-file to import (run) it")
            out[name] = load_task(st)
        else:
            out[name] = tasks.get(name)
    return out

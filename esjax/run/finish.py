"""The end of a stage and of a run: stage models under ``stages/``, plots, ``accuracy_matrices.json`` and
``summary.json``."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from esjax.models import save_model
from esjax.models.decoder import Params
from esjax.run.setup import RunSetup
from esjax.run.stages import Stage


def save_stage_model(setup: RunSetup, stage: Stage, params: Params) -> None:
    """The stage's final model as an esjax checkpoint in ``stages/<k>-<task>``."""
    save_model(setup.out_dir / "stages" / stage.label, setup.model.config, params,
               source_dir=setup.model.source_dir, overwrite=True)


def finish_run(setup: RunSetup, records: list[dict], matrices: dict) -> dict[str, Any]:
    """Plots, matrices and ``summary.json`` (process 0 writes them); returns the summary."""
    from esjax.run.plots import plot_matrix, plot_training
    out, stages = setup.out_dir, setup.stages
    summary: dict[str, Any] = {"run_dir": str(out), "final_model": str(out / "stages" / stages[-1].label),
                               "iterations": stages[-1].end, "method": setup.settings.method}
    evals = [r for r in records if "eval/test/accuracy" in r]
    if evals:
        summary |= {"test_accuracy_before": evals[0]["eval/test/accuracy"],
                    "test_accuracy_after": evals[-1]["eval/test/accuracy"]}
    if jax.process_index() != 0:
        return summary
    summary["plots"] = [str(p) for p in plot_training(records, out)]
    if matrices:
        labels, tasks = [st.label for st in stages], [st.settings.name for st in stages]
        (out / "accuracy_matrices.json").write_text(json.dumps({"stages": labels, "tasks": tasks, **matrices},
                                                               indent=2))
        for split, matrix in matrices.items():
            summary["plots"].append(str(plot_matrix(np.asarray(matrix), [f"after {label}" for label in labels], tasks,
                                                    f"{split} accuracy after each stage",
                                                    out / f"accuracy_matrix_{split}.png")))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary

"""Evaluation during a run: which splits are evaluated when, their metric names, and the accuracy matrices.

Greedy evaluation runs at a stage's first iteration, every ``train.eval_every`` iterations and at its end; with
several stages, the end of each evaluates every stage's splits once: one row of the accuracy matrices (rows: after
stage k; columns: each stage's task), the continual-learning record of forgetting.
"""

from __future__ import annotations

from esjax.models.decoder import Params
from esjax.run.evaluate import EvalResult, evaluate
from esjax.run.setup import RunSetup
from esjax.run.stages import Stage

Results = dict[str, EvalResult]  # split -> result


def evaluate_stage(setup: RunSetup, params: Params, stage: Stage) -> Results:
    """Greedy evaluation of ``params`` on each of ``stage``'s eval splits."""
    return {split: evaluate(setup.model.config, params, setup.tokenizer, stage.task, prompts, setup.eval_sampling,
                            setup.settings.train.eval_batch_size) for split, prompts in stage.evals.items()}


def eval_metrics(results: Results) -> dict[str, float]:
    """``{"eval/<split>/accuracy": .., "eval/<split>/mean_reward": ..}``."""
    return {f"eval/{split}/{name}": value for split, r in results.items()
            for name, value in (("accuracy", r.accuracy), ("mean_reward", r.mean_reward))}


def evaluate_after(setup: RunSetup, params: Params, stage: Stage, done: int) -> dict[int, Results]:
    """After ``done`` iterations in ``stage``: ``{stage index: results}`` for what is due (empty if nothing)."""
    every = setup.settings.train.eval_every
    if done == stage.end and len(setup.stages) > 1:
        return {st.index: evaluate_stage(setup, params, st) for st in setup.stages}
    if done == stage.end or (every and done % every == 0):
        return {stage.index: evaluate_stage(setup, params, stage)}
    return {}


def add_matrix_row(matrices: dict[str, list[list[float]]], stage: Stage, evals: dict[int, Results]) -> None:
    """Row ``stage.index`` of each split's accuracy matrix from the end-of-stage results of every stage (a row
    already there, from before a resume, is replaced)."""
    row: dict[str, list[float]] = {}
    for index in sorted(evals):
        for split, result in evals[index].items():
            row.setdefault(split, []).append(result.accuracy)
    for split, values in row.items():
        matrices.setdefault(split, [])
        del matrices[split][stage.index:]
        matrices[split].append(values)

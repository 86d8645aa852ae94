"""The training loop shared by every method: stages, iterations, evaluation, metrics and checkpoints.

One loop drives ES and GRPO through the :class:`esjax.methods.protocol.Method` interface, so an ES-vs-GRPO comparison
differs in the algorithm only: same model, sampler, tasks, evaluation, checkpoints and metrics. The jobs around it
live beside it: start-up in :mod:`esjax.run.setup`, stages and batches in :mod:`esjax.run.stages`, evaluation in
:mod:`esjax.run.stage_eval`, metrics in :mod:`esjax.run.metrics`, the end in :mod:`esjax.run.finish`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax

from esjax import distributed
from esjax.common.compile_cache import enable_compilation_cache
from esjax.methods.protocol import Batch, Method, ScoreFn
from esjax.run.checkpoints import RunCheckpoints
from esjax.run.directory import discard_new_run_dir, release_run_dir
from esjax.run.finish import finish_run, save_stage_model
from esjax.run.metrics import MetricsLogger
from esjax.run.resume import completed_iterations, record_changes
from esjax.run.scoring import score_rows
from esjax.run.settings import RunSettings, to_dict
from esjax.run.setup import set_up
from esjax.run.stage_eval import add_matrix_row, eval_metrics, evaluate_after, evaluate_stage
from esjax.run.stages import Stage, batch_indices, stage_at


class Run:
    """A training run in ``out_dir``; :meth:`run` trains to the end (resuming from the last checkpoint if asked)."""

    def __init__(self, settings: RunSettings, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print, changes: Mapping[str, tuple[Any, Any]] | None = None):
        """``changes``: on resume, how ``settings`` differ from the saved ones (:func:`esjax.run.resume.resume_settings`);
        recorded in the run directory once the saved state is restored."""
        self.changes, self.resume, self.progress = dict(changes or {}), resume, progress
        log = log if distributed.is_main_process() else (lambda _: None)
        self.setup = set_up(settings, out_dir, resume, self.changes, log)
        self.settings, self.out_dir, self.stages = settings, self.setup.out_dir, self.setup.stages
        self.method: Method | None = None
        self.method_stage = -1

    def discard_if_unstarted(self) -> None:
        """After a failure: remove a new run's directory while it holds no checkpoint (nothing to resume; a resume
        would start over too), so that the corrected command can use the same ``--out``."""
        if not self.resume and completed_iterations(self.out_dir) == 0 and distributed.is_main_process():
            discard_new_run_dir(self.out_dir)

    def _method_for(self, stage: Stage, params: Any, key: jax.Array) -> tuple[Method, Any]:
        """The method for ``stage`` (built when the stage changes) and its initial state from ``params``."""
        if self.method_stage != stage.index:
            self.method, self.method_stage = self.setup.make_method(stage, params), stage.index
        return self.method, self.method.init(params, jax.random.fold_in(key, stage.index))

    def run(self) -> dict[str, Any]:
        s, setup = self.settings, self.setup
        total = self.stages[-1].end
        checkpoints = RunCheckpoints(self.out_dir / "checkpoints", s.train.keep_checkpoints)
        key, state = jax.random.key(s.train.seed), None
        meta = {"iteration": 0, "metrics_lines": 0, "samples": 0, "matrices": {}}
        if self.resume:  # the newest checkpoint that restores (damaged newer steps: skipped, named, kept)
            found = checkpoints.restore_intact(
                lambda step: self._method_for(stage_at(self.stages, max(step - 1, 0)), setup.model.params, key)[1],
                self.setup.log)
            if found is not None:
                state, meta = found[1], _current_meta(found[2])
                self.setup.log(f"resuming {self.out_dir} at iteration {meta['iteration']}/{total}")
        start, samples, matrices = meta["iteration"], meta["samples"], meta["matrices"]
        logger = MetricsLogger(self.out_dir, meta["metrics_lines"])
        if self.changes:  # the state restored into these settings: record the change from this iteration on
            if distributed.is_main_process():
                record_changes(self.out_dir, s, self.changes, start)
            logger.log(start, {"settings_changed": sorted(self.changes), "samples": samples})
            self.setup.log(f"settings changed from iteration {start}: {', '.join(sorted(self.changes))}")
        recorded = json.loads(json.dumps(to_dict(s)))  # each checkpoint records the settings it was trained with
        bar, ahead = self._progress(total, start), -1
        try:
            for it in range(start, total):
                stage = stage_at(self.stages, it)
                if self.method_stage != stage.index:  # a new stage starts from the last one's model
                    _, state = self._method_for(stage, setup.model.params if state is None else
                                                self.method.params(state), key)
                batch = batch_indices(s.train.seed, stage.index, it - stage.begin, s.train.prompts_per_iteration,
                                      len(stage.train))
                if ahead != stage.index:  # the step's programs compile in the background, beside the evaluation
                    self._compile_ahead(state, Batch(*stage.train.rows(batch)))
                    ahead = stage.index
                if it == stage.begin:  # (a checkpoint is never taken between this and the stage's first step)
                    evals = eval_metrics(evaluate_stage(setup, self.method.params(state), stage))
                    logger.log(it, {"stage": stage.index, "samples": samples, **evals})
                t0 = time.perf_counter()
                state, result = self.method.step(state, Batch(*stage.train.rows(batch)), self._score_fn(stage, batch))
                samples += len(batch) * self.method.samples_per_prompt
                metrics = result.record() | {"stage": stage.index, "samples": samples,
                                             "seconds": time.perf_counter() - t0}
                done = it + 1
                evals = evaluate_after(setup, self.method.params(state), stage, done)
                logger.log(done, metrics | eval_metrics(evals.get(stage.index, {})))
                if done == stage.end:
                    if len(self.stages) > 1:
                        add_matrix_row(matrices, stage, evals)
                    save_stage_model(setup, stage, self.method.params(state))
                if done in (total, stage.end) or (s.train.checkpoint_every and done % s.train.checkpoint_every == 0):
                    checkpoints.save(done, state, {"iteration": done, "metrics_lines": logger.lines,
                                                   "samples": samples, "matrices": matrices, "settings": recorded})
                self._advance(bar, metrics)
        finally:
            if bar is not None:
                bar.close()
            logger.close()
            checkpoints.close()
        return finish_run(setup, logger.records(), matrices)

    def _compile_ahead(self, state: Any, batch: Batch) -> None:
        """Let the method compile its step for ``state`` and ``batch``'s shape in the background, if it can
        (``Method.compile_ahead``; off with ``train.compile_ahead: false``)."""
        start = getattr(self.method, "compile_ahead", None)
        if start is not None and self.settings.train.compile_ahead:
            start(state, batch)

    def _score_fn(self, stage: Stage, batch) -> ScoreFn:
        examples = [stage.train.examples[i] for i in batch]

        def score(tokens, lengths, finished, prompt):
            s = score_rows(stage.task, self.setup.tokenizer, examples, prompt, tokens, lengths, finished)
            return s.rewards, s.correct
        return score

    def _progress(self, total: int, start: int):
        if not self.progress or jax.process_index() != 0:
            return None
        from tqdm import tqdm
        return tqdm(total=total, initial=start, desc=f"{self.settings.method} train", unit="it", dynamic_ncols=True)

    @staticmethod
    def _advance(bar, metrics: dict) -> None:
        if bar is None:
            return
        post = {"reward": f"{metrics['reward_mean']:.3f}", "acc": f"{metrics['accuracy']:.3f}",
                "s/it": f"{metrics['seconds']:.1f}"}
        if "eval/test/accuracy" in metrics:
            post["test_acc"] = f"{metrics['eval/test/accuracy']:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)


def _current_meta(meta: dict) -> dict:
    """A checkpoint's metadata; one saved before ``metrics_lines`` held the records themselves."""
    if "metrics_lines" in meta:
        return meta
    records = meta.get("metrics", [])
    return {"iteration": meta["iteration"], "metrics_lines": len(records), "matrices": meta.get("matrices", {}),
            "samples": records[-1].get("samples", 0) if records else 0}


def train(settings: RunSettings, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          changes: Mapping[str, tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """Train to the end of the configured budget; returns a summary (run dir, accuracies, plots). ``changes``: see
    :class:`Run`."""
    if settings.train.compilation_cache is not None:  # else the caller's choice (the CLI: env var or default)
        enable_compilation_cache(settings.train.compilation_cache)
    run = Run(settings, out_dir, resume=resume, progress=progress, changes=changes)
    try:
        return run.run()
    except Exception:
        run.discard_if_unstarted()
        raise
    finally:
        release_run_dir(run.out_dir)

"""The run loop shared by ES and GRPO: data order, rollouts, scoring, evaluation, metrics, checkpoints, stages.

One loop drives both methods through the :class:`esjax.methods.protocol.Method` interface, so an ES-vs-GRPO comparison
differs in the algorithm only: same model, sampler, tasks, evaluation, checkpoints and metrics.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

from esjax import distributed
from esjax.common.compile_cache import enable_compilation_cache
from esjax.run.checkpoints import RunCheckpoints
from esjax.run.evaluate import EvalResult, PromptSet, evaluate
from esjax.generation.inference import check_context, sampling_for
from esjax.methods import registry
from esjax.methods.protocol import Batch, Method, ScoreFn
from esjax.run.metrics import MetricsLogger
from esjax.models import hub as models_hub
from esjax.models import load_model, save_model
from esjax.models.decoder import Params
from esjax.models.sharding import param_shardings
from esjax.run.resume import CONFIG_FILE, completed_iterations, record_changes, settings_changes
from esjax.run.directory import RunDirError, discard_new_run_dir, prepare_run_dir_once, release_run_dir
from esjax.run.scoring import score_rows
from esjax.run.plan import plan_devices
from esjax.run.settings import RunSettings, TaskSettings, load_settings, to_dict


def resolve_model_path(path: str) -> Path:
    """A local folder for a model path: ``embedded``, a folder or checkpoint, or a Hub ID (fetched or cached)."""
    if path == "embedded":
        from esjax.run.embedded import EMBEDDED_MODEL_DIR
        return Path(EMBEDDED_MODEL_DIR)
    return models_hub.resolve_model_path(path)


def load_task(stage: TaskSettings):
    from esjax import tasks
    if stage.file:
        tasks.load_task_file(stage.file)
    return tasks.get(stage.name, **stage.options)


@dataclasses.dataclass
class Stage:
    index: int
    settings: TaskSettings
    task: Any
    train: PromptSet
    evals: dict[str, PromptSet]
    begin: int
    end: int

    @property
    def label(self) -> str:
        return f"{self.index}-{self.settings.name}"


def batch_indices(seed: int, stage: int, step: int, batch: int, n: int) -> np.ndarray:
    """Examples of iteration ``step`` of a stage: consecutive slices of per-epoch seeded permutations (a pure
    function of its arguments, so a resumed run sees exactly the batches an uninterrupted one would)."""
    if batch >= n:
        return np.arange(n)
    first, out = step * batch, []
    while len(out) < batch:
        epoch, offset = divmod(first + len(out), n)
        order = np.random.default_rng([seed, stage, epoch]).permutation(n)
        out.extend(order[offset: offset + batch - len(out)].tolist())
    return np.asarray(out)


def make_method(settings: RunSettings, model_config, tokenizer, mesh, params: Params, batch_shape) -> Method:
    sampling = sampling_for(model_config, tokenizer, max_new_tokens=settings.sampling.max_new_tokens,
                            temperature=settings.sampling.temperature, top_p=settings.sampling.top_p,
                            top_k=settings.sampling.top_k)
    build = registry.get(settings.method).build
    return build(settings.method_config, model_config, sampling, mesh, params, batch_shape)


class Run:
    """A training run in ``out_dir``; :meth:`run` trains to the end (resuming from the last checkpoint if asked)."""

    def __init__(self, settings: RunSettings, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print, changes: Mapping[str, tuple[Any, Any]] | None = None):
        """``changes``: on resume, how ``settings`` differ from the saved ones (:func:`esjax.run.resume.resume_settings`);
        recorded in the run directory once the saved state is restored."""
        self.settings, self.out_dir, self.progress = settings, Path(out_dir), progress
        self.changes = dict(changes or {})
        self.log = log if distributed.is_main_process() else (lambda _: None)
        # everything is checked (run directory, model, tokenizer, tasks) before the run directory is written, so a
        # failed start leaves nothing behind that would block the corrected command
        prepare_run_dir_once(self.out_dir, settings, resume, create=False)
        if resume:
            self._check_saved_settings()
        self.resume = resume
        self.mesh = plan_devices(settings).build()  # here, from the settings a resumed run continues with
        # the config, tokenizer and tasks first: a run that would not fit is refused before any weight is read
        from esjax.generation.tokenizer import load_tokenizer
        from esjax.run.compile import model_files
        path = resolve_model_path(settings.model.path)
        self.model_config, tokenizer_dir = model_files(path)
        if tokenizer_dir is None:
            raise RunDirError(f"{settings.model.path}: the model has no tokenizer files")
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.eval_sampling = sampling_for(self.model_config, self.tokenizer, temperature=0.0, max_new_tokens=(
            settings.sampling.eval_max_new_tokens or settings.sampling.max_new_tokens))
        self.stages = self._build_stages()
        from esjax.run.planner import check_fits  # compiled for abstract params where devices report memory
        self.memory_plan = check_fits(settings, self._batch_shape(self.stages[0])[1])
        # params are born on the mesh: replicated over population/data, split over "model" by the partition rules
        self.model = load_model(path, dtype=settings.model.dtype,
                                sharding=lambda config: param_shardings(self.mesh, config))
        prepare_run_dir_once(self.out_dir, settings, resume)
        self._report_plan()

    def discard_if_unstarted(self) -> None:
        """After a failure: remove a new run's directory while it holds no checkpoint (nothing to resume; a resume
        would start over too), so that the corrected command can use the same ``--out``."""
        if not self.resume and completed_iterations(self.out_dir) == 0 and distributed.is_main_process():
            discard_new_run_dir(self.out_dir)

    def _check_saved_settings(self) -> None:
        """A resumed run trains with its saved settings, or with the ``changes`` the caller declared."""
        differ = settings_changes(load_settings(self.out_dir / CONFIG_FILE), self.settings)
        unexpected = sorted(set(differ) - set(self.changes))
        if unexpected:
            raise RunDirError(f"{self.out_dir}: the settings differ from the run's {CONFIG_FILE} in "
                              f"{', '.join(unexpected)}; resume with esjax.run.resume.resume_settings (esjax train "
                              f"--resume without CONFIG, or with --allow-changes)")

    def _build_stages(self) -> list[Stage]:
        stages, begin = [], 0
        pad = self.eval_sampling.pad_token_id
        for i, st in enumerate(self.settings.task_stages()):
            task = load_task(st)
            train = task.split(st.train_split)[: st.train_limit]
            evals = {name: PromptSet(task, self.tokenizer, task.split(name)[: st.eval_limit], pad)
                     for name in st.eval_splits}
            length = st.iterations if st.iterations is not None else self.settings.train.iterations
            stage = Stage(i, st, task, PromptSet(task, self.tokenizer, train, pad), evals, begin, begin + length)
            check_context(self.model_config, stage.train.longest, self.settings.sampling.max_new_tokens)
            for prompts in evals.values():
                check_context(self.model_config, prompts.longest, self.eval_sampling.max_new_tokens)
            stages.append(stage)
            begin += length
        return stages

    def _evaluate(self, params: Params, stage: Stage) -> dict[str, EvalResult]:
        """Greedy evaluation of ``params`` on each of ``stage``'s eval splits."""
        return {split: evaluate(self.model.config, params, self.tokenizer, stage.task, prompts, self.eval_sampling,
                                self.settings.train.eval_batch_size) for split, prompts in stage.evals.items()}

    @staticmethod
    def _eval_metrics(results: dict[str, EvalResult]) -> dict[str, float]:
        return {f"eval/{split}/{name}": value for split, r in results.items()
                for name, value in (("accuracy", r.accuracy), ("mean_reward", r.mean_reward))}

    def _score_fn(self, stage: Stage, batch: np.ndarray) -> ScoreFn:
        examples = [stage.train.examples[i] for i in batch]

        def score(tokens, lengths, finished, prompt):
            s = score_rows(stage.task, self.tokenizer, examples, prompt, tokens, lengths, finished)
            return s.rewards, s.correct
        return score

    def run(self) -> dict[str, Any]:
        s = self.settings
        total = self.stages[-1].end
        checkpoints = RunCheckpoints(self.out_dir / "checkpoints", s.train.keep_checkpoints)
        method, state, method_stage = None, None, None
        records, matrices, start = [], {}, 0
        params = self.model.params
        key = jax.random.key(s.train.seed)
        if self.resume:
            def target(step: int):  # the state method.init builds for the stage of ``step``
                nonlocal method, method_stage
                stage = self._stage_at(step - 1 if step else 0)
                if method_stage != stage.index:
                    method, method_stage = self._method(stage, params), stage.index
                return method.init(params, jax.random.fold_in(key, stage.index))
            found = checkpoints.restore_intact(target, self.log)  # damaged newer steps: skipped, named, kept
            if found is not None:
                _, state, meta = found
                start, records, matrices = meta["iteration"], meta["metrics"], meta["matrices"]
                self.log(f"resuming {self.out_dir} at iteration {start}/{total}")
        logger = MetricsLogger(self.out_dir, records)
        samples = records[-1].get("samples", 0) if records else 0
        if self.changes:  # the state restored into these settings: record the change from this iteration on
            if distributed.is_main_process():
                record_changes(self.out_dir, s, self.changes, start)
            logger.log(start, {"settings_changed": sorted(self.changes), "samples": samples})
            self.log(f"settings changed from iteration {start}: {', '.join(sorted(self.changes))}")
        bar = self._progress(total, start)
        try:
            for it in range(start, total):
                stage = self._stage_at(it)
                if method_stage != stage.index:
                    base = params if method is None else method.params(state)
                    method = self._method(stage, base)
                    state = method.init(base, jax.random.fold_in(key, stage.index))
                    method_stage = stage.index
                if it == stage.begin and not any(r["iteration"] == it and r.get("stage") == stage.index
                                                 and any(k.startswith("eval/") for k in r) for r in logger.records):
                    evals = self._eval_metrics(self._evaluate(method.params(state), stage))
                    logger.log(it, {"stage": stage.index, "samples": samples, **evals})
                step = it - stage.begin
                batch = batch_indices(s.train.seed, stage.index, step, s.train.prompts_per_iteration, len(stage.train))
                t0 = time.perf_counter()
                state, result = method.step(state, Batch(*stage.train.rows(batch)), self._score_fn(stage, batch))
                samples += len(batch) * method.samples_per_prompt
                metrics = result.record() | {"stage": stage.index, "samples": samples,
                                             "seconds": time.perf_counter() - t0}
                done = it + 1
                # at a stage's end every stage's splits are evaluated once (the accuracy matrix's row); else this one's
                evals = {}
                if done == stage.end and len(self.stages) > 1:
                    evals = {st.index: self._evaluate(method.params(state), st) for st in self.stages}
                elif done == stage.end or (s.train.eval_every and done % s.train.eval_every == 0):
                    evals = {stage.index: self._evaluate(method.params(state), stage)}
                if evals:
                    metrics |= self._eval_metrics(evals[stage.index])
                logger.log(done, metrics)
                if done == stage.end:
                    self._finish_stage(stage, method.params(state), matrices, evals)
                if done == total or (s.train.checkpoint_every and done % s.train.checkpoint_every == 0) or done == stage.end:
                    checkpoints.save(done, state, {"iteration": done, "metrics": logger.records, "matrices": matrices,
                                                   "settings": json.loads(json.dumps(to_dict(s)))})
                self._advance(bar, metrics)
        finally:
            if bar is not None:
                bar.close()
            logger.close()
            checkpoints.close()
        return self._finish(method.params(state) if method else params, logger.records, matrices)

    def _stage_at(self, it: int) -> Stage:
        return next(st for st in self.stages if st.begin <= it < st.end) if it < self.stages[-1].end else self.stages[-1]

    def _batch_shape(self, stage: Stage) -> tuple[int, int]:
        return min(self.settings.train.prompts_per_iteration, len(stage.train)), stage.train.tokens.shape[1]

    def _method(self, stage: Stage, params: Params) -> Method:
        shape = self._batch_shape(stage)
        return make_method(self.settings, self.model.config, self.tokenizer, self.mesh, params, shape)

    def _report_plan(self) -> None:
        """The start-of-run report (:mod:`esjax.run.plan`): logged, and ``run_plan.json`` in the run directory."""
        from esjax.run.plan import format_plan, plan_report
        s, shape = self.settings, self._batch_shape(self.stages[0])
        new_tokens = s.sampling.max_new_tokens
        at_once = registry.get(s.method).decode_rows(s.method_config, self.model.config, new_tokens, self.mesh,
                                                     self.model.params, shape)
        dtype = jax.tree.leaves(self.model.params)[0].dtype
        plan = plan_report(s.method, s.method_config, self.model.config, dtype, self.mesh, *shape, new_tokens, at_once)
        if self.memory_plan:  # the compiler's figure, as esjax plan prints it
            from esjax.run.planner import verdict
            plan["compiled_memory_per_device_bytes"] = {p["program"]: p["total"] for p in self.memory_plan["programs"]}
            peak = self.memory_plan["peak_bytes"]
            self.log(f"memory per device (compiled): {verdict(peak, self.memory_plan['target']['memory_bytes'])} "
                     f"({self.memory_plan['peak_program']})")
        self.log(format_plan(plan))
        if distributed.is_main_process():
            (self.out_dir / "run_plan.json").write_text(json.dumps(plan, indent=2) + "\n")

    def _finish_stage(self, stage: Stage, params: Params, matrices: dict,
                      evals: dict[int, dict[str, EvalResult]]) -> None:
        """The stage's model to ``stages/``; with several stages, the accuracy matrices' row of this stage."""
        if len(self.stages) > 1:
            row: dict[str, list[float]] = {}
            for st in self.stages:
                for split, result in evals[st.index].items():
                    row.setdefault(split, []).append(result.accuracy)
            for split, values in row.items():
                matrices.setdefault(split, [])
                del matrices[split][stage.index:]
                matrices[split].append(values)
        save_model(self.out_dir / "stages" / stage.label, self.model.config, params,
                   source_dir=self.model.source_dir, overwrite=True)

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

    def _finish(self, params: Params, records: list[dict], matrices: dict) -> dict[str, Any]:
        from esjax.run.plots import plot_matrix, plot_training
        final_dir = self.out_dir / "stages" / self.stages[-1].label
        summary: dict[str, Any] = {"run_dir": str(self.out_dir), "final_model": str(final_dir),
                                   "iterations": self.stages[-1].end, "method": self.settings.method}
        evals = [r for r in records if "eval/test/accuracy" in r]
        if evals:
            summary |= {"test_accuracy_before": evals[0]["eval/test/accuracy"],
                        "test_accuracy_after": evals[-1]["eval/test/accuracy"]}
        if jax.process_index() == 0:
            summary["plots"] = [str(p) for p in plot_training(records, self.out_dir)]
            if matrices:
                labels = [st.label for st in self.stages]
                (self.out_dir / "accuracy_matrices.json").write_text(json.dumps(
                    {"stages": labels, "tasks": [st.settings.name for st in self.stages], **matrices}, indent=2))
                for split, matrix in matrices.items():
                    summary["plots"].append(str(plot_matrix(
                        np.asarray(matrix), [f"after {label}" for label in labels], [st.settings.name for st in self.stages],
                        f"{split} accuracy after each stage", self.out_dir / f"accuracy_matrix_{split}.png")))
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


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

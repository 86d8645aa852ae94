"""A run's stages and data order: each stage's task, its tokenised splits and iteration range, and the batches.

One task trains as one stage; ``stages:`` in the settings trains several in order (continual learning). The
prompts are tokenised once here (:class:`esjax.run.evaluate.PromptSet`); :func:`batch_indices` picks each
iteration's prompts as a pure function of (seed, stage, step), so a resumed run sees the batches an uninterrupted
one would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from esjax.generation.inference import check_context
from esjax.generation.sampling import SamplingConfig
from esjax.models import hub as models_hub
from esjax.models.config import ModelConfig
from esjax.run.evaluate import PromptSet
from esjax.run.settings import RunSettings, TaskSettings


def resolve_model_path(path: str) -> Path:
    """A local folder for a model path: ``embedded`` (the packaged tiny model), a folder or checkpoint, or a Hub ID
    (fetched or cached)."""
    if path == "embedded":
        from esjax.run.embedded import EMBEDDED_MODEL_DIR
        return Path(EMBEDDED_MODEL_DIR)
    return models_hub.resolve_model_path(path)


def load_task(stage: TaskSettings):
    """The stage's :class:`esjax.tasks.Task` (importing its ``file`` first, if it names one)."""
    from esjax import tasks
    if stage.file:
        tasks.load_task_file(stage.file)
    return tasks.get(stage.name, **stage.options)


@dataclasses.dataclass
class Stage:
    """One task of the run: iterations ``begin <= it < end``, its training prompts and its eval splits."""

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


def build_stages(settings: RunSettings, model: ModelConfig, tokenizer: Any, eval_sampling: SamplingConfig
                 ) -> list[Stage]:
    """Every stage, its prompts tokenised and checked against the model's context (training and evaluation)."""
    stages, begin = [], 0
    pad = eval_sampling.pad_token_id
    for i, st in enumerate(settings.task_stages()):
        task = load_task(st)
        train = task.split(st.train_split)[: st.train_limit]
        evals = {name: PromptSet(task, tokenizer, task.split(name)[: st.eval_limit], pad) for name in st.eval_splits}
        length = st.iterations if st.iterations is not None else settings.train.iterations
        stage = Stage(i, st, task, PromptSet(task, tokenizer, train, pad), evals, begin, begin + length)
        check_context(model, stage.train.longest, settings.sampling.max_new_tokens)
        for prompts in evals.values():
            check_context(model, prompts.longest, eval_sampling.max_new_tokens)
        stages.append(stage)
        begin += length
    return stages


def stage_at(stages: list[Stage], iteration: int) -> Stage:
    """The stage that trains ``iteration`` (the last one past the end)."""
    return next((st for st in stages if st.begin <= iteration < st.end), stages[-1])


def batch_shape(settings: RunSettings, stage: Stage) -> tuple[int, int]:
    """(B, P): the prompts of one iteration of ``stage`` and their padded length."""
    return min(settings.train.prompts_per_iteration, len(stage.train)), stage.train.tokens.shape[1]


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

"""The interface the training loop drives ES and GRPO through, so that a comparison differs in the algorithm only.

A method is built for one prompt-batch shape on one mesh and is used as::

    state = method.init(params, key)                       # a pytree: params, optimizer state, keys, counters
    state, result = method.step(state, batch, score)       # one iteration on the B prompts of ``batch``
    method.params(state)                                   # the current model

``score`` is the task's reward on the host, one signature for both methods (:data:`ScoreFn`): each process
scores the rows it generated, and the step all-gathers what the update needs once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol, TypeVar

import jax
import numpy as np

from esjax.methods.stats import RolloutStats
from esjax.models.decoder import Params

# score(tokens int32 [R, T], lengths int32 [R], finished bool [R], prompt int [R]) -> (rewards, correct):
# R completions of this process, row r answering prompt ``prompt[r]`` of the batch; rewards float32 [R] (NaN: a
# failed reward), correct bool [R] (the task's accuracy notion).
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
State = TypeVar("State")


class Batch(NamedTuple):
    """The prompts of one iteration, left-padded: the same global batch on every process."""

    tokens: np.ndarray  # int32 [B, P]
    mask: np.ndarray  # int32 [B, P]


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step reports: the rollout statistics every method has (same names), and the method's own metrics."""

    stats: RolloutStats
    metrics: dict[str, float]  # prefixed by the method's name ("es/update_norm", "grpo/loss") or "time/"

    @property
    def reward_mean(self) -> float:
        return self.stats.reward_mean

    @property
    def reward_std(self) -> float:
        return self.stats.reward_std

    @property
    def accuracy(self) -> float:
        return self.stats.accuracy

    def record(self) -> dict[str, float]:
        """One flat dict, as written to ``metrics.jsonl``."""
        return self.stats.record() | self.metrics


class Method(Protocol[State]):
    """ES (:class:`esjax.es.step.ESMethod`) and GRPO (:class:`esjax.grpo.step.GRPOMethod`).

    Optional: ``compile_ahead(state, batch) -> None`` starts compiling the programs of a step from ``state`` on a
    batch shaped like ``batch`` in the background (:class:`esjax.common.ahead.Ahead`); the loop calls it when a stage
    starts, before the stage's first evaluation, so the compiles overlap it and one another."""

    config: Any  # ESConfig / GRPOConfig
    samples_per_prompt: int  # completions generated per prompt per step (N for ES, G for GRPO)

    def init(self, params: Params, key: jax.Array) -> State: ...
    def step(self, state: State, batch: Batch, score: ScoreFn) -> tuple[State, StepResult]: ...
    def params(self, state: State) -> Params: ...

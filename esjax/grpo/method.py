"""GRPO behind the training loop's ``Method`` interface (the same loop, sampler, tasks and checkpoints as ES)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from esjax import distributed
from esjax.grpo.trainer import DATA_AXIS, GRPOConfig, GRPOState, grpo_step, init_state, make_trainer
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params
from esjax.sampling import SamplingConfig


class GRPOMethod:
    """Each iteration: the B prompts repeated G times are sampled, scored on the host, and trained on."""

    def __init__(self, config: GRPOConfig, model: ModelConfig, sampling: SamplingConfig, mesh: Mesh, params: Params,
                 batch_shape: tuple[int, int]):
        if mesh.axis_names[0] != DATA_AXIS:  # the loop's 1-D mesh may be named for ES
            mesh = Mesh(mesh.devices, (DATA_AXIS, *mesh.axis_names[1:]))
        self.config = config
        self.config.validate(mesh.shape[DATA_AXIS], batch_shape[0] * config.num_generations)
        self.trainer = make_trainer(config, model, sampling, mesh)
        self.samples_per_prompt = config.num_generations
        self.key = jax.random.key(0)

    def init(self, params: Params, key: jax.Array) -> GRPOState:
        self.key = key
        return self.trainer.place_state(init_state(self.config, params))

    def step(self, state: GRPOState, tokens: np.ndarray, mask: np.ndarray, score_fn: Callable,
             iteration: int) -> tuple[GRPOState, dict[str, Any]]:
        g = self.config.num_generations
        batch = tokens.shape[0]
        correct: list[tuple[np.ndarray, np.ndarray]] = []

        def score(completions, lengths, finished, rows):  # this process's rows; row r is prompt r // g
            rewards, ok = score_fn(completions, lengths, finished, rows // g)
            correct.append((rows, np.asarray(ok, bool)))
            return rewards

        state, metrics = grpo_step(self.trainer, state, np.repeat(tokens, g, axis=0), np.repeat(mask, g, axis=0),
                                   jax.random.fold_in(self.key, iteration), score, pass_rows=True)
        n_correct = distributed.gather_rows(*correct[0], batch * g).sum()
        return state, {**{k: metrics.pop(k) for k in ("reward_mean", "reward_std")},
                       "accuracy": float(n_correct / (batch * g)), **{f"grpo/{k}": v for k, v in metrics.items()},
                       "samples_per_iteration": batch * g}

    def params(self, state: GRPOState) -> Params:
        return state.params

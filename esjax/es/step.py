"""The ES iteration: jitted population rollout -> host scoring -> jitted update (state in, state out)."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from esjax.es.config import ESConfig
from esjax.es.population import POPULATION_AXIS, Rollout, make_rollout
from esjax.es.update import ESState, init_state, update_state
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params
from esjax.sampling import SamplingConfig

# score_fn(tokens [K, T], lengths [K], finished [K], slot [K]) -> (rewards float [K] (NaN allowed), correct bool [K])
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class ESRunner(NamedTuple):
    """The compiled pieces of an ES iteration for one prompt-batch shape on one mesh."""

    config: ESConfig
    rollout: Rollout
    update: Callable[[ESState, jax.Array], tuple[ESState, dict]]
    replicated: NamedSharding


def make_runner(config: ESConfig, model: ModelConfig, sampling: SamplingConfig, mesh: Mesh, params: Params,
                batch_shape: tuple[int, int]) -> ESRunner:
    """Compile-once functions for prompts of ``batch_shape`` = (B, P); the update runs replicated on every device."""
    rollout = make_rollout(config, model, sampling, mesh, params, batch_shape)
    update = jax.jit(functools.partial(update_state, config), donate_argnums=0)
    return ESRunner(config, rollout, update, NamedSharding(mesh, P()))


def es_init(runner: ESRunner, params: Params, run_key: jax.Array) -> ESState:
    """The initial state, replicated over the mesh (every device holds the full params).

    The state owns fresh buffers (the update donates them), so the caller's ``params`` stay valid; drop them to
    keep one copy of the model in memory.
    """
    state = init_state(runner.config, params, run_key)
    return jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=runner.replicated)(state)


def es_step(runner: ESRunner, state: ESState, tokens: np.ndarray, mask: np.ndarray,
            score_fn: ScoreFn) -> tuple[ESState, dict[str, Any]]:
    """One iteration: every member generates for the B prompts, rows are scored on the host, fitness_i = member i's
    mean reward over the prompts (NaN if any reward is NaN: shaping then ranks it worst), then the ES update.

    Only the N fitness values enter the update; each device regenerates the noise it needs from the seeds.
    """
    n = runner.config.population_size
    t0 = time.perf_counter()
    sample_key = jax.random.fold_in(jax.random.fold_in(state.run_key, 0x5A3B), state.iteration)
    out = runner.rollout(state.params, state.run_key, state.iteration, jnp.asarray(tokens), jnp.asarray(mask),
                         sample_key)
    gen_tokens, lengths, finished = jax.device_get((out.tokens, out.lengths, out.finished))
    t1 = time.perf_counter()
    batch = tokens.shape[0]
    rewards, correct = score_fn(gen_tokens.reshape(n * batch, -1), lengths.reshape(-1), finished.reshape(-1),
                                np.tile(np.arange(batch), n))
    fitness = np.asarray(rewards, np.float32).reshape(n, batch).mean(axis=1)
    t2 = time.perf_counter()
    state, metrics = runner.update(state, jax.device_put(fitness, runner.replicated))
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    t3 = time.perf_counter()
    return state, {
        "reward_mean": float(np.nanmean(rewards)) if np.isfinite(rewards).any() else float("nan"),
        "reward_std": float(np.nanstd(rewards)) if np.isfinite(rewards).any() else float("nan"),
        "accuracy": float(np.mean(correct)), "completion_length": float(lengths.mean()),
        **{f"es/{k}": v for k, v in metrics.items()},
        "time/rollout_s": t1 - t0, "time/score_s": t2 - t1, "time/update_s": t3 - t2,
        "samples_per_iteration": n * batch,
    }


class ESMethod:
    """ES behind the training loop's ``Method`` interface."""

    def __init__(self, config: ESConfig, model: ModelConfig, sampling: SamplingConfig, mesh: Mesh, params: Params,
                 batch_shape: tuple[int, int]):
        self.runner = make_runner(config, model, sampling, mesh, params, batch_shape)
        self.samples_per_prompt = config.population_size

    def init(self, params: Params, key: jax.Array) -> ESState:
        return es_init(self.runner, params, key)

    def step(self, state: ESState, tokens: np.ndarray, mask: np.ndarray, score_fn: ScoreFn,
             iteration: int) -> tuple[ESState, dict[str, Any]]:
        return es_step(self.runner, state, tokens, mask, score_fn)

    def params(self, state: ESState) -> Params:
        return state.params

"""The ES iteration: jitted population rollout -> host scoring -> jitted update (state in, state out)."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from esjax import distributed
from esjax.common.ahead import Ahead
from esjax.es.config import ESConfig
from esjax.es.population import Rollout, make_rollout
from esjax.es.update import ESState, init_state, update_state
from esjax.methods.protocol import Batch, ScoreFn, StepResult
from esjax.methods.stats import RolloutStats, row_sums
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params
from esjax.models.sharding import tree_shardings
from esjax.generation.sampling import SamplingConfig

# Folded into the run key to derive the sampling keys, so that they differ from the noise keys (which fold the
# iteration into the bare run key); any constant would do, this one is fixed so that runs replay exactly.
SAMPLE_KEY_SALT = 0x5A3B


class ESRunner(NamedTuple):
    """The compiled pieces of an ES iteration for one prompt-batch shape on one mesh."""

    config: ESConfig
    rollout: Rollout
    update: Callable[[ESState, jax.Array], tuple[ESState, dict]]
    replicated: NamedSharding
    state_sharding: Any = None  # the ESState's shardings: replicated, or split over a "model" mesh axis


def make_runner(config: ESConfig, model: ModelConfig, sampling: SamplingConfig, mesh: Mesh, params: Params,
                batch_shape: tuple[int, int]) -> ESRunner:
    """Compile-once functions for prompts of ``batch_shape`` = (B, P); the update runs replicated on every device
    (every device of a ``model`` group holds its slice of each split leaf and regenerates just that slice)."""
    rollout = make_rollout(config, model, sampling, mesh, params, batch_shape)
    replicated = NamedSharding(mesh, P())
    shapes = jax.eval_shape(lambda p: init_state(config, p, jax.random.key(0)), params)
    state_sharding = tree_shardings(mesh, shapes, model)
    update = jax.jit(functools.partial(update_state, config), donate_argnums=0,
                     out_shardings=(state_sharding, replicated))
    return ESRunner(config, rollout, update, replicated, state_sharding)


def es_init(runner: ESRunner, params: Params, run_key: jax.Array) -> ESState:
    """The initial state on the mesh (params replicated over the population axis, split over a model axis).

    The state owns fresh buffers (the update donates them), so the caller's ``params`` stay valid; drop them to
    keep one copy of the model in memory.
    """
    state = init_state(runner.config, params, run_key)
    sharding = runner.state_sharding or runner.replicated
    return jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=sharding)(state)


def rollout_args(runner: ESRunner, state: ESState, tokens: np.ndarray, mask: np.ndarray) -> tuple:
    """The rollout's arguments for ``state``'s iteration: params, run key, iteration, the prompts replicated on the
    mesh, and the sampling key (the run key folded with a salt, then with the iteration)."""
    mesh = runner.replicated.mesh
    sample_key = jax.random.fold_in(jax.random.fold_in(state.run_key, SAMPLE_KEY_SALT), state.iteration)
    return (state.params, state.run_key, state.iteration, distributed.replicate(tokens, mesh),
            distributed.replicate(mask, mesh), sample_key)


def compile_ahead(runner: ESRunner, state: ESState, tokens: np.ndarray, mask: np.ndarray) -> ESRunner:
    """``runner`` whose rollout and update are compiling in background threads (:class:`esjax.common.ahead.Ahead`)
    for a step from ``state`` on prompts shaped like ``tokens`` and ``mask`` [B, P]: the first :func:`es_step`
    waits for them instead of compiling the update only after the rollout has run, and what the caller does
    meanwhile (the stage's first evaluation) overlaps the compiles."""
    n = runner.config.population_size
    fitness = np.zeros((n, tokens.shape[0]) if runner.config.group_baseline else (n,), np.float32)
    rollout = Ahead(runner.rollout.fn, *rollout_args(runner, state, tokens, mask), name="es-rollout")
    update = Ahead(runner.update, state, distributed.replicate(fitness, runner.replicated.mesh), name="es-update")
    return runner._replace(rollout=runner.rollout._replace(fn=rollout), update=update)


def es_step(runner: ESRunner, state: ESState, tokens: np.ndarray, mask: np.ndarray,
            score_fn: ScoreFn) -> tuple[ESState, StepResult]:
    """One iteration: every member generates for the B prompts, rows are scored on the host, fitness_i = member i's
    mean reward over the prompts (NaN if any reward is NaN: shaping then ranks it worst), then the ES update.
    With ``group_baseline`` the fitness is the [N, B] matrix of per-prompt rewards instead (see ``shape_fitness``).

    Only the N fitness values enter the update; each device regenerates the noise it needs from the seeds. With
    several processes each one reads back and scores only its own devices' members; the N fitness values (and
    per-member statistics for the metrics) are then all-gathered, so every process applies the same update.
    """
    n = runner.config.population_size
    t0 = time.perf_counter()
    out = runner.rollout(*rollout_args(runner, state, tokens, mask))
    members, (gen_tokens, lengths, finished) = distributed.addressable_rows(out.tokens, out.lengths, out.finished)
    t1 = time.perf_counter()
    batch, m = tokens.shape[0], members.shape[0]
    rewards, correct = score_fn(gen_tokens.reshape(m * batch, -1), lengths.reshape(-1), finished.reshape(-1),
                                np.tile(np.arange(batch), m))
    rewards = np.asarray(rewards, np.float32).reshape(m, batch)
    sums = row_sums(rewards, np.asarray(correct).reshape(m, batch), lengths.reshape(m, batch),
                    finished.reshape(m, batch))
    local = np.concatenate([rewards.mean(axis=1).astype(np.float64)[:, None], sums], axis=1)
    table = distributed.gather_rows(members, local, n)  # [N, 1 + len(SUMS)]: the only host-to-host traffic
    # group_baseline shapes per-prompt scores [N, B] (each prompt z-scored across members); else fitness is [N]
    fitness = (distributed.gather_rows(members, rewards, n) if runner.config.group_baseline
               else table[:, 0]).astype(np.float32)
    t2 = time.perf_counter()
    state, metrics = runner.update(state, distributed.replicate(fitness, runner.replicated.mesh))
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    t3 = time.perf_counter()
    return state, StepResult(RolloutStats.from_sums(table[:, 1:]), {
        **{f"es/{k}": v for k, v in metrics.items()},
        "time/rollout_s": t1 - t0, "time/score_s": t2 - t1, "time/update_s": t3 - t2})


class ESMethod:
    """ES as an :class:`esjax.methods.protocol.Method`: every member generates for the B prompts of each step."""

    def __init__(self, config: ESConfig, model: ModelConfig, sampling: SamplingConfig, mesh: Mesh, params: Params,
                 batch_shape: tuple[int, int]):
        self.config = config
        self.runner = make_runner(config, model, sampling, mesh, params, batch_shape)
        self.samples_per_prompt = config.population_size

    def init(self, params: Params, key: jax.Array) -> ESState:
        return es_init(self.runner, params, key)

    def compile_ahead(self, state: ESState, batch: Batch) -> None:
        """Start compiling the rollout and the update for a step from ``state`` on ``batch``'s shape, in the
        background (:func:`compile_ahead`); the next :meth:`step` waits for them."""
        self.runner = compile_ahead(self.runner, state, batch.tokens, batch.mask)

    def step(self, state: ESState, batch: Batch, score: ScoreFn) -> tuple[ESState, StepResult]:
        return es_step(self.runner, state, batch.tokens, batch.mask, score)

    def params(self, state: ESState) -> Params:
        return state.params

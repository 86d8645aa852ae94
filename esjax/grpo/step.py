"""The GRPO step over a ``"data"`` mesh: jitted rollout, host-side scoring, jitted loss + optax update.

One step, as :func:`grpo_step` ties it together::

    out = runner.rollout(state.params, rows, mask, sample_key(state))   # device: G completions per prompt
    rewards, correct = score(completions, lengths, finished, prompt)     # host: the task's reward on the text
    state, metrics = runner.train(state, rows, mask, out.tokens, rewards)   # device: loss, grads, update

The batch (``K = B * G`` rows, the G completions of a prompt adjacent) is sharded along the mesh's ``"data"`` axis
and the parameters are replicated over it; a second mesh axis ``"model"`` splits the parameters, their optimizer
moments and master copy by :mod:`esjax.models.sharding` (tensor parallel, the compiler inserts the collectives). With
several processes each one places and scores only its own rows, and one all-gather brings every process the K
rewards (and the lengths and correctness for the metrics), so every process trains on the same batch.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from esjax import distributed
from esjax.common.ahead import Ahead
from esjax.distributed.mesh import DATA_AXIS, MODEL_AXIS
from esjax.grpo.config import GRPOConfig
from esjax.grpo.update import GRPOState, init_state, sample_key, train_on_rollout
from esjax.methods.protocol import Batch, ScoreFn, StepResult
from esjax.methods.stats import RolloutStats, row_sums
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params, param_shapes
from esjax.models.sharding import tree_shardings
from esjax.generation.sampling import GenerateOutput, SamplingConfig, generate

Array = jax.Array
PyTree = Any


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) with the ``"data"`` axis."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def rollout(model_config: ModelConfig, sampling: SamplingConfig, params: Params, tokens: Array, mask: Array,
            key: Array) -> GenerateOutput:
    """Sample one completion per row of ``tokens`` [K, P] (prompts already repeated G times, consecutively).

    Pure (jit with the configs static; :func:`make_runner` does, with the batch sharded over ``"data"``).
    """
    return generate(model_config, params, tokens, mask, key, sampling)


class GRPORunner(NamedTuple):
    """The jitted device parts of a GRPO step, bound to configs and a ``"data"`` mesh (see :func:`make_runner`).

    ``rollout(params, tokens, mask, key) -> GenerateOutput`` and
    ``train(state, prompt_tokens, prompt_mask, completions, rewards) -> (state, metrics)`` place their inputs
    (params replicated, rows sharded) and call the jitted functions. ``train`` donates ``state``: arrays already
    placed as it wants them (always so on a one-device mesh) are consumed, including the params handed to
    :func:`init_state`; keep a copy of those if they are needed later.
    """

    config: GRPOConfig
    model_config: ModelConfig
    sampling: SamplingConfig
    mesh: Mesh
    rollout_fn: Callable[..., GenerateOutput]
    train_fn: Callable[..., tuple[GRPOState, dict[str, Array]]]

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def sharded(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(DATA_AXIS))

    @property
    def data_devices(self) -> int:
        return self.mesh.shape[DATA_AXIS]

    def state_sharding(self, tree: PyTree) -> PyTree:
        """Shardings of a params-like tree or a :class:`GRPOState` (replicated; split over ``"model"``)."""
        return tree_shardings(self.mesh, tree, self.model_config)

    def place_state(self, state: GRPOState) -> GRPOState:
        return jax.tree.map(distributed.put_global, state, self.state_sharding(state))

    def rollout_args(self, params: Params, tokens: Any, mask: Any, key: Array) -> tuple:
        """:meth:`rollout`'s arguments placed as ``rollout_fn`` takes them."""
        put = functools.partial(distributed.put_global, sharding=self.sharded)
        return self.place_state(params), put(tokens), put(mask), distributed.put_global(key, self.replicated)

    def rollout(self, params: Params, tokens: Any, mask: Any, key: Array) -> GenerateOutput:
        return self.rollout_fn(*self.rollout_args(params, tokens, mask, key))

    def train_args(self, state: GRPOState, prompt_tokens: Any, prompt_mask: Any, completions: Any,
                   rewards: Any) -> tuple:
        """:meth:`train`'s arguments placed as ``train_fn`` takes them."""
        put = functools.partial(distributed.put_global, sharding=self.sharded)
        return (self.place_state(state), put(prompt_tokens), put(prompt_mask), put(completions),
                put(rewards if isinstance(rewards, jax.Array) else np.asarray(rewards, np.float32)))

    def train(self, state: GRPOState, prompt_tokens: Any, prompt_mask: Any, completions: Any,
              rewards: Any) -> tuple[GRPOState, dict[str, Array]]:
        return self.train_fn(*self.train_args(state, prompt_tokens, prompt_mask, completions, rewards))


def make_runner(config: GRPOConfig, model_config: ModelConfig, sampling: SamplingConfig, mesh: Mesh | None = None,
                 *, compiler_options: Mapping[str, Any] | None = None) -> GRPORunner:
    """Jit :func:`rollout` and :func:`train_on_rollout` for ``mesh`` (default: :func:`data_mesh` of all devices).

    ``compiler_options``: XLA options for both programs, e.g. ``{"xla_backend_optimization_level": 0}`` halves
    CPU compile time in tests.
    """
    if sampling.greedy:
        raise ValueError("GRPO needs sampling (temperature > 0): greedy completions of a prompt are identical, "
                         "so every advantage would be 0.")
    mesh = data_mesh() if mesh is None else mesh
    if mesh.axis_names not in ((DATA_AXIS,), (DATA_AXIS, MODEL_AXIS)):
        raise ValueError(f"mesh axes must be ({DATA_AXIS!r},) or ({DATA_AXIS!r}, {MODEL_AXIS!r}) (see data_mesh, "
                         f"esjax.distributed.build_mesh), got {mesh.axis_names}.")
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    params_sharding = tree_shardings(mesh, param_shapes(model_config), model_config)
    rollout_fn = jax.jit(functools.partial(rollout, model_config, sampling),
                         in_shardings=(params_sharding, data, data, repl),
                         out_shardings=GenerateOutput(data, data, data, data), compiler_options=compiler_options)
    train_fn = TrainPrograms(lambda state: train_program(config, model_config, sampling, mesh, state,
                                                          compiler_options))
    return GRPORunner(config, model_config, sampling, mesh, rollout_fn, train_fn)


class TrainPrograms:
    """``train_fn(state, *batch)``: :func:`train_program` jitted once per state structure (the state keeps its own
    shardings) and called."""

    def __init__(self, build: Callable[[PyTree], Callable]):
        self.build, self.programs = build, {}

    def program(self, state: PyTree) -> Callable:
        key = jax.tree.structure(state)
        if key not in self.programs:
            self.programs[key] = self.build(state)
        return self.programs[key]

    def compile_ahead(self, state: PyTree, *batch: Any) -> None:
        """Start compiling the program for ``state`` and arrays shaped like ``batch`` in the background
        (:class:`esjax.common.ahead.Ahead`); the next call with such a state waits for it."""
        program = self.program(state)
        program = program.fn if isinstance(program, Ahead) else program
        self.programs[jax.tree.structure(state)] = Ahead(program, state, *batch, name="grpo-train")

    def __call__(self, state: PyTree, *batch: Any) -> tuple[GRPOState, dict[str, Array]]:
        return self.program(state)(state, *batch)


def train_program(config: GRPOConfig, model_config: ModelConfig, sampling: SamplingConfig, mesh: Mesh, state: PyTree,
                  compiler_options: Mapping[str, Any] | None = None) -> Callable:
    """:func:`train_on_rollout` jitted for a state shaped like ``state`` (arrays or ``ShapeDtypeStruct``) on
    ``mesh``: the state keeps its shardings (donated), the rollout rows are split over ``"data"``."""
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    shardings = tree_shardings(mesh, state, model_config)
    return jax.jit(functools.partial(train_on_rollout, config, model_config, sampling), donate_argnums=0,
                   in_shardings=(shardings, data, data, data, data), out_shardings=(shardings, repl),
                   compiler_options=compiler_options)


def frac_reward_zero_std(rewards: np.ndarray, group_size: int) -> float:
    """Fraction of the groups of float rewards [K] (NaN = failed) whose finite rewards are all equal (advantage 0)."""
    groups = np.where(np.isfinite(rewards), rewards, np.nan).astype(np.float64).reshape(-1, group_size)
    with warnings.catch_warnings():  # all-NaN groups
        warnings.simplefilter("ignore", RuntimeWarning)
        flat = np.nan_to_num(np.nanstd(groups, axis=1), nan=0.0) == 0
    return float(flat.mean())


def grpo_step(runner: GRPORunner, state: GRPOState, tokens: Any, mask: Any,
              score: ScoreFn) -> tuple[GRPOState, StepResult]:
    """Rollout, host scoring, training: one GRPO step (``num_iterations`` optimizer steps).

    Args:
        tokens, mask: int [B, P] left-padded prompts (the global batch, the same on every process); each is
            repeated G times, consecutively, and each process places only its own devices' rows.
        score: :data:`esjax.methods.protocol.ScoreFn`, called with the R rows this process generated (all K = B * G with
            one process); row ``r`` of the rollout answers prompt ``r // G``.

    Returns:
        ``(state, result)``: the donated-and-updated state and the step's :class:`StepResult`: the shared
        :class:`~esjax.methods.stats.RolloutStats`, and under ``grpo/`` frac_reward_zero_std and the means over
        the optimizer steps of :func:`train_on_rollout`'s metrics.
    """
    g = runner.config.num_generations
    rows_tokens, rows_mask = np.repeat(tokens, g, axis=0), np.repeat(mask, g, axis=0)
    out = runner.rollout(state.params, rows_tokens, rows_mask, sample_key(state))
    rows, (completions, lengths, finished) = distributed.addressable_rows(out.tokens, out.lengths, out.finished)
    rewards, correct = score(completions, lengths, finished, rows // g)
    rewards = np.asarray(rewards, np.float32).reshape(-1)
    if rewards.shape != (completions.shape[0],):
        raise ValueError(f"score must return {completions.shape[0]} rewards, got shape {rewards.shape}.")
    column = lambda x: np.asarray(x).reshape(-1, 1)  # noqa: E731  one group per row
    sums = row_sums(column(rewards), column(correct), column(lengths), column(finished))
    table = distributed.gather_rows(rows, sums, out.tokens.shape[0])  # [K, len(SUMS)]
    rewards = np.where(table[:, 1] > 0, table[:, 2], np.nan).astype(np.float32)  # +-inf: failed too
    state, device_metrics = runner.train(state, rows_tokens, rows_mask, out.tokens, rewards)
    metrics = {"frac_reward_zero_std": frac_reward_zero_std(rewards, g)}
    metrics |= {k: float(np.mean(distributed.to_host(v))) for k, v in device_metrics.items()}
    return state, StepResult(RolloutStats.from_sums(table), {f"grpo/{k}": v for k, v in metrics.items()})


def compile_ahead(runner: GRPORunner, state: GRPOState, tokens: np.ndarray, mask: np.ndarray) -> GRPORunner:
    """``runner`` whose rollout and training step are compiling in background threads
    (:class:`esjax.common.ahead.Ahead`) for a step from ``state`` on prompts shaped like ``tokens`` and ``mask``
    [B, P]: the first :func:`grpo_step` waits for them instead of compiling the training step only after the
    rollout has run."""
    g = runner.config.num_generations
    rows_tokens, rows_mask = np.repeat(tokens, g, axis=0), np.repeat(mask, g, axis=0)
    rollout = Ahead(runner.rollout_fn, *runner.rollout_args(state.params, rows_tokens, rows_mask, sample_key(state)),
                    name="grpo-rollout")
    completions = np.zeros((rows_tokens.shape[0], runner.sampling.max_new_tokens), np.int32)
    runner.train_fn.compile_ahead(*runner.train_args(state, rows_tokens, rows_mask, completions,
                                                     np.zeros(rows_tokens.shape[0], np.float32)))
    return runner._replace(rollout_fn=rollout)


def grpo_init(runner: GRPORunner, params: Params, run_key: Array) -> GRPOState:
    """The initial state on the runner's mesh (params replicated over ``"data"``, split over a model axis).

    The state takes ``params`` without a copy and the train step donates it (see :func:`init_state`)."""
    return runner.place_state(init_state(runner.config, params, run_key))


class GRPOMethod:
    """GRPO as an :class:`esjax.methods.protocol.Method`: each step samples G completions for each of the B prompts,
    scores them on the host and trains on them."""

    def __init__(self, config: GRPOConfig, model: ModelConfig, sampling: SamplingConfig, mesh: Mesh, params: Params,
                 batch_shape: tuple[int, int]):
        self.config = config.check_devices(mesh.shape[DATA_AXIS], batch_shape[0] * config.num_generations)
        self.runner = make_runner(config, model, sampling, mesh)
        self.samples_per_prompt = config.num_generations

    def init(self, params: Params, key: jax.Array) -> GRPOState:
        return grpo_init(self.runner, params, key)

    def compile_ahead(self, state: GRPOState, batch: Batch) -> None:
        """Start compiling the rollout and the training step for a step from ``state`` on ``batch``'s shape, in the
        background (:func:`compile_ahead`); the next :meth:`step` waits for them."""
        self.runner = compile_ahead(self.runner, state, batch.tokens, batch.mask)

    def step(self, state: GRPOState, batch: Batch, score: ScoreFn) -> tuple[GRPOState, StepResult]:
        return grpo_step(self.runner, state, batch.tokens, batch.mask, score)

    def params(self, state: GRPOState) -> Params:
        return state.params

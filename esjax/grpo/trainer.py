"""The GRPO step over a 1-D ``"data"`` mesh: jitted rollout, host-side scoring, jitted loss + optax update.

One step, as :func:`grpo_step` ties it together::

    out = trainer.rollout(state.params, tokens, mask, key)        # device: sample G completions per prompt
    rewards = score_fn(completions, lengths, finished)            # host: Python reward functions on decoded text
    state, metrics = trainer.train(state, tokens, mask, out.tokens, rewards)   # device: loss, grads, update

The batch (``K = num_prompts * G`` rows, the G completions of a prompt adjacent) is sharded along the mesh's
``"data"`` axis and the parameters are replicated over it; a second mesh axis ``"model"`` splits the parameters,
their optimizer moments and master copy by :data:`esjax.distributed.PARTITION_RULES` (tensor parallel, the
compiler inserts the collectives). With several processes each one places and scores only its own rows and the
K rewards are all-gathered. Everything inside :func:`train_on_rollout` is written for the
GLOBAL batch under ``jax.jit``: every mean and every token count (``grpo``'s per-sequence mean, ``bnpo``'s and
``dapo``'s token counts, the advantages' group statistics) is a reduction over the whole sharded array, which
XLA turns into per-device partial sums plus an all-reduce. The loss is therefore the global loss and its gradient
is already the data-parallel average; no explicit ``pmean`` is needed and the result does not depend on the
number of devices (up to float reduction order).

Gradient accumulation splits the rollout into ``grad_accum_steps`` interleaved micro-batches (row ``i`` goes to
micro-batch ``i % M``, so each stays evenly sharded) and averages their gradients (``lax.scan``). That equals the
full-batch gradient for ``grpo`` and ``dr_grpo`` (means over rows) and for ``dapo`` (each micro-batch divides by
the global token count / M); ``bnpo`` normalises by each micro-batch's own token count, as TRL does, so it
differs from the full batch when micro-batches hold different numbers of tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from esjax import distributed, schedules
from esjax.config_utils import strict_from_dict
from esjax.grpo.advantages import SCALES, group_advantages
from esjax.grpo.logprobs import token_logps
from esjax.grpo.losses import LOSS_TYPES, completion_mask, policy_loss
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params, hidden_states, logits_from_hidden, param_shapes
from esjax.sampling import GenerateOutput, SamplingConfig, generate

Array = jax.Array
PyTree = Any
DATA_AXIS, MODEL_AXIS = "data", "model"
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings with TRL's names; frozen and hashable.

    Defaults are TRL 1.16's ``GRPOConfig`` (with ``TrainingArguments``' AdamW and clipping) except two:
    ``loss_type`` is "grpo" (TRL: "dapo"), the per-completion mean of the GRPO paper and of the ES-vs-GRPO
    reference code; ``lr_schedule`` is "constant" (TRL: "linear"), because a decay needs the run's length, which
    a config built on its own does not know (``esjax train`` fills ``total_steps`` in for "linear"/"cosine").

    Attributes:
        num_generations: G, completions sampled per prompt (>= 2).
        learning_rate, adam_b1, adam_b2, adam_eps, weight_decay: AdamW (decoupled decay, scaled by the learning
            rate as in PyTorch; applied to matrices only, not to norms and biases, as HF's Trainer does).
        max_grad_norm: clip the global gradient norm to this (None or 0: no clipping).
        warmup_steps: linear warm-up from 0 over this many optimizer steps.
        lr_schedule: after warm-up, "constant", "cosine" (to 0) or "linear" (to 0) at ``total_steps``.
        total_steps: optimizer steps of the run (needed by "cosine" and "linear").
        loss_type: "grpo" | "bnpo" | "dr_grpo" | "dapo" (see :func:`esjax.grpo.policy_loss`).
        beta: KL coefficient. 0: no reference model is kept and no reference forward pass runs.
        epsilon, epsilon_high: clip range ``[1 - epsilon, 1 + epsilon_high]`` (None: ``epsilon``).
        use_bias_correction_kl: multiply the per-token KL by the importance ratio (TRL's default; matters only
            when ``beta > 0``, and then even on-policy, through the ratio's gradient).
        scale_rewards: "group" | "batch" | "none" (see :func:`esjax.grpo.group_advantages`).
        num_iterations: mu, optimizer steps per rollout; with mu > 1 the old log-probs are computed once, before
            the first of them.
        grad_accum_steps: micro-batches per optimizer step (``lax.scan``; bounds activation memory).
        logprob_chunk_size: sequence chunk of the log-prob pass (None: one piece); bounds logits memory.
        master_fp32: keep float32 master weights and float32 optimizer state when the params are narrower;
            the params used for rollouts are the master cast to the working dtype.
    """

    num_generations: int = 8
    learning_rate: float = 1e-6
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    total_steps: int | None = None
    loss_type: str = "grpo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    use_bias_correction_kl: bool = True
    scale_rewards: str = "group"
    num_iterations: int = 1
    grad_accum_steps: int = 1
    logprob_chunk_size: int | None = None
    master_fp32: bool = True

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GRPOConfig:
        """Builds a config from a mapping (e.g. a YAML section); unknown keys raise ValueError."""
        return strict_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, num_devices: int = 1, rollout_batch: int | None = None) -> GRPOConfig:
        """Raises ValueError on an inconsistent config; returns self.

        Args:
            num_devices: devices on the mesh's "data" axis.
            rollout_batch: K = num_prompts * G rows of one rollout, if known. It must be a multiple of G, and of
                ``num_devices * grad_accum_steps`` so that every micro-batch splits evenly over the devices.
        """
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")

        positive_int("num_generations", 2)
        positive_int("num_iterations")
        positive_int("grad_accum_steps")
        positive_int("warmup_steps", 0)
        for name, allowed in (("loss_type", LOSS_TYPES), ("scale_rewards", SCALES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in ("learning_rate", "weight_decay", "beta", "adam_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        for name in ("adam_b1", "adam_b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}.")
        for name in ("epsilon", "epsilon_high", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0 (or None), got {value!r}.")
        for name in ("use_bias_correction_kl",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.logprob_chunk_size is not None:
            positive_int("logprob_chunk_size")
        schedules.validate_schedule(self.lr_schedule, self.warmup_steps, self.total_steps, name="lr_schedule")
        if not isinstance(num_devices, int) or num_devices < 1:
            raise ValueError(f"num_devices must be a positive int, got {num_devices!r}.")
        if rollout_batch is not None:
            g, m = self.num_generations, self.grad_accum_steps
            if rollout_batch % g:
                raise ValueError(f"The rollout batch ({rollout_batch} rows) must be num_prompts * num_generations "
                                 f"(a multiple of {g}): repeat each prompt G times, consecutively.")
            if rollout_batch % (num_devices * m):
                raise ValueError(f"The rollout batch ({rollout_batch} rows = num_prompts * {g}) must be a multiple "
                                 f"of num_devices * grad_accum_steps = {num_devices} * {m} = {num_devices * m}, so "
                                 f"that each micro-batch splits evenly over the devices.")
        return self


@flax.struct.dataclass
class GRPOState:
    """GRPO training state (a pytree).

    Attributes:
        params: working parameters (any float dtype), the ones that sample rollouts.
        master: float32 copy updated by the optimizer when ``master_fp32`` and the params are narrower, else None.
        opt_state: optax state of the master (or of the params when there is no master).
        ref_params: frozen reference parameters for the KL term; None when ``beta == 0``.
        step: int32 [] optimizer steps taken.
    """

    params: Params
    master: Params | None
    opt_state: optax.OptState
    ref_params: Params | None
    step: Array


class RolloutBatch(NamedTuple):
    """What the loss needs about a rollout; rows ``K``, prompt ``P``, completion ``T``, ``S = P + T``."""

    tokens: Array  # int32 [K, S] prompt ++ completion
    attention_mask: Array  # int32 [K, S] prompt mask ++ completion mask
    completion_mask: Array  # int32 [K, T] up to and including the first EOS
    advantages: Array  # float32 [K]
    old_logps: Array | None = None  # float32 [K, T], mu > 1 only
    ref_logps: Array | None = None  # float32 [K, T], beta > 0 only


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) with the ``"data"`` axis."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def make_schedule(config: GRPOConfig) -> optax.Schedule:
    """Learning rate per optimizer step: linear warm-up from 0, then constant / cosine / linear decay to 0."""
    return schedules.make_schedule(config.learning_rate, config.lr_schedule, config.warmup_steps, config.total_steps)


def make_optimizer(config: GRPOConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm`` then AdamW with :func:`make_schedule`; weight decay on leaves with ndim >= 2."""
    adamw = optax.adamw(make_schedule(config), b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                        weight_decay=config.weight_decay, mask=lambda t: jax.tree.map(lambda x: x.ndim >= 2, t))
    if not config.max_grad_norm:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)


def _copy(tree: PyTree, dtype: Any = None) -> PyTree:
    return jax.tree.map(lambda x: jnp.array(x, dtype=dtype or x.dtype, copy=True), tree)


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def init_state(config: GRPOConfig, params: Params) -> GRPOState:
    """Step 0. ``params`` becomes ``state.params`` without a copy (the train step donates it); the master and the
    reference are copies. The master exists only with ``master_fp32`` and some leaf narrower than float32."""
    narrow = any(x.dtype != jnp.float32 for x in jax.tree.leaves(params))
    master = _copy(params, jnp.float32) if config.master_fp32 and narrow else None
    opt_state = make_optimizer(config).init(params if master is None else master)
    return GRPOState(params=params, master=master, opt_state=opt_state,
                     ref_params=_copy(params) if config.beta > 0 else None, step=jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------------------------- device: rollout
def rollout(model_config: ModelConfig, sampling: SamplingConfig, params: Params, tokens: Array, mask: Array,
            key: Array) -> GenerateOutput:
    """Sample one completion per row of ``tokens`` [K, P] (prompts already repeated G times, consecutively).

    Pure (jit with the configs static; :func:`make_trainer` does, with the batch sharded over ``"data"``).
    """
    return generate(model_config, params, tokens, mask, key, sampling)


# ------------------------------------------------------------------------------------------------- device: loss
def completion_logps(model_config: ModelConfig, params: Params, tokens: Array, attention_mask: Array,
                     completion_len: int, *, temperature: float = 1.0,
                     chunk_size: int | None = None) -> tuple[Array, Array]:
    """(log-probs, entropies), float32 [K, T], of the last ``T = completion_len`` tokens of ``tokens`` [K, S].

    One forward pass for the hidden states [K, S, D]; the output head runs only on the ``T`` positions that
    predict completion tokens, chunked over the sequence (:func:`esjax.grpo.token_logps`).
    """
    hidden = hidden_states(model_config, params, tokens, attention_mask)[:, -completion_len - 1:-1]
    return token_logps(hidden, lambda h: logits_from_hidden(model_config, params, h), tokens[:, -completion_len:],
                       temperature=temperature, chunk_size=chunk_size)


def build_batch(config: GRPOConfig, sampling: SamplingConfig, prompt_tokens: Array, prompt_mask: Array,
                completions: Array, rewards: Array) -> RolloutBatch:
    """Sequences, masks and advantages from prompts [K, P], completions [K, T] and float rewards [K] (NaN ok)."""
    cmask = completion_mask(completions, sampling.eos_token_ids)
    return RolloutBatch(tokens=jnp.concatenate([prompt_tokens, completions], axis=1).astype(jnp.int32),
                        attention_mask=jnp.concatenate([prompt_mask.astype(jnp.int32), cmask], axis=1),
                        completion_mask=cmask,
                        advantages=group_advantages(rewards, config.num_generations, config.scale_rewards))


def grpo_loss(config: GRPOConfig, model_config: ModelConfig, params: Params, batch: RolloutBatch, *,
              temperature: float = 1.0, num_items: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """The GRPO loss of ``batch`` under ``params`` and its metrics (those of ``policy_loss`` plus ``entropy``).

    ``num_items``: ``dapo``'s token count (see :func:`esjax.grpo.policy_loss`); None: this batch's.
    """
    T = batch.completion_mask.shape[1]
    logps, entropy = completion_logps(model_config, params, batch.tokens, batch.attention_mask, T,
                                      temperature=temperature, chunk_size=config.logprob_chunk_size)
    loss, metrics = policy_loss(logps, batch.old_logps, batch.ref_logps, batch.advantages, batch.completion_mask,
                                loss_type=config.loss_type, beta=config.beta, epsilon=config.epsilon,
                                epsilon_high=config.epsilon_high, max_completion_length=T,
                                num_items_in_batch=num_items, use_bias_correction_kl=config.use_bias_correction_kl)
    mask = batch.completion_mask.astype(jnp.float32)
    metrics["entropy"] = jax.lax.stop_gradient((entropy * mask).sum() / jnp.maximum(mask.sum(), 1))
    return loss, metrics


def _split(x: Array | None, m: int) -> Array | None:
    """[K, ...] -> [m, K / m, ...], row ``i`` into micro-batch ``i % m`` (keeps each micro-batch evenly sharded)."""
    if x is None:
        return None
    return jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)


def _micro_logps(config: GRPOConfig, model_config: ModelConfig, params: Params, batch: RolloutBatch,
                 temperature: float) -> Array:
    """Gradient-free log-probs [M, K / M, T] of a split batch, one micro-batch at a time."""
    T = batch.completion_mask.shape[-1]
    fn = lambda tm: completion_logps(model_config, params, *tm, T, temperature=temperature,  # noqa: E731
                                     chunk_size=config.logprob_chunk_size)[0]
    return jax.lax.stop_gradient(jax.lax.map(fn, (batch.tokens, batch.attention_mask)))


def _accumulate(config: GRPOConfig, model_config: ModelConfig, theta: Params, like: Params, batch: RolloutBatch,
                temperature: float, num_items: Array) -> tuple[Params, dict[str, Array]]:
    """Mean float32 gradient (w.r.t. ``theta``) and mean metrics over the micro-batches of a split batch."""
    def loss_fn(theta, micro):
        loss, metrics = grpo_loss(config, model_config, _cast_like(theta, like), micro, temperature=temperature,
                                  num_items=num_items)
        return loss, metrics | {"loss": loss}

    def body(acc, micro):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(theta, micro)
        return jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads), metrics

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), theta)
    grads, metrics = jax.lax.scan(body, zeros, batch)
    m = config.grad_accum_steps
    return jax.tree.map(lambda g: g / m, grads), jax.tree.map(lambda v: v.mean(0), metrics)


def train_on_rollout(config: GRPOConfig, model_config: ModelConfig, sampling: SamplingConfig, state: GRPOState,
                     prompt_tokens: Array, prompt_mask: Array, completions: Array,
                     rewards: Array) -> tuple[GRPOState, dict[str, Array]]:
    """``num_iterations`` optimizer steps on one rollout. Pure; jit with the configs static, donating ``state``.

    Args:
        prompt_tokens, prompt_mask: int [K, P], the (repeated, left-padded) prompts the rollout started from.
        completions: int32 [K, T] sampled tokens (``GenerateOutput.tokens``).
        rewards: float32 [K]; NaN marks a failed reward (advantage 0, left out of the group statistics).

    Returns:
        ``(state, metrics)``; metrics are float32 arrays [num_iterations] (one entry per optimizer step):
        ``loss``, ``clip_ratio``, ``clip_ratio_low``, ``clip_ratio_high``, ``ratio_mean``, ``entropy``,
        ``grad_norm`` (before clipping), ``lr``, and ``kl`` only when ``beta > 0``. Token means are taken per
        micro-batch and averaged over the micro-batches.
    """
    temperature = sampling.temperature or 1.0
    m = config.grad_accum_steps
    batch = jax.tree.map(lambda x: _split(x, m), build_batch(config, sampling, prompt_tokens, prompt_mask,
                                                             completions, rewards))
    if config.num_iterations > 1:
        batch = batch._replace(old_logps=_micro_logps(config, model_config, state.params, batch, temperature))
    if config.beta > 0:
        batch = batch._replace(ref_logps=_micro_logps(config, model_config, state.ref_params, batch, temperature))
    num_items = batch.completion_mask.sum().astype(jnp.float32) / m  # dapo: global tokens, averaged over m
    optimizer = make_optimizer(config)
    schedule = make_schedule(config)

    def iteration(carry, step):
        theta, opt_state = carry
        grads, metrics = _accumulate(config, model_config, theta, state.params, batch, temperature, num_items)
        updates, opt_state = optimizer.update(_cast_like(grads, theta), opt_state, theta)
        metrics |= {"grad_norm": optax.tree.norm(grads), "lr": jnp.asarray(schedule(step), jnp.float32)}
        return (optax.apply_updates(theta, updates), opt_state), metrics

    theta = state.params if state.master is None else state.master
    steps = state.step + jnp.arange(config.num_iterations, dtype=jnp.int32)
    (theta, opt_state), metrics = jax.lax.scan(iteration, (theta, state.opt_state), steps)
    new = state.replace(params=_cast_like(theta, state.params), master=None if state.master is None else theta,
                        opt_state=opt_state, step=state.step + config.num_iterations)
    return new, metrics


# --------------------------------------------------------------------------------------------- trainer and host
class GRPOTrainer(NamedTuple):
    """The jitted device parts of a GRPO step, bound to configs and a ``"data"`` mesh (see :func:`make_trainer`).

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
        return distributed.tree_shardings(self.mesh, tree, self.model_config)

    def place_state(self, state: GRPOState) -> GRPOState:
        return jax.tree.map(distributed.put_global, state, self.state_sharding(state))

    def _check(self, rows: int) -> None:
        self.config.validate(self.data_devices, rows)

    def rollout(self, params: Params, tokens: Any, mask: Any, key: Array) -> GenerateOutput:
        self._check(tokens.shape[0])
        put = functools.partial(distributed.put_global, sharding=self.sharded)
        return self.rollout_fn(self.place_state(params), put(tokens), put(mask),
                               distributed.put_global(key, self.replicated))

    def train(self, state: GRPOState, prompt_tokens: Any, prompt_mask: Any, completions: Any,
              rewards: Any) -> tuple[GRPOState, dict[str, Array]]:
        self._check(prompt_tokens.shape[0])
        put = functools.partial(distributed.put_global, sharding=self.sharded)
        return self.train_fn(self.place_state(state), put(prompt_tokens), put(prompt_mask),
                             put(completions), put(rewards if isinstance(rewards, jax.Array) else
                                                   np.asarray(rewards, np.float32)))


def make_trainer(config: GRPOConfig, model_config: ModelConfig, sampling: SamplingConfig, mesh: Mesh | None = None,
                 *, compiler_options: Mapping[str, Any] | None = None) -> GRPOTrainer:
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
    config.validate(mesh.shape[DATA_AXIS])
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    params_sharding = distributed.tree_shardings(mesh, param_shapes(model_config), model_config)
    rollout_fn = jax.jit(functools.partial(rollout, model_config, sampling),
                         in_shardings=(params_sharding, data, data, repl),
                         out_shardings=GenerateOutput(data, data, data, data), compiler_options=compiler_options)
    train = functools.partial(train_on_rollout, config, model_config, sampling)
    compiled: dict[Any, Callable] = {}

    def train_fn(state, *batch):  # jitted once per state structure, with the state's own shardings
        key = jax.tree.structure(state)
        if key not in compiled:
            shardings = distributed.tree_shardings(mesh, state, model_config)
            compiled[key] = jax.jit(train, donate_argnums=0, in_shardings=(shardings, data, data, data, data),
                                    out_shardings=(shardings, repl), compiler_options=compiler_options)
        return compiled[key](state, *batch)

    return GRPOTrainer(config, model_config, sampling, mesh, rollout_fn, train_fn)


def _to_host(x: Array) -> np.ndarray:
    """The whole global array on this host (gathered over processes when it is not fully addressable)."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def reward_metrics(rewards: np.ndarray, group_size: int) -> dict[str, float]:
    """Host statistics of float rewards [K] (NaN = failed): mean, std (ddof=0), failures, flat groups."""
    rewards = np.asarray(rewards, np.float64)
    finite = np.isfinite(rewards)
    groups = np.where(finite, rewards, np.nan).reshape(-1, group_size)
    with warnings.catch_warnings():  # all-NaN groups
        warnings.simplefilter("ignore", RuntimeWarning)
        flat = np.nan_to_num(np.nanstd(groups, axis=1), nan=0.0) == 0
    return {"reward_mean": float(np.mean(rewards[finite])) if finite.any() else float("nan"),
            "reward_std": float(np.std(rewards[finite])) if finite.any() else float("nan"),
            "nonfinite_rewards": float((~finite).sum()),
            "frac_reward_zero_std": float(flat.mean())}


def grpo_step(trainer: GRPOTrainer, state: GRPOState, tokens: Any, mask: Any, key: Array,
              score_fn: ScoreFn, *, pass_rows: bool = False) -> tuple[GRPOState, dict[str, float]]:
    """Rollout, host scoring, training: one GRPO step (``num_iterations`` optimizer steps).

    Args:
        tokens, mask: int [K, P] left-padded prompts, each repeated G times consecutively (the global batch,
            the same on every process; each process places only its own devices' rows).
        score_fn: ``(completion_tokens int32 [R, T], lengths int32 [R], finished bool [R]) -> rewards [R]``,
            numpy in and out, for the R rows this process generated (all K rows with one process); NaN marks a
            reward that failed. With ``pass_rows`` it also gets the rows' global indices int [R] as a fourth
            argument. The K rewards are then all-gathered, so every process trains on the same batch.

    Returns:
        ``(state, metrics)``: the donated-and-updated state and Python floats: reward_mean, reward_std,
        nonfinite_rewards, frac_reward_zero_std, completion_length (mean tokens incl. EOS), truncated_fraction,
        and the means over the optimizer steps of :func:`train_on_rollout`'s metrics.
    """
    out = trainer.rollout(state.params, tokens, mask, key)
    rows, (completions, lengths, finished) = distributed.addressable_rows(out.tokens, out.lengths, out.finished)
    local = score_fn(completions, lengths, finished, rows) if pass_rows else score_fn(completions, lengths, finished)
    local = np.asarray(local, np.float32).reshape(-1)
    if local.shape != (completions.shape[0],):
        raise ValueError(f"score_fn must return {completions.shape[0]} rewards, got shape {local.shape}.")
    table = distributed.gather_rows(rows, np.stack([local, lengths, finished], axis=1).astype(np.float32),
                                    out.tokens.shape[0])  # [K, 3]: rewards, lengths, finished
    rewards = np.where(np.isfinite(table[:, 0]), table[:, 0], np.nan).astype(np.float32)  # +-inf: failed too
    state, device_metrics = trainer.train(state, tokens, mask, out.tokens, rewards)
    metrics = reward_metrics(rewards, trainer.config.num_generations)
    metrics |= {"completion_length": float(table[:, 1].mean()), "truncated_fraction": float(1 - table[:, 2].mean())}
    metrics |= {k: float(np.mean(_to_host(v))) for k, v in device_metrics.items()}
    return state, metrics

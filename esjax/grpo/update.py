"""The GRPO update: sequences and advantages of a rollout, the loss, and ``num_iterations`` optax steps.

Everything in :func:`train_on_rollout` is written for the GLOBAL batch under ``jax.jit``: every mean and every
token count (``grpo``'s per-sequence mean, ``bnpo``'s and ``dapo``'s token counts, the advantages' group
statistics) is a reduction over the whole sharded array, which XLA turns into per-device partial sums plus an
all-reduce. The loss is therefore the global loss and its gradient is already the data-parallel average; no
explicit ``pmean`` is needed and the result does not depend on the number of devices (up to float reduction
order).

Gradient accumulation splits the rollout into ``grad_accum_steps`` interleaved micro-batches (row ``i`` goes to
micro-batch ``i % M``, so each stays evenly sharded) and averages their gradients (``lax.scan``). That equals the
full-batch gradient for ``grpo`` and ``dr_grpo`` (means over rows) and for ``dapo`` (each micro-batch divides by
the global token count / M); ``bnpo`` normalises by each micro-batch's own token count, as TRL does, so it
differs from the full batch when micro-batches hold different numbers of tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from esjax.common import schedules
from esjax.grpo.advantages import group_advantages
from esjax.grpo.config import GRPOConfig
from esjax.grpo.logprobs import token_logps
from esjax.grpo.losses import completion_mask, policy_loss
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params, hidden_states, logits_from_hidden
from esjax.generation.sampling import SamplingConfig

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class GRPOState:
    """GRPO training state (a pytree).

    Attributes:
        params: working parameters (any float dtype), the ones that sample rollouts.
        master: float32 copy updated by the optimizer when ``master_fp32`` and the params are narrower, else None.
        opt_state: optax state of the master (or of the params when there is no master).
        ref_params: frozen reference parameters for the KL term; None when ``beta == 0``.
        step: int32 [] optimizer steps taken (``num_iterations`` per rollout).
        iteration: int32 [] rollouts taken; the rollout's sampling key is ``fold_in(run_key, iteration)``.
        run_key: PRNG key of the run.
    """

    params: Params
    master: Params | None
    opt_state: optax.OptState
    ref_params: Params | None
    step: Array
    iteration: Array
    run_key: Array


class RolloutBatch(NamedTuple):
    """What the loss needs about a rollout; rows ``K``, prompt ``P``, completion ``T``, ``S = P + T``."""

    tokens: Array  # int32 [K, S] prompt ++ completion
    attention_mask: Array  # int32 [K, S] prompt mask ++ completion mask
    completion_mask: Array  # int32 [K, T] up to and including the first EOS
    advantages: Array  # float32 [K]
    old_logps: Array | None = None  # float32 [K, T], mu > 1 only
    ref_logps: Array | None = None  # float32 [K, T], beta > 0 only


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


def init_state(config: GRPOConfig, params: Params, run_key: Array) -> GRPOState:
    """Step 0. ``params`` becomes ``state.params`` without a copy (the train step donates it); the master and the
    reference are copies. The master exists only with ``master_fp32`` and some leaf narrower than float32."""
    chex.assert_type(jax.tree.leaves(params), float)
    narrow = any(x.dtype != jnp.float32 for x in jax.tree.leaves(params))
    master = _copy(params, jnp.float32) if config.master_fp32 and narrow else None
    opt_state = make_optimizer(config).init(params if master is None else master)
    return GRPOState(params=params, master=master, opt_state=opt_state,
                     ref_params=_copy(params) if config.beta > 0 else None, step=jnp.zeros((), jnp.int32),
                     iteration=jnp.zeros((), jnp.int32), run_key=run_key)


def sample_key(state: GRPOState) -> Array:
    """The sampling key of the state's next rollout."""
    return jax.random.fold_in(state.run_key, state.iteration)


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
    chex.assert_rank([prompt_tokens, prompt_mask, completions, rewards], [2, 2, 2, 1])
    chex.assert_equal_shape([prompt_tokens, prompt_mask])
    chex.assert_equal_shape_prefix([prompt_tokens, completions, rewards], 1)
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
                        opt_state=opt_state, step=state.step + config.num_iterations, iteration=state.iteration + 1)
    return new, metrics

"""GRPO policy loss (TRL's per-token clipped surrogate + k3 KL, four aggregations) and the completion mask."""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def completion_mask(tokens: ArrayLike, eos_ids: int | Sequence[int], pad_id: int | None = None) -> Array:
    """Mask of the completion tokens that count: everything up to and including the first EOS.

    Args:
        tokens: ``[B, T]`` int completion tokens.
        eos_ids: one EOS id or several (``generation_config.json`` may list many); any of them ends a row.
        pad_id: if given, tokens equal to it are masked out too, except when such a token is the first EOS
            (models whose pad token is also an EOS token).

    Returns:
        ``[B, T]`` int32 mask: 1 up to and including the first EOS, 0 after it; all ones for a row without
        EOS (a truncated completion) and no pad.
    """
    tokens = jnp.asarray(tokens)
    is_eos = jnp.isin(tokens, jnp.atleast_1d(jnp.asarray(eos_ids, tokens.dtype)))
    eos_before = jnp.cumsum(is_eos, axis=-1, dtype=jnp.int32) - is_eos  # EOS count strictly before t
    keep = eos_before == 0
    if pad_id is not None:
        keep &= (tokens != pad_id) | is_eos
    return keep.astype(jnp.int32)


def _aggregate(
    per_token: Array,
    mask: Array,
    loss_type: str,
    max_completion_length: int | None,
    num_items_in_batch: ArrayLike | None,
) -> Array:
    """Reduce ``[B, T]`` per-token losses to a scalar, as TRL's ``loss_type`` does."""
    masked = per_token * mask
    if loss_type == "grpo":
        return jnp.mean(masked.sum(-1) / jnp.maximum(mask.sum(-1), 1))
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token.shape[0] * (max_completion_length or per_token.shape[1]))
    if loss_type == "dapo" and num_items_in_batch is not None:
        return masked.sum() / num_items_in_batch
    return masked.sum() / jnp.maximum(mask.sum(), 1)  # bnpo, and dapo on one replica


def policy_loss(
    logps: ArrayLike,
    old_logps: ArrayLike | None,
    ref_logps: ArrayLike | None,
    advantages: ArrayLike,
    mask: ArrayLike,
    *,
    loss_type: str = "grpo",
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    max_completion_length: int | None = None,
    num_items_in_batch: ArrayLike | None = None,
    use_bias_correction_kl: bool = True,
) -> tuple[Array, dict[str, Array]]:
    """GRPO loss with TRL's definitions (TRL 1.16, token-level importance sampling).

    Per token, with ``ratio = exp(logp - old)`` and ``k3 = exp(ref - logp) - (ref - logp) - 1``::

        kl_t   = k3 * ratio  if use_bias_correction_kl  else  k3
        loss_t = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl_t

    The correction (TRL's default, from DeepSeek-V3.2) makes the KL gradient the unbiased reverse-KL gradient.
    The ratio is differentiable, so it changes the gradient even on-policy, where its value is exactly 1.

    Aggregations (``m`` the mask, sums over valid tokens):
        ``grpo``: mean over rows of ``sum_t m loss_t / max(sum_t m, 1)``;
        ``bnpo``: ``sum m loss / max(sum m, 1)``;
        ``dr_grpo``: ``sum m loss / (B * max_completion_length)``;
        ``dapo``: ``sum m loss / num_items_in_batch`` (default: as ``bnpo``).

    Args:
        logps: ``[B, T]`` log-probs of the sampled tokens under the policy being trained (the one differentiated).
        old_logps: ``[B, T]`` log-probs under the sampling policy, or None for one update per rollout
            (mu=1): then ``old = stop_gradient(logps)``, so ratio = 1 but its gradient is kept.
        ref_logps: ``[B, T]`` reference-model log-probs; may be None only when ``beta == 0``.
        advantages: ``[B]`` per-sequence advantages (see :func:`group_advantages`).
        mask: ``[B, T]`` completion mask (int, bool or float; see :func:`completion_mask`).
        loss_type: ``"grpo" | "bnpo" | "dr_grpo" | "dapo"``.
        beta: KL coefficient (a Python float).
        epsilon: lower clip range; ``epsilon_high`` the upper one (None: same as ``epsilon``; DAPO uses 0.28).
        max_completion_length: ``dr_grpo``'s constant length; None means ``T``.
        num_items_in_batch: ``dapo`` only: the number of completion tokens the loss averages over.
            None uses this call's ``sum(mask)``, which is already global when the arrays are globally sharded
            under ``jit``. A caller that computes per-replica losses (``shard_map``/``pmap``) passes the global
            token count if it sums replica gradients, or ``global_count / num_replicas`` if it averages them
            (TRL's ``num_items_in_batch / num_processes``).
        use_bias_correction_kl: multiply the per-token KL by the importance ratio (TRL's default, True).

    Returns:
        ``(loss, metrics)``: scalar loss and float32 scalars, all masked token means as TRL logs them:
        ``kl`` (mean ``kl_t``; present only when ``ref_logps`` is given), ``clip_ratio_low`` (ratio < 1 - eps with
        A < 0), ``clip_ratio_high`` (ratio > 1 + eps_high with A > 0), ``clip_ratio`` (either) and
        ``ratio_mean``. The loss is float32 (or wider if the inputs are).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps")
    logps = jnp.asarray(logps)
    dtype = jnp.promote_types(logps.dtype, jnp.float32)
    logps = logps.astype(dtype)
    old = jax.lax.stop_gradient(logps) if old_logps is None else jnp.asarray(old_logps, dtype)
    adv = jnp.asarray(advantages, dtype)[:, None]
    mask = jnp.asarray(mask).astype(dtype)
    chex.assert_rank(logps, 2)
    chex.assert_equal_shape([logps, old, mask, *([] if ref_logps is None else [jnp.asarray(ref_logps)])])
    chex.assert_shape(adv, (logps.shape[0], 1))
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high

    ratio = jnp.exp(logps - old)
    per_token = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - eps_low, 1 + eps_high) * adv)
    metrics = {}
    if ref_logps is not None:
        delta = jnp.asarray(ref_logps, dtype) - logps
        kl = jnp.exp(delta) - delta - 1
        if use_bias_correction_kl:
            kl = kl * ratio
        metrics["kl"] = kl
        if beta != 0.0:
            per_token = per_token + beta * kl
    loss = _aggregate(per_token, mask, loss_type, max_completion_length, num_items_in_batch)

    low = (ratio < 1 - eps_low) & (adv < 0)
    high = (ratio > 1 + eps_high) & (adv > 0)
    metrics |= {"clip_ratio_low": low, "clip_ratio_high": high, "clip_ratio": low | high, "ratio_mean": ratio}
    n_tokens = jnp.maximum(mask.sum(), 1)
    metrics = {k: jax.lax.stop_gradient((v * mask).sum() / n_tokens).astype(jnp.float32) for k, v in metrics.items()}
    return loss, metrics

"""Group-relative advantages (TRL's GRPO definition), NaN-aware."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

STD_EPS = 1e-4  # TRL: (r - mean) / (std + 1e-4)
SCALES = ("group", "batch", "none")


def _nan_mean_std(x: Array, axis: int | None) -> tuple[Array, Array]:
    """Mean and sample std (ddof=1) of ``x`` over ``axis``, ignoring NaNs, with the axis kept.

    Fewer than two valid entries give std 0 (and no valid entry gives mean 0): never NaN.
    """
    valid = ~jnp.isnan(x)
    n = valid.sum(axis, keepdims=True)
    mean = jnp.where(valid, x, 0).sum(axis, keepdims=True) / jnp.maximum(n, 1)
    dev = jnp.where(valid, x - mean, 0)
    var = jnp.square(dev).sum(axis, keepdims=True) / jnp.maximum(n - 1, 1)
    return mean, jnp.sqrt(var)


def group_advantages(rewards: ArrayLike, group_size: int, scale: str = "group") -> Array:
    """GRPO advantages ``A = (r - mean_group) / (std + 1e-4)``.

    Args:
        rewards: ``[B]`` rewards, ``B = num_prompts * group_size``; consecutive rows form a group
            (rows ``k * group_size ... (k + 1) * group_size - 1`` are the completions of prompt ``k``).
        group_size: completions per prompt (static).
        scale: what the centred rewards are divided by, std always with ddof=1. ``"group"``: each group's
            std; ``"batch"``: one std over the whole batch (TRL's ``scale_rewards="batch"``; the mean stays
            per group); ``"none"``: nothing (Dr. GRPO).

    Returns:
        ``[B]`` advantages, float32 (or the rewards' dtype when wider).

    NaN rewards (a reward that does not apply) get advantage 0 and are left out of every mean and std, so
    they do not change the other rows' advantages. TRL instead ``nansum``s reward functions, which turns an
    all-None row into reward 0. A group with a single valid reward (``group_size=1`` included) is its own
    mean, so its advantage is 0, not NaN.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    rewards = jnp.asarray(rewards)
    rewards = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32))
    if rewards.ndim != 1 or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be [B] with B a multiple of group_size={group_size}, got {rewards.shape}")
    groups = rewards.reshape(-1, group_size)
    mean, std = _nan_mean_std(groups, axis=-1)
    if scale == "batch":
        std = _nan_mean_std(rewards, axis=None)[1]
    centred = groups - mean
    advantages = centred if scale == "none" else centred / (std + STD_EPS)
    return jnp.where(jnp.isnan(groups), 0, advantages).reshape(rewards.shape)

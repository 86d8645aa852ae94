"""Fitness shaping: raw population fitness -> per-member update weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from esjax.es.config import ESConfig

Array = jax.Array


def zscore(f: Array) -> Array:
    """``(f - mean) / (std + 1e-8)`` along axis 0 (ddof 0, as the paper), float32.

    Exactly constant slices map to zeros (not rounding noise over 1e-8). f: [N] or [N, G].
    """
    f = jnp.asarray(f, jnp.float32)
    z = (f - f.mean(axis=0)) / (f.std(axis=0) + 1e-8)
    return jnp.where(jnp.ptp(f, axis=0) == 0, 0.0, z)


def centered_ranks(f: Array) -> Array:
    """Ranks of f [N] scaled to [-0.5, 0.5] (OpenAI-ES / evosax), float32; ties share their average rank.

    Averaging tied ranks (instead of breaking ties by index) keeps the frequent ties of binary rewards from
    injecting index-dependent weights; without ties this equals ``argsort(argsort(f)) / (N - 1) - 0.5``.
    """
    f = jnp.asarray(f, jnp.float32)
    n = f.shape[0]
    if n == 1:
        return jnp.zeros_like(f)
    s = jnp.sort(f)
    # Average rank (lo + hi - 1) / 2 of each value, minus (n - 1) / 2, over n - 1; integer numerator: exact ties.
    twice_centered = jnp.searchsorted(s, f, side="left") + jnp.searchsorted(s, f, side="right") - n
    return twice_centered.astype(jnp.float32) / (2 * (n - 1))


def shape_fitness(config: ESConfig, fitness: Array) -> tuple[Array, dict[str, Array]]:
    """Update weights w [N] float32 from raw fitness [N] (or [N, G] per-prompt-group scores).

    1. Non-finite scores (NaN, +-inf) count as the worst: each is replaced by the smallest finite score of its
       column (by 0 where a column has none), so one diverged member cannot poison the update.
    2. [N, G] scores reduce to one fitness per member: the mean over groups, or with ``config.group_baseline``
       the mean over groups of each group's z-score across members. Subtracting only the group mean would be a
       no-op (the mean of centred columns is the centred mean); scaling by the group's spread makes every prompt
       group count equally, so easy or hard prompts with tiny score differences neither dominate nor vanish,
       and a group on which all members tie contributes exactly 0.
    3. ``config.shaping``: "zscore", "centered_rank" or "none" (raw fitness as weights).
    4. ``config.top_pairs`` = b: only the b antithetic pairs with the highest ``max(f_2k, f_2k+1)`` keep their
       weights, scaled by (N / 2) / b (ties go to the lower pair index).

    Returns ``(weights, metrics)``; metrics (float32 scalars): fitness_mean/std/min/max of the per-member fitness
    after step 1, and ``nonfinite`` (int32), the number of replaced scores.
    """
    f = jnp.asarray(fitness, jnp.float32)
    if f.ndim not in (1, 2) or f.shape[0] != config.population_size:
        raise ValueError(f"fitness must be [N] or [N, G] with N = {config.population_size}, got {f.shape}.")
    if config.group_baseline and f.ndim != 2:
        raise ValueError(f"group_baseline needs per-group fitness [N, G], got shape {f.shape}.")

    finite = jnp.isfinite(f)
    worst = jnp.min(jnp.where(finite, f, jnp.inf), axis=0)
    f = jnp.where(finite, f, jnp.where(jnp.isfinite(worst), worst, 0.0))

    if f.ndim == 2:
        member = (zscore(f) if config.group_baseline else f).mean(axis=1)
        f = f.mean(axis=1)
    else:
        member = f
    shape = {"zscore": zscore, "centered_rank": centered_ranks, "none": lambda x: x}[config.shaping]
    metrics = {"fitness_mean": f.mean(), "fitness_std": f.std(), "fitness_min": f.min(), "fitness_max": f.max(),
               "nonfinite": jnp.sum(~finite, dtype=jnp.int32)}
    weights = shape(member)
    if config.top_pairs is not None:
        pairs = weights.shape[0] // 2
        _, elite = jax.lax.top_k(jnp.maximum(member[0::2], member[1::2]), config.top_pairs)
        keep = jnp.zeros(pairs, jnp.float32).at[elite].set(pairs / config.top_pairs)
        weights = weights * jnp.repeat(keep, 2)
    return weights, metrics

"""Per-token log-probs and entropies from hidden states, chunked over the sequence to bound logits memory."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

LogitsFn = Callable[[Array], Array]  # hidden [B, c, D] -> logits [B, c, V]


def _logps_entropy(logits_fn: LogitsFn, temperature: float, hidden: Array, targets: Array) -> tuple[Array, Array]:
    """``(logps, entropy)``, each ``[B, c]`` float32, from ``hidden [B, c, D]`` and ``targets [B, c]``."""
    logits = logits_fn(hidden).astype(jnp.float32) / temperature
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    entropy = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
    return target_logits - lse, entropy


def to_chunks(x: Array, chunk_size: int) -> Array:
    """``[B, T, ...]`` -> ``[n, B, chunk_size, ...]``, zero-padding ``T`` up to ``n * chunk_size``."""
    B, T = x.shape[:2]
    n = -(-T // chunk_size)
    x = jnp.pad(x, [(0, 0), (0, n * chunk_size - T)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(B, n, chunk_size, *x.shape[2:]), 1, 0)


def from_chunks(x: Array, T: int) -> Array:
    """``[n, B, chunk_size]`` -> ``[B, T]``, dropping the padding."""
    n, B, c = x.shape
    return jnp.moveaxis(x, 0, 1).reshape(B, n * c)[:, :T]


def token_logps(
    hidden: Array,
    logits_fn: LogitsFn,
    targets: Array,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Array, Array]:
    """Log-probs of ``targets`` and entropies of the next-token distributions, at the sampling temperature.

    Args:
        hidden: ``[B, T, D]`` final hidden states (any float dtype); position ``t`` predicts ``targets[:, t]``.
        logits_fn: the output head, mapping hidden states ``[B, c, D]`` to logits ``[B, c, V]`` (cast to
            float32 here), so tied and untied heads and low-rank perturbations all fit, e.g.
            ``lambda h: h @ params["embed_tokens"]["embedding"].T``. It may close over traced parameters;
            gradients flow to them.
        targets: ``[B, T]`` int token ids.
        temperature: logits are divided by it before the softmax.
        chunk_size: tokens per chunk. ``T`` is padded up to a multiple of it and the chunks go through
            ``lax.map``, each under ``jax.checkpoint``, so neither the forward nor the backward pass holds
            more than ``B x chunk_size x V`` logits. None (or ``>= T``) computes in one piece.

    Returns:
        ``(logps, entropy)``, each ``[B, T]`` float32.
    """
    fn = functools.partial(_logps_entropy, logits_fn, temperature)
    T = targets.shape[1]
    if chunk_size is None or chunk_size >= T:
        return fn(hidden, targets)
    body = jax.checkpoint(lambda xs: fn(*xs), prevent_cse=False)
    logps, entropy = jax.lax.map(body, (to_chunks(hidden, chunk_size), to_chunks(targets, chunk_size)))
    return from_chunks(logps, T), from_chunks(entropy, T)

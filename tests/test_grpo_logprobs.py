"""Chunked per-token log-probs: agree with one-piece and direct log_softmax, in values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.grpo import token_logps

B, T, D, V = 2, 11, 8, 32


def setup(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k1, (B, T, D))
    head = jax.random.normal(k2, (D, V))
    targets = jax.random.randint(k3, (B, T), 0, V)
    return hidden, head, targets


def test_temperature_matches_direct_log_softmax():
    hidden, head, targets = setup()
    logps, entropy = token_logps(hidden, lambda h: h @ head, targets, temperature=0.7)
    log_probs = jax.nn.log_softmax((hidden @ head) / 0.7, axis=-1)
    expected = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    assert logps.shape == entropy.shape == (B, T) and logps.dtype == entropy.dtype == jnp.float32
    np.testing.assert_allclose(logps, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, -(jnp.exp(log_probs) * log_probs).sum(-1), rtol=1e-5, atol=1e-5)


def test_bf16_hidden_gives_float32():
    hidden, head, targets = setup()
    logps, _ = token_logps(hidden.astype(jnp.bfloat16), lambda h: h @ head.astype(jnp.bfloat16), targets)
    assert logps.dtype == jnp.float32


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 11, 64])  # 4 and 5 do not divide T = 11
def test_chunked_matches_unchunked_values_and_grads(chunk_size):
    hidden, head, targets = setup(1)
    weights = jax.random.normal(jax.random.key(2), (2, B, T))

    def objective(hidden, head, chunk):
        logps, entropy = token_logps(hidden, lambda h: h @ head, targets, temperature=0.9, chunk_size=chunk)
        return jnp.sum(weights[0] * logps + weights[1] * entropy), (logps, entropy)

    grad_fn = jax.jit(jax.grad(objective, argnums=(0, 1), has_aux=True), static_argnums=2)
    (gh, gw), (lp, ent) = grad_fn(hidden, head, chunk_size)
    (gh0, gw0), (lp0, ent0) = grad_fn(hidden, head, None)
    for a, b in ((lp, lp0), (ent, ent0), (gh, gh0), (gw, gw0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.abs(gw0).max() > 0


def _shapes(jaxpr):
    """Shapes of every value a jaxpr computes, nested jaxprs (scan, checkpoint, pjit) included."""
    for eqn in jaxpr.eqns:
        yield from (v.aval.shape for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _shapes(sub)


def test_chunked_backward_never_holds_more_than_a_chunk_of_logits():
    hidden, head, targets = setup()

    def loss(hidden, head):
        return token_logps(hidden, lambda h: h @ head, targets, chunk_size=4)[0].sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(hidden, head).jaxpr
    vocab_sized = [s for s in _shapes(jaxpr) if s and s[-1] == V]
    assert vocab_sized and all(np.prod(s) <= B * 4 * V for s in vocab_sized), vocab_sized

"""The ES update is the same function with and without jit (chex variants), and its boundary checks catch
mis-shaped pytrees before any arithmetic."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es import ESConfig, apply_update, init_state, update_state

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4), "b": jnp.zeros((4,), jnp.bfloat16)}
FITNESS = jnp.asarray([0.1, 0.9, 0.4, 0.4, 0.0, 1.0], jnp.float32)


class UpdateVariantsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_update_state_with_and_without_jit(self):
        config = ESConfig(population_size=6, sigma=0.1, alpha=0.05, antithetic=True, master_fp32=True)
        step = self.variant(update_state, static_argnums=0)
        state = init_state(config, PARAMS, jax.random.key(3))
        new, metrics = step(config, state, FITNESS)
        reference, _ = jax.jit(update_state, static_argnums=0)(config, state, FITNESS)
        chex.assert_trees_all_close(new.master, reference.master, rtol=1e-6, atol=1e-7)
        chex.assert_trees_all_equal_dtypes(new.params, PARAMS)
        chex.assert_trees_all_equal_shapes(new.master, PARAMS)
        assert int(new.iteration) == 1 and float(metrics["update_norm"]) > 0

    @chex.variants(with_jit=True, without_jit=True)
    def test_apply_update_with_and_without_jit(self):
        config = ESConfig(population_size=6, sigma=0.1, alpha=0.05, noise="lowrank", rank=2)
        step = self.variant(apply_update, static_argnums=0)
        moved = step(config, PARAMS, jax.random.key(1), 4, FITNESS)
        eager = apply_update(config, PARAMS, jax.random.key(1), 4, FITNESS)
        chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x, np.float32), moved),
                                    jax.tree.map(lambda x: np.asarray(x, np.float32), eager), rtol=1e-6, atol=1e-7)


def test_update_state_refuses_a_master_of_another_shape():
    config = ESConfig(population_size=6, master_fp32=True)
    state = init_state(config, PARAMS, jax.random.key(0))
    bad = state.replace(master={"w": jnp.zeros((4, 3)), "b": jnp.zeros((4,))})
    with pytest.raises(AssertionError, match="shapes"):
        update_state(config, bad, FITNESS)


def test_init_state_refuses_integer_leaves():
    with pytest.raises(AssertionError):
        init_state(ESConfig(population_size=6), {"w": jnp.zeros((2, 2), jnp.int32)}, jax.random.key(0))

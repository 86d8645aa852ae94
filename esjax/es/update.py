"""The ES update, regenerated from seeds: ``theta <- theta + alpha / N * sum_i w_i eps_i`` (accumulated in float32).

Pure functions (jit them with ``config`` static) plus a small optax-style state API for fp32 master weights and
optional optax optimizers.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from esjax.es.config import ESConfig
from esjax.es.noise import (FROZEN, LOWRANK, add_scaled, layer_mask, leaf_plan, leaf_scales, noise_key,
                            trainable_mask, unit_noise)
from esjax.es.shaping import shape_fitness
from esjax.common.layers import stack_layers, unstack_layers

Array = jax.Array
PyTree = Any


def es_gradient(config: ESConfig, params: PyTree, run_key: Array, iteration: int | Array, weights: Array, *,
                first_member: int | Array = 0) -> PyTree:
    """The ES direction ``(1 / N) * sum_i w_i eps_i``, float32, shaped like ``params`` (zeros on frozen leaves;
    each leaf times its ``noise.leaf_scales`` entry, as the perturbations were).

    Args:
      weights: float [M], shaped fitness of members ``first_member .. first_member + M - 1`` (M = N for the whole
        population). Partial sums over disjoint member slices add up to the full direction, so a device may
        sum its own members and ``psum``; ``first_member`` may be traced (``lax.axis_index``) and must be even
        with antithetic sampling.

    A leaf's layers are drawn together (on the layer-stacked view, :mod:`esjax.common.layers`), so the program has one
    noise loop per leaf name, not per layer. Full-rank leaves loop over members (``lax.fori_loop``), holding one
    leaf's noise at a time next to the fp32 accumulator; antithetic pairs draw their noise once, weighted by ``w_2k - w_2k+1``. Low-rank leaves draw all
    members' factors (small) and contract them in one fp32 einsum.
    """
    w = jnp.asarray(weights, jnp.float32) / config.population_size
    if config.antithetic:
        if w.shape[0] % 2:
            raise ValueError(f"With antithetic sampling, weights must cover whole pairs, got {w.shape[0]} members.")
        coeffs, first_index = w[0::2] - w[1::2], first_member // 2
    else:
        coeffs, first_index = w, first_member
    keys = jax.vmap(lambda index: noise_key(run_key, iteration, index))(first_index + jnp.arange(coeffs.shape[0]))
    view = stack_layers(params)  # a leaf's noise for all layers in one draw: one fused loop per leaf name
    plan = leaf_plan(config, view)

    def leaf_sum(leaf, kind, leaf_id, active):
        if kind == FROZEN:
            return jnp.zeros(leaf.shape, jnp.float32)
        noise = lambda key: unit_noise(config, kind, leaf.shape, key, leaf_id)  # noqa: E731
        if kind == LOWRANK:
            f = jax.vmap(noise)(keys)  # {"a": [K, (L,) m, r], "b": [K, (L,) n, r]}
            total = jnp.einsum("k,k...mr,k...nr->...mn", coeffs, f["a"], f["b"], precision=jax.lax.Precision.HIGHEST)
            return layer_mask(active, leaf.ndim) * total / math.sqrt(config.rank)
        body = lambda j, acc: acc + coeffs[j] * noise(keys[j])  # noqa: E731
        total = jax.lax.fori_loop(0, coeffs.shape[0], body, jnp.zeros(leaf.shape, jnp.float32))
        return layer_mask(active, leaf.ndim) * total

    scales = leaf_scales(config, view)
    return unstack_layers(jax.tree.unflatten(plan.treedef, [
        s * leaf_sum(*leaf) for *leaf, s in zip(jax.tree.leaves(view), plan.kinds, plan.ids, plan.active, scales)]))


def apply_update(config: ESConfig, params: PyTree, run_key: Array, iteration: int | Array, fitness: Array) -> PyTree:
    """One plain ES step (the paper): shape ``fitness`` [N] (or [N, G]), then ``theta + alpha * es_gradient``.

    Added in float32 and cast back to each leaf's dtype (in bf16 most of a 1e-5-sized step rounds away: keep
    fp32 master weights with :func:`update_state`); frozen leaves are returned untouched.
    """
    weights, _ = shape_fitness(config, fitness)
    grad = es_gradient(config, params, run_key, iteration, weights)
    alpha = config.alpha_at()(iteration)
    return _add(config, params, jax.tree.map(lambda g: alpha * g, grad))


@flax.struct.dataclass
class ESState:
    """ES training state (a pytree).

    Attributes:
      params: working parameters (any float dtype), the ones members perturb and evaluate.
      master: float32 copy of ``params`` when ``config.master_fp32``, else None; the update accumulates here.
      opt_state: optax state when ``config.optimizer`` is set, else None.
      iteration: int32 [] step counter, the ``iteration`` of the noise keys.
      run_key: PRNG key of the run.
    """

    params: PyTree
    master: PyTree | None
    opt_state: optax.OptState | None
    iteration: Array
    run_key: Array


def make_optimizer(config: ESConfig, params: PyTree) -> optax.GradientTransformation | None:
    """``optax.<optimizer>(learning_rate=<alpha schedule>, **optimizer_kwargs)``, or None without ``optimizer``.

    Masked to the trainable leaves of ``params``: frozen leaves get no optimizer state and no update (not even
    weight decay).
    """
    if config.optimizer is None:
        return None
    opt = getattr(optax, config.optimizer)(learning_rate=config.alpha_at(), **dict(config.optimizer_kwargs))
    return optax.masked(opt, trainable_mask(config, params))


def init_state(config: ESConfig, params: PyTree, run_key: Array) -> ESState:
    """Iteration 0: fp32 master copy and optimizer state as ``config`` asks. ``params``: floating leaves."""
    chex.assert_type(jax.tree.leaves(params), float)
    opt = make_optimizer(config, params)
    return ESState(params=params, master=_fp32(params) if config.master_fp32 else None,
                   opt_state=None if opt is None else opt.init(_fp32(params)),
                   iteration=jnp.zeros((), jnp.int32), run_key=run_key)


def update_state(config: ESConfig, state: ESState, fitness: Array) -> tuple[ESState, dict[str, Array]]:
    """One ES step from the fitness [N] (or [N, G]) of ``state``'s population; jit with ``config`` static.

    The step ``u`` is ``alpha_t * es_gradient`` (``alpha_t`` from ``config.alpha_at()`` at this iteration) or, with ``config.optimizer``, the optax update of the negated
    gradient estimate (optax minimises; ES ascends), so ``sgd`` reproduces the plain step. ``u`` is added to
    the float32 master weights (or to the params upcast to float32) and the params are that, cast to their dtype.
    Metrics: those of :func:`shape_fitness` plus ``update_norm`` (global L2 norm of ``u``).
    """
    if (state.master is not None) != config.master_fp32:
        raise ValueError(f"config.master_fp32={config.master_fp32} does not match the state (see init_state).")
    chex.assert_shape(state.iteration, ())
    if state.master is not None:
        chex.assert_trees_all_equal_shapes(state.params, state.master)
    weights, metrics = shape_fitness(config, fitness)
    grad = es_gradient(config, state.params, state.run_key, state.iteration, weights)
    theta = _fp32(state.params) if state.master is None else state.master
    opt = make_optimizer(config, state.params)
    if opt is None:
        alpha = config.alpha_at()(state.iteration)
        updates, opt_state = jax.tree.map(lambda g: alpha * g, grad), state.opt_state
    else:
        updates, opt_state = opt.update(jax.tree.map(jnp.negative, grad), state.opt_state, theta)
    theta = _add(config, theta, updates)
    new_state = state.replace(params=jax.tree.map(lambda t, p: t.astype(p.dtype), theta, state.params),
                              master=theta if config.master_fp32 else None, opt_state=opt_state,
                              iteration=state.iteration + 1)
    return new_state, metrics | {"update_norm": optax.tree.norm(updates),
                                 "alpha": jnp.asarray(config.alpha_at()(state.iteration), jnp.float32)}


def _add(config: ESConfig, params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` in float32, cast to each leaf's dtype; frozen leaves untouched."""
    return jax.tree.map(lambda keep, p, u: add_scaled(p, 1.0, u) if keep else p,
                        trainable_mask(config, params), params, updates)


def _fp32(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)

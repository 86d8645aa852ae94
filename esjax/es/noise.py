"""Seed-replayed ES noise over arbitrary parameter pytrees.

Member ``i``'s noise for one leaf is a pure function of (run key, iteration, member, leaf path)::

    k    = i // 2 if antithetic else i                      # noise index; sign = (-1) ** (i % 2) if antithetic
    key  = fold_in(fold_in(fold_in(run_key, iteration), k), crc32(path) & 0x7FFFFFFF)
    eps  = normal(key, leaf.shape, float32)                # full rank
    a, b = normal(ka, [m, r]), normal(kb, [n, r])          # low rank, (ka, kb) = split(key); E = a @ b.T / sqrt(r)

A layer-stacked view of the params (:mod:`esjax.common.layers`, for a scan over layers) gets, layer by layer, the
noise of the leaf it stacks (``path`` = "layers_<i>/..."): one fused draw for all layers, equal bit for bit.

``normal`` is ``jax.random.normal``, bit for bit, computed by :func:`standard_normal` (an unrolled Threefry that
XLA:CPU fuses into one loop: 2x faster there; the same program accelerators compile from ``jax.random``).

Nothing is stored or communicated: any device regenerates any member's noise, member ids are global, so the
noise does not depend on the device count. ``member`` and ``iteration`` may be traced int32 scalars (``vmap``,
``lax.axis_index`` inside ``shard_map``); the tree structure and the leaf paths are static.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from esjax.es.config import ESConfig
from esjax.common.layers import slice_paths

Array = jax.Array
PyTree = Any

FULL, LOWRANK, FROZEN = "full", "lowrank", "frozen"
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # Threefry-2x32's rotation constants (Salmon et al., SC'11)


def leaf_paths(params: PyTree) -> list[str]:
    """Path strings ("layers_0/self_attn/q_proj/kernel") of the leaves, in ``jax.tree.leaves`` order."""
    return [jax.tree_util.keystr(path, simple=True, separator="/")
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def leaf_ids(paths: list[str]) -> list[int]:
    """Stable 31-bit ids (crc32) of leaf paths; raises ValueError if two paths collide."""
    ids = [zlib.crc32(p.encode()) & 0x7FFFFFFF for p in paths]
    if len(set(ids)) != len(ids):
        seen: dict[int, str] = {}
        for path, i in zip(paths, ids):
            if i in seen:
                raise ValueError(f"Leaf paths {seen[i]!r} and {path!r} hash to the same noise id {i}; rename one.")
            seen[i] = path
    return ids


class LeafPlan(NamedTuple):
    """Static per-leaf facts, aligned with ``jax.tree.leaves(params)``.

    ``kinds``: "full", "lowrank" or "frozen" (:func:`leaf_kind`); ``ids``: the noise id (:func:`leaf_ids`), or for a
    layer-stacked leaf an int32 array [L] of its layers' ids; ``active``: None, or for a stacked leaf whose layers
    are partly frozen, a bool array [L] (frozen layers get zero noise).
    """

    treedef: jax.tree_util.PyTreeDef
    kinds: list[str]
    ids: list[int | np.ndarray]
    active: list[np.ndarray | None]


def leaf_kind(config: ESConfig, path: str, leaf: Any) -> str:
    """How a leaf is perturbed: ``"full"``, ``"lowrank"`` or ``"frozen"`` (no noise, never updated)."""
    if config.is_frozen(path) or not jnp.issubdtype(leaf.dtype, jnp.inexact):
        return FROZEN
    if config.noise == "full":
        return FULL
    if leaf.ndim == 2:
        return LOWRANK
    return FULL if config.non_matrix == "full" else FROZEN


def trainable_mask(config: ESConfig, params: PyTree) -> PyTree:
    """Python bools shaped like ``params``: True where the leaf gets noise and updates."""
    kinds = leaf_plan(config, params)[1]
    return jax.tree.unflatten(jax.tree.structure(params), [k != FROZEN for k in kinds])


def noise_index_and_sign(config: ESConfig, member: int | Array) -> tuple[int | Array, int | Array]:
    """Noise index k and sign (+1/-1) of a global member id; antithetic members 2k, 2k+1 share index k."""
    if not config.antithetic:
        return member, 1
    return member // 2, 1 - 2 * (member % 2)


def member_noise(config: ESConfig, params: PyTree, run_key: Array, iteration: int | Array,
                 member: int | Array) -> PyTree:
    """Member ``member``'s unit-scale noise eps_i, float32 and shaped like ``params``.

    Signed for antithetic pairs; zeros on frozen leaves; ``a @ b.T / sqrt(r)`` materialised on low-rank leaves.
    """
    factors = lowrank_factors(config, params, run_key, iteration, member)
    return jax.tree.map(_materialise, params, factors)


def lowrank_factors(config: ESConfig, params: PyTree, run_key: Array, iteration: int | Array,
                    member: int | Array) -> PyTree:
    """Member ``member``'s noise in factored form, one entry per leaf of ``params``.

    Low-rank leaves [m, n] -> ``{"a": [m, r], "b": [n, r]}`` float32 unit normals (antithetic sign on ``b``), so
    that eps = a @ b.T / sqrt(r); full-noise leaves -> signed float32 eps shaped like the leaf; frozen -> None.
    ``jax.tree.map(f, params, factors)`` pairs each param leaf with its entry. In ``noise="full"`` mode every
    trainable leaf is a full eps array.
    """
    index, sign = noise_index_and_sign(config, member)
    key = noise_key(run_key, iteration, index)
    plan = leaf_plan(config, params)

    def leaf_noise(leaf, kind, leaf_id, active):
        noise = unit_noise(config, kind, leaf.shape, key, leaf_id)
        if noise is None:
            return None
        factor = layer_mask(active, leaf.ndim if kind == FULL else 3)
        if config.antithetic:
            factor = sign * factor
        if kind == LOWRANK:
            return {"a": noise["a"], "b": factor * noise["b"]}
        return factor * noise

    return jax.tree.unflatten(plan.treedef, [leaf_noise(*leaf) for leaf in zip(jax.tree.leaves(params), plan.kinds,
                                                                               plan.ids, plan.active)])


def layer_mask(active: np.ndarray | None, ndim: int) -> Array | float:
    """1.0, or for a partly frozen stacked leaf its float32 [L, 1, ...] 0/1 layer mask of rank ``ndim``."""
    if active is None:
        return 1.0
    return jnp.asarray(active, jnp.float32).reshape(-1, *(1,) * (ndim - 1))


def leaf_scales(config: ESConfig, params: PyTree) -> list[Array | float]:
    """Per-leaf noise multipliers, aligned with ``jax.tree.leaves(params)``: 1.0 everywhere for
    ``noise_scale="uniform"``; for "rms", float32 ``rms(leaf) / rms(all trainable leaves)`` (1.0 on frozen leaves),
    so that ``sum(scale**2 * leaf.size)`` over trainable leaves equals their element count.
    """
    leaves, plan = jax.tree.leaves(params), leaf_plan(config, params)
    if config.noise_scale == "uniform":
        return [1.0] * len(leaves)
    # per original leaf (each layer of a stacked leaf on its own), in the same order, so that a stacked view and
    # the per-layer tree get the same scales bit for bit
    parts = [[x[i] for i in range(x.shape[0])] if np.ndim(ids) else [x] for x, ids in zip(leaves, plan.ids)]
    live = [[k != FROZEN and (a is None or bool(a[i])) for i in range(len(p))]
            for p, k, a in zip(parts, plan.kinds, plan.active)]
    names = [slice_paths(path, x) or [path] for path, x in zip(leaf_paths(params), leaves)]
    # summed in the per-layer tree's leaf order (its paths sorted key by key), whichever view this is
    sq = [q for _, q in sorted(((n.split("/"), jnp.sum(jnp.square(x.astype(jnp.float32))))
                                for p, on, ns in zip(parts, live, names) for x, o, n in zip(p, on, ns) if o),
                               key=lambda item: item[0])]
    if not sq:
        return [1.0] * len(leaves)
    total_rms = jnp.sqrt(sum(sq) / sum(x.size for p, on in zip(parts, live) for x, o in zip(p, on) if o))
    rms = lambda x, on: jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)))) / total_rms if on else 1.0  # noqa: E731
    return [rms(p[0], on[0]) if not np.ndim(ids) else
            jnp.stack([jnp.asarray(rms(x, o), jnp.float32) for x, o in zip(p, on)]).reshape(-1, *(1,) * (p[0].ndim))
            for p, on, ids in zip(parts, live, plan.ids)]


def perturb(config: ESConfig, params: PyTree, run_key: Array, iteration: int | Array, member: int | Array) -> PyTree:
    """``params + sigma * scale * eps_member`` (``scale`` from :func:`leaf_scales`), added in float32 and cast back
    to each leaf's dtype; frozen leaves as-is.

    Materialises the noise of every leaf (low-rank ones too): meant for full-rank ES, e.g. under ``vmap`` over
    members. :func:`lowrank_perturb` gives the factored form.
    """
    factors = lowrank_factors(config, params, run_key, iteration, member)
    scales = jax.tree.unflatten(jax.tree.structure(params), leaf_scales(config, params))
    return jax.tree.map(lambda p, f, s: p if f is None else add_scaled(p, config.sigma * s, _materialise(p, f)),
                        params, factors, scales)


def lowrank_perturb(config: ESConfig, params: PyTree, run_key: Array, iteration: int | Array,
                    member: int | Array) -> tuple[PyTree, PyTree]:
    """Factored perturbation, for a forward pass that computes ``x @ (W + a @ b.T)`` without materialising it.

    Returns ``(params', lowrank)``: ``params'`` has ``sigma * eps`` added to full-noise leaves only (low-rank and
    frozen leaves unchanged); ``lowrank`` mirrors ``params`` with ``{"a": [m, r], "b": [n, r]}`` float32 on
    low-rank leaves, ``b`` scaled by ``sign * sigma / sqrt(r)`` so that ``a @ b.T = sigma * eps``, and None elsewhere
    (``sigma`` times each leaf's :func:`leaf_scales` entry throughout).
    """
    factors = lowrank_factors(config, params, run_key, iteration, member)
    scales = jax.tree.unflatten(jax.tree.structure(params), leaf_scales(config, params))
    scale = config.sigma / math.sqrt(config.rank)
    dense = jax.tree.map(lambda p, f, s: add_scaled(p, config.sigma * s, f) if isinstance(f, jax.Array) else p,
                         params, factors, scales)
    lowrank = jax.tree.map(lambda p, f, s: {"a": f["a"], "b": scale * s * f["b"]} if isinstance(f, dict) else None,
                           params, factors, scales)
    return dense, lowrank


def noise_key(run_key: Array, iteration: int | Array, index: int | Array) -> Array:
    """Key of noise index ``index`` at ``iteration``: ``fold_in(fold_in(run_key, iteration), index)``."""
    return jax.random.fold_in(jax.random.fold_in(run_key, iteration), index)


def unit_noise(config: ESConfig, kind: str, shape: tuple[int, ...], key: Array,
               leaf_id: int) -> Array | dict[str, Array] | None:
    """Unsigned unit noise of one leaf from its :func:`noise_key` and :func:`leaf_ids` id.

    Full: float32 array of ``shape``; low-rank: ``{"a": [m, r], "b": [n, r]}`` float32; frozen: None.
    """
    if kind == FROZEN:
        return None
    if np.ndim(leaf_id):  # a layer-stacked leaf: each layer's own draw, all in one fused loop
        return jax.vmap(lambda i: unit_noise(config, kind, shape[1:], key, i))(jnp.asarray(leaf_id, jnp.uint32))
    key = jax.random.fold_in(key, leaf_id)
    if kind == FULL:
        return standard_normal(key, shape)
    key_a, key_b = jax.random.split(key)
    (m, n), r = shape, config.rank
    return {"a": standard_normal(key_a, (m, r)), "b": standard_normal(key_b, (n, r))}


def standard_normal(key: Array, shape: tuple[int, ...]) -> Array:
    """``jax.random.normal(key, shape, float32)``, bit for bit, as one elementwise computation.

    JAX lowers its Threefry hash on CPU as a rolled loop over the 20 rounds, each writing its state to memory;
    unrolled (as JAX itself lowers it for accelerators) XLA:CPU fuses hash, uniform and ``erf_inv`` into one
    vectorised loop with no temporaries, 2x faster. Elementwise in the flat index (``jax_threefry_partitionable``'s
    counter layout), so a leaf split over devices still generates only its own block. Traced once per shape (a
    cached inner ``jit``, in ``lax`` ops): a model has a few distinct leaf shapes and many leaves. Falls back to
    ``jax.random.normal`` for non-Threefry keys, the non-partitionable layout or 2^32 elements or more.
    """
    shape = tuple(int(d) for d in shape)
    threefry = jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and jax.random.key_impl(key) == "threefry2x32"
    if not threefry or not jax.config.jax_threefry_partitionable or math.prod(shape) >= 2 ** 32:
        return jax.random.normal(key, shape, jnp.float32)
    return _normal_from_key_data(jax.random.key_data(key), shape)


@functools.partial(jax.jit, static_argnums=1, inline=True)
def _normal_from_key_data(data: Array, shape: tuple[int, ...]) -> Array:
    """:func:`standard_normal` from uint32 [2] Threefry key data."""
    count = jnp.zeros(shape, jnp.uint32)  # the row-major flat index (its high word is 0 below 2^32 elements)
    for axis, stride in zip(range(len(shape)), np.cumprod((1, *shape[:0:-1]))[::-1]):
        count = lax.add(count, lax.mul(lax.broadcasted_iota(jnp.uint32, shape, axis), np.uint32(stride)))
    k0, k1 = lax.broadcast(data[0], shape), lax.broadcast(data[1], shape)
    bits = lax.bitwise_xor(*_threefry2x32(k0, k1, jnp.zeros(shape, jnp.uint32), count))
    # jax.random.uniform(key, shape, float32, nextafter(-1, 0), 1), then sqrt(2) * erf_inv, as jax.random.normal
    lo = np.nextafter(np.float32(-1), np.float32(0))
    mantissa = lax.bitwise_or(lax.shift_right_logical(bits, np.uint32(9)), np.float32(1).view(np.uint32))
    unit = lax.sub(lax.bitcast_convert_type(mantissa, jnp.float32), np.float32(1))
    u = lax.max(lax.add(lax.mul(unit, np.float32(1) - lo), lo), lo)
    return lax.mul(np.float32(np.sqrt(2)), lax.erf_inv(u))


def _threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds (Random123's), unrolled: uint32 key words and counters of one shape."""
    ks = (k0, k1, lax.bitwise_xor(lax.bitwise_xor(k0, k1), np.uint32(0x1BD11BDA)))
    x0, x1 = lax.add(x0, ks[0]), lax.add(x1, ks[1])
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = lax.add(x0, x1)
            rotated = lax.bitwise_or(lax.shift_left(x1, np.uint32(r)), lax.shift_right_logical(x1, np.uint32(32 - r)))
            x1 = lax.bitwise_xor(rotated, x0)
        x0 = lax.add(x0, ks[(i + 1) % 3])
        x1 = lax.add(lax.add(x1, ks[(i + 2) % 3]), np.uint32(i + 1))
    return x0, x1


def add_scaled(p: Array, scale: float | Array, delta: Array) -> Array:
    """``p + scale * delta`` computed in float32, cast back to ``p.dtype``."""
    return (p.astype(jnp.float32) + scale * delta).astype(p.dtype)


def leaf_plan(config: ESConfig, params: PyTree) -> LeafPlan:
    """Static per-leaf facts (:class:`LeafPlan`) of ``params`` or of its layer-stacked view."""
    kinds, ids, active, all_paths = [], [], [], []
    for path, leaf in zip(leaf_paths(params), jax.tree.leaves(params)):
        slices = slice_paths(path, leaf)
        if slices is None:
            kinds.append(leaf_kind(config, path, leaf))
            ids.append(leaf_ids([path])[0])
            active.append(None)
            all_paths.append(path)
            continue
        layer = jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
        layer_kinds = [leaf_kind(config, p, layer) for p in slices]
        live = sorted(set(layer_kinds) - {FROZEN})  # one kind at most: the layers share shape and dtype
        kinds.append(live[0] if live else FROZEN)
        ids.append(np.asarray(leaf_ids(slices), np.uint32))
        mixed = live and FROZEN in layer_kinds
        active.append(np.asarray([k != FROZEN for k in layer_kinds]) if mixed else None)
        all_paths += slices
    leaf_ids(all_paths)  # raises on a collision
    return LeafPlan(jax.tree.structure(params), kinds, ids, active)


def _materialise(p: Array, f: Array | dict[str, Array] | None) -> Array:
    """Dense float32 eps for one leaf from its :func:`lowrank_factors` entry (zeros when frozen)."""
    if f is None:
        return jnp.zeros(p.shape, jnp.float32)
    if isinstance(f, dict):
        r = f["a"].shape[-1]
        return jnp.matmul(f["a"], jnp.swapaxes(f["b"], -1, -2), precision=jax.lax.Precision.HIGHEST) / math.sqrt(r)
    return f

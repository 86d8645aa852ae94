"""Geometry of fine-tuning updates ``delta = theta_model - theta_base``: norms, cosines, spectra, ES theory.

Every array computation is one jitted function over the whole params pytree that returns a small pytree of
per-leaf float32 statistics (no update tree is kept between calls); grouping by layer or module type is a sum
over leaves on the host, so per-group squared norms add up to the global one::

    sq = leaf_sq_norms(base, model)                 # {"layers_0": {"mlp": {"up_proj": {"kernel": f32[]}}}, ...}
    stats = norm_stats(sq)                          # {"global", "per_layer", "per_module", "per_leaf"}
    cos = cosine_stats(leaf_inner(base, a, b), leaf_sq_norms(base, a), leaf_sq_norms(base, b))
    energy = energy_stats(leaf_singular_values(base, model), ks=(1, 4, 16))
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from esjax.es.noise import leaf_paths

PyTree = Any
MODULE_TYPES = ("q", "k", "v", "o", "gate", "up", "down", "norms", "embedding", "lm_head")
_PROJ = re.compile(r"(?:^|/)(q|k|v|o|gate|up|down)_proj/")


def module_type(path: str) -> str:
    """Module type of a leaf path: one of :data:`MODULE_TYPES` (biases go with their projection), else "other"."""
    if path.startswith("embed_tokens/"):
        return "embedding"
    if path.startswith("lm_head/"):
        return "lm_head"
    if (m := _PROJ.search(path)) is not None:
        return m.group(1)
    if any("norm" in part for part in path.split("/")[-2:-1]):
        return "norms"
    return "other"


def layer_of(path: str) -> str:
    """Layer group of a leaf path: "layers_<i>", "embedding", "final_norm", "lm_head", or its first component."""
    head = path.split("/", 1)[0]
    return {"embed_tokens": "embedding", "norm": "final_norm"}.get(head, head)


def layer_order(names: Iterable[str]) -> list[str]:
    """Layer groups in model order: embedding, layers_0..L-1 (numerically), final_norm, lm_head, others."""
    def key(name: str):
        m = re.fullmatch(r"layers_(\d+)", name)
        rank = {"embedding": 0, "final_norm": 2, "lm_head": 3}.get(name, 1 if m else 4)
        return rank, int(m.group(1)) if m else 0, name
    return sorted(set(names), key=key)


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


@jax.jit
def leaf_sq_norms(base: PyTree, model: PyTree) -> PyTree:
    """Per-leaf ``||model - base||^2`` (float32 scalars, computed in float32), shaped like the params tree."""
    return jax.tree.map(lambda b, m: jnp.sum(jnp.square(_f32(m) - _f32(b))), base, model)


@jax.jit
def leaf_inner(base: PyTree, a: PyTree, b: PyTree) -> PyTree:
    """Per-leaf ``<a - base, b - base>`` (float32 scalars)."""
    return jax.tree.map(lambda o, x, y: jnp.vdot(_f32(x) - _f32(o), _f32(y) - _f32(o)), base, a, b)


@jax.jit
def leaf_singular_values(base: PyTree, model: PyTree) -> PyTree:
    """Per-leaf singular values (float32 [min(m, n)], descending) of 2-D updates; other leaves get ``[]``
    (empty float32 arrays)."""
    def sv(b, m):
        d = _f32(m) - _f32(b)
        return jnp.linalg.svd(d, compute_uv=False) if d.ndim == 2 else jnp.zeros((0,), jnp.float32)
    return jax.tree.map(sv, base, model)


def _by_path(tree: PyTree) -> dict[str, np.ndarray]:
    return dict(zip(leaf_paths(tree), (np.asarray(x) for x in jax.tree.leaves(tree))))


def _group(values: Mapping[str, float], key: Callable[[str], str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for path, v in values.items():
        out[key(path)] = out.get(key(path), 0.0) + float(v)
    return out


def norm_stats(sq_norms: PyTree) -> dict[str, Any]:
    """L2 norms from per-leaf squared norms: ``global``, ``per_layer`` and ``per_module`` (groups in model /
    :data:`MODULE_TYPES` order) and ``per_leaf``; the squares of the group norms sum to the square of the global."""
    sq = {p: float(v) for p, v in _by_path(sq_norms).items()}
    layers = _group(sq, layer_of)
    modules = _group(sq, module_type)
    return {"global": math.sqrt(sum(sq.values())),
            "per_layer": {k: math.sqrt(layers[k]) for k in layer_order(layers)},
            "per_module": {k: math.sqrt(modules[k]) for k in (*MODULE_TYPES, "other") if k in modules},
            "per_leaf": {p: math.sqrt(v) for p, v in sq.items()}}


def _cos(dot: float, na: float, nb: float) -> float | None:
    return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else None


def cosine_stats(inner: PyTree, sq_a: PyTree, sq_b: PyTree) -> dict[str, Any]:
    """Cosine similarity of two updates: ``global``, ``per_layer``, ``per_module`` (None where an update is 0)."""
    dots, na, nb = ({p: float(v) for p, v in _by_path(t).items()} for t in (inner, sq_a, sq_b))
    out: dict[str, Any] = {"global": _cos(sum(dots.values()), sum(na.values()), sum(nb.values()))}
    module_order = lambda ks: [m for m in (*MODULE_TYPES, "other") if m in ks]  # noqa: E731
    for name, key, order in (("per_layer", layer_of, layer_order), ("per_module", module_type, module_order)):
        d, a, b = _group(dots, key), _group(na, key), _group(nb, key)
        out[name] = {k: _cos(d[k], a[k], b[k]) for k in order(d)}
    return out


def topk_energy(singular_values: np.ndarray, k: int) -> float | None:
    """Fraction of ``sum s^2`` in the top ``k`` singular values (None for a zero update)."""
    e = np.square(np.asarray(singular_values, np.float64))
    return float(e[:k].sum() / e.sum()) if e.sum() > 0 else None


def energy_stats(singular_values: PyTree, ks: Iterable[int] = (1, 4, 16)) -> dict[str, Any]:
    """How low-rank each matrix update is. ``per_leaf[path]``: ``{"top<k>": fraction, "stable_rank":
    ||d||_F^2 / ||d||_2^2, "rank_max": min(m, n)}``; ``per_module`` and ``global``: energy-weighted means of
    the fractions over matrices (``sum_leaves top-k energy / sum_leaves energy``)."""
    ks = tuple(ks)
    per_leaf, sums = {}, {}
    for path, s in _by_path(singular_values).items():
        if s.size == 0:
            continue
        e = np.square(s.astype(np.float64))
        per_leaf[path] = {**{f"top{k}": topk_energy(s, k) for k in ks},
                          "stable_rank": float(e.sum() / e[0]) if e[0] > 0 else None, "rank_max": int(s.size)}
        for group in ("global", module_type(path)):
            acc = sums.setdefault(group, np.zeros(len(ks) + 1))
            acc += [e[:k].sum() for k in ks] + [e.sum()]
    weighted = {g: {f"top{k}": float(v[i] / v[-1]) if v[-1] > 0 else None for i, k in enumerate(ks)}
                for g, v in sums.items()}
    return {"ks": list(ks), "global": weighted.get("global", {}),
            "per_module": {m: weighted[m] for m in (*MODULE_TYPES, "other") if m in weighted},
            "per_leaf": per_leaf}


def es_theory_norm(alpha: float, trained_params: int, iterations: int | float, population: int) -> float:
    """The ES displacement law for z-scored fitness: ``E||dtheta||^2 = alpha^2 d T / N``, so the expected norm is
    about ``alpha * sqrt(d T / N)`` (antithetic pairs with opposite fitness double the per-step variance)."""
    return alpha * math.sqrt(trained_params * iterations / population)


def update_geometry(base: PyTree, models: Mapping[str, PyTree], ks: Iterable[int] = (1, 4, 16),
                    spectra: bool = True) -> dict[str, Any]:
    """Norms (and top-k energy) of each model's update from ``base``, and cosines between every pair of updates:
    ``{"norms": {name: norm_stats}, "energy": {name: energy_stats}, "cosine": {"A vs B": cosine_stats}}``."""
    sq = {name: leaf_sq_norms(base, p) for name, p in models.items()}
    out: dict[str, Any] = {"norms": {name: norm_stats(s) for name, s in sq.items()}, "cosine": {}}
    names = list(models)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out["cosine"][f"{a} vs {b}"] = cosine_stats(leaf_inner(base, models[a], models[b]), sq[a], sq[b])
    if spectra:
        out["energy"] = {name: energy_stats(leaf_singular_values(base, p), ks) for name, p in models.items()}
    return out

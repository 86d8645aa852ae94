"""The decoder's layers stacked on a leading axis, for a ``lax.scan`` over layers.

Params are stored one subtree per layer (``"layers_0" ... "layers_{L-1}"``: HF names, checkpoints, ES noise keys and
freeze patterns all address a layer by its path). A program that scans the layers takes the *stacked view*
instead: ``{"layers": {... [L, ...]}}`` in place of the L subtrees, every other entry unchanged. XLA then compiles one
layer instead of L (and ES draws a leaf's noise for all layers in one fused loop), so compile time no longer grows
with depth: a Qwen2.5-7B rollout compiled for TPU in minutes instead of half an hour.

The stack is a copy unless it fuses into a computation that writes a new buffer anyway (a full-rank ES member's
perturbed weights are built stacked, at no extra cost). On CPU a scanned decode also copies each layer's weights
out of the stack per token (XLA:CPU cannot feed a dynamic slice to its matmul), so ``scan_layers: auto`` scans on
TPUs only; see :func:`esjax.models.decoder.with_layer_scan`.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
STACKED = "layers"
_LAYER = re.compile(r"layers_(\d+)")


def layer_count(tree: PyTree) -> int:
    """Number of ``layers_<i>`` entries at the top of ``tree`` (0 for a stacked view or a tree without layers)."""
    return sum(1 for key in tree if _LAYER.fullmatch(str(key))) if isinstance(tree, dict) else 0


def is_stacked(tree: PyTree) -> bool:
    return isinstance(tree, dict) and STACKED in tree


def stack_layers(tree: PyTree) -> PyTree:
    """``{"layers_0": t0, ..., "layers_{L-1}": t}`` -> ``{"layers": stack(t0 ... t), ...}`` (leaves gain a leading
    [L] axis; None entries stay None). A stacked view or a tree without layers is returned as it is."""
    n = layer_count(tree)
    if n == 0:
        return tree
    layers = [tree[f"layers_{i}"] for i in range(n)]
    rest = {k: v for k, v in tree.items() if not _LAYER.fullmatch(str(k))}
    return rest | {STACKED: jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(tree: PyTree) -> PyTree:
    """The inverse of :func:`stack_layers` (slices of the stacked leaves; other trees unchanged)."""
    if not is_stacked(tree):
        return tree
    stacked = tree[STACKED]
    n = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in tree.items() if k != STACKED}
    return rest | {f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)}


def is_stacked_path(path: str) -> bool:
    """Whether a leaf path (``"layers/self_attn/q_proj/kernel"``) is a stacked view's [L, ...] leaf."""
    return path.startswith(STACKED + "/")


def slice_paths(path: str, leaf: Any) -> list[str] | None:
    """The per-layer paths (``"layers_<i>/rest"``) of a stacked view's leaf at ``path`` (``"layers/rest"``), in
    layer order; None for a leaf that is not stacked."""
    if not is_stacked_path(path):
        return None
    rest = path[len(STACKED) + 1:]
    return [f"layers_{i}/{rest}" for i in range(leaf.shape[0])]

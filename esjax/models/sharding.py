"""Tensor-parallel layout of the decoder's parameters: which dimension of which leaf is split over the mesh's
``"model"`` axis (attention heads and MLP columns; o/down rows with one all-reduce after each; the vocabulary of
the embedding and of an untied head).

The same rules place every params-shaped leaf of an ES/GRPO state (fp32 master, optimizer moments), matched by
the end of the leaf's path, so checkpoints restore with the same layout. With a model axis, a matrix no rule
names is an error rather than a silent full copy on every device.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from esjax.common.errors import EsjaxError
from esjax.distributed.mesh import MODEL_AXIS, axis_size
from esjax.distributed.transfer import put_global
from esjax.models.decoder import param_shapes

PyTree = Any


class UnmatchedLeafError(EsjaxError, ValueError):
    """A matrix of a tree to be split over a model axis that no partition rule names."""


# (regex searched in the leaf path, spec of the leaf's dimensions). First match wins; kernels are [in, out].
PARTITION_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(^|/)(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", (None, MODEL_AXIS)),  # heads / MLP columns
    (r"(^|/)(q_proj|k_proj|v_proj|gate_proj|up_proj)/bias$", (MODEL_AXIS,)),
    (r"(^|/)(o_proj|down_proj)/kernel$", (MODEL_AXIS, None)),  # rows: partial sums, one all-reduce
    (r"(^|/)lm_head/kernel$", (None, MODEL_AXIS)),  # vocab-parallel logits
    (r"(^|/)embed_tokens/embedding$", (MODEL_AXIS, None)),  # vocab-parallel table (also the tied head)
)
_HEADS = {"q_proj": "num_attention_heads", "k_proj": "num_key_value_heads", "v_proj": "num_key_value_heads"}


def leaf_path(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def partition_spec(path: str, shape: Sequence[int], model_size: int, config: Any = None) -> P:
    """The :class:`PartitionSpec` of one parameter-shaped leaf (also optimizer moments and master copies).

    A dimension is split over ``model`` only when it divides evenly; with a ``ModelConfig``, q/k/v are split
    only when their head count does (else replicated: e.g. 2 KV heads on a model axis of 4), so that no
    attention head straddles two devices. Vectors and scalars no rule names (norms, o/down biases, counters)
    are replicated; a matrix no rule names raises :class:`UnmatchedLeafError`.
    """
    if model_size <= 1:
        return P()
    for pattern, dims in PARTITION_RULES:
        match = re.search(pattern, path)
        if match is None or len(dims) != len(shape):
            continue
        name = next((g for g in match.groups() if g and g.endswith("_proj")), None)
        if config is not None and name in _HEADS and getattr(config, _HEADS[name]) % model_size:
            return P()
        if all(d is None or shape[i] % model_size == 0 for i, d in enumerate(dims)):
            return P(*dims)
        return P()
    if len(shape) >= 2:  # a matrix nobody decided about: replicating it silently could exhaust device memory
        raise UnmatchedLeafError(f"no partition rule for the matrix {path!r} {tuple(shape)} on a model axis of "
                                 f"{model_size}: add a rule to esjax.models.sharding.PARTITION_RULES (a spec of "
                                 f"Nones replicates it)")
    return P()


def param_specs(tree: PyTree, model_size: int, config: Any = None) -> PyTree:
    """:func:`partition_spec` of every leaf of ``tree`` (params, an ES/GRPO state, ShapeDtypeStructs)."""
    def spec(path, x):
        shape = getattr(x, "shape", ())
        return partition_spec(leaf_path(path), shape, model_size, config)
    return jax.tree_util.tree_map_with_path(spec, tree)


def tree_shardings(mesh: Mesh, tree: PyTree, config: Any = None) -> PyTree:
    """NamedShardings for ``tree`` on ``mesh``: replicated over population/data, split over ``model`` by rule."""
    specs = param_specs(tree, axis_size(mesh, MODEL_AXIS), config)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def param_shardings(mesh: Mesh, config: Any, dtype: Any = "float32") -> PyTree:
    """Shardings of a model's params (from its ModelConfig, without loading them)."""
    return tree_shardings(mesh, param_shapes(config, dtype), config)


def shard_tree(tree: PyTree, mesh: Mesh, config: Any = None) -> PyTree:
    """Place ``tree`` (host or device arrays) on ``mesh`` with :func:`tree_shardings`."""
    return jax.tree.map(put_global, tree, tree_shardings(mesh, tree, config))

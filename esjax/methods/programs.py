"""What ``esjax plan`` compiles of a method: its programs, lowered for abstract arguments on a mesh.

A method's description (:class:`esjax.methods.registry.MethodSpec`) builds its own programs with the builders its
training step uses; the plan (``esjax.run.compile``) compiles them and reads one device's memory.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


class Program(NamedTuple):
    """One compiled program of a run: ``lower()`` lowers it for its abstract arguments; ``resident`` is the bytes
    per device of run state that stays in memory while it runs without being one of its arguments."""

    name: str
    lower: Callable[[], Any]
    resident: int


class MethodPrograms(NamedTuple):
    """A method's programs for one iteration, and the params (sharded ``ShapeDtypeStruct``) and resident bytes the
    evaluation program runs beside."""

    programs: list[Program]
    params: Any
    resident: int


def placed(tree: Any, shardings: Any) -> Any:
    """``tree`` of shapes as ``jax.ShapeDtypeStruct`` carrying ``shardings`` (a matching tree)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def abstract(mesh: Any, shape: tuple[int, ...], dtype: Any, spec: P = P()) -> jax.ShapeDtypeStruct:
    """An abstract array of ``shape`` on ``mesh`` (replicated unless ``spec``)."""
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def abstract_key(mesh: Any) -> jax.ShapeDtypeStruct:
    """An abstract, replicated PRNG key."""
    key = jax.eval_shape(lambda: jax.random.key(0))
    return abstract(mesh, key.shape, key.dtype)


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct`` (the largest shard of each leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            continue
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
    return total

"""Host <-> device transfer on a (multi-process) mesh: place a host value, read back this process's rows, and
assemble per-process rows everywhere.

What crosses hosts per iteration is small: ES all-gathers N fitness values (plus a few per-member statistics)
and every device recomputes the update from the seeds; GRPO all-gathers the K rollout rows' rewards and the
gradient is all-reduced inside the jitted train step. Generated tokens never leave the host that produced them:
each process reads back only its addressable shards (:func:`addressable_rows`) and scores them itself.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from esjax.distributed.cluster import allgather


def put_global(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """Place a value with ``sharding``; host values must be the GLOBAL array, identical on every process.

    One process: ``jax.device_put``. Several: each process copies only the blocks of its own devices
    (``make_array_from_callback``), without the all-gather ``device_put`` does to check that hosts agree.
    Device arrays are resharded with ``device_put``.
    """
    if isinstance(x, jax.Array) and (x.is_fully_addressable is False or sharding.is_fully_addressable):
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # typed PRNG key: place its data
        return jax.random.wrap_key_data(put_global(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(x: Any, mesh: Mesh) -> jax.Array:
    """A host value on every device of ``mesh`` (same value on every process)."""
    return put_global(x, NamedSharding(mesh, P()))





def addressable_rows(*arrays: jax.Array) -> tuple[np.ndarray, list[np.ndarray]]:
    """This process's rows of arrays sharded along their leading axis, each row once (a row replicated over
    the model axis is read from one device): ``(row ids [R], [host array [R, ...] per input])``, rows sorted.

    One process: every row. Nothing crosses hosts; only the local devices are read.
    """
    first = arrays[0]
    n = first.shape[0]
    spans = sorted({_span(s.index[0] if s.index else slice(None), n) for s in first.addressable_shards})
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s < merged[-1][1]:
            if e > merged[-1][1]:
                raise ValueError(f"overlapping row blocks {merged[-1]} and {(s, e)}")
            continue
        merged.append((s, e))
    ids = np.concatenate([np.arange(s, e) for s, e in merged]) if merged else np.zeros(0, np.int64)
    out = []
    for x in arrays:
        if getattr(x, "is_fully_addressable", True) and len(merged) == 1 and merged[0] == (0, n):
            out.append(np.asarray(x))
            continue
        blocks = {}
        for shard in x.addressable_shards:
            span = _span(shard.index[0] if shard.index else slice(None), n)
            if span in merged and span not in blocks:
                blocks[span] = np.asarray(shard.data)
        out.append(np.concatenate([blocks[s] for s in merged]) if merged else np.zeros((0, *x.shape[1:]), x.dtype))
    return ids, out


def to_host(x: jax.Array) -> np.ndarray:
    """The whole global array on this host (gathered over processes when it is not fully addressable)."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_rows(ids: np.ndarray, values: Any, n: int) -> np.ndarray:
    """Assemble [n, ...] from every process's ``(ids, values)`` (each row supplied by at least one process).

    This is the only host-to-host traffic of an iteration: N fitness values (ES) or K rewards (GRPO).
    """
    values = np.asarray(values)
    full = np.zeros((n, *values.shape[1:]), values.dtype)
    have = np.zeros(n, bool)
    full[ids], have[ids] = values, True
    if jax.process_count() == 1:
        if not have.all():
            raise ValueError(f"rows {np.flatnonzero(~have)[:8].tolist()} missing")
        return full
    packed = np.concatenate([full.reshape(n, -1).view(np.uint8), have[:, None].astype(np.uint8)], axis=1)
    gathered = allgather(packed)  # one collective: the rows' bytes and the "this process has it" flags
    all_have = gathered[:, :, -1].astype(bool)
    all_full = np.ascontiguousarray(gathered[:, :, :-1]).view(values.dtype).reshape(-1, *full.shape)
    owner = np.argmax(all_have, axis=0)
    if not all_have.any(axis=0).all():
        raise ValueError(f"rows {np.flatnonzero(~all_have.any(axis=0))[:8].tolist()} are on no process")
    return all_full[owner, np.arange(n)]



def _span(index: slice, n: int) -> tuple[int, int]:
    start, stop, _ = index.indices(n)
    return start, stop

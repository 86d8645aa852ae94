"""Multi-host runs on JAX's own multi-controller runtime: one process per host, one global device mesh.

Every process runs the same program (``esjax train config.yaml`` on every host). :func:`initialize` joins the
processes with ``jax.distributed.initialize`` (Cloud TPU: automatic; SLURM or ``ESJAX_*`` variables: explicit;
one process: nothing to do). After that ``jax.devices()`` lists every device of every host, a
:class:`~jax.sharding.Mesh` built by :func:`build_mesh` spans them all, and jitted functions over that mesh run
on every host at once, exchanging data only through XLA collectives.

Mesh axes:
    ``population`` (ES) / ``data`` (GRPO): members / rollout rows are split along it; parameters are replicated.
    ``model``: tensor parallelism inside a group of devices (attention heads and MLP columns, see
        :data:`PARTITION_RULES`); the innermost axis, so a model group sits on one host's fast interconnect.

What crosses hosts per iteration is small: ES all-gathers N fitness values (plus a few per-member statistics)
and every device recomputes the update from the seeds; GRPO all-gathers the K rollout rows' rewards and the
gradient is all-reduced inside the jitted train step. Generated tokens never leave the host that produced them:
each process reads back only its addressable shards (:func:`addressable_rows`) and scores them itself.

Seed-replayed noise of a sharded leaf is generated inside jit with the leaf's sharding; with
``jax_threefry_partitionable`` (default True since JAX 0.5) every device draws just its own block and the values
are those of the unsharded draw, so the noise does not depend on the mesh (see :func:`sharded_normal`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

POPULATION_AXIS, DATA_AXIS, MODEL_AXIS = "population", "data", "model"
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "ESJAX_COORDINATOR", "ESJAX_NUM_PROCESSES", "ESJAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS, ENV_MODE, ENV_PORT = "ESJAX_LOCAL_DEVICE_IDS", "ESJAX_DISTRIBUTED", "ESJAX_COORDINATOR_PORT"
DEFAULT_PORT = 8476

PyTree = Any


# --------------------------------------------------------------------------------------------- process group
@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How to call ``jax.distributed.initialize``: ``source`` is "env", "slurm" or "tpu" (no arguments)."""

    source: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.source == "tpu":
            return {}
        out = dict(coordinator_address=self.coordinator, num_processes=self.num_processes, process_id=self.process_id)
        if self.local_device_ids is not None:
            out["local_device_ids"] = list(self.local_device_ids)
        return out


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    process_id: int
    num_processes: int
    source: str  # "single", "env", "slurm", "tpu" or "already" (initialised before)
    coordinator: str | None = None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'node[003-007,9],gpu1' -> 'node003'; 'a,b' -> 'a'."""
    nodelist = nodelist.strip()
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,-]", ranges, maxsplit=1)[0]


def cluster_from_env(env: Mapping[str, str] | None = None) -> ClusterSpec | None:
    """Where the process group comes from, read from ``env`` (default ``os.environ``); None for one process.

    In order: ``ESJAX_DISTRIBUTED=off`` (never), ``ESJAX_COORDINATOR`` + ``ESJAX_NUM_PROCESSES`` +
    ``ESJAX_PROCESS_ID`` (optional ``ESJAX_LOCAL_DEVICE_IDS=0,1``), a SLURM job step with more than one task
    (``SLURM_NTASKS``, ``SLURM_PROCID``, first host of ``SLURM_STEP_NODELIST``/``SLURM_JOB_NODELIST``/
    ``SLURM_NODELIST`` on port ``ESJAX_COORDINATOR_PORT`` or 8476), a Cloud TPU VM (``ESJAX_DISTRIBUTED=tpu``,
    or TPU worker variables / libtpu detected by JAX) where JAX finds everything itself.
    """
    env = os.environ if env is None else env
    mode = env.get(ENV_MODE, "auto").lower()
    if mode in ("off", "0", "false", "none"):
        return None
    if mode == "tpu":
        return ClusterSpec("tpu")
    local = env.get(ENV_LOCAL_DEVICE_IDS)
    local_ids = tuple(int(i) for i in local.split(",") if i.strip()) if local else None
    if env.get(ENV_COORDINATOR) or env.get(ENV_NUM_PROCESSES):
        missing = [k for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not env.get(k)]
        if missing:
            raise ValueError(f"multi-process run: set {', '.join(missing)} as well "
                             f"({ENV_COORDINATOR}=host:port, {ENV_NUM_PROCESSES}=N, {ENV_PROCESS_ID}=0..N-1)")
        n, pid = int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
        if not 0 <= pid < n:
            raise ValueError(f"{ENV_PROCESS_ID}={pid} must be in [0, {ENV_NUM_PROCESSES}={n})")
        if n == 1:
            return None
        address = env[ENV_COORDINATOR]
        if ":" not in address:
            address = f"{address}:{env.get(ENV_PORT, DEFAULT_PORT)}"
        return ClusterSpec("env", address, n, pid, local_ids)
    if env.get("SLURM_NTASKS") and env.get("SLURM_PROCID") and int(env["SLURM_NTASKS"]) > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("SLURM_NTASKS > 1 but no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST")
        address = f"{first_slurm_host(nodelist)}:{env.get(ENV_PORT, DEFAULT_PORT)}"
        return ClusterSpec("slurm", address, int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]), local_ids)
    if mode == "auto" and _on_cloud_tpu(env):
        return ClusterSpec("tpu")
    return None


def _on_cloud_tpu(env: Mapping[str, str]) -> bool:
    if any(env.get(k) for k in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")):
        return True
    try:
        from jax._src import cloud_tpu_init  # set by JAX when libtpu is installed and TPU chips are present
        return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
    except Exception:  # noqa: BLE001 - a private flag; absent means "not detected"
        return False


def initialize(env: Mapping[str, str] | None = None, **kwargs: Any) -> ProcessInfo:
    """Join this process to the run's process group (see :func:`cluster_from_env`); a no-op for one process.

    Call it first, before anything touches a JAX device (the CLI does). ``kwargs`` go to
    ``jax.distributed.initialize`` (e.g. ``initialization_timeout``). Idempotent.
    """
    if jax.distributed.is_initialized():
        return ProcessInfo(jax.process_index(), jax.process_count(), "already")
    spec = cluster_from_env(env)
    if spec is None:
        return ProcessInfo(0, 1, "single")
    try:
        jax.distributed.initialize(**spec.kwargs(), **kwargs)
    except RuntimeError as e:
        if "before" in str(e).lower() or "backend" in str(e).lower():
            raise RuntimeError(f"esjax.distributed.initialize() must run before any JAX computation ({e})") from e
        raise
    return ProcessInfo(jax.process_index(), jax.process_count(), spec.source, spec.coordinator)


def is_main_process() -> bool:
    """True on process 0, the one that logs, prints progress and writes metrics, plots and summaries."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier over all processes (no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def broadcast_from_main(value: Any) -> Any:
    """Process 0's value of a small numpy-compatible pytree, on every process (identity with one process)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return multihost_utils.broadcast_one_to_all(value)


def allgather(x: Any) -> np.ndarray:
    """Stack a host value of identical shape from every process: [num_processes, *x.shape] (numpy)."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils
    raw = np.ascontiguousarray(x).reshape(-1).view(np.uint8)  # bytes: exact for any dtype (float64 without x64)
    out = np.asarray(multihost_utils.process_allgather(raw, tiled=False), np.uint8)
    return out.reshape(jax.process_count(), -1).view(x.dtype).reshape(jax.process_count(), *x.shape)


# ------------------------------------------------------------------------------------------------------- mesh
def build_mesh(axes: Mapping[str, int] | Sequence[tuple[str, int]], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh from named axis sizes in order, e.g. ``{"population": -1, "model": 2}`` (-1: the remaining devices).

    ``devices`` defaults to every device of every process. Devices are ordered by (process, local id) before
    reshaping, so the last axes (``model``) stay inside one host and each process owns a contiguous block of the
    first axis (its rows / members). On TPU, when all devices are used, the order follows the physical topology
    (``mesh_utils.create_device_mesh``).
    """
    items = list(axes.items()) if isinstance(axes, Mapping) else list(axes)
    if not items:
        raise ValueError("a mesh needs at least one axis")
    names = [str(n) for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate mesh axis names: {names}")
    all_devices = devices is None
    devices = sorted(jax.devices() if devices is None else list(devices),
                     key=lambda d: (d.process_index, d.id))
    sizes = [int(s) for _, s in items]
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive, with at most one -1: {dict(items)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh axes {dict(items)}")
        sizes[sizes.index(-1)] = len(devices) // known
    total = int(np.prod(sizes))
    if total > len(devices):
        raise ValueError(f"mesh {dict(zip(names, sizes))} needs {total} devices but only {len(devices)} are visible")
    chosen = devices[:total]
    if all_devices and total == len(devices) and chosen[0].platform == "tpu":
        from jax.experimental import mesh_utils
        try:
            return Mesh(mesh_utils.create_device_mesh(sizes, chosen), tuple(names))
        except (ValueError, NotImplementedError, AssertionError):
            pass
    return Mesh(np.asarray(chosen, dtype=object).reshape(sizes), tuple(names))


def axis_size(mesh: Mesh, name: str) -> int:
    return int(mesh.shape[name]) if name in mesh.axis_names else 1


# --------------------------------------------------------------------------------------- partitioning params
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
    attention head straddles two devices. Everything else (norms, o/down biases, scalars) is replicated.
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
    from esjax.models.decoder import param_shapes
    return tree_shardings(mesh, param_shapes(config, dtype), config)


def shard_tree(tree: PyTree, mesh: Mesh, config: Any = None) -> PyTree:
    """Place ``tree`` (host or device arrays) on ``mesh`` with :func:`tree_shardings`."""
    return jax.tree.map(put_global, tree, tree_shardings(mesh, tree, config))


# ----------------------------------------------------------------------------------------- host <-> devices
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


def rows_sharding(mesh: Mesh, axis: str) -> NamedSharding:
    """Leading dimension split over ``axis`` (members, rows), replicated over the other axes."""
    return NamedSharding(mesh, P(axis))


def local_row_range(sharding: jax.sharding.Sharding, shape: Sequence[int]) -> tuple[int, int]:
    """[start, stop) of the leading-axis rows this process's devices hold under ``sharding``: the slice of the
    global rows the process must load (contiguous with :func:`build_mesh`'s device order)."""
    shape = tuple(shape)
    spans = [_span(index[0] if index else slice(None), shape[0])
             for index in sharding.addressable_devices_indices_map(shape).values()]
    return min(s for s, _ in spans), max(e for _, e in spans)


def put_rows(local: Any, sharding: jax.sharding.Sharding, global_shape: Sequence[int], start: int) -> jax.Array:
    """A global array of ``global_shape`` from this process's rows ``local`` = global rows [start, start + len)."""
    local = np.asarray(local)
    global_shape = tuple(global_shape)

    def block(index):
        rows = _span(index[0], global_shape[0])
        if rows[0] < start or rows[1] > start + local.shape[0]:
            raise ValueError(f"rows {rows} are not among this process's rows [{start}, {start + local.shape[0]})")
        return local[(slice(rows[0] - start, rows[1] - start),) + tuple(index[1:])]
    return jax.make_array_from_callback(global_shape, sharding, block)


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


def process_slice(n: int, process_id: int | None = None, num_processes: int | None = None) -> slice:
    """Contiguous share of ``n`` items for a process (the first ``n % P`` processes take one more)."""
    p = jax.process_index() if process_id is None else process_id
    count = jax.process_count() if num_processes is None else num_processes
    base, extra = divmod(n, count)
    start = p * base + min(p, extra)
    return slice(start, start + base + (p < extra))


def _span(index: slice, n: int) -> tuple[int, int]:
    start, stop, _ = index.indices(n)
    return start, stop


# ----------------------------------------------------------------------------------------------------- noise
def check_partitionable_rng() -> None:
    """Sharded noise equals unsharded noise only with ``jax_threefry_partitionable`` (default True since JAX 0.5)."""
    if not jax.config.jax_threefry_partitionable:
        raise RuntimeError("esjax needs jax_threefry_partitionable=True for model-sharded ES noise "
                           "(jax.config.update('jax_threefry_partitionable', True))")


def sharded_normal(key: jax.Array, shape: Sequence[int], sharding: jax.sharding.Sharding,
                   dtype: Any = "float32") -> jax.Array:
    """Unit normal noise of ``shape`` generated directly into ``sharding`` (each device draws only its block);
    equal to ``jax.random.normal(key, shape)`` on one device. The seed replay of a model-sharded leaf."""
    check_partitionable_rng()
    return jax.jit(lambda k: jax.random.normal(k, tuple(shape), dtype), out_shardings=sharding)(key)


__all__ = [
    "POPULATION_AXIS", "DATA_AXIS", "MODEL_AXIS", "PARTITION_RULES", "ClusterSpec", "ProcessInfo", "initialize",
    "cluster_from_env", "first_slurm_host", "is_main_process", "sync", "broadcast_from_main", "allgather",
    "build_mesh", "axis_size", "partition_spec", "param_specs", "tree_shardings", "param_shardings",
    "shard_tree", "put_global", "replicate", "rows_sharding", "local_row_range", "put_rows", "addressable_rows",
    "to_host", "gather_rows", "process_slice", "check_partitionable_rng", "sharded_normal",
]

"""Process start-up on JAX's own multi-controller runtime: one process per host, joined by
``jax.distributed.initialize`` (Cloud TPU: automatic; SLURM or ``ESJAX_*`` variables: explicit; one process: nothing
to do), and the few host-level collectives a run needs (process 0's verdict, small all-gathers)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from esjax.common.errors import InputError

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "ESJAX_COORDINATOR", "ESJAX_NUM_PROCESSES", "ESJAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS, ENV_MODE, ENV_PORT = "ESJAX_LOCAL_DEVICE_IDS", "ESJAX_DISTRIBUTED", "ESJAX_COORDINATOR_PORT"
DEFAULT_PORT = 8476  # jax.distributed's own default coordinator port


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
        raise InputError(f"cannot parse SLURM node list {nodelist!r}")
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
            raise InputError(f"multi-process run: set {', '.join(missing)} as well "
                             f"({ENV_COORDINATOR}=host:port, {ENV_NUM_PROCESSES}=N, {ENV_PROCESS_ID}=0..N-1)")
        n, pid = int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
        if not 0 <= pid < n:
            raise InputError(f"{ENV_PROCESS_ID}={pid} must be in [0, {ENV_NUM_PROCESSES}={n})")
        if n == 1:
            return None
        address = env[ENV_COORDINATOR]
        if ":" not in address:
            address = f"{address}:{env.get(ENV_PORT, DEFAULT_PORT)}"
        return ClusterSpec("env", address, n, pid, local_ids)
    if env.get("SLURM_NTASKS") and env.get("SLURM_PROCID") and int(env["SLURM_NTASKS"]) > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise InputError("SLURM_NTASKS > 1 but no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST")
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

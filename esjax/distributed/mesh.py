"""Device meshes: named axes over every device of every process, ordered so that the inner axes stay on one host.

Axes of a training mesh:
    ``population`` (ES) / ``data`` (GRPO): members / rollout rows are split along it; parameters are replicated.
    ``model``: tensor parallelism inside a group of devices (attention heads and MLP columns, see
        :data:`esjax.models.sharding.PARTITION_RULES`); the innermost axis, so a model group sits on one host's
        fast interconnect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

POPULATION_AXIS, DATA_AXIS, MODEL_AXIS = "population", "data", "model"


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
    if dict(zip(names, sizes)).get(MODEL_AXIS, 1) > 1:
        check_partitionable_rng()
    if all_devices and total == len(devices) and chosen[0].platform == "tpu":
        from jax.experimental import mesh_utils
        try:
            return Mesh(mesh_utils.create_device_mesh(sizes, chosen), tuple(names))
        except (ValueError, NotImplementedError, AssertionError):
            pass
    return Mesh(np.asarray(chosen, dtype=object).reshape(sizes), tuple(names))


def axis_size(mesh: Mesh, name: str) -> int:
    return int(mesh.shape[name]) if name in mesh.axis_names else 1


def check_partitionable_rng() -> None:
    """Sharded noise equals unsharded noise only with ``jax_threefry_partitionable`` (default True since JAX 0.5):
    then each device of a model group draws just its block of a split leaf's noise, with the unsharded values."""
    if not jax.config.jax_threefry_partitionable:
        raise RuntimeError("esjax needs jax_threefry_partitionable=True for model-sharded ES noise "
                           "(jax.config.update('jax_threefry_partitionable', True))")

"""Target devices of ``esjax plan``: the local devices, or a Cloud TPU slice compiled for without one.

A slice is named as Cloud TPU names accelerator types: ``v4-8``, ``v5p-16`` (v4 and v5p count TensorCores, two per
chip), ``v5e-8`` / ``v5litepod-8``, ``v6e-8`` (v5e and v6e count chips). Its devices come from libtpu's topology
description (``jax.experimental.topologies.get_topology_desc``): programs lowered on a mesh of them compile with
libtpu's compiler on any host, a CPU-only one included (deviceless ahead-of-time compilation), and report the
memory one chip needs. Nothing runs on them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax

from esjax.common.errors import EsjaxError

GiB = 1 << 30
INSTALL_TPU = "pip install 'esjax[tpu]' (or pip install 'jax[tpu]'; Python >= 3.12 for jax 0.12)"


class PlanError(EsjaxError, ValueError):
    """A target, config or environment ``esjax plan`` cannot plan for (one line, naming the fix)."""


@dataclasses.dataclass(frozen=True)
class Generation:
    """A TPU generation: its topology name prefix, chip config, per-chip HBM, whether slice names count cores."""

    prefix: str
    chip_config: str
    hbm_gib: int
    counts_cores: bool
    dims: int  # 2-D torus (v5e, v6e) or 3-D (v4, v5p)


# Per-chip HBM from the Cloud TPU system-architecture pages: v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB.
GENERATIONS = {
    "v4": Generation("v4", "megacore", 32, True, 3),
    "v5p": Generation("v5p", "megacore", 95, True, 3),
    "v5e": Generation("v5e", "default", 16, False, 2),
    "v6e": Generation("v6e", "default", 32, False, 2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the programs are compiled for: ``devices`` (a list of jax devices), each with ``memory_bytes``
    (None when the platform does not say, as on CPU)."""

    name: str
    devices: tuple[Any, ...]
    memory_bytes: int | None
    kind: str
    deviceless: bool

    @property
    def count(self) -> int:
        return len(self.devices)


def slice_shape(name: str) -> tuple[Generation, tuple[int, ...]]:
    """``v5p-16`` -> (v5p, (2, 2, 2)): the chip grid of a slice name (raises :class:`PlanError`)."""
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
    gen = GENERATIONS.get(ALIASES.get(m.group(1), m.group(1))) if m else None
    if gen is None:
        raise PlanError(f"--topology {name!r}: unknown TPU slice; use local or a Cloud TPU name such as v4-8, "
                        f"v5e-8 (v5litepod-8), v5p-16, v6e-8")
    count = int(m.group(2))
    chips = count // 2 if gen.counts_cores else count
    grid = _grid(chips, gen.dims)
    if grid is None or (gen.counts_cores and count % 2):
        unit = "TensorCores (2 per chip)" if gen.counts_cores else "chips"
        raise PlanError(f"--topology {name!r}: {count} {unit} is not a {gen.prefix} slice shape; try "
                        f"{gen.prefix}-{8 if gen.counts_cores else 4} or {gen.prefix}-{16 if gen.counts_cores else 8}")
    return gen, grid


# Chip grids of the slice shapes Cloud TPU offers (power-of-two chip counts), by torus dimension.
GRIDS = {2: {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)},
         3: {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
             256: (4, 8, 8), 512: (8, 8, 8)}}


def _grid(chips: int, dims: int) -> tuple[int, ...] | None:
    return GRIDS[dims].get(chips)


def tpu_target(name: str) -> Target:
    """The devices of a TPU slice from libtpu's topology description (no TPU needed)."""
    gen, grid = slice_shape(name)
    try:
        import libtpu  # noqa: F401
        from jax.experimental import topologies
    except ImportError:
        raise PlanError(f"--topology {name}: compiling for a TPU slice needs libtpu: {INSTALL_TPU}") from None
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # not on a TPU VM: do not ask the metadata server
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: other processes may use libtpu too
    per_host = tuple(min(g, 2) for g in grid) + ((1,) if gen.dims == 2 else ())
    topology = f"{gen.prefix}:{'x'.join(map(str, grid))}"
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, chip_config_name=gen.chip_config,
                                            chips_per_host_bounds=per_host, num_slices=1,
                                            wrap=(False,) * len(per_host))
    except Exception as e:  # libtpu's errors are long C++ messages
        raise PlanError(f"--topology {name}: libtpu could not describe {topology} "
                        f"({' '.join(str(e).split())[:200]})") from None
    devices = tuple(desc.devices)
    return Target(name, devices, gen.hbm_gib * GiB, devices[0].device_kind, True)


def local_target() -> Target:
    """This process's view of every device (GPUs on a GPU host, simulated CPU devices in tests)."""
    devices = tuple(jax.devices())
    stats = jax.local_devices()[0].memory_stats() or {}
    return Target("local", devices, stats.get("bytes_limit"), devices[0].device_kind, False)


def target(name: str | None) -> Target:
    """``local`` (default) or a TPU slice name."""
    return local_target() if name in (None, "", "local") else tpu_target(name)

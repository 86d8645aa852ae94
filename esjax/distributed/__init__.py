"""Multi-host runs on JAX's own multi-controller runtime: one process per host, one global device mesh.

Every process runs the same program (``esjax train config.yaml`` on every host). :func:`initialize` joins the
processes (:mod:`.cluster`); after that ``jax.devices()`` lists every device of every host, a mesh built by
:func:`build_mesh` spans them all (:mod:`.mesh`), and jitted functions over that mesh run on every host at once,
exchanging data only through XLA collectives. The host side of an iteration, placing prompts and reading back
and gathering per-process rows, is :mod:`.transfer`. How parameters are split over the ``"model"`` axis lives
next to the model, in :mod:`esjax.models.sharding`.

Seed-replayed noise of a sharded leaf is generated inside jit with the leaf's sharding; with
``jax_threefry_partitionable`` (default True since JAX 0.5; :func:`build_mesh` checks it for a model axis)
every device draws just its own block and the values are those of the unsharded draw, so the noise does not
depend on the mesh.
"""

from esjax.distributed.cluster import (ClusterSpec, ProcessInfo, allgather, broadcast_from_main, cluster_from_env,
                                       first_slurm_host, initialize, is_main_process)
from esjax.distributed.mesh import (DATA_AXIS, MODEL_AXIS, POPULATION_AXIS, axis_size, build_mesh,
                                    check_partitionable_rng)
from esjax.distributed.transfer import addressable_rows, gather_rows, put_global, replicate, to_host

__all__ = [
    "ClusterSpec", "ProcessInfo", "allgather", "broadcast_from_main", "cluster_from_env", "first_slurm_host",
    "initialize", "is_main_process",
    "DATA_AXIS", "MODEL_AXIS", "POPULATION_AXIS", "axis_size", "build_mesh", "check_partitionable_rng",
    "addressable_rows", "gather_rows", "put_global", "replicate", "to_host",
]

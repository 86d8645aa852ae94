"""esjax checkpoints restored leaf by leaf straight into the target shardings: the values orbax restores, cast
per leaf, each leaf on its sharding (the host-memory side: benchmarks/host_memory.py's load_checkpoint stage)."""

import jax
import numpy as np
import orbax.checkpoint as ocp

from esjax import models
from esjax.distributed import build_mesh
from esjax.models.decoder import param_shapes
from esjax.models.sharding import param_shardings
from esjax.models.store import restore_params


def test_restore_equals_orbax_cast_and_placed_on_a_model_mesh(tiny_model_dirs, tmp_path):
    config, params = models.load_hf(tiny_model_dirs["qwen2"], dtype="float32")
    path = models.save_model(tmp_path / "ckpt", config, params)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    reference = ocp.StandardCheckpointer().restore(
        (path / "params").absolute(),
        jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), param_shapes(config)))
    mesh = build_mesh([("population", 2), ("model", 2)], jax.devices()[:4])
    shardings = param_shardings(mesh, config, "bfloat16")
    restored = restore_params(path / "params", config, "float32", shardings, cast="bfloat16")
    split = 0
    for got, want, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(reference),
                                   jax.tree.leaves(shardings)):
        assert got.sharding == sharding and got.dtype == jax.numpy.bfloat16
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jax.numpy.bfloat16)))
        split += got.addressable_shards[0].data.shape != got.shape
    assert split > 0  # some leaves are split over the model axis, restored block by block
    loaded = models.load_model(path, dtype="bfloat16")  # load_model casts while restoring
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(loaded.params))

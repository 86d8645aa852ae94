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


def test_export_in_row_blocks_writes_the_same_bytes(tiny_model_dirs, tmp_path, monkeypatch):
    from esjax.models import export
    source = tiny_model_dirs["llama"]
    config, params = models.load_hf(source)
    whole = models.save_hf(config, params, tmp_path / "whole", source_dir=source)
    monkeypatch.setattr(export, "EXPORT_BLOCK_BYTES", 1000)  # blocks of a few rows, tails clipped
    blocks = models.save_hf(config, params, tmp_path / "blocks", source_dir=source)
    files = sorted(p.name for p in whole.iterdir())
    assert files == sorted(p.name for p in blocks.iterdir()) and any(f.endswith(".safetensors") for f in files)
    for name in files:
        assert (whole / name).read_bytes() == (blocks / name).read_bytes(), name

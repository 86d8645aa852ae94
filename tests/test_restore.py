"""esjax checkpoints restored leaf by leaf straight into the target shardings: the values orbax restores, cast
per leaf, each leaf on its sharding (the host-memory side: benchmarks/host_memory.py's load_checkpoint stage)."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

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


@pytest.mark.parametrize("stored, out", [("float32", None), ("bfloat16", None), ("float32", "bfloat16")])
def test_export_streams_a_checkpoint_from_disk_to_the_same_bytes(tiny_model_dirs, tmp_path, monkeypatch, stored, out):
    """``open_model`` leaves a checkpoint's leaves on disk and ``save_hf`` reads each zarr chunk exactly once, in
    bands along the HF row axis, writing the bytes an export of the restored params writes (small chunks and
    blocks: bands of several chunks, a transposed kernel whose chunks split the other axis read whole, tails)."""
    from esjax.models import export, store
    source = tiny_model_dirs["llama"]
    config, params = models.load_hf(source, dtype=stored)
    monkeypatch.setattr(store, "WRITE_CHUNK_BYTES", 512 * np.dtype(jax.numpy.dtype(stored)).itemsize)  # small chunks
    ckpt = models.save_model(tmp_path / "ckpt", config, params, source_dir=source)
    restored = models.load_model(ckpt)
    reference = models.save_hf(restored.config, restored.params, tmp_path / "restored", source_dir=source, dtype=out)
    opened = models.open_model(ckpt)
    leaves = jax.tree.leaves(opened.params, is_leaf=lambda x: isinstance(x, store.StoredLeaf))
    assert all(isinstance(x, store.StoredLeaf) for x in leaves)
    assert any(x.ndim == 2 and x.chunks[0] < x.shape[0] and x.chunks[1] == x.shape[1] for x in leaves)  # k_proj
    reads, real_read = [], store.StoredLeaf.read
    monkeypatch.setattr(store.StoredLeaf, "read", lambda self, index=(), dtype=None: reads.append(
        (self.path.name, index)) or real_read(self, index, dtype))
    monkeypatch.setattr(export, "EXPORT_BLOCK_BYTES", 13056)  # the embedding: bands of 51 or 102 of 272 rows
    streamed = models.save_hf(opened.config, opened.params, tmp_path / "streamed", source_dir=opened.source_dir,
                              dtype=out)
    files = sorted(p.name for p in reference.iterdir())
    assert files == sorted(p.name for p in streamed.iterdir()) and any(f.endswith(".safetensors") for f in files)
    for name in files:
        assert (reference / name).read_bytes() == (streamed / name).read_bytes(), name
    by_leaf = {x.path.name: x for x in leaves}
    assert sorted({name for name, _ in reads}) == sorted(by_leaf)
    for name, leaf in by_leaf.items():  # every element read once, in bands of whole chunks
        grid = np.zeros(leaf.shape, int)
        for index in (index for n, index in reads if n == name):
            grid[index] += 1
            for axis, part in enumerate(index):
                start, stop, _ = part.indices(leaf.shape[axis])
                assert start % leaf.chunks[axis] == 0, (name, index)
                assert stop % leaf.chunks[axis] == 0 or stop == leaf.shape[axis], (name, index)
        assert (grid == 1).all(), name
    assert len(reads) > len(by_leaf)  # some leaves took several bands


def test_open_model_refuses_a_leaf_of_the_wrong_shape_before_writing(tiny_model_dirs, tmp_path):
    import shutil
    config, params = models.load_hf(tiny_model_dirs["qwen2"])
    ckpt = models.save_model(tmp_path / "ckpt", config, params)
    other, other_params = models.load_hf(tiny_model_dirs["llama"])
    wrong = models.save_model(tmp_path / "other", other, other_params)
    shutil.rmtree(ckpt / "params" / "norm.scale")
    shutil.copytree(wrong / "params" / "embed_tokens.embedding", ckpt / "params" / "norm.scale")
    with pytest.raises(models.CheckpointError, match="norm.scale: shape"):
        models.open_model(ckpt)

"""esjax model checkpoints (orbax params + config JSON + tokenizer files), and one loader for any model path.

Layout of an esjax model checkpoint directory::

    esjax_model.json   {"format": 1, "config": ModelConfig.to_dict(), "dtype": "float32"}; the config keeps the
                       source's config.json, generation_config.json and shard layout for export
    params/            orbax PyTree checkpoint of the params pytree (zarr, one array per leaf, 16 MiB chunks)
    tokenizer/         tokenizer files copied from the source HF directory (when it had any), with its
                       config.json, so that ``AutoTokenizer.from_pretrained`` loads it as from the source
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from esjax.common.files import publish_dir, temp_dir_beside
from esjax.common.paths import check_tree, inside, read_json
from esjax.models.config import ModelConfig, ModelConfigError
from esjax.models.decoder import Params, param_shapes
from esjax.models.hf import CheckpointError, copy_tokenizer_files, is_hf_dir, load_hf
from esjax.models.hub import resolve_model_path

MODEL_FILE = "esjax_model.json"
WRITE_CHUNK_BYTES = 16 << 20  # orbax writes each leaf in chunks of at most this size


def _save_params(directory: Path, params: Params) -> None:
    """Write ``params`` with orbax, holding about one chunk per leaf in flight beside them, not a second copy of
    the model (a whole-array transfer or OCDBT's write buffers would double the host memory of a conversion)."""
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False)
    chunked = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=WRITE_CHUNK_BYTES), params)
    absl = logging.getLogger("absl")
    absl.addFilter(_no_ocdbt_merge_note)  # orbax notes on every non-OCDBT save that it has nothing to merge
    try:
        ocp.Checkpointer(handler).save(directory, args=ocp.args.PyTreeSave(params, save_args=chunked))
    finally:
        absl.removeFilter(_no_ocdbt_merge_note)


def _no_ocdbt_merge_note(record: logging.LogRecord) -> bool:
    return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


class LoadedModel(NamedTuple):
    config: ModelConfig
    params: Params
    tokenizer_dir: Path | None  # where AutoTokenizer.from_pretrained finds the tokenizer, if anywhere
    source_dir: Path | None  # the HF directory the weights came from (configs and tokenizer for export)


def is_esjax_checkpoint(path: str | Path) -> bool:
    return os.path.lexists(Path(path) / MODEL_FILE)


def save_model(path: str | Path, config: ModelConfig, params: Params, source_dir: str | Path | None = None,
               *, overwrite: bool = False) -> Path:
    """Save params (orbax) + config (+ tokenizer files from ``source_dir``); written aside, then renamed.

    Multi-host: every process calls it (orbax writes each process's shards); only process 0 creates the temporary
    directory (its name is then shared), writes the JSON and tokenizer files and renames it into place.
    """
    path = Path(path).absolute()
    main = jax.process_index() == 0
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty (pass --overwrite to replace it)")
    tmp = _shared_name(temp_dir_beside(path) if main else None)
    try:
        _save_params(tmp / "params", params)
        if not main:
            _sync(f"esjax_save_model_end:{path}")
            return path
        if source_dir is not None:
            (tmp / "tokenizer").mkdir()
            if copy_tokenizer_files(Path(source_dir), tmp / "tokenizer"):
                (tmp / "tokenizer" / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
            else:
                (tmp / "tokenizer").rmdir()
        dtype = jax.tree.leaves(params)[0].dtype
        (tmp / MODEL_FILE).write_text(json.dumps({"format": 1, "config": config.to_dict(), "dtype": str(dtype)}, indent=2))
        publish_dir(tmp, path)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _sync(f"esjax_save_model_end:{path}")
    return path


def _shared_name(tmp: Path | None) -> Path:
    """Process 0's temporary directory, made known to every process (a no-op in a single-process run)."""
    if jax.process_count() == 1:
        return tmp
    from jax.experimental import multihost_utils
    raw = np.zeros(4096, np.uint8)
    if tmp is not None:
        encoded = np.frombuffer(str(tmp).encode(), np.uint8)
        raw[: encoded.size] = encoded
    raw = np.asarray(multihost_utils.broadcast_one_to_all(raw))
    return Path(raw.tobytes().rstrip(b"\0").decode())


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


STORED_DTYPES = ("float32", "bfloat16", "float16")


def read_model_config(path: str | Path) -> tuple[ModelConfig, str]:
    """``(config, dtype)`` from an esjax checkpoint's ``esjax_model.json``, every field checked
    (:meth:`ModelConfig.from_dict`); the file a regular file inside ``path``."""
    file = inside(path, MODEL_FILE)
    meta = read_json(file)
    if not isinstance(meta, dict) or meta.get("format") != 1:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise ModelConfigError(f"{file}: unknown checkpoint format {str(found)[:80]!r}")
    if meta.get("dtype") not in STORED_DTYPES:
        raise ModelConfigError(f"{file}: field 'dtype' = {str(meta.get('dtype'))[:80]!r} is not one of "
                               f"{', '.join(STORED_DTYPES)}")
    return ModelConfig.from_dict(meta.get("config"), f"{file}: config"), meta["dtype"]


def check_fits(config: ModelConfig, dtype: Any, where: str) -> None:
    """Refuse a model whose weights alone exceed this machine's memory (before anything is allocated)."""
    need = config.num_params() * np.dtype(jnp.dtype(dtype)).itemsize
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ModelConfigError(f"{where}: the config describes {config.num_params():,} parameters ({need / 2**30:.1f} "
                               f"GiB in {jnp.dtype(dtype).name}), more than this machine's {have / 2**30:.1f} GiB "
                               f"of memory")


class StoredLeaf:
    """One params leaf left in its zarr array on disk (an esjax checkpoint's), read block by block.

    ``shape`` / ``ndim`` / ``dtype`` as the leaf's (``dtype`` the checkpoint's, what ``read`` returns by default);
    ``chunks``: the array's chunk shape, so that reading in whole chunks reads each one once.
    """

    def __init__(self, array: Any, dtype: Any, path: Path):
        self.array, self.path = array, path
        self.shape, self.ndim, self.dtype = tuple(array.shape), len(array.shape), np.dtype(jnp.dtype(dtype))
        self.chunks = tuple(array.chunk_layout.read_chunk.shape)

    def read(self, index: tuple = (), dtype: Any = None) -> np.ndarray:
        """``leaf[index]`` as a host array in ``dtype`` (default: the leaf's)."""
        return np.asarray(self.array[index].read().result()).astype(dtype or self.dtype, copy=False)

    def __repr__(self) -> str:
        return f"StoredLeaf({self.path}, {self.dtype.name}{list(self.shape)})"


def open_params(directory: str | Path, config: ModelConfig, dtype: Any) -> Params | None:
    """The params tree of an orbax checkpoint stored in ``dtype`` as :class:`StoredLeaf` handles, nothing read yet
    but each zarr array's metadata (its shape checked against the config); None when the leaves are not zarr
    arrays of their own (an OCDBT checkpoint, which only orbax reads)."""
    directory = Path(directory).absolute()
    shapes = param_shapes(config, dtype)
    names = jax.tree.map_with_path(lambda path, _: ".".join(str(getattr(k, "key", k)) for k in path), shapes)
    if not all((directory / n / ".zarray").is_file() for n in jax.tree.leaves(names)):
        return None
    import tensorstore as ts

    def leaf(name: str, shape: jax.ShapeDtypeStruct) -> StoredLeaf:
        spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(directory / name)}}
        stored = StoredLeaf(ts.open(spec, open=True, read=True).result(), dtype, directory / name)
        if stored.shape != tuple(shape.shape):
            raise CheckpointError(f"{directory / name}: shape {stored.shape}, the config needs {tuple(shape.shape)}")
        return stored
    return jax.tree.map(leaf, names, shapes)


def restore_params(directory: str | Path, config: ModelConfig, dtype: Any, sharding: Any = None,
                   cast: Any = None) -> Params:
    """Restore an orbax params tree stored in ``dtype``, placed with ``sharding`` (a Sharding or a matching pytree;
    default: this process's first device) and cast to ``cast`` (default: ``dtype``).

    Leaf by leaf, straight into the target shardings: each device block of a leaf is read from its zarr array and
    placed, so the host holds the params plus about one leaf in flight (orbax's whole-tree restore and a cast of
    the whole tree afterwards peaked at 1.5-1.8x the weights). A checkpoint without per-leaf zarr arrays (OCDBT)
    goes through orbax.
    """
    directory = Path(directory).absolute()
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = param_shapes(config, dtype)
    shard_tree = sharding if not isinstance(sharding, jax.sharding.Sharding) else jax.tree.map(lambda _: sharding,
                                                                                                 shapes)
    stored = open_params(directory, config, dtype)
    if stored is None:
        placed = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shard_tree)
        params = ocp.StandardCheckpointer().restore(directory, placed)
        return params if cast is None else jax.tree.map(lambda x: x.astype(cast), params)
    target = jnp.dtype(cast or dtype)

    def leaf(source: StoredLeaf, leaf_sharding: Any) -> jax.Array:
        blocks: dict[str, np.ndarray] = {}  # a block replicated on several devices is read once

        def block(index: tuple) -> np.ndarray:
            key = str(index)
            if key not in blocks:
                blocks[key] = source.read(index, target)
            return blocks[key]
        return jax.make_array_from_callback(source.shape, leaf_sharding, block)

    return jax.tree.map(leaf, stored, shard_tree, is_leaf=lambda x: isinstance(x, StoredLeaf))


def _checkpoint(path: Path) -> tuple[ModelConfig, str, Path, Path | None]:
    """(config, stored dtype, params folder, tokenizer folder or None) of an esjax checkpoint, every name checked."""
    check_tree(path, "esjax checkpoint")  # orbax reads params/ as it finds it
    config, stored = read_model_config(path)
    return (config, stored, inside(path, "params", kind="dir"),
            inside(path, "tokenizer", kind="dir", required=False))


def load_model(path: str | Path, dtype: Any = None, sharding: Any = None) -> LoadedModel:
    """Load an HF model directory, an esjax checkpoint or a Hub model ID (``org/name[@revision]``, through the
    Hugging Face cache: :mod:`esjax.models.hub`). ``dtype`` None keeps the stored dtype.

    ``sharding``: a Sharding, a pytree of them matching the params, or a function ``config -> either`` (so a
    mesh's partition rules can be applied before the weights are read: see ``esjax.distributed``).
    """
    path = resolve_model_path(path)
    if is_esjax_checkpoint(path):
        config, stored, params_dir, tok = _checkpoint(path)
        check_fits(config, stored, str(path / MODEL_FILE))
        sharding = sharding(config) if callable(sharding) else sharding
        params = restore_params(params_dir, config, stored, sharding, cast=dtype)
        return LoadedModel(config, params, tok, tok)
    if is_hf_dir(path):
        if callable(sharding):
            from esjax.models.config import load_config
            sharding = sharding(load_config(path))
        config, params = load_hf(path, dtype=dtype, sharding=sharding)
        return LoadedModel(config, params, path, path)
    raise ModelConfigError(f"{path}: not a model (expected an HF directory with config.json and *.safetensors, "
                           f"or an esjax checkpoint with {MODEL_FILE})")


def open_model(path: str | Path) -> LoadedModel:
    """The model at ``path`` (as :func:`load_model` takes it) for one pass over its weights, as export makes: an
    esjax checkpoint's params stay on disk as :class:`StoredLeaf` handles, each read block by block when used, so
    the host never holds the model; anything else (an HF directory, an OCDBT checkpoint) is loaded."""
    path = resolve_model_path(path)
    if not is_esjax_checkpoint(path):
        return load_model(path)
    config, stored, params_dir, tok = _checkpoint(path)
    params = open_params(params_dir, config, stored)
    if params is None:
        return load_model(path)
    return LoadedModel(config, params, tok, tok)

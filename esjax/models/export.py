"""Export to a Hugging Face model directory that ``transformers`` loads as is.

An export holds the weights as safetensors (metadata format=pt) in the source's shard layout, or in shards of at
most a given size, plus ``model.safetensors.index.json`` when there is more than one file or the name is not
``model.safetensors``; ``config.json`` (its dtype set to the weights'); ``generation_config.json`` (the source's,
with esjax's bos / eos / pad ids merged in); and the source's tokenizer files. The directory is built aside and
renamed into place, with the permissions a plain ``mkdir`` and file writes give under the umask.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from esjax.common.errors import InputError
from esjax.common.files import publish_dir, temp_dir_beside
from esjax.common.paths import MetadataError, parse_json, plain_name
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params
from esjax.models.hf import INDEX_FILE, check_param_shapes, copy_tokenizer_files, hf_name_map
from esjax.models.safetensors_io import DTYPES, read_header, write_file
from esjax.models.store import StoredLeaf

DEFAULT_MAX_SHARD_SIZE = "5GB"
SINGLE_FILE = "model.safetensors"
EXPORT_BLOCK_BYTES = 16 << 20  # a tensor is copied to the host and written in row blocks of about this size
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str, name: str = "max_shard_size") -> int:
    """Bytes from a positive int or a string such as ``"500MB"``, ``"2GB"``, ``"1.5GiB"`` or ``"1000000"``;
    anything else raises ValueError naming ``name``."""
    text = str(size).strip().upper()
    unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if text.endswith(u)), "B")
    try:
        value = float(text[: len(text) - len(unit)] if text.endswith(unit) else text) * _UNITS[unit]
    except ValueError:
        value = float("nan")
    if isinstance(size, bool) or not value >= 1 or not np.isfinite(value):
        raise InputError(f"{name} {size!r}: expected a positive size such as 500MB, 2GB or a number of bytes")
    return int(value)


def _nbytes(entry) -> int:
    return int(np.prod(entry[1], dtype=np.int64)) * np.dtype(entry[2]).itemsize


def size_layout(entries: list, max_bytes: int) -> list[tuple[str, list]]:
    """(file name, entries) per file, each file filled in order up to ``max_bytes`` (a larger tensor alone)."""
    shards, current, used = [], [], 0
    for entry in entries:
        if current and used + _nbytes(entry) > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(entry)
        used += _nbytes(entry)
    shards.append(current)
    if len(shards) == 1:
        return [(SINGLE_FILE, shards[0])]
    return [(f"model-{i:05d}-of-{len(shards):05d}.safetensors", s) for i, s in enumerate(shards, 1)]


def source_layout(entries: list, weight_map: dict[str, str]) -> list[tuple[str, list]]:
    """(file name, entries) per file of the source's ``weight_map`` (tensor name -> file), in HF's tensor order;
    a tensor the source did not have goes to its last file. Each file name must be a plain ``*.safetensors`` name
    (:func:`esjax.common.paths.plain_name`): the export writes only inside its target."""
    files = sorted({plain_name(f, "hf_weight_map_json", ".safetensors") for f in weight_map.values()})
    grouped: dict[str, list] = {f: [] for f in files}
    for entry in entries:
        grouped[weight_map.get(entry[0], files[-1])].append(entry)
    return [(f, grouped[f]) for f in files if grouped[f]]


def hf_blocks(leaf: Any, transpose: bool, dtype: np.dtype) -> np.ndarray | Iterator[np.ndarray]:
    """The HF tensor of one params leaf (a jax.Array or a :class:`StoredLeaf` on disk), transposed if asked, in
    ``dtype``: a vector whole, a matrix as consecutive C-contiguous row blocks of about ``EXPORT_BLOCK_BYTES``.

    A device array is copied to the host one fixed-size slice at a time; a stored leaf is read in bands of whole
    zarr chunks along the HF row axis (each chunk read once; a band is the whole leaf when its chunks split the
    other axis only), each band handed on in blocks, so the host holds one band and one block at a time.
    """
    stored = isinstance(leaf, StoredLeaf)
    if leaf.ndim < 2:
        return leaf.read((), dtype) if stored else np.asarray(jax.device_get(leaf)).astype(dtype, copy=False)
    axis = 1 if transpose else 0
    rows = leaf.shape[axis]
    row_bytes = max(1, int(np.prod(leaf.shape)) // rows * max(dtype.itemsize, np.dtype(leaf.dtype).itemsize))
    chunk = leaf.chunks[axis] if stored else 1
    step = min(rows, max(chunk, EXPORT_BLOCK_BYTES // row_bytes // chunk * chunk))

    def band(a: int) -> np.ndarray:  # leaf rows (or columns, when transposed) a .. a + step, clipped
        if stored:
            part = slice(a, min(a + step, rows))
            return leaf.read((slice(None), part) if transpose else (part,))
        start = min(a, rows - step)  # a fixed-size slice (one compiled program per shape), the tail clipped
        part = jax.lax.dynamic_slice_in_dim(leaf, start, step, axis)
        host = np.asarray(jax.device_get(part))
        return host[:, a - start:] if transpose else host[a - start:]

    def blocks() -> Iterator[np.ndarray]:
        sub = max(1, EXPORT_BLOCK_BYTES // row_bytes)
        for a in range(0, rows, step):
            part = band(a)
            part = part.T if transpose else part
            for r in range(0, part.shape[0], sub):
                yield np.ascontiguousarray(part[r:r + sub], dtype)
    return blocks()


def save_hf(config: ModelConfig, params: Params, out_dir: str | Path, source_dir: str | Path | None = None,
            dtype: Any = None, *, max_shard_size: int | str | None = None, overwrite: bool = False) -> Path:
    """Write an HF model directory (see the module docstring) and return its path.

    ``params``: device arrays, or :class:`StoredLeaf` handles (:func:`esjax.models.open_model` of an esjax
    checkpoint), read and written tensor by tensor in row blocks (:func:`hf_blocks`). Weights in ``dtype``
    (default: the params' own). ``max_shard_size`` None keeps the layout of the checkpoint the params were loaded
    from (``config.hf_weight_map_json``), else shards of at most 5GB. Tokenizer files come from ``source_dir``.
    A non-empty ``out_dir`` is refused unless ``overwrite``; a failure leaves nothing behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    weight_map = parse_json(config.hf_weight_map_json, "config.hf_weight_map_json")
    if not isinstance(weight_map, dict):
        raise MetadataError(f"config.hf_weight_map_json: expected a JSON object, got {type(weight_map).__name__}")
    max_bytes = parse_size(DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size)
    flat = traverse_util.flatten_dict(params)
    check_param_shapes(config, flat)
    out_dtype = np.dtype(jnp.dtype(dtype)) if dtype is not None else None

    def entry(name: str, key: tuple[str, ...], transpose: bool):
        leaf = flat[key]
        leaf_dtype = out_dtype or np.dtype(leaf.dtype)
        shape = tuple(leaf.shape[::-1]) if transpose else tuple(leaf.shape)
        return name, shape, leaf_dtype, lambda: hf_blocks(leaf, transpose, leaf_dtype)

    entries = [entry(name, key, t) for name, (key, t) in hf_name_map(config).items()]
    layout = (source_layout(entries, weight_map) if max_shard_size is None and weight_map
              else size_layout(entries, max_bytes))
    tmp = temp_dir_beside(out_dir)
    try:
        for fname, shard in layout:
            write_file(tmp / fname, shard)
        if [fname for fname, _ in layout] != [SINGLE_FILE]:
            index = {"metadata": {"total_size": sum(map(_nbytes, entries))},
                     "weight_map": {e[0]: fname for fname, shard in layout for e in shard}}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        _write_configs(config, tmp, entries[0][2])
        if source_dir is not None:
            copy_tokenizer_files(Path(source_dir), tmp)
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_configs(config: ModelConfig, out: Path, weight_dtype: np.dtype) -> None:
    hf = config.to_hf_dict()
    for key in ("torch_dtype", "dtype"):
        if key in hf:
            hf[key] = weight_dtype.name
    if "torch_dtype" not in hf and "dtype" not in hf:
        hf["dtype"] = weight_dtype.name
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps(config.to_generation_dict(), indent=2, sort_keys=True) + "\n")


def describe_hf(model_dir: str | Path) -> str:
    """One line: the weight files with their sizes, and the weights' dtype(s)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    dtypes = sorted({DTYPES[t["dtype"]].name for f in files for t in read_header(f)[0].values()})
    listed = ", ".join(f"{f.name} ({_human_size(f.stat().st_size)})" for f in files)
    return f"{len(files)} weight file{'s' if len(files) != 1 else ''} {listed}; {'/'.join(dtypes)}"


def _human_size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"

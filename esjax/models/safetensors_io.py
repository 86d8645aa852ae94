"""Minimal safetensors reader/writer over numpy memmaps (bf16 via ml_dtypes), one tensor at a time.

Reading maps the file lazily, so importing a checkpoint never holds a second full copy in host memory;
writing streams tensor bytes after a precomputed header, so exported bytes equal the arrays' bytes exactly.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator

import ml_dtypes
import numpy as np

from esjax.common.errors import EsjaxError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(EsjaxError, ValueError):
    pass


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(header dict without ``__metadata__``, byte offset where tensor data starts)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise SafetensorsError(f"{path}: implausible header size {n}")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise SafetensorsError(f"{path}: corrupt header ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt header (not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + n


def iter_tensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, read-only memmapped array) for every tensor of one file, in file order."""
    header, start = read_header(path)
    size = path.stat().st_size
    entries = sorted(((name, *_entry(path, name, info)) for name, info in header.items()), key=lambda e: e[3])
    end = start + max((e[4] for e in entries), default=0)
    if end > size:
        raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, the header describes {end})")
    for name, dtype, shape, lo, hi in entries:
        if hi == lo:
            yield name, np.zeros(shape, dtype)
        else:
            yield name, np.memmap(path, dtype=dtype, mode="r", offset=start + lo, shape=shape)


def _entry(path: Path, name: str, info: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of one header entry, checked: known dtype, byte range matching the shape."""
    try:
        dtype, shape, (lo, hi) = DTYPES.get(info["dtype"]), tuple(int(d) for d in info["shape"]), info["data_offsets"]
        lo, hi = int(lo), int(hi)
    except (KeyError, TypeError, ValueError):
        raise SafetensorsError(f"{path}: corrupt header entry for tensor {name!r}") from None
    if dtype is None:
        raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    if not all(0 <= d < 2 ** 62 for d in shape) or lo < 0 or hi - lo != math.prod(shape) * dtype.itemsize:
        raise SafetensorsError(f"{path}: tensor {name!r} byte range does not match its shape {shape}")
    return dtype, shape, lo, hi


def dtype_name(dtype: Any) -> str:
    return _NAMES[np.dtype(dtype)]


def write_file(path: Path, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype, Any]],
               metadata: dict[str, str] | None = None) -> None:
    """Write ``(name, shape, dtype, get_array)`` entries; ``get_array()`` is called once per tensor, in order, and
    returns the tensor or an iterable of its consecutive row blocks (a large tensor never whole on the host)."""
    entries = list(tensors)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype, _ in entries:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, get in entries:
            got = get()
            blocks = [got] if isinstance(got, np.ndarray) else got  # or consecutive row blocks, written in turn
            rows = 0
            for arr in blocks:
                arr = np.ascontiguousarray(arr)
                if arr.shape[1:] != tuple(shape)[1:] or arr.dtype != np.dtype(dtype) or not arr.ndim:
                    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                        raise SafetensorsError(f"tensor {name!r}: got {arr.dtype}{arr.shape}, expected "
                                               f"{np.dtype(dtype)}{tuple(shape)}")
                rows += arr.shape[0] if arr.ndim else 1
                f.write(memoryview(arr.reshape(-1).view(np.uint8)))  # no bytes copy of the tensor
            if rows != (tuple(shape)[0] if shape else 1):
                raise SafetensorsError(f"tensor {name!r}: got {rows} rows, expected {np.dtype(dtype)}{tuple(shape)}")

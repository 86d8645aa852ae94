"""One rule for every name or path esjax reads from a directory it did not just write (model folders, esjax
checkpoints, run directories, and the names their metadata holds: index shards, ``hf_weight_map_json``, tokenizer
files): a plain file name, resolved inside that folder, a regular file (or folder) there, never a symlink that
leads outside it. Metadata fields, index files and folder listings all go through :func:`inside` or
:func:`plain_name`, so a new field cannot reopen a path traversal, and :func:`check_tree` guards a whole folder
that esjax hands to a library reader (orbax) or writes into (a resumed run directory).

The one exception: a Hugging Face Hub cache snapshot (``models--ORG--NAME/snapshots/REV``) holds symlinks to
``../../blobs``; there the containing folder is the repository's cache folder ``models--ORG--NAME``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from esjax.common.errors import EsjaxError

MAX_JSON_BYTES = 100_000_000  # metadata files larger than this are not metadata


class UnsafePathError(EsjaxError, ValueError):
    """A name or path read from a directory that is not a plain file inside it (or leads outside it)."""


class MetadataError(EsjaxError, ValueError):
    """A metadata file that is not the JSON esjax expects (unreadable, too deep, too large, wrong types)."""


def containing_root(folder: Path) -> Path:
    """The folder whose inside ``folder``'s files must resolve to: ``folder`` itself, or for a Hub cache snapshot
    the repository's cache folder (its files link to ``../../blobs``)."""
    folder = Path(folder).absolute()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(("models--", "datasets--")):
        return folder.parent.parent
    return folder


def plain_name(name: Any, what: str, suffix: str = "") -> str:
    """``name`` when it is a plain file name (a non-empty str, no path separator, not ``.``/``..``, no NUL or
    control character; ending in ``suffix`` when given), else :class:`UnsafePathError` naming ``what`` (the file or
    field the name came from)."""
    ok = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
          and not any(ord(c) < 32 for c in name) and name.endswith(suffix))
    if not ok:
        need = f"a plain file name ending in {suffix!r}" if suffix else "a plain file name"
        raise UnsafePathError(f"{what}: {name!r} is not {need} inside the folder")
    return name


def inside(folder: str | Path, name: Any, what: str | None = None, *, kind: str = "file",
           required: bool = True) -> Path | None:
    """``folder / name`` checked: ``name`` a plain file name, the entry a regular file (``kind="file"``) or folder
    (``kind="dir"``) whose resolved path (symlinks followed) lies inside :func:`containing_root`. An absent entry
    gives None when not ``required``; anything else raises :class:`UnsafePathError` naming ``what`` (the file or
    field the name came from; default: the path itself)."""
    folder = Path(folder)
    path = folder / plain_name(name, what or f"{folder} entry")
    if not os.path.lexists(path):
        if required:
            raise UnsafePathError(f"{path}: missing" + (f" ({what} names it)" if what else ""))
        return None
    root = containing_root(folder).resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePathError(f"{path}: a symlink leading outside {folder} (to {resolved}); esjax reads only files "
                              f"inside the folder")
    if not (resolved.is_dir() if kind == "dir" else resolved.is_file()):
        raise UnsafePathError(f"{path}: not a {'folder' if kind == 'dir' else 'regular file'}")
    return path


def check_tree(folder: str | Path, what: str) -> None:
    """Every symlink under ``folder`` must resolve inside :func:`containing_root` (``folder`` itself a real
    folder); else :class:`UnsafePathError` naming the link. For folders read by another library or written into."""
    folder = Path(folder)
    root = containing_root(folder).resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            if path.is_symlink():
                resolved = path.resolve()
                if resolved != root and root not in resolved.parents:
                    raise UnsafePathError(f"{path}: a symlink leading outside the {what} {folder} (to {resolved}); "
                                          f"esjax reads and writes only inside it")


def read_json(path: Path, what: str = "") -> Any:
    """The JSON value of ``path`` (UTF-8); :class:`MetadataError` naming the file for invalid, binary, too large
    or too deeply nested contents (never a RecursionError)."""
    where = f"{path}" + (f" ({what})" if what else "")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise MetadataError(f"{where}: larger than {MAX_JSON_BYTES} bytes; not a metadata file")
    return parse_json(path.read_bytes(), where)


def parse_json(text: str | bytes, where: str) -> Any:
    """``json.loads(text)`` with every failure (syntax, encoding, nesting too deep) as one :class:`MetadataError`
    naming ``where``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise MetadataError(f"{where}: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise MetadataError(f"{where}: not valid JSON ({e})") from None

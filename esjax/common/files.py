"""Outputs built aside and renamed into place: private temporary names from :mod:`tempfile`, next to the target
(same filesystem, so the rename is atomic), published with the permissions a plain ``mkdir`` / ``open`` would
give under the process umask (``mkdtemp`` creates 0700, ``mkstemp`` 0600)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read from /proc where there is one (setting it to read it races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_dir_beside(target: Path) -> Path:
    """A new, empty, private directory next to ``target`` (created with ``tempfile.mkdtemp``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))


def publish_dir(new: Path, target: Path) -> None:
    """Give ``new`` a plain directory's mode, then move it into ``target``'s place atomically; an existing target
    is first moved into a private temporary directory, and deleted once ``new`` is in place."""
    os.chmod(new, 0o777 & ~current_umask())
    if not target.exists():
        os.replace(new, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    try:
        os.replace(target, aside / target.name)
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(aside / target.name, target)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a ``tempfile.mkstemp`` file beside it, renamed into place with a
    new file's mode under the umask: readers see the old contents or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

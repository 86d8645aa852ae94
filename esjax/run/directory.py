"""The run directory: whether it can be used as asked (new, or resumed), created with the run's settings once
everything else has been checked; on several processes, process 0 decides for all.

A running run holds an exclusive ``flock`` on ``RUN/.lock`` (its pid inside): a second ``esjax train`` on the same
directory is refused in one line, and the kernel drops the lock when its holder dies, so a killed run's leftover
file does not block a resume. A new run that fails before its first checkpoint removes only what it created."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from esjax import distributed
from esjax.common.errors import EsjaxError
from esjax.common.paths import check_tree
from esjax.run.record import check_settings_record
from esjax.run.settings import RunSettings, save_settings

# Process 0's verdict on the run directory travels to the others as a fixed-size byte buffer (a broadcast needs the
# same shape on every process); longer messages are cut, and any real one is a line or two.
ERROR_BYTES = 4000
LOCK_FILE = ".lock"
_HELD: dict[Path, int] = {}  # run directory -> the open, locked descriptor of its lock file (this process)
_CREATED: dict[Path, tuple[bool, frozenset[str]]] = {}  # new run directory -> (made by us, entries it had before)


class RunDirError(EsjaxError, ValueError):
    """The run directory cannot be used as asked (exists without --resume, nothing to resume, not writable, in use
    by another run)."""


def prepare_run_dir(out_dir: Path, settings: RunSettings, resume: bool, create: bool = True) -> None:
    """Check that ``out_dir`` can be used as asked (``create=False``: only check, write nothing); then lock it
    (:func:`lock_run_dir`), and for a new run create it and save the settings in ``config.yaml``."""
    out_dir = Path(out_dir).absolute()
    if resume:
        if not (out_dir / "config.yaml").is_file():
            raise RunDirError(f"{out_dir}: nothing to resume (no config.yaml)")
        check_tree(out_dir, "run directory")  # a resumed run appends to its files: none may lead elsewhere
        _check_unlocked(out_dir)
        check_settings_record(out_dir)  # config.yaml as the newest checkpoint recorded it
        if create:
            lock_run_dir(out_dir)
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RunDirError(f"{out_dir} already exists; pass --resume to continue it or choose another --out")
    if not create:
        return
    try:
        made = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        before = frozenset(os.listdir(out_dir))
        lock_run_dir(out_dir)
        if before - {LOCK_FILE}:  # another process wrote into it since the check
            release_run_dir(out_dir)
            raise RunDirError(f"{out_dir} already exists; pass --resume to continue it or choose another --out")
        _CREATED[out_dir] = (made, before)
        save_settings(settings, out_dir / "config.yaml")
    except OSError as e:
        raise RunDirError(f"{out_dir}: cannot write the run directory ({e.strerror or e})") from None


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    pid = os.read(fd, 64).decode(errors="replace").strip()
    return f" (pid {pid})" if pid.isdigit() else ""


def _check_unlocked(out_dir: Path) -> None:
    """Refuse a run directory another process holds locked (writes nothing: an absent lock file is unlocked)."""
    if out_dir in _HELD:
        return
    try:
        fd = os.open(out_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirError(f"{out_dir}: in use by another esjax run{_holder(fd)}; wait for it to end or choose "
                          f"another --out") from None
    finally:
        os.close(fd)


def lock_run_dir(out_dir: Path) -> None:
    """Take ``out_dir``'s exclusive lock for this process (re-entrant), writing our pid into the lock file;
    RunDirError naming the holder when another process has it. Held until :func:`release_run_dir` or exit."""
    out_dir = Path(out_dir).absolute()
    if out_dir in _HELD:
        return
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunDirError(f"{out_dir}: in use by another esjax run{holder}; wait for it to end or choose another "
                          f"--out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[out_dir] = fd


def release_run_dir(out_dir: Path) -> None:
    """Drop this process's lock on ``out_dir`` (the file stays: it records the last holder)."""
    fd = _HELD.pop(Path(out_dir).absolute(), None)
    if fd is not None:
        os.close(fd)


def discard_new_run_dir(out_dir: Path) -> None:
    """Remove what this process created for a new run in ``out_dir``: the folder when it made it, else only the
    entries that were not there before (never a file that existed before the command)."""
    out_dir = Path(out_dir).absolute()
    made, before = _CREATED.pop(out_dir, (False, None))
    if before is None:
        return
    release_run_dir(out_dir)
    if made:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for name in set(os.listdir(out_dir)) - before:
        path = out_dir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink()


def prepare_run_dir_once(out_dir: Path, settings: RunSettings, resume: bool, create: bool = True) -> None:
    """:func:`prepare_run_dir` on process 0 only (a shared file system is assumed); the others wait for its
    verdict, so that every process fails, or none does."""
    if jax.process_count() == 1:
        return prepare_run_dir(out_dir, settings, resume, create)
    error = ""
    if distributed.is_main_process():
        try:
            prepare_run_dir(out_dir, settings, resume, create)
        except RunDirError as e:
            error = str(e)
    code = np.frombuffer(error.encode()[:ERROR_BYTES].ljust(ERROR_BYTES, b"\0"), np.uint8)
    message = bytes(distributed.broadcast_from_main(code)).rstrip(b"\0").decode(errors="replace")
    if message:
        raise RunDirError(message)

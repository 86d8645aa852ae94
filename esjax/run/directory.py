"""The run directory: whether it can be used as asked (new, or resumed), created with the run's settings once
everything else has been checked; on several processes, process 0 decides for all."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from esjax import distributed
from esjax.run.settings import RunSettings, save_settings

# Process 0's verdict on the run directory travels to the others as a fixed-size byte buffer (a broadcast needs the
# same shape on every process); longer messages are cut, and any real one is a line or two.
ERROR_BYTES = 4000


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists without --resume, nothing to resume, not writable)."""


def prepare_run_dir(out_dir: Path, settings: RunSettings, resume: bool, create: bool = True) -> None:
    """Check that ``out_dir`` can be used as asked (``create=False``: only check, write nothing); then create it
    and save the settings in ``config.yaml`` (a new run)."""
    if resume:
        if not (out_dir / "config.yaml").is_file():
            raise RunDirError(f"{out_dir}: nothing to resume (no config.yaml)")
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RunDirError(f"{out_dir} already exists; pass --resume to continue it or choose another --out")
    if not create:
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_settings(settings, out_dir / "config.yaml")
    except OSError as e:
        raise RunDirError(f"{out_dir}: cannot write the run directory ({e.strerror or e})") from None


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

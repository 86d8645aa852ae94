"""Other libraries' noise kept off the user's terminal unless ``esjax --verbose`` (or ``ESJAX_VERBOSE=1``) asks
for it: transformers' warnings and advice ("PyTorch was not found"), absl / orbax log warnings, and the
"Exception ignored in ..." reports of objects that orbax's background threads leave to the garbage collector after
a failed restore. esjax's own output and errors are untouched."""

from __future__ import annotations

import logging
import os
import sys

QUIET_LOGGERS = ("absl", "orbax", "jax._src.xla_bridge", "tensorstore")


def quiet_libraries(verbose: bool = False) -> None:
    """Silence the libraries' noise for this process (call before they are imported); ``verbose`` keeps it."""
    if verbose or os.environ.get("ESJAX_VERBOSE", "") not in ("", "0"):
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.unraisablehook = _drop_unraisable


def _drop_unraisable(unraisable) -> None:
    """Exceptions raised where nothing can catch them (``__del__``, finished threads' loops): not the user's."""

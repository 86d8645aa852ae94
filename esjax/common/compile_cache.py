"""XLA's persistent compilation cache, on by default: a second run of the same programs loads them from disk.

Every ``esjax`` command calls :func:`enable_compilation_cache` before its first ``jit``; library users call it
themselves (before their first compilation: JAX reads the folder once, at its first compile). The folder:

1. ``directory`` when given (the run setting ``train.compilation_cache``),
2. else the environment variable ``ESJAX_COMPILATION_CACHE``,
3. else JAX's own ``JAX_COMPILATION_CACHE_DIR`` / ``jax_compilation_cache_dir`` if the user set one,
4. else ``$XDG_CACHE_HOME/esjax/xla`` (``~/.cache/esjax/xla``).

``0``, ``off``, ``false`` or ``none`` disables it. Every program is cached however short its compilation (the
demo's programs take 1-7 s each). Several processes and hosts may share the folder: with a size limit set
(:data:`MAX_BYTES`, least recently used entries evicted), JAX takes a file lock around each read and write
(``filelock``; a lock file on a network filesystem), and an entry that fails to read is recompiled, not trusted.
Entries are keyed by the program, the JAX/XLA versions, the devices and the compiler flags, so a stale entry is
never used for a different program.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV_VAR = "ESJAX_COMPILATION_CACHE"
OFF = ("0", "off", "false", "no", "none")
MAX_BYTES = 8 << 30  # least recently used entries beyond 8 GiB are deleted


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/esjax/xla``, or ``~/.cache/esjax/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "esjax" / "xla"


def cache_dir(directory: str | Path | None = None) -> Path | None:
    """The folder :func:`enable_compilation_cache` would use (see the module docstring), or None when disabled."""
    for choice in (directory, os.environ.get(ENV_VAR)):
        if choice is not None and str(choice).strip() != "":
            return None if str(choice).strip().lower() in OFF else Path(choice).expanduser()
    return Path(jax.config.jax_compilation_cache_dir or default_cache_dir())


def enable_compilation_cache(directory: str | Path | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at :func:`cache_dir` (created if needed) and cache every program.

    Returns the folder, or None when disabled (then JAX's cache is switched off too; also when the default folder
    cannot be created). Raises OSError for a named folder that cannot be created. Call it before the first
    compilation of the process: JAX opens the folder once, at its first compile.
    """
    path = cache_dir(directory)
    try:
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
    except OSError:
        if directory is not None or os.environ.get(ENV_VAR):
            raise  # a folder the user named: their error to fix
        path = None  # the default folder cannot be made (a read-only home): run without the cache
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path

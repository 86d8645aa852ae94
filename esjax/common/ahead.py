"""Compiling a jitted function before its first call, in a background thread.

A run's first iteration would compile its programs one after the other as it reaches them: the rollout, and only
once the rollout has run and been scored, the update. :class:`Ahead` starts ``fn.lower(*args).compile()`` in a
thread as soon as the arguments' shapes are known. JAX keeps what that produced in ``fn``'s own caches (the
lowering is cached per traced function and argument types, the executable on the lowering), so the later call
``fn(*args)`` with arrays of the same shapes, dtypes and shardings finds it and compiles nothing: the program that
runs is the one the plain call would have compiled. Meanwhile the main thread does other work (an evaluation,
another program's compile): XLA compiles without holding Python's lock, and on CPU one compile keeps about one
core busy.

The thread is not a daemon: a process that ends while a compile runs waits for it (as a compile on the main thread
would have been waited for).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable

import jax


def spec(x: Any) -> Any:
    """``x`` as the abstract argument ``jit`` sees: an array's shape, dtype, weak type and, where it is committed to
    its devices, sharding (not its data); other leaves (Python scalars, ``ShapeDtypeStruct``) unchanged."""
    if isinstance(x, jax.Array):
        sharding = x.sharding if getattr(x, "_committed", True) else None  # uncommitted: jit picks, as for None
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding, weak_type=x.aval.weak_type)
    return x


class Ahead:
    """``fn`` (a ``jax.jit`` function) compiling for arguments shaped like ``args`` in a background thread.

    Calling it waits for that compile, re-raises its error if it failed (the error the plain call would have
    raised on compiling, with the thread's traceback), then calls ``fn``: the result is the plain call's. Other
    attributes (``lower``, ...) are ``fn``'s.
    """

    def __init__(self, fn: Callable, *args: Any, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "program")
        specs = jax.tree.map(spec, args)  # no reference to the arrays (a later call may donate them)
        self._done: Future | None = Future()
        self._thread = threading.Thread(target=self._compile, args=(self._done, specs),
                                        name=f"esjax-compile-{self.name}")
        self._thread.start()

    def _compile(self, done: Future, specs: tuple) -> None:
        try:
            done.set_result(self.fn.lower(*specs).compile())
        except BaseException as e:  # noqa: BLE001  handed to the caller by wait()
            done.set_exception(e)

    def wait(self) -> None:
        """Block until the background compile has finished; raise its error (once: a later call compiles again,
        as the plain function would)."""
        done, self._done = self._done, None
        if done is not None:
            self._thread.join()
            done.result()  # the compiled executable stays in fn's caches; this only raises a failure

    def __call__(self, *args: Any) -> Any:
        self.wait()
        return self.fn(*args)

    def __getattr__(self, name: str) -> Any:
        if name == "fn":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.fn, name)

"""Hugging Face's Math-Verify (``pip install 'esjax[math]'``) as a reward: bounded in time, never raising.

Math-Verify's own time limits use ``signal.alarm``: they work only in a process's main thread (elsewhere its
``parse``/``verify`` raise ``ValueError``), and an alarm cannot stop a computation that holds the interpreter
(a huge power in sympy). So esjax runs Math-Verify in a worker process (this file run as a script: no esjax or
jax import there), one per process that uses it, started on first use. Each comparison is one request:
``parse`` of the gold answer and of the prediction, each wrapped as ``\\boxed{...}``, then ``verify(gold, pred)``,
with Math-Verify's own limits set as well. When a reply takes longer than ``timeout`` seconds, or the worker
dies, the worker is killed (restarted on the next call) and the answer counts as wrong.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)
STARTUP_SECONDS = 120.0  # importing sympy on a loaded machine
_LOCK = threading.Lock()
_WORKER: dict[str, object] = {}  # {"proc": Popen, "pid": the owning process's pid, "buffer": bytes}


def installed() -> bool:
    """Whether the ``math_verify`` package can be imported."""
    return importlib.util.find_spec("math_verify") is not None


def _stop() -> None:
    proc = _WORKER.pop("proc", None)
    if proc is not None and _WORKER.get("pid") == os.getpid():
        try:
            proc.kill()
            proc.wait(timeout=5)
        except Exception:  # already gone
            pass
    _WORKER.clear()


atexit.register(_stop)


def _read_line(proc: subprocess.Popen, deadline: float) -> bytes | None:
    """The worker's next reply line, or None when ``deadline`` passes or the worker has exited."""
    buffer = _WORKER.get("buffer", b"")
    fd = proc.stdout.fileno()
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer += chunk
    line, _, _WORKER["buffer"] = buffer.partition(b"\n")
    return line


def _worker() -> subprocess.Popen | None:
    """The running worker of this process, started if needed; None if it cannot start."""
    if _WORKER.get("pid") != os.getpid():  # none yet, or inherited through fork: never share its pipes
        _WORKER.clear()
    proc = _WORKER.get("proc")
    if proc is not None and proc.poll() is None:
        return proc
    _stop()
    # its own session: a Ctrl-C in the terminal reaches the training process, not the worker; the worker ends
    # when its stdin closes (this process exited) or it is killed
    proc = subprocess.Popen([sys.executable, "-u", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    _WORKER.update(proc=proc, pid=os.getpid(), buffer=b"")
    if _read_line(proc, time.monotonic() + STARTUP_SECONDS) != b"ready":
        log.warning("Math-Verify's worker did not start; answers count as wrong (is 'esjax[math]' installed?)")
        _stop()
        return None
    return proc


def verify_answer(pred: str, gold: str, timeout: float = 5.0) -> bool:
    """Whether Math-Verify finds the boxed answer ``pred`` equal to ``gold``; False on any failure or timeout."""
    try:
        with _LOCK:
            proc = _worker()
            if proc is None:
                return False
            request = json.dumps([gold, pred, max(1, int(timeout))]).encode() + b"\n"
            proc.stdin.write(request)
            proc.stdin.flush()
            reply = _read_line(proc, time.monotonic() + timeout)
            if reply is None:
                _stop()  # hung or died: a fresh worker answers the next call
                return False
            return reply == b"1"
    except Exception:  # a broken pipe, a closed worker: the reward never raises
        _stop()
        return False


def _serve() -> None:
    """The worker: one JSON request ``[gold, pred, seconds]`` per line in, ``1`` or ``0`` per line out."""
    from math_verify import parse, verify  # noqa: PLC0415  (only the worker imports it)

    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            gold, pred, seconds = json.loads(line)
            g = parse("\\boxed{" + gold + "}", parsing_timeout=seconds)
            p = parse("\\boxed{" + pred + "}", parsing_timeout=seconds)
            ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=seconds)
        except BaseException:  # noqa: BLE001  anything in a hostile answer is a wrong answer
            ok = False
        out.write(b"1\n" if ok else b"0\n")
        out.flush()


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    _serve()

"""Run metrics: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars (process 0 writes them).

Records are appended, one line per :meth:`MetricsLogger.log`, and never rewritten: a checkpoint stores only how
many lines it covers (``lines``), and a resumed run keeps those and drops any written after the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(run_dir: str | Path, lines: int | None = None) -> list[dict]:
    """The first ``lines`` records of the run's ``metrics.jsonl`` (all if None; none if there is no file)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with path.open() as f:
        return [json.loads(line) for _, line in zip(range(lines if lines is not None else 1 << 62), f)]


class MetricsLogger:
    """Append-only metrics for a run directory, continuing after the first ``keep`` lines (a resumed run's
    checkpoint; 0: a new run). ``lines`` counts the records so far; the checkpoint stores it."""

    def __init__(self, run_dir: str | Path, keep: int = 0):
        self.path = Path(run_dir) / METRICS_FILE
        self.lines = keep
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            self._truncate(keep)
            try:
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
                self._tb = EventFileWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # TensorBoard is optional at run time
                self._tb = None

    def _truncate(self, keep: int) -> None:
        """Keep the first ``keep`` lines (those the checkpoint knew), atomically."""
        kept = read_metrics(self.path.parent, keep)
        temp = self.path.with_name(self.path.name + ".tmp")
        temp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(temp, self.path)

    def log(self, iteration: int, metrics: dict[str, Any]) -> dict:
        record = {"iteration": int(iteration), **{k: _clean(v) for k, v in metrics.items()}}
        self.lines += 1
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self._tb is not None:
                self._write_tb(record)
        return record

    def records(self) -> list[dict]:
        """Every record of the run so far (read back from ``metrics.jsonl``)."""
        return read_metrics(self.path.parent, self.lines)

    def _write_tb(self, record: dict) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in record.items()
                  if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self._tb.add_event(Event(wall_time=time.time(), step=record["iteration"], summary=Summary(value=values)))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

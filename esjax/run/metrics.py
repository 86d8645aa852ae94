"""Run metrics: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars (process 0 only)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLogger:
    """Append-only metrics for a run directory; ``records`` holds everything logged so far (also after resume)."""

    def __init__(self, run_dir: str | Path, records: list[dict] | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.records: list[dict] = list(records or [])
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:  # rewrite what the checkpoint knows: lines written after it are dropped
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            try:
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
                self._tb = EventFileWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # TensorBoard is optional at run time
                self._tb = None

    def log(self, iteration: int, metrics: dict[str, Any]) -> dict:
        record = {"iteration": int(iteration), **{k: _clean(v) for k, v in metrics.items()}}
        self.records.append(record)
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self._tb is not None:
                self._write_tb(record)
        return record

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

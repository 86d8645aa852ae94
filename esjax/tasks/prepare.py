"""``esjax data prepare TASK --out DIR [--from [SPLIT=]FILE ...]``: the data files the tasks read.

For the four ES-vs-GRPO tasks it writes ``DIR/<task>_train.jsonl`` and ``DIR/<task>_test.jsonl`` (read with the
task option ``data_dir: DIR``), selecting rows as the paper's reference code does:

- ``countdown_boxed``: ``Jiayi-Pan/Countdown-Tasks-3to4`` (split train): train = rows 0-199, test = rows 200-2199;
- ``math``: ``nlile/hendrycks-MATH-benchmark``: train = the first 40 problems of each level 1-5 of its train
  split, in level order (the remainder of ``train_size / 5`` goes to the lowest levels); test = its first 500
  test problems;
- ``boolq``: ``google/boolq``: train = the first 200 train rows, test = the first 2000 validation rows;
- ``chemistry_mcq``: ``hicai-zju/SciKnowEval`` (config v2, split test): the rows with domain "Chemistry" and type
  "mcq-4-choices", shuffled by Python's ``random.Random(42).shuffle``; train = the first 200, test = the next 2000.

``countdown`` (the ES paper) copies the paper's ``countdown.json`` (``--from``; it is not on the Hub) to
``DIR/countdown_paper.json``. Without ``--from`` the rows come from the Hugging Face Hub through the ``datasets``
library (optional); ``--from`` reads files downloaded by hand (JSON, JSON Lines, or Parquet with ``pyarrow``) in
the public data set's layout, one per source split (``--from train=a.parquet --from test=b.parquet``).
Bad input raises ``TaskDataError`` (one line, naming the file or flag); nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from esjax.common.files import write_text_atomic
from esjax.tasks.base import Example, TaskDataError
from esjax.tasks.boolq import BoolQTask
from esjax.tasks.countdown import validate_countdown_row
from esjax.tasks.countdown_boxed import CountdownBoxedTask
from esjax.tasks.io import load_records
from esjax.tasks.math_task import MathTask
from esjax.tasks.mcq import MCQTask

Rows = list[Example]


def first_rows(rows: Rows, n: int, m: int) -> tuple[Rows, Rows]:
    """Train = rows ``[0, n)``, test = rows ``[n, n + m)``."""
    return rows[:n], rows[n:n + m]


def math_level(row: Example) -> int | None:
    """A MATH row's level as an int (``3`` or ``"Level 3"``), or None."""
    level = row.get("level")
    text = str(level).removeprefix("Level ").strip()
    return int(text) if text.isdigit() else None


def stratified_by_level(rows: Rows, n: int) -> Rows:
    """The first ``n // 5`` rows of each level 1-5 in level order, one more for the lowest ``n % 5`` levels.

    A row without a ``level`` field raises ``ValueError`` naming it (the reference's ``int(ex['level'])`` would)."""
    missing = next((i for i, r in enumerate(rows) if r.get("level") is None), None)
    if missing is not None:
        raise ValueError(f"train row {missing} has no field 'level' (1-5 or 'Level 3'), which selects the train rows "
                         "by level")
    per_level, remainder = divmod(n, 5)
    out: Rows = []
    for level in range(1, 6):
        quota = per_level + (1 if level <= remainder else 0)
        out += [r for r in rows if math_level(r) == level][:quota]
    return out


def chemistry_mcq_rows(rows: Rows) -> Rows:
    """Chemistry 4-choice questions, shuffled with seed 42 as the reference does."""
    selected = [r for r in rows if r.get("domain") == "Chemistry" and r.get("type") == "mcq-4-choices"]
    random.Random(42).shuffle(selected)
    return selected


@dataclass(frozen=True)
class Source:
    """Where a task's rows come from and how its splits are cut from them."""

    hub: tuple[str, str | None]  # (data set, config) on the Hugging Face Hub
    splits: tuple[str, ...]  # the data set's splits that are read
    train_size: int
    test_size: int
    cut: Callable[[dict[str, Rows], int, int], tuple[Rows, Rows]]
    rows_needed: Callable[[int, int], int | None] = lambda n, m: None  # rows of a one-split source to read


SOURCES = {
    "countdown_boxed": Source(("Jiayi-Pan/Countdown-Tasks-3to4", None), ("train",), 200, 2000,
                              lambda s, n, m: first_rows(s["train"], n, m), lambda n, m: n + m),
    "math": Source(("nlile/hendrycks-MATH-benchmark", None), ("train", "test"), 200, 500,
                   lambda s, n, m: (stratified_by_level(s["train"], n), s["test"][:m])),
    "boolq": Source(("google/boolq", None), ("train", "validation"), 200, 2000,
                    lambda s, n, m: (s["train"][:n], s["validation"][:m])),
    "chemistry_mcq": Source(("hicai-zju/SciKnowEval", "v2"), ("test",), 200, 2000,
                            lambda s, n, m: first_rows(chemistry_mcq_rows(s["test"]), n, m)),
}
PAPER_COUNTDOWN = "countdown_paper.json"
TASKS = (*SOURCES, "countdown")
VALIDATORS = {"countdown_boxed": CountdownBoxedTask.validate_row, "math": MathTask.validate_row,
              "boolq": BoolQTask.validate_row, "chemistry_mcq": MCQTask.validate_row,
              "countdown": validate_countdown_row}


def read_file(path: Path) -> Rows:
    """Rows of a JSON / JSON Lines / Parquet file."""
    if not path.is_file():
        raise TaskDataError(f"{path}: file not found")
    if path.suffix != ".parquet":
        return load_records(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskDataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's many error types; the file is the user's
        raise TaskDataError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None


def read_hub(task: str, source: Source, split: str, limit: int | None) -> Rows:
    """Rows of one split from the Hugging Face Hub through ``datasets``."""
    try:
        import datasets
    except ImportError:
        raise TaskDataError(f"{task}: downloading needs the 'datasets' package (pip install datasets), or pass "
                            "--from FILE with the data set downloaded by hand") from None
    name, config = source.hub
    try:
        rows = datasets.load_dataset(name, config, split=split if limit is None else f"{split}[:{limit}]")
        return [dict(r) for r in rows]
    except Exception as e:  # network, authentication, cache: one line, and the way out
        reason = " ".join(str(e).split())[:160]
        raise TaskDataError(f"{task}: cannot load {name} ({split}) from the Hugging Face Hub ({type(e).__name__}: "
                            f"{reason}); pass --from FILE with the data set downloaded by hand") from None


def source_files(task: str, source: Source, given: list[str]) -> dict[str, Path]:
    """``--from`` values as {split: file}; a bare FILE names the only split of a one-split source."""
    files: dict[str, Path] = {}
    for value in given:
        split, sep, file = value.partition("=")
        if not sep:
            if len(source.splits) != 1:
                raise TaskDataError(f"--from {value}: {task} reads the splits {', '.join(source.splits)}; give "
                                    f"each as --from SPLIT=FILE")
            split, file = source.splits[0], value
        if split not in source.splits:
            raise TaskDataError(f"--from {value}: {task} reads the splits {', '.join(source.splits)}, not {split!r}")
        files[split] = Path(file).expanduser()
    missing = [s for s in source.splits if s not in files]
    if files and missing:
        raise TaskDataError(f"--from: {task} also needs the split(s) {', '.join(missing)} (--from SPLIT=FILE)")
    return files


def checked(task: str, rows: Rows, where: str) -> Rows:
    """Rows that the task accepts; a bad row raises with its position."""
    validate = VALIDATORS[task]
    for i, row in enumerate(rows):
        try:
            validate(dict(row))
        except (ValueError, TypeError, KeyError) as e:
            raise TaskDataError(f"{where}, row {i}: {e}") from None
    return rows


def prepare(task: str, out: str | Path, sources: list[str] | None = None, train_size: int | None = None,
            test_size: int | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``task``'s data files into ``out`` (module docstring); returns the paths written."""
    if task not in TASKS:
        raise TaskDataError(f"no data to prepare for task {task!r}; tasks: {', '.join(TASKS)}")
    out = Path(out).expanduser()
    if task == "countdown":
        return _copy_paper_countdown(out, sources or [], overwrite)
    source = SOURCES[task]
    n = source.train_size if train_size is None else train_size
    m = source.test_size if test_size is None else test_size
    if n < 1 or m < 1:
        raise TaskDataError(f"--train-size and --test-size must be >= 1, got {n} and {m}")
    files = source_files(task, source, sources or [])
    targets = [out / f"{task}_{split}.jsonl" for split in ("train", "test")]
    _check_targets(targets, overwrite)
    limit = source.rows_needed(n, m)
    if files:
        rows = {s: read_file(f)[:limit] for s, f in files.items()}
        where = ", ".join(str(f) for f in files.values())
    else:
        rows = {s: read_hub(task, source, s, limit) for s in source.splits}
        where = source.hub[0]
    try:
        train, test = source.cut(rows, n, m)
    except ValueError as e:  # a field the selection needs is missing
        raise TaskDataError(f"{where}: {e}") from None
    for split, part in (("train", train), ("test", test)):  # only the selected rows need the task's fields
        if not part:
            raise TaskDataError(f"{task}: the rows of {where} leave the {split} split empty")
        checked(task, part, f"{where}: {split}")
    for path, part in zip(targets, (train, test)):
        _write_jsonl(path, part)
    return targets


def _copy_paper_countdown(out: Path, sources: list[str], overwrite: bool) -> list[Path]:
    if len(sources) != 1 or "=" in sources[0]:
        raise TaskDataError("countdown: pass the ES paper's file as --from countdown.json (countdown/data/ in "
                            "github.com/VsonicV/es-fine-tuning-paper; it is not on the Hugging Face Hub)")
    source = Path(sources[0]).expanduser()
    if not checked("countdown", read_file(source), str(source)):
        raise TaskDataError(f"{source}: no problems in the file")
    target = out / PAPER_COUNTDOWN
    _check_targets([target], overwrite)
    write_text_atomic(target, source.read_text(encoding="utf-8"))
    return [target]


def _check_targets(targets: list[Path], overwrite: bool) -> None:
    for path in targets:
        if path.exists() and not overwrite:
            raise TaskDataError(f"{path} exists (pass --overwrite to replace it)")
        if path.parent.exists() and not path.parent.is_dir():
            raise TaskDataError(f"--out {path.parent}: not a directory")


def _write_jsonl(path: Path, rows: Rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data prepare`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``); sets ``func``."""
    data = subparsers.add_parser("data", help="prepare task data files")
    sub = data.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("prepare", help="write a task's train/test files as the papers' reference code selects them",
                       description="Write DIR/TASK_train.jsonl and DIR/TASK_test.jsonl (task option data_dir: DIR) "
                                   "with the rows the ES-vs-GRPO reference code selects, from the Hugging Face Hub "
                                   "(needs the datasets package) or from files given with --from; for countdown, "
                                   "copy the ES paper's countdown.json to DIR/countdown_paper.json.")
    p.add_argument("task", choices=TASKS)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--from", dest="sources", action="append", default=[], metavar="[SPLIT=]FILE",
                   help="a file downloaded by hand (JSON, JSON Lines, Parquet), one per source split")
    p.add_argument("--train-size", type=int, default=None, metavar="N", help="train rows (default: the reference's)")
    p.add_argument("--test-size", type=int, default=None, metavar="N", help="test rows (default: the reference's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    for path in prepare(args.task, args.out, args.sources, args.train_size, args.test_size, args.overwrite):
        print(f"wrote {path} ({_count_rows(path)} rows)")


def _count_rows(path: Path) -> int:
    if path.suffix == ".jsonl":
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return len(json.loads(path.read_text(encoding="utf-8")))

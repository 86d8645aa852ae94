"""Loading task data from local JSON / JSON Lines files, with errors that name the file and line.

A ``.json`` file may hold a JSON array of objects or JSON Lines (what ``datasets.Dataset.to_json`` writes);
any other file is read as JSON Lines. ``validate(record) -> record`` checks (and may normalise) each record
and raises ``ValueError`` with a short reason; the loader turns that into a ``TaskDataError`` that says where.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from esjax.tasks.base import Example, Task, TaskDataError

DATA_DIR = Path(__file__).resolve().parent / "data"
_WS = re.compile(r"[ \t\n\r]*")
Validator = Callable[[dict[str, Any]], dict[str, Any]]


def data_path(filename: str) -> Path:
    """Path of an example file shipped with esjax (``esjax/tasks/data/``)."""
    return DATA_DIR / filename


def _check(record: Any, where: str, validate: Validator | None) -> Example:
    if not isinstance(record, dict):
        raise TaskDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if validate is None:
        return record
    try:
        return validate(record)
    except (ValueError, TypeError, KeyError) as e:
        raise TaskDataError(f"{where}: {e}") from None


def _array(text: str, path: Path, validate: Validator | None) -> list[Example]:
    """Parse a JSON array element by element so that each record knows its line."""
    decoder = json.JSONDecoder()
    i = _WS.match(text, 0).end() + 1  # past '['
    rows: list[Example] = []
    line, seen = 1, 0
    while True:
        i = _WS.match(text, i).end()
        if i < len(text) and text[i] == "]" and not rows:
            break
        line += text.count("\n", seen, i)
        seen = i
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise TaskDataError(f"{path}:{line}: row {len(rows)} is nested too deeply") from None
        rows.append(_check(obj, f"{path}:{line} (row {len(rows)})", validate))
        i = _WS.match(text, i).end()
        if i < len(text) and text[i] == ",":
            i += 1
        elif i < len(text) and text[i] == "]":
            break
        else:
            where = line + text.count("\n", seen, i)
            raise TaskDataError(f"{path}:{where}: expected ',' or ']' in the JSON array")
    j = _WS.match(text, i + 1).end()
    if j < len(text):
        where = line + text.count("\n", seen, j)
        raise TaskDataError(f"{path}:{where}: unexpected data after the JSON array")
    return rows


def load_records(path: str | Path, validate: Validator | None = None) -> list[Example]:
    """Records of a JSON array or JSON Lines file, each passed through ``validate``."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskDataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskDataError(f"{path}: cannot read ({e})") from None
    if text.lstrip().startswith("["):
        return _array(text, path, validate)
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise TaskDataError(f"{path}:{lineno}: nested too deeply") from None
        rows.append(_check(obj, f"{path}:{lineno}", validate))
    return rows


def prepared_files(task: str, data_dir: str | Path) -> tuple[Path, Path]:
    """``(train, test)`` files of ``task`` in ``data_dir`` (as ``esjax data prepare`` names them); both must exist."""
    files = tuple(Path(data_dir).expanduser() / f"{task}_{split}.jsonl" for split in ("train", "test"))
    for file in files:
        if not file.is_file():
            raise TaskDataError(f"{file}: file not found (write it with: esjax data prepare {task} --out {data_dir})")
    return files


def example_files(prefix: str, splits: tuple[str, ...] = ("train", "test")) -> dict[str, Path]:
    """The shipped example files ``{split: data/<prefix>_<split>.jsonl}``."""
    return {s: data_path(f"{prefix}_{s}.jsonl") for s in splits}


def load_splits(task: str, *, path: str | Path | None = None, train_path: str | Path | None = None,
                test_path: str | Path | None = None, split_paths: Mapping[str, str | Path] | None = None,
                default: Mapping[str, str | Path] | None = None, train_size: int | None = None,
                test_size: int | None = None, validate: Validator | None = None) -> dict[str, list[Example]]:
    """Load a task's splits.

    ``train_path``/``test_path``/``split_paths`` ({split: file}) give splits their own files; otherwise ``path``
    holds all rows: train is its first ``train_size`` rows and test its last ``test_size`` rows (``None``: all
    rows after train). With neither, the ``default`` files are used. ``train_size``/``test_size`` also cap
    per-split files (first rows). Every split must be non-empty; train and test from one file must not overlap.
    """
    files = dict(split_paths or {})
    files.update({k: v for k, v in (("train", train_path), ("test", test_path)) if v is not None})
    if not files and path is None:
        files = dict(default or {})
    if not files and path is None:
        raise TaskDataError(f"task {task!r} needs a data file: pass path=... or train_path=/test_path=...")
    for size in (train_size, test_size):
        if size is not None and (not isinstance(size, int) or size < 1):
            raise TaskDataError(f"task {task!r}: split sizes must be positive integers, got {size!r}")
    out: dict[str, list[Example]] = {}
    if path is not None and not {"train", "test"} <= files.keys():
        rows = load_records(path, validate)
        n_train = len(rows) if train_size is None else train_size
        n_test = len(rows) - n_train if test_size is None else test_size
        if n_train + n_test > len(rows):
            raise TaskDataError(f"{path}: {len(rows)} rows cannot hold {n_train} train + {n_test} test rows "
                                "without overlap; set train_size/test_size or give per-split files")
        out["train"], out["test"] = rows[:n_train], rows[len(rows) - n_test:]
    for split, file in files.items():
        rows = load_records(file, validate)
        cap = {"train": train_size, "test": test_size}.get(split)
        out[split] = rows[:cap] if cap is not None else rows
    for split, rows in out.items():
        if not rows:
            source = files.get(split, path)
            raise TaskDataError(f"split {split!r} of task {task!r} is empty ({source})")
    return out


# -- small field checks used by the tasks' validators ----------------------------------------------------
def require_str(record: Mapping[str, Any], key: str, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ValueError(f"field {key!r} must be a non-empty string, got {value!r:.60}")
    return value


class FileTask(Task):
    """A task whose splits are read from local JSON / JSONL files by ``load_splits``.

    Options: ``path`` (one file: train = first ``train_size`` rows, test = last ``test_size`` rows or the rest, in
    file order; not the reference's selection, which ``esjax data prepare`` + ``data_dir`` gives),
    ``train_path``/``test_path`` (a file per split, capped to the first ``train_size``/``test_size`` rows),
    ``data_dir`` (a directory holding ``<task>_train.jsonl`` and ``<task>_test.jsonl``, the files that
    ``esjax data prepare <task> --out DIR`` writes; capped like per-split files),
    ``splits`` ({name: rows}, in-memory data, validated like file rows), ``system_prompt`` (chat tasks),
    ``truncated_reward`` (reward of a completion that hit the token limit; ``None``: score it normally).
    With no data option, ``default_data()`` decides (the shipped example files by default).
    """

    def __init__(self, path: str | Path | None = None, *, train_path: str | Path | None = None,
                 test_path: str | Path | None = None, train_size: int | None = 200, test_size: int | None = None,
                 splits: Mapping[str, list[Example]] | None = None, system_prompt: str | None = None,
                 truncated_reward: float | None = 0.0, data_dir: str | Path | None = None):
        self.system_prompt, self.truncated_reward = system_prompt, truncated_reward
        if data_dir is not None:
            train_path, test_path = prepared_files(self.name, data_dir)
        if splits is not None:
            rows = {split: [_check(r, f"split {split!r}, row {i}", self.validate_row) for i, r in enumerate(examples)]
                    for split, examples in splits.items()}
        else:
            default = None
            if path is None and train_path is None and test_path is None:
                path, default = self.default_data()
            rows = load_splits(self.name, path=path, train_path=train_path, test_path=test_path, default=default,
                               train_size=train_size, test_size=test_size, validate=self.validate_row)
        super().__init__(rows)

    def default_data(self) -> tuple[str | Path | None, Mapping[str, Path] | None]:
        """``(path, {split: file})`` used when no data option is given."""
        return None, example_files(self.name)

    @staticmethod
    def validate_row(row: dict[str, Any]) -> dict[str, Any]:
        return row

    def messages(self, user: str) -> list[dict[str, str]]:
        """A chat conversation: the optional system prompt, then ``user``."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": user}]

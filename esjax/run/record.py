"""The settings a run was trained with, as its checkpoints record them, against its ``config.yaml``.

Every checkpoint's metadata holds the resolved settings (``meta["settings"]``, :func:`esjax.run.settings.to_dict`
as JSON); ``config.yaml`` is their readable copy. Before a resume reads ``config.yaml``, it must equal the newest
record with the changes ``settings_history.jsonl`` logs from that checkpoint on, so a file that is empty, cut
short or edited by hand is named in one line instead of resuming with defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from esjax.common.errors import EsjaxError
from esjax.run.checkpoints import recorded_settings
from esjax.run.resume import CONFIG_FILE, flatten, read_history
from esjax.run.settings_yaml import parse_yaml


class SettingsRecordError(EsjaxError, ValueError):
    """``config.yaml`` does not hold the settings the run's checkpoints record."""


def expected_settings(run_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """``(step, {"a.b": value})``: the newest checkpoint's recorded settings with the logged changes since; None
    when no checkpoint records settings."""
    found = recorded_settings(run_dir / "checkpoints")
    if found is None:
        return None
    step, recorded = found
    expected = flatten(recorded)
    for entry in read_history(run_dir):
        if isinstance(entry, dict) and isinstance(entry.get("iteration"), int) and entry["iteration"] >= step:
            for key, change in (entry.get("changes") or {}).items():
                expected[key] = change[1] if isinstance(change, list) and len(change) == 2 else change
    return step, expected


def check_settings_record(run_dir: str | Path) -> None:
    """:class:`SettingsRecordError` naming ``RUN/config.yaml`` when it is empty or differs from
    :func:`expected_settings` (keys and both values); nothing to check when no checkpoint records settings."""
    run_dir = Path(run_dir)
    found = expected_settings(run_dir)
    file = run_dir / CONFIG_FILE
    if found is None or not file.is_file():
        return
    step, expected = found
    text = file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise SettingsRecordError(f"{file}: empty, but checkpoints/{step} records the settings the run was trained "
                                  f"with; restore the file (those settings are in checkpoints/{step}/meta)")
    data = parse_yaml(text, str(file))
    actual = flatten(json.loads(json.dumps(data, default=str))) if isinstance(data, dict) else {"": data}
    differ = [k for k in sorted(set(expected) | set(actual)) if expected.get(k, _ABSENT) != actual.get(k, _ABSENT)]
    if differ:
        shown = ", ".join(_describe(differ, expected, actual))
        raise SettingsRecordError(f"{file}: differs from the settings checkpoints/{step} was trained with (truncated "
                                  f"or edited by hand?): {shown}; restore the file, then change settings with "
                                  f"--resume --set ... --allow-changes")


_ABSENT = object()


def _describe(keys: list[str], expected: dict[str, Any], actual: dict[str, Any], limit: int = 4) -> list[str]:
    """Whole sections missing from the file first ("the es: section is missing"), then up to ``limit`` keys with
    both values."""
    section = lambda k: k.split(".")[0].split("[")[0]  # noqa: E731
    gone = sorted({section(k) for k in keys if not any(section(a) == section(k) for a in actual)})
    rest = [k for k in keys if section(k) not in gone]
    out = [f"the {name}: section is missing" for name in gone]
    value = lambda d, k: json.dumps(d[k]) if k in d else "absent"  # noqa: E731
    out += [f"{k} (trained with {value(expected, k)}, file {value(actual, k)})" for k in rest[:limit]]
    return out + ([f"+{len(rest) - limit} more"] if len(rest) > limit else [])

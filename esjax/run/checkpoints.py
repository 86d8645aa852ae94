"""Training checkpoints with orbax: the method state pytree + JSON metadata, atomic, keep the last M.

orbax writes each step to a temporary directory and renames it when complete, so a kill -9 at any moment
leaves either the previous checkpoints or the new one, never a half-written step. A step damaged afterwards (a
folder deleted or emptied, a file truncated) is skipped on resume: :meth:`RunCheckpoints.restore_intact` takes the
newest step that restores, moves the damaged ones aside into ``damaged_checkpoints/`` (nothing is deleted) and
says so in one line. Every process takes part in ``save``/``restore`` (multi-host safe); typed PRNG keys are stored
as their raw key data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from esjax import distributed
from esjax.common.errors import EsjaxError
from esjax.common.paths import MetadataError, read_json

DAMAGED_DIR = "damaged_checkpoints"  # beside checkpoints/, where damaged steps are moved


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unkey(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


class DamagedCheckpointError(EsjaxError, ValueError):
    """No checkpoint of the run restores; the message names the run directory and each step's damage."""


class StateMismatchError(EsjaxError, ValueError):
    """A checkpoint whose state does not have the structure, shapes or dtypes the run's settings give."""


def _leaves(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"a/b/0": (shape, dtype)}``; a named tuple's fields and a dict's keys read alike (orbax saves both as
    dicts)."""
    name = lambda k: str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))  # noqa: E731
    return {"/".join(map(name, path)): (tuple(x.shape), str(x.dtype))
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def state_difference(saved: Any, target: Any, limit: int = 3) -> str:
    """The first ``limit`` differences between a saved state's metadata tree and a target state ("" if none):
    leaves only one side has, and leaves whose shape or dtype differ."""
    a, b = _leaves(saved), _leaves(target)
    out = [f"saved {k} is missing now" for k in a if k not in b]
    out += [f"{k} was not saved" for k in b if k not in a]
    out += [f"{k} is {a[k][1]}{list(a[k][0])} saved, {b[k][1]}{list(b[k][0])} now" for k in a if k in b and a[k] != b[k]]
    return "; ".join(out[:limit]) + (f" (+{len(out) - limit} more)" if len(out) > limit else "")


class RunCheckpoints:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def save(self, iteration: int, state: Any, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(_unkey(state)), meta=ocp.args.JsonSave(meta))
        self.manager.save(iteration, args=args, force=True)
        self.manager.wait_until_finished()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, target: Any, iteration: int | None = None) -> tuple[Any, dict]:
        """Restore into the structure, shapes, dtypes and shardings of ``target`` (a state like the saved one).

        A saved state of another structure (the method or its optimizer changed) raises
        :class:`StateMismatchError` naming the first differences."""
        step = self.latest() if iteration is None else iteration
        saved = self.manager.item_metadata(step)["state"]
        if not _leaves(getattr(saved, "tree", saved)):
            raise FileNotFoundError(f"{self.directory / str(step) / 'state'}: no saved state")
        difference = state_difference(getattr(saved, "tree", saved), _unkey(target))
        if difference:
            raise StateMismatchError(f"{self.directory / str(step)}: the saved training state does not match these "
                                     f"settings (method or optimizer changed?): {difference}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _unkey(target))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state = jax.tree.map(lambda t, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
                             target, restored["state"])
        return state, restored["meta"]

    def restore_intact(self, target_for: Callable[[int], Any], log: Callable[[str], None] = print
                       ) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of the newest checkpoint that restores into ``target_for(step)`` with metadata
        naming that step (None: no checkpoint). Damaged newer steps are moved into ``damaged_checkpoints/`` (so
        a resumed run can write those steps again) and named in one ``log`` line with why; a state of another
        structure still raises :class:`StateMismatchError`; none intact raises :class:`DamagedCheckpointError`."""
        damaged: list[tuple[int, str]] = []
        found = None
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(target_for(step), step)
                _check_meta(meta, step)
            except StateMismatchError:
                raise
            except Exception as e:  # orbax, tensorstore and JSON raise many types for missing or cut files
                damaged.append((step, " ".join(f"{type(e).__name__}: {e}".split())[:200]))
                continue
            found = step, state, meta
            break
        if damaged and found is None:
            raise DamagedCheckpointError(f"{self.directory.parent}: no intact checkpoint to resume from ("
                                         + "; ".join(f"{self.directory.name}/{s}: {why}" for s, why in damaged)
                                         + "); nothing was changed")
        if damaged:
            moved = self._move_aside([s for s, _ in damaged])
            log(f"skipped damaged checkpoint{'s' if len(damaged) > 1 else ''} "
                + "; ".join(f"{self.directory.name}/{s} ({why})" for s, why in damaged)
                + f", moved to {', '.join(moved)}; resuming from {self.directory.name}/{found[0]}")
        return found

    def _move_aside(self, steps: list[int]) -> list[str]:
        """Move ``steps`` into ``damaged_checkpoints/STEP`` (STEP.1, ... if taken); process 0 moves, all reload."""
        aside = self.directory.parent / DAMAGED_DIR
        names = []
        for step in steps:
            name, n = str(step), 0
            while os.path.lexists(aside / name):
                n += 1
                name = f"{step}.{n}"
            names.append(f"{DAMAGED_DIR}/{name}")
            if distributed.is_main_process():
                aside.mkdir(exist_ok=True)
                os.replace(self.directory / str(step), aside / name)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("esjax_damaged_checkpoints_moved")
        self.manager.reload()
        return names

    def close(self) -> None:
        self.manager.close()


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _record_ok(r: Any) -> bool:
    """A metrics record: an int iteration, numbers, and lists of names (``settings_changed``)."""
    return (isinstance(r, dict) and isinstance(r.get("iteration"), int) and not isinstance(r["iteration"], bool)
            and all(_number(v) or isinstance(v, list) and all(isinstance(x, str) for x in v) for v in r.values()))


def _check_meta(meta: Any, step: int) -> None:
    """A checkpoint's metadata: an object whose iteration is ``step``, with its count of metrics lines (``metrics``,
    the records themselves (numbers), in checkpoints written before) and the accuracy matrices (split -> rows of
    numbers)."""
    lines = meta.get("metrics_lines") if isinstance(meta, dict) else None
    records = meta.get("metrics") if isinstance(meta, dict) else None
    ok = (isinstance(meta, dict) and meta.get("iteration") == step
          and (isinstance(lines, int) and not isinstance(lines, bool) and lines >= 0 if "metrics_lines" in meta
               else isinstance(records, list) and all(map(_record_ok, records)))
          and isinstance(meta.get("matrices"), dict)
          and all(isinstance(rows, list) and all(isinstance(row, list) and all(map(_number, row)) for row in rows)
                  for rows in meta["matrices"].values()))
    if not ok:
        raise ValueError("its metadata is not the iteration, metrics and matrices of this step")


META_FILE = ("meta", "metadata")  # where orbax's JsonCheckpointHandler keeps a step's metadata


def recorded_settings(directory: str | Path) -> tuple[int, dict] | None:
    """``(step, settings)`` of the newest checkpoint in ``directory`` whose metadata records the resolved settings
    it was trained with (``meta["settings"]``); None when none does. Reads the JSON files only (no orbax manager,
    so one process may call it alone)."""
    directory = Path(directory)
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True) \
        if directory.is_dir() else []
    for step in steps:
        try:
            meta = read_json(directory / str(step) / META_FILE[0] / META_FILE[1])
        except (OSError, MetadataError):  # a damaged step: restore_intact names it; an older one may record them
            continue
        if isinstance(meta, dict) and isinstance(meta.get("settings"), dict):
            return step, meta["settings"]
    return None

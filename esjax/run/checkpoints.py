"""Training checkpoints with orbax: the method state pytree + JSON metadata, atomic, keep the last M.

orbax writes each step to a temporary directory and renames it when complete, so a kill -9 at any moment
leaves either the previous checkpoints or the new one, never a half-written step. Every process takes part in
``save``/``restore`` (multi-host safe); typed PRNG keys are stored as their raw key data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unkey(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


class StateMismatchError(ValueError):
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

    def close(self) -> None:
        self.manager.close()

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


class RunCheckpoints:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, iteration: int, state: Any, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(_unkey(state)), meta=ocp.args.JsonSave(meta))
        self.manager.save(iteration, args=args, force=True)
        self.manager.wait_until_finished()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, target: Any, iteration: int | None = None) -> tuple[Any, dict]:
        """Restore into the structure, shapes, dtypes and shardings of ``target`` (a state like the saved one)."""
        step = self.latest() if iteration is None else iteration
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _unkey(target))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state = jax.tree.map(lambda t, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
                             target, restored["state"])
        return state, restored["meta"]

    def close(self) -> None:
        self.manager.close()

"""Damaged training checkpoints: resume takes the newest intact one, names the skipped ones and why in one line,
moves them aside (nothing deleted), refuses in one line when none is intact, and ends bitwise equal to an
uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.cli.commands import main
from esjax.models import load_model
from esjax.run.checkpoints import DAMAGED_DIR, DamagedCheckpointError, RunCheckpoints, StateMismatchError


def _truncate_files(folder: Path, keep: int | None = None) -> None:
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2 if keep is None else keep])


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


DAMAGES = {
    "state-deleted": lambda d: shutil.rmtree(d / "state"),
    "state-emptied": lambda d: _empty(d / "state"),
    "state-files-truncated": lambda d: _truncate_files(d / "state"),
    "state-data-cut": lambda d: _truncate_files(d / "state" / "d", keep=3),
    "meta-deleted": lambda d: shutil.rmtree(d / "meta"),
    "meta-truncated": lambda d: _truncate_files(d / "meta"),
    "meta-not-object": lambda d: (d / "meta" / "metadata").write_text("[1]"),
    "meta-other-iteration": lambda d: (d / "meta" / "metadata").write_text(
        '{"iteration": 7, "metrics": [], "matrices": {}}'),
    "step-emptied": _empty,
    "meta-odd-record": lambda d: (d / "meta" / "metadata").write_text(
        '{"iteration": %s, "metrics": [{"iteration": 1, "samples": "x"}], "matrices": {}}' % d.name),
    "meta-odd-matrix": lambda d: (d / "meta" / "metadata").write_text(
        '{"iteration": %s, "metrics": [], "matrices": {"test": [["a"]]}}' % d.name),
}


def _state(seed: int):
    return {"w": jnp.arange(6.0) * seed, "key": jax.random.key(seed)}


def _saved(run: Path, steps=(1, 2, 3)) -> Path:
    checkpoints = RunCheckpoints(run / "checkpoints", keep=len(steps))
    for step in steps:
        checkpoints.save(step, _state(step), {"iteration": step, "metrics": [{"iteration": step}], "matrices": {}})
    checkpoints.close()
    return run / "checkpoints"


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_the_newest_intact_checkpoint_is_restored_and_the_damaged_kept(tmp_path, damage):
    directory = _saved(tmp_path / "run")
    DAMAGES[damage](directory / "3")
    DAMAGES[damage](directory / "2")
    lines = []
    checkpoints = RunCheckpoints(directory, keep=3)
    step, state, meta = checkpoints.restore_intact(lambda step: _state(0), lines.append)
    checkpoints.close()
    assert step == 1 and meta["iteration"] == 1 and np.array_equal(state["w"], _state(1)["w"])
    assert jax.random.key_data(state["key"]).tolist() == jax.random.key_data(_state(1)["key"]).tolist()
    assert len(lines) == 1 and "checkpoints/3 (" in lines[0] and "checkpoints/2 (" in lines[0], lines
    assert f"moved to {DAMAGED_DIR}/3, {DAMAGED_DIR}/2; resuming from checkpoints/1" in lines[0]
    assert sorted(p.name for p in directory.iterdir()) == ["1"]
    assert sorted(p.name for p in (tmp_path / "run" / DAMAGED_DIR).iterdir()) == ["2", "3"]  # nothing deleted


def test_no_intact_checkpoint_is_one_error_naming_the_run_and_changes_nothing(tmp_path):
    directory = _saved(tmp_path / "run", steps=(1, 2))
    for step in ("1", "2"):
        DAMAGES["state-deleted"](directory / step)
    checkpoints = RunCheckpoints(directory, keep=2)
    with pytest.raises(DamagedCheckpointError, match=rf"^{tmp_path / 'run'}: no intact checkpoint .*checkpoints/2: "
                                                     r".*checkpoints/1: .*nothing was changed$"):
        checkpoints.restore_intact(lambda step: _state(0), print)
    checkpoints.close()
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"] and not (tmp_path / "run" / DAMAGED_DIR).exists()


def test_a_state_of_another_structure_is_not_damage(tmp_path):
    """A changed method or optimizer stays the one-line mismatch error: the checkpoint is not moved."""
    directory = _saved(tmp_path / "run", steps=(1,))
    checkpoints = RunCheckpoints(directory, keep=2)
    with pytest.raises(StateMismatchError, match="does not match"):
        checkpoints.restore_intact(lambda step: {"w": jnp.zeros(3)}, print)
    checkpoints.close()
    assert [p.name for p in directory.iterdir()] == ["1"]


def _leaves(path):
    return [np.asarray(x) for x in jax.tree.leaves(load_model(path).params)]


@pytest.mark.slow
def test_resume_after_a_damaged_newest_checkpoint_is_bitwise_exact(qwen2_dir, tmp_path, capsys):
    """The CLI (the library's train underneath): a run of 4 iterations with checkpoints at 2 and 4; a copy with
    checkpoint 4's state deleted and its outputs removed resumes from 2 and ends bitwise where the run ended."""
    task = "task.options={prompt_style: short, counts: [3], train_size: 16, test_size: 4}"
    sets = [f"model.path={qwen2_dir}", task, "task.eval_limit=2", "train.iterations=4", "train.prompts_per_iteration=2",
            "train.eval_every=0", "train.checkpoint_every=2", "sampling.max_new_tokens=4", "es.population_size=2",
            "es.sigma=0.02", "es.alpha=0.01", "train.devices=1"]
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), "--no-progress", *(a for s in sets for a in ("--set", s))]) == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(full, damaged)
    shutil.rmtree(damaged / "stages")
    (damaged / "summary.json").unlink()
    DAMAGES["state-deleted"](damaged / "checkpoints" / "4")
    capsys.readouterr()
    assert main(["train", "--out", str(damaged), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skipped damaged")]
    assert len(skipped) == 1 and "checkpoints/4 (" in skipped[0] and "resuming from checkpoints/2" in skipped[0]
    assert f"resuming {damaged} at iteration 2/4" in out
    assert (damaged / DAMAGED_DIR / "4" / "meta").is_dir()
    final = "stages/0-countdown_procedural"
    for a, b in zip(_leaves(full / final), _leaves(damaged / final), strict=True):
        assert np.array_equal(a, b)

"""The run directory's lock (a second run on the same directory refused in one line, a killed holder's leftover
lock no obstacle) and a failed start's cleanup (only what the run created is removed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from esjax.cli.commands import main
from esjax.run.directory import (LOCK_FILE, RunDirError, discard_new_run_dir, lock_run_dir, prepare_run_dir,
                                 release_run_dir)
from esjax.run.settings import load_settings, save_settings

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from esjax.run.directory import lock_run_dir
    lock_run_dir(Path(sys.argv[1]))
    print("locked", flush=True)
    sys.stdin.read()
""")


def _run_dir(tmp_path: Path) -> Path:
    """A resumable run directory (config.yaml + a finished checkpoint folder), without training."""
    run = tmp_path / "run"
    (run / "checkpoints" / "2").mkdir(parents=True)
    save_settings(load_settings(None, ["train.devices=1"]), run / "config.yaml")
    return run


def _hold(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s lock, as a running ``esjax train`` does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_locked_directory_is_refused_and_a_killed_holder_does_not_block(tmp_path, capsys):
    run = _run_dir(tmp_path)
    holder = _hold(run)
    try:
        assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{run}: in use by another esjax run (pid {holder.pid})" in err, err
        with pytest.raises(RunDirError, match="in use by another esjax run"):
            lock_run_dir(run)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)  # the killed run's file stays behind
    settings = load_settings(run / "config.yaml")
    prepare_run_dir(run, settings, resume=True)  # ... and does not block a resume, which takes the lock
    assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    release_run_dir(run)


def test_a_failed_new_run_removes_only_what_it_created(tmp_path):
    settings = load_settings(None, ["train.devices=1"])
    made = tmp_path / "made"
    prepare_run_dir(made, settings, resume=False)
    assert sorted(os.listdir(made)) == [LOCK_FILE, "config.yaml"]
    discard_new_run_dir(made)
    assert not made.exists()
    existing = tmp_path / "existing"  # an empty --out the user made: it stays, and so does all it held before
    existing.mkdir()
    prepare_run_dir(existing, settings, resume=False)
    (existing / "checkpoints").mkdir()
    discard_new_run_dir(existing)
    assert existing.is_dir() and os.listdir(existing) == []
    raced = tmp_path / "raced"  # files written between the check and the creation: refused, left alone
    prepare_run_dir(raced, settings, resume=False, create=False)
    raced.mkdir()
    (raced / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already exists"):
        prepare_run_dir(raced, settings, resume=False)
    discard_new_run_dir(raced)
    assert (raced / "notes.txt").read_text() == "mine"


def test_a_start_failing_after_the_directory_was_made_keeps_an_existing_out(qwen2_dir, tmp_path, capsys,
                                                                            exploding_task):
    """The CLI: an existing (empty) --out and a reward that raises at the first iteration: exit 2, one line, and
    --out is left as it was."""
    task = exploding_task("exploding_dir")
    out = tmp_path / "out"
    out.mkdir()
    sets = [f"model.path={qwen2_dir}", "task.name=exploding_dir", f"task.file={task}", "task.eval_limit=2",
            "sampling.max_new_tokens=4", "es.population_size=2", "train.iterations=2", "train.prompts_per_iteration=2",
            "train.devices=1"]
    assert main(["train", "--out", str(out), "--no-progress", *(a for s in sets for a in ("--set", s))]) == 2
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err and err.count("\n") == 1
    assert out.is_dir() and os.listdir(out) == []


def _recorded_run(tmp_path: Path) -> Path:
    """A run directory whose checkpoint 2 records the settings in config.yaml (no training: a tiny state)."""
    import json

    import jax.numpy as jnp

    from esjax.run.checkpoints import RunCheckpoints
    from esjax.run.settings import to_dict
    run = tmp_path / "run"
    settings = load_settings(None, ["train.devices=1", "es.sigma=0.02", "train.iterations=4", "method=es"])
    save_settings(settings, run / "config.yaml")
    checkpoints = RunCheckpoints(run / "checkpoints")
    checkpoints.save(2, {"w": jnp.zeros(2)}, {"iteration": 2, "metrics": [], "matrices": {},
                                             "settings": json.loads(json.dumps(to_dict(settings)))})
    checkpoints.close()
    return run


def _cut_at_es(run: Path) -> None:
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text[: text.index("\nes:") + 1])


@pytest.mark.parametrize("damage, needle", [
    (lambda run: (run / "config.yaml").write_text(""), "config.yaml: empty, but checkpoints/2 records"),
    (lambda run: (run / "config.yaml").write_text("\n  \n"), "config.yaml: empty"),
    (_cut_at_es, "(truncated or edited by hand?): the es: section is missing, the grpo: section is missing;"),
    (lambda run: (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("sigma: 0.02",
                                                                                            "sigma: 0.05")),
     "differs from the settings checkpoints/2 was trained with (truncated or edited by hand?): es.sigma"),
], ids=["empty", "blank", "cut-before-es", "edited"])
def test_resume_refuses_a_config_yaml_that_differs_from_the_checkpoint_record(tmp_path, capsys, damage, needle):
    from test_bad_inputs import snapshot
    run = _recorded_run(tmp_path)
    prepare_run_dir(run, load_settings(run / "config.yaml"), resume=True, create=False)  # intact: accepted
    damage(run)
    before = snapshot(tmp_path)
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and str(run / "config.yaml") in err, err
    assert snapshot(tmp_path) == before


def test_recorded_changes_since_the_checkpoint_are_part_of_the_record(tmp_path):
    """A resume with --allow-changes rewrites config.yaml and logs the change from the checkpoint's iteration on;
    killed before its next checkpoint, the run still resumes: the record plus the logged changes match."""
    from esjax.run.record import SettingsRecordError
    from esjax.run.resume import record_changes
    run = _recorded_run(tmp_path)
    changed = load_settings(run / "config.yaml", ["es.sigma=0.05"])
    record_changes(run, changed, {"es.sigma": (0.02, 0.05)}, 2)
    prepare_run_dir(run, changed, resume=True, create=False)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("sigma: 0.05", "sigma: 0.07"))
    with pytest.raises(SettingsRecordError, match=r"es.sigma \(trained with 0.05, file 0.07\)"):
        prepare_run_dir(run, changed, resume=True, create=False)

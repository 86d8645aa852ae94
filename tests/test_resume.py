"""Resume from the run's own settings: refused changes name each key, allowed ones are recorded (history +
metrics), the iteration budget may grow but never end before what was done, a state that does not match the
settings is one line, and a SIGKILLed ``esjax train`` resumed without CONFIG ends bitwise equal to an
uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from esjax.cli.commands import main
from esjax.models import load_model
from esjax.run.resume import HISTORY_FILE, ResumeError, read_history, resume_settings
from esjax.run.settings import load_settings, save_settings
from esjax.run.loop import train

TASK = "task.options={prompt_style: short, counts: [3], train_size: 16, test_size: 4}"


def tiny(model_dir, iterations=4):
    return [f"model.path={model_dir}", TASK, "task.eval_limit=2", f"train.iterations={iterations}",
            "train.prompts_per_iteration=2", "train.eval_every=0", "train.checkpoint_every=2",
            "sampling.max_new_tokens=4", "es.population_size=2", "es.sigma=0.02", "es.alpha=0.01", "train.devices=1"]


def sets(*overrides):
    return [a for s in overrides for a in ("--set", s)]


def fake_run(tmp_path, overrides, done):
    """A run directory with config.yaml and a finished checkpoint at iteration ``done`` (no training)."""
    run = tmp_path / "run"
    run.parent.mkdir(exist_ok=True)
    (run / "checkpoints" / str(done)).mkdir(parents=True)
    save_settings(load_settings(None, overrides), run / "config.yaml")
    return run


def test_resume_settings_rules(tmp_path):
    base = ["train.iterations=8", "es.sigma=0.01", "train.devices=1"]
    run = fake_run(tmp_path, base, done=6)
    saved = load_settings(run / "config.yaml")
    assert resume_settings(run) == (saved, {})  # no CONFIG, no --set: exactly the saved run
    with pytest.raises(ResumeError, match=r"es.sigma \(0.01 -> 0.02\), train.seed \(0 -> 3\); .*--allow-changes"):
        resume_settings(run, None, ["es.sigma=0.02", "train.seed=3"])
    settings, changes = resume_settings(run, None, ["es.sigma=0.02"], allow_changes=True)
    assert settings.es.sigma == 0.02 and changes == {"es.sigma": (0.01, 0.02)}
    settings, changes = resume_settings(run, None, ["train.iterations=12"])  # a longer budget needs no flag
    assert settings.train.iterations == 12 and changes == {"train.iterations": (8, 12)}
    settings, changes = resume_settings(run, None, ["train.compile_ahead=false"])  # when it compiles: no flag
    assert not settings.train.compile_ahead and changes == {"train.compile_ahead": (True, False)}
    with pytest.raises(ResumeError, match=r"train.iterations \(8 -> 4\) ends before the 6 iterations"):
        resume_settings(run, None, ["train.iterations=4"], allow_changes=True)
    cosine = fake_run(tmp_path / "cosine", ["train.iterations=8", "es.alpha_schedule=cosine", "train.devices=1"], 6)
    with pytest.raises(ResumeError, match=r"ends at es.total_steps=8, before the new budget of 12 steps"):
        resume_settings(cosine, None, ["train.iterations=12"])
    settings, changes = resume_settings(cosine, None, ["train.iterations=12", "es.total_steps=12"], allow_changes=True)
    assert settings.es.total_steps == 12 and set(changes) == {"train.iterations", "es.total_steps"}
    config = tmp_path / "c.yaml"
    config.write_text("train: {iterations: 8, devices: 1}\nes: {sigma: 0.01}\nmethod: grpo\nsampling: {temperature: 1}\n")
    with pytest.raises(ResumeError, match=r"method \(\"es\" -> \"grpo\"\)"):
        resume_settings(run, config)
    with pytest.raises(ResumeError, match="nothing to resume"):
        resume_settings(tmp_path / "absent")


def test_the_library_refuses_undeclared_changes_on_resume(tmp_path):
    from esjax.run.directory import RunDirError
    run = fake_run(tmp_path, ["es.sigma=0.01", "train.devices=1", "model.path=/nonexistent"], done=2)
    with pytest.raises(RunDirError, match=r"differ from the run's config.yaml in es.sigma, train.seed; resume with"):
        train(load_settings(run / "config.yaml", ["es.sigma=0.02", "train.seed=1"]), run, resume=True)
    with pytest.raises(FileNotFoundError, match="nonexistent"):  # declared: passes the check, on to the model
        train(load_settings(run / "config.yaml", ["es.sigma=0.02"]), run, resume=True,
              changes={"es.sigma": (0.01, 0.02)})


def test_a_saved_task_file_is_imported_only_when_trusted(tmp_path):
    run = fake_run(tmp_path, ["task.name=mine", f"task.file={tmp_path / 'mine.py'}", "train.devices=1"], done=2)
    with pytest.raises(ResumeError, match="--trust-task-file"):
        resume_settings(run)
    assert resume_settings(run, trust_task_files=True)[1] == {}


@pytest.mark.slow
def test_cli_resume_extends_refuses_and_records(qwen2_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", *sets(*tiny(qwen2_dir, 4))]) == 0
    resume = ["train", "--out", str(run), "--resume", "--no-progress"]
    # a finished run continues when its budget grows; no CONFIG: the saved settings, not the defaults
    assert main([*resume, *sets("train.iterations=6")]) == 0
    assert json.loads((run / "summary.json").read_text())["iterations"] == 6
    assert read_history(run) == [{**read_history(run)[0], "iteration": 4, "changes": {"train.iterations": [4, 6]}}]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "settings_changed" in r] == [4] and records[-1]["iteration"] == 6
    capsys.readouterr()
    for refused, needle in [(["es.sigma=0.05"], "es.sigma (0.02 -> 0.05)"),
                            (["train.iterations=3"], "ends before the 6 iterations"),
                            (["task.eval_limit=3", "train.seed=1"], "task.eval_limit (2 -> 3), train.seed (0 -> 1)")]:
        assert main([*resume, *sets(*refused)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    before = (run / "config.yaml").read_text()
    for mismatch in (["es.optimizer=adam"], ["method=grpo", "sampling.temperature=1.0", "grpo.num_generations=2"]):
        assert main([*resume, "--allow-changes", *sets(*mismatch, "train.iterations=8")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the saved training state does not match" in err and "Traceback" not in err
    assert (run / "config.yaml").read_text() == before and len(read_history(run)) == 1  # nothing recorded
    assert main([*resume, "--allow-changes", *sets("es.sigma=0.05", "train.iterations=8")]) == 0
    assert load_settings(run / "config.yaml").es.sigma == 0.05
    assert read_history(run)[-1]["iteration"] == 6 and read_history(run)[-1]["changes"] == {
        "es.sigma": [0.02, 0.05], "train.iterations": [6, 8]}
    assert (run / HISTORY_FILE).read_text().count("\n") == 2


def leaves(path):
    return [np.asarray(x) for x in jax.tree.leaves(load_model(path).params)]


@pytest.mark.slow
def test_sigkilled_cli_run_resumed_without_config_is_bitwise_identical(qwen2_dir, tmp_path):
    overrides = tiny(qwen2_dir, 12)
    full = train(load_settings(None, overrides), tmp_path / "full", progress=False)
    run = tmp_path / "killed"
    cli = [sys.executable, "-m", "esjax.cli", "train", "--out", str(run), "--no-progress"]
    proc = subprocess.Popen([*cli, *sets(*overrides)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ))
    try:
        deadline = time.monotonic() + 600
        while not (run / "checkpoints" / "2").is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -9, err.decode()[-2000:]
    assert not (run / "summary.json").exists()  # killed mid-run
    resumed = subprocess.run([*cli, "--resume"], capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for a, b in zip(leaves(full["final_model"]), leaves(run / "stages" / "0-countdown_procedural"), strict=True):
        assert np.array_equal(a, b)
    assert not (run / HISTORY_FILE).exists()

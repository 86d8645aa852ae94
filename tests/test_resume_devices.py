"""Resume on another device count: a run saved on 1 device continues on 2 or 8 simulated devices and the reverse.

ES ends bitwise equal to an uninterrupted run (its results do not depend on the device count: member ids, noise
and sampling keys are global, and only the N fitness values cross devices). GRPO continues too, but its gradient
is an all-reduce over the data axis whose summation order follows the device count, so it ends within float32
rounding of an uninterrupted run on the new count, not bitwise (docs/training.md).
"""

import json

import jax
import numpy as np
import pytest

from esjax.cli.commands import main
from esjax.models import load_model
from esjax.run.plan import plan_devices
from esjax.run.resume import read_history, resume_settings
from esjax.run.settings import SettingsError, load_settings, save_settings

TASK = "task.options={prompt_style: short, counts: [3], train_size: 16, test_size: 4}"
FINAL = "stages/0-countdown_procedural"


def es(model_dir, iterations):
    return [f"model.path={model_dir}", TASK, "task.eval_limit=2", f"train.iterations={iterations}",
            "train.prompts_per_iteration=2", "train.eval_every=0", "train.checkpoint_every=2",
            "sampling.max_new_tokens=4", "es.population_size=8", "es.sigma=0.02", "es.alpha=0.01"]


def grpo(model_dir, iterations):
    return [f"model.path={model_dir}", "method=grpo", TASK, "task.eval_limit=2", f"train.iterations={iterations}",
            "train.prompts_per_iteration=2", "train.eval_every=0", "train.checkpoint_every=2",
            "sampling.max_new_tokens=4", "sampling.temperature=1.0", "grpo.num_generations=4",
            "grpo.learning_rate=0.001"]


def cli_train(run, *overrides, resume=False):
    args = ["train", "--out", str(run), "--no-progress", *(["--resume"] if resume else [])]
    assert main([*args, *[a for s in overrides for a in ("--set", s)]]) == 0


def leaves(run):
    return [np.asarray(x) for x in jax.tree.leaves(load_model(run / FINAL).params)]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_moves_to_the_devices_the_refusal_suggests(tmp_path):
    """Saved on 1 device, N = 30 antithetic: on 8 devices the default plan is refused with two fixes, and either,
    given on the resume command line, plans a mesh that uses the devices (no --allow-changes for the devices)."""
    run = tmp_path / "run"
    (run / "checkpoints" / "2").mkdir(parents=True)
    save_settings(load_settings(None, ["es.population_size=30", "es.antithetic=true", "train.devices=1",
                                       "train.iterations=2"]), run / "config.yaml")
    moved, changes = resume_settings(run, None, ["train.iterations=3", "train.devices="])
    assert changes == {"train.devices": (1, None), "train.iterations": (2, 3)}
    with pytest.raises(SettingsError, match=r"population 30 = 15 antithetic pairs cannot be split evenly over 8 "
                                            r"devices: set train.devices=5 \(uses 5 of 8\) or es.population_size=32"):
        plan_devices(moved)
    followed, _ = resume_settings(run, None, ["train.iterations=3", "train.devices=5"])
    assert plan_devices(followed).devices == 5
    grown, _ = resume_settings(run, None, ["train.iterations=3", "train.devices=", "es.population_size=32"],
                               allow_changes=True)
    assert plan_devices(grown).devices == 8


@pytest.mark.slow
def test_es_resumed_on_other_device_counts_is_bitwise_an_uninterrupted_run(qwen2_dir, tmp_path):
    """Saved on 1 device, resumed on 2, then 8, then back on 1: bitwise the uninterrupted 1-device run."""
    full, run = tmp_path / "full", tmp_path / "moved"
    cli_train(full, *es(qwen2_dir, 8), "train.devices=1")
    cli_train(run, *es(qwen2_dir, 2), "train.devices=1")
    for iterations, devices in [(4, 2), (6, 8), (8, 1)]:
        cli_train(run, f"train.iterations={iterations}", f"train.devices={devices}", resume=True)
        assert json.loads((run / "run_plan.json").read_text())["mesh"] == {"population": devices}
    assert [e["changes"]["train.devices"] for e in read_history(run)] == [[1, 2], [2, 8], [8, 1]]
    for a, b in zip(leaves(full), leaves(run), strict=True):
        assert np.array_equal(a, b)
    assert [r["reward_mean"] for r in metrics(run) if "reward_mean" in r] == [
        r["reward_mean"] for r in metrics(full) if "reward_mean" in r]


@pytest.mark.slow
def test_grpo_resumed_on_other_device_counts_continues(qwen2_dir, tmp_path):
    """Saved on 1 device, resumed on 2, then back on 1: within float32 rounding of the uninterrupted run."""
    full, run = tmp_path / "full", tmp_path / "moved"
    cli_train(full, *grpo(qwen2_dir, 6), "train.devices=1")
    cli_train(run, *grpo(qwen2_dir, 2), "train.devices=1")
    for iterations, devices in [(4, 2), (6, 1)]:
        cli_train(run, f"train.iterations={iterations}", f"train.devices={devices}", resume=True)
        assert json.loads((run / "run_plan.json").read_text())["mesh"] == {"data": devices}
    for a, b in zip(leaves(full), leaves(run), strict=True):  # the all-reduce order differs: not bitwise
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert [r["iteration"] for r in metrics(run) if "settings_changed" not in r] == [
        r["iteration"] for r in metrics(full)]

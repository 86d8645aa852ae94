"""Training runs: exact resume after kill -9, settings validation, continual stages, esjax eval, bad input."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from esjax import distributed
from esjax.cli.commands import main
from esjax.models import load_model
from esjax.run.settings import SettingsError, load_settings, save_settings
from esjax.run.loop import train

TASK = "task.options={prompt_style: short, counts: [3], train_size: 40, test_size: 16}"


def es_overrides(model_dir, iterations=6):
    return [f"model.path={model_dir}", TASK, "task.eval_limit=8", f"train.iterations={iterations}",
            "train.prompts_per_iteration=4", "train.eval_every=3", "train.checkpoint_every=3",
            "sampling.max_new_tokens=6", "es.population_size=4", "es.sigma=0.02", "es.alpha=0.01",
            "train.devices=2"]


def grpo_overrides(model_dir, iterations=6):
    return [f"model.path={model_dir}", "method=grpo", TASK, "task.eval_limit=8", f"train.iterations={iterations}",
            "train.prompts_per_iteration=2", "train.eval_every=3", "train.checkpoint_every=3",
            "sampling.max_new_tokens=6", "sampling.temperature=1.0", "grpo.num_generations=4",
            "grpo.learning_rate=0.001", "train.devices=2"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from esjax.run import checkpoints as checkpoint
    from esjax.run.settings import load_settings
    from esjax.run.loop import train
    save = checkpoint.RunCheckpoints.save
    def save_then_die(self, iteration, state, meta):
        save(self, iteration, state, meta)
        if iteration == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.RunCheckpoints.save = save_then_die
    train(load_settings(None, sys.argv[2:]), sys.argv[1], progress=False)
""")


def leaves(path):
    return jax.tree.leaves(load_model(path).params)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [es_overrides, grpo_overrides], ids=["es", "grpo"])
def test_resume_after_sigkill_is_bitwise_identical(qwen2_dir, tmp_path, overrides):
    args = overrides(qwen2_dir)
    full = train(load_settings(None, args), tmp_path / "full", progress=False)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(killed), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"]})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (killed / "summary.json").exists()
    with pytest.raises(Exception, match="already exists"):
        train(load_settings(None, args), killed, progress=False)
    resumed = train(load_settings(None, args), killed, resume=True, progress=False)
    for a, b in zip(leaves(full["final_model"]), leaves(resumed["final_model"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_lines = (killed / "metrics.jsonl").read_text().splitlines()
    def strip(lines):
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "seconds"))}
                for line in lines]
    assert strip(full_lines) == strip(resumed_lines)


def test_settings_validation_names_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  iterations: 5\n  learning_rate: 3\n")
    with pytest.raises(SettingsError, match=r"bad.yaml.*train.learning_rate"):
        load_settings(bad)
    bad.write_text("sampling:\n  temperature: hot\n")
    with pytest.raises(SettingsError, match=r"bad.yaml.*sampling.temperature"):
        load_settings(bad)
    with pytest.raises(SettingsError, match="es: .*population_size"):
        load_settings(None, ["es.population_size=7", "es.antithetic=true"])
    s = load_settings(None, ["train.iterations=7", "es.sigma=2e-3", "task.options={counts: [3, 4]}",
                             "sampling.temperature=1", "train.devices=1"])
    assert s.train.iterations == 7 and s.es.sigma == 2e-3 and s.task.options == {"counts": [3, 4]}
    assert isinstance(s.sampling.temperature, float)
    with pytest.raises(SettingsError, match="KEY=VALUE"):
        load_settings(None, ["train.iterations"])


def test_decaying_schedules_end_with_the_run():
    """A decaying step-size schedule without total_steps ends at the run's last update (ES: iterations; GRPO:
    iterations x num_iterations optimizer steps); an explicit total_steps is kept."""
    one = ["train.devices=1"]  # the default population (30) does not split over the 8 test devices
    s = load_settings(None, ["train.iterations=7", "es.alpha_schedule=cosine", *one])
    assert s.es.total_steps == 7 and s.es.alpha_at()(7) == 0
    assert load_settings(None, ["es.alpha_schedule=linear", "es.total_steps=3", *one]).es.total_steps == 3
    assert load_settings(None, one).es.total_steps is None
    s = load_settings(None, ["method=grpo", "sampling.temperature=1", "train.iterations=5", "grpo.lr_schedule=linear", "grpo.num_iterations=2"])
    assert s.grpo.total_steps == 10


@pytest.mark.parametrize("overrides", [["es.alpha_schedule=cosine", "es.freeze=[norm]", "es.optimizer=sgd",
                                        "es.optimizer_kwargs={momentum: 0.9}", "train.devices=2"],
                                       ["method=grpo", "sampling.temperature=1", "grpo.lr_schedule=linear",
                                        "grpo.num_iterations=2"]],
                         ids=["es", "grpo"])
def test_saved_settings_load_back_equal(tmp_path, overrides):
    """config.yaml holds the resolved settings (typed method configs included) and loads back to equal ones."""
    settings = load_settings(None, overrides)
    save_settings(settings, tmp_path / "config.yaml")
    again = load_settings(tmp_path / "config.yaml")
    assert again == settings and again.configs == settings.configs


@pytest.mark.slow
def test_continual_two_tasks_writes_matrices(qwen2_dir, tmp_path):
    cfg = tmp_path / "continual.yaml"
    cfg.write_text(textwrap.dedent(f"""
        method: es
        model: {{path: {qwen2_dir}}}
        stages:
          - {{name: countdown_procedural, options: {{prompt_style: short, counts: [3], train_size: 20, test_size: 8}},
              iterations: 2, eval_limit: 6}}
          - {{name: conciseness, iterations: 2, eval_limit: 6}}
        sampling: {{max_new_tokens: 6}}
        train: {{prompts_per_iteration: 2, eval_every: 0, checkpoint_every: 0, devices: 1}}
        es: {{population_size: 4, sigma: 0.02, alpha: 0.01}}
    """))
    summary = train(load_settings(cfg), tmp_path / "run", progress=False)
    matrices = json.loads((tmp_path / "run" / "accuracy_matrices.json").read_text())
    assert matrices["tasks"] == ["countdown_procedural", "conciseness"]
    for split in ("train", "test"):
        m = np.asarray(matrices[split])
        assert m.shape == (2, 2) and ((m >= 0) & (m <= 1)).all()
        assert (tmp_path / "run" / f"accuracy_matrix_{split}.png").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "stages").iterdir()) == ["0-countdown_procedural",
                                                                              "1-conciseness"]
    assert summary["final_model"].endswith("1-conciseness")


def test_eval_matches_scoring_by_hand(qwen2_dir, capsys):
    from esjax import tasks
    from esjax.generation.inference import generate_texts, sampling_for
    from esjax.generation.tokenizer import load_tokenizer
    assert main(["eval", "--model", str(qwen2_dir), "--task", "conciseness", "--split", "test", "--limit", "6",
                 "--max-new-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = load_model(qwen2_dir)
    tok = load_tokenizer(qwen2_dir)
    task = tasks.get("conciseness")
    examples = task.split("test")[:6]
    texts, out = generate_texts(model.config, model.params, tok, [task.prompt(e) for e in examples],
                                sampling_for(model.config, tok, max_new_tokens=8))
    truncated = ~np.asarray(out.finished)
    rewards = [task.reward(t, e, truncated=bool(tr))[0] for t, e, tr in zip(texts, examples, truncated)]
    correct = [task.is_correct(t, e, truncated=bool(tr)) for t, e, tr in zip(texts, examples, truncated)]
    assert result["num_examples"] == 6
    assert result["accuracy"] == pytest.approx(np.mean(correct))
    assert result["mean_reward"] == pytest.approx(np.mean(rewards))


def test_cli_train_bad_input(qwen2_dir, tmp_path, capsys, monkeypatch):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious").write_text("x")
    assert main(["train", "--out", str(out), "--set", f"model.path={qwen2_dir}", "--set", "train.devices=1"]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "precious").read_text() == "x"
    assert main(["train", "--out", str(tmp_path / "r2"), "--set", f"model.path={tmp_path / 'nomodel'}",
                 "--set", "train.devices=1"]) == 2
    assert "nomodel" in capsys.readouterr().err
    # Every process of a multi-process run must write to the same, explicitly named, run directory.
    monkeypatch.setattr(distributed, "initialize", lambda: distributed.ProcessInfo(1, 2, "env", "host:1"))
    assert main(["train", "--set", f"model.path={qwen2_dir}"]) == 2
    assert "multi-process run needs --out" in capsys.readouterr().err


def test_failed_start_leaves_nothing_and_the_corrected_command_runs(qwen2_dir, tmp_path, capsys):
    """A start that fails on any check (task, model, settings) writes nothing, so the corrected command runs
    without --resume or a new --out."""
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--no-progress", *(a for s in (
        f"model.path={qwen2_dir}", TASK, "task.eval_limit=2", "train.iterations=1", "train.prompts_per_iteration=2",
        "sampling.max_new_tokens=4", "es.population_size=2", "train.devices=1") for a in ("--set", s))]
    for mistake, needle in [("task.name=countdown_procedurall", "countdown_procedurall"),
                            (f"model.path={tmp_path / 'nomodel'}", "nomodel"),
                            ("task.options={prompt_style: shorter}", "prompt_style"),
                            ("sampling.max_new_tokens=1000", "max_position_embeddings")]:
        assert main([*args, "--set", mistake]) == 2
        assert needle in capsys.readouterr().err and not out.exists()
    assert main(args) == 0
    assert (out / "summary.json").is_file() and load_settings(out / "config.yaml").task.name == "countdown_procedural"


def test_reward_that_raises_stops_cleanly(qwen2_dir, tmp_path, capsys, exploding_task):
    user_task = exploding_task("exploding")
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--set", f"model.path={qwen2_dir}",
            "--set", "task.name=exploding", "--set", f"task.file={user_task}", "--set", "task.eval_limit=2",
            "--set", "sampling.max_new_tokens=4", "--set", "es.population_size=2", "--set", "train.iterations=2",
            "--set", "train.prompts_per_iteration=2", "--set", "train.devices=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "reward function raised ZeroDivisionError: boom" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # failed before its first checkpoint: nothing blocks the retry

"""The README's main job (shortened) end to end, and every shipped config loads and validates."""

from pathlib import Path

import pytest

from esjax.cli.commands import DEMO_CONFIG, main
from esjax.run.settings import load_settings

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_demo_config_is_the_shipped_preset():
    assert DEMO_CONFIG.read_text() == (Path(__file__).resolve().parents[1] / "configs" / "tiny_es_full.yaml").read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_configs_load(path):
    settings = load_settings(path, ["train.devices=1"])  # presets are sized for accelerators, not 8 CPU devices
    assert settings.task_stages()


@pytest.mark.slow
def test_short_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", "--set", "train.iterations=2",
                 "--set", "train.prompts_per_iteration=8", "--set", "task.eval_limit=16",
                 "--set", "task.options.train_size=64", "--set", "es.population_size=4",
                 "--set", "train.eval_every=0", "--set", "train.devices=2"]) == 0
    text = capsys.readouterr().out
    for needle in ("base test accuracy:", "fine-tuned test accuracy:", f"run directory: {out}", "reward plot:",
                   "esjax export"):
        assert needle in text, text
    assert (out / "reward.png").is_file() and (out / "stages" / "0-countdown_procedural").is_dir()

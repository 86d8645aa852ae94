"""The embedded tiny Countdown model: its files load, and its greedy base accuracy is the recorded one."""

import json

import pytest

from esjax.run.embedded import (BASE_FILE, EMBEDDED_MODEL_DIR, embedded_eval_settings, embedded_info, embedded_task,
                            eval_examples, evaluate_greedy, load_embedded)


@pytest.fixture(scope="module")
def embedded():
    from esjax.generation.tokenizer import load_tokenizer

    model = load_embedded()
    return model, load_tokenizer(model.tokenizer_dir)


def test_files_and_record():
    names = {p.name for p in EMBEDDED_MODEL_DIR.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", BASE_FILE} <= names
    assert sum(p.stat().st_size for p in EMBEDDED_MODEL_DIR.iterdir()) < 4_000_000
    gen = json.loads((EMBEDDED_MODEL_DIR / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 0 and gen["pad_token_id"] == 1
    info = embedded_info()
    assert info["task"]["name"] == "countdown_procedural"
    settings = embedded_eval_settings()
    assert settings["split"] == "test" and settings["temperature"] == 0 and settings["max_new_tokens"] <= 24


def test_model_config(embedded):
    model, tokenizer = embedded
    c = model.config
    assert c.model_type == "qwen2" and c.qkv_bias and c.tie_word_embeddings
    assert c.eos_token_ids == (0,) and c.pad_token_id == 1
    assert c.vocab_size >= len(tokenizer)
    assert 200_000 <= c.num_params() <= 1_500_000
    assert embedded_info()["model"]["params"] == c.num_params()


def test_task_matches_record():
    task = embedded_task()
    options = embedded_info()["task"]["options"]
    assert task.seed == options["seed"] and task.prompt_style == options["prompt_style"]
    assert task.counts == tuple(options["counts"])
    assert task.options["number_range"] == tuple(options["number_range"])
    assert embedded_task(seed=5).seed == 5
    example = eval_examples(task)[0]
    assert task.render_prompt(example).startswith("Numbers: ")


def test_base_accuracy_is_recorded_figure(embedded):
    model, tokenizer = embedded
    settings = embedded_eval_settings()
    task = embedded_task()
    examples = eval_examples(task, settings)
    assert len(examples) == settings["size"]
    result = evaluate_greedy(model.config, model.params, tokenizer, task, examples, settings["max_new_tokens"],
                             settings["batch_size"])
    recorded = embedded_info()["eval"]
    assert round(result["accuracy"] * result["n"]) == recorded["correct"]
    assert result["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-12)
    assert result["mean_reward"] == pytest.approx(recorded["mean_reward"], abs=1e-6)
    assert 0.1 <= result["accuracy"] <= 0.6  # clearly above zero, far from the ceiling
    assert result["mean_format"] > 0.9  # the format is learned; the answers are what ES/GRPO improve

"""Hub model IDs resolved through a Hugging Face cache the test lays out in the standard layout (no network), and
``generation_config.json`` as the defaults of ``esjax generate`` / ``generate_texts``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import pytest

from esjax.cli.commands import main
from esjax.generation.inference import generate_texts, generation_defaults, model_sampling
from esjax.generation.tokenizer import load_tokenizer
from esjax.models import ModelConfigError, ModelNotFoundError, load_model, parse_hub_id, resolve_model_path
from esjax.testing import make_hub_cache, make_tiny_hf_model

REPO = "esjax-test/tiny-qwen2"
SAMPLING_GEN = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
                "eos_token_id": 0, "bos_token_id": 0, "pad_token_id": 1}


@pytest.fixture(scope="module")
def sampling_model(tmp_path_factory):
    """A tiny qwen2 whose generation_config.json asks for sampling, as Qwen2.5-Instruct's does."""
    model = make_tiny_hf_model("qwen2", tmp_path_factory.mktemp("m") / "model", seed=3)
    (model / "generation_config.json").write_text(json.dumps(SAMPLING_GEN))
    return model


@pytest.fixture(scope="module")
def hf_home(sampling_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    make_hub_cache(sampling_model, home, REPO, revisions=("main", "v1.0"))
    return home


@pytest.fixture
def offline_cache(hf_home, monkeypatch):
    """This process sees ``hf_home`` as its cache with the network off (huggingface_hub reads the environment
    once, at import, so its constants are patched as the environment would have set them)."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_home


def _cli(hf_home, *args):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "esjax.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("text, expected", [
    ("Qwen/Qwen2.5-0.5B-Instruct", ("Qwen/Qwen2.5-0.5B-Instruct", None)),
    ("meta-llama/Llama-3.2-1B-Instruct@main", ("meta-llama/Llama-3.2-1B-Instruct", "main")),
    ("org/name@refs/pr/3", ("org/name", "refs/pr/3")),
    ("org/name@0123456789abcdef0123456789abcdef01234567", ("org/name", "0123456789abcdef0123456789abcdef01234567")),
    ("a/b/c", None), ("./org/name", None), ("~/org/name", None), ("/abs/path", None), ("../org/name", None),
    ("org/..", None), ("name-only", None), ("org/name@", None), ("org /name", None), ("", None),
])
def test_hub_id_syntax(text, expected):
    assert parse_hub_id(text) == expected


def test_existing_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_hub_id("org/name") is None
    assert resolve_model_path("org/name") == Path("org/name")


def test_hub_id_resolves_to_the_cached_snapshot(offline_cache, sampling_model):
    for model_id in (REPO, f"{REPO}@v1.0"):
        folder = resolve_model_path(model_id)
        assert folder.parent.parent.name == "models--esjax-test--tiny-qwen2"
        assert (folder / "config.json").read_bytes() == (sampling_model / "config.json").read_bytes()
    hub, local = load_model(REPO), load_model(sampling_model)
    assert hub.config == local.config
    chex.assert_trees_all_equal(hub.params, local.params)
    assert load_tokenizer(hub.tokenizer_dir)("3 + 4")["input_ids"] == load_tokenizer(sampling_model)("3 + 4")["input_ids"]


@pytest.mark.parametrize("model_id, why", [("esjax-test/not-cached", "not in the Hugging Face cache"),
                                           (f"{REPO}@v2", "not in the Hugging Face cache")])
def test_uncached_hub_id_offline_is_one_line(offline_cache, model_id, why):
    with pytest.raises(ModelNotFoundError, match=why) as err:
        load_model(model_id)
    assert "HF_HUB_OFFLINE" in str(err.value) and "\n" not in str(err.value)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        resolve_model_path(tmp_path / "nope")


def test_cli_generate_and_convert_from_a_hub_id_offline(hf_home, tmp_path):
    """The issue's check: `esjax generate --model ORG/NAME` from a populated cache with the network off, and a
    one-line error (exit 2) for a model that is not cached."""
    ok = _cli(hf_home, "generate", "--model", REPO, "--prompt", "Numbers: 3 4", "--max-new-tokens", "4", "--greedy")
    assert ok.returncode == 0, ok.stderr
    assert "decoding: greedy" in ok.stderr
    missing = _cli(hf_home, "generate", "--model", "esjax-test/absent", "--prompt", "x")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "esjax-test/absent" in missing.stderr and "HF_HUB_OFFLINE" in missing.stderr
    convert = _cli(hf_home, "convert", "--from-hf", f"{REPO}@v1.0", "--out", str(tmp_path / "ckpt"))
    assert convert.returncode == 0, convert.stderr
    assert (tmp_path / "ckpt" / "esjax_model.json").is_file()


def test_generation_config_gives_the_defaults(sampling_model, qwen2_dir):
    sampled = load_model(sampling_model).config
    assert generation_defaults(sampled) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
    greedy = load_model(qwen2_dir).config
    assert generation_defaults(greedy) == {"temperature": 0.0, "top_p": 1.0, "top_k": 0}


def test_transformers_defaults_fill_what_the_file_leaves_out(sampling_model, tmp_path):
    import shutil
    model = shutil.copytree(sampling_model, tmp_path / "m")
    (model / "generation_config.json").write_text(json.dumps({"do_sample": True, "max_new_tokens": 7}))
    config = load_model(model).config
    assert generation_defaults(config) == {"max_new_tokens": 7, "temperature": 1.0, "top_p": 1.0, "top_k": 50}


def test_generate_texts_follows_the_model_and_flags_override(sampling_model):
    model = load_model(sampling_model)
    tokenizer = load_tokenizer(model.tokenizer_dir)
    prompts = ["Numbers: 3 4"] * 6
    default, _ = generate_texts(model.config, model.params, tokenizer, prompts, None, jax.random.key(1))
    explicit = model_sampling(model.config, tokenizer, max_new_tokens=64, temperature=0.7, top_p=0.8, top_k=20)
    same, _ = generate_texts(model.config, model.params, tokenizer, prompts, explicit, jax.random.key(1))
    assert default == same
    greedy = model_sampling(model.config, tokenizer, temperature=0.0)
    assert greedy.greedy and greedy.top_k == 20  # an override replaces only what it names
    texts, _ = generate_texts(model.config, model.params, tokenizer, prompts[:2], greedy)
    assert texts[0] == texts[1]


def test_cli_flags_override_the_generation_config(sampling_model, capsys):
    base = ["generate", "--model", str(sampling_model), "--prompt", "Numbers: 3 4", "--max-new-tokens", "3"]
    assert main(base) == 0
    assert "temperature 0.7, top_p 0.8, top_k 20" in capsys.readouterr().err
    assert main([*base, "--temperature", "1.5", "--top-k", "0"]) == 0
    err = capsys.readouterr().err
    assert "temperature 1.5, top_p 0.8, top_k 0" in err and "not applied: repetition_penalty 1.05" in err
    assert main([*base, "--greedy"]) == 0
    assert "decoding: greedy" in capsys.readouterr().err
    assert main([*base, "--greedy", "--temperature", "0.5"]) == 2
    assert "--greedy cannot be combined" in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("temperature", "hot"), ("temperature", -1), ("top_p", 0), ("top_p", 1.5),
                                          ("top_k", 2.5), ("do_sample", "yes"), ("max_new_tokens", 0),
                                          ("top_k", True)])
def test_bad_generation_config_field_is_named(sampling_model, tmp_path, field, value):
    import shutil
    model = shutil.copytree(sampling_model, tmp_path / "m")
    (model / "generation_config.json").write_text(json.dumps({**SAMPLING_GEN, field: value}))
    with pytest.raises(ModelConfigError, match=f"generation_config.json: field '{field}'"):
        generation_defaults(load_model(model).config)

"""Hugging Face round trips: generation defaults, file modes, private temporary names, shard layout, tokenizer."""

import json
import os
import shutil
import stat
import tempfile

import pytest
import transformers

from esjax import models
from esjax.models.export import parse_size
from esjax.models.safetensors_io import iter_tensors
from esjax.testing import build_word_tokenizer, make_tiny_hf_model
from esjax.generation.tokenizer import build_byte_tokenizer, load_tokenizer

# an instruct model's sampling defaults (Qwen2.5-Instruct's keys) with two EOS ids and no pad id
INSTRUCT_GENERATION = {"bos_token_id": 0, "do_sample": True, "eos_token_id": [0, 3], "repetition_penalty": 1.05,
                       "temperature": 0.7, "top_k": 20, "top_p": 0.8, "transformers_version": "4.37.0"}


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory):
    """A tiny qwen2 model with an instruct-style generation_config.json and no tokenizer files."""
    path = make_tiny_hf_model("qwen2", tmp_path_factory.mktemp("instruct") / "m", seed=5, with_tokenizer=False)
    (path / "generation_config.json").write_text(json.dumps(INSTRUCT_GENERATION))
    return path


def assert_instruct_defaults(model_dir):
    gen = transformers.GenerationConfig.from_pretrained(model_dir)
    assert (gen.do_sample, gen.temperature, gen.top_p, gen.top_k, gen.repetition_penalty) == (True, 0.7, 0.8, 20, 1.05)
    assert gen.eos_token_id == [0, 3] and gen.bos_token_id == 0
    assert gen.pad_token_id == 1  # config.json's pad id, which esjax decodes with, merged in


def test_generation_config_survives_convert_and_export(instruct_dir, tmp_path):
    direct = models.load_model(instruct_dir)
    models.save_hf(direct.config, direct.params, tmp_path / "from_hf", source_dir=direct.source_dir)
    assert_instruct_defaults(tmp_path / "from_hf")
    ckpt = models.save_model(tmp_path / "ckpt", direct.config, direct.params, source_dir=direct.source_dir)
    assert not (ckpt / "tokenizer").exists()  # nothing to copy: the defaults travel in the checkpoint's config
    converted = models.load_model(ckpt)
    models.save_hf(converted.config, converted.params, tmp_path / "from_ckpt", source_dir=converted.source_dir)
    assert_instruct_defaults(tmp_path / "from_ckpt")
    assert models.load_config(tmp_path / "from_ckpt").eos_token_ids == (0, 3)


def test_generation_config_without_source_file(tmp_path):
    path = make_tiny_hf_model("llama", tmp_path / "m", with_tokenizer=False)
    (path / "generation_config.json").unlink()
    model = models.load_model(path)
    models.save_hf(model.config, model.params, tmp_path / "out")
    gen = transformers.GenerationConfig.from_pretrained(tmp_path / "out")
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (0, 0, 1) and not gen.do_sample


def test_generation_config_survives_a_training_run(instruct_dir, tmp_path):
    from esjax.run.settings import load_settings
    from esjax.run.loop import train
    source = tmp_path / "m"
    shutil.copytree(instruct_dir, source)
    build_byte_tokenizer(source)
    overrides = [f"model.path={source}", "task.options={prompt_style: short, counts: [3], train_size: 8, test_size: 4}",
                 "task.eval_limit=4", "train.iterations=1", "train.prompts_per_iteration=2", "train.eval_every=0",
                 "sampling.max_new_tokens=2", "es.population_size=2", "train.devices=1"]
    summary = train(load_settings(None, overrides), tmp_path / "run", progress=False)
    final = models.load_model(summary["final_model"])
    models.save_hf(final.config, final.params, tmp_path / "hf", source_dir=final.source_dir)
    assert_instruct_defaults(tmp_path / "hf")


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_umask_modes(qwen2_dir, tmp_path, umask):
    source = tmp_path / "src"
    shutil.copytree(qwen2_dir, source)
    (source / "tokenizer.json").chmod(0o600)  # a private source file is copied as a new file, not with its mode
    model = models.load_model(source)
    old = os.umask(umask)
    try:
        hf = models.save_hf(model.config, model.params, tmp_path / "hf", source_dir=source)
        ckpt = models.save_model(tmp_path / "ckpt", model.config, model.params, source_dir=source)
        models.save_hf(model.config, model.params, hf, source_dir=source, overwrite=True)
    finally:
        os.umask(old)
    for directory in (hf, ckpt, ckpt / "tokenizer"):
        assert mode(directory) == 0o777 & ~umask, directory
    for file in [*hf.iterdir(), ckpt / "esjax_model.json", *(ckpt / "tokenizer").iterdir()]:
        assert mode(file) == 0o666 & ~umask, file


def test_temporary_names_come_from_tempfile(qwen2_dir, tmp_path, monkeypatch):
    """Every temporary name next to an output is a fresh ``tempfile.mkdtemp`` one: files planted under the old
    predictable names (a link to someone else's directory, say) are neither followed nor replaced."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("precious")
    out = tmp_path / "out"
    for name in (".hf.tmp", ".ckpt.tmp", f".hf.old-{os.getpid()}", f".ckpt.old-{os.getpid()}"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).symlink_to(victim)
    made, real_mkdtemp = [], tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real_mkdtemp(*a, **k)) or made[-1])
    renamed, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renamed.append((str(src), str(dst))) or real_replace(src, dst))
    model = models.load_model(qwen2_dir)
    for _ in range(2):  # the second round replaces the first round's outputs
        models.save_hf(model.config, model.params, out / "hf", source_dir=qwen2_dir, overwrite=True)
        models.save_model(out / "ckpt", model.config, model.params, source_dir=qwen2_dir, overwrite=True)
    assert (victim / "data").read_text() == "precious" and all((out / n).is_symlink() for n in os.listdir(out)
                                                               if n.startswith("."))
    assert made and sorted(os.listdir(out)) == sorted([".hf.tmp", ".ckpt.tmp", f".hf.old-{os.getpid()}",
                                                        f".ckpt.old-{os.getpid()}", "hf", "ckpt"])
    targets = {str(out / "hf"), str(out / "ckpt")}
    for src, dst in renamed:
        if not src.startswith(str(out)):
            continue  # orbax's own renames inside the private temporary directory
        for path in (src, dst):
            assert path in targets or any(path.startswith(m) for m in made), (src, dst)


def sharded_source(tmp_path, family="llama"):
    """A tiny model saved by transformers in shards (its own file names and tensor assignment)."""
    import torch
    small = make_tiny_hf_model(family, tmp_path / "single", with_tokenizer=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(small, dtype=torch.float32)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    shutil.copy(small / "generation_config.json", tmp_path / "sharded")
    return tmp_path / "sharded"


def weight_map(model_dir):
    return json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]


def test_export_keeps_the_source_shard_layout(tmp_path):
    source = sharded_source(tmp_path)
    layout = weight_map(source)
    assert len(set(layout.values())) > 2
    model = models.load_model(source)
    from_hf = models.save_hf(model.config, model.params, tmp_path / "from_hf", source_dir=source)
    ckpt = models.save_model(tmp_path / "ckpt", model.config, model.params)
    converted = models.load_model(ckpt)
    from_ckpt = models.save_hf(converted.config, converted.params, tmp_path / "from_ckpt")
    opened = models.open_model(ckpt)  # left on disk, streamed as esjax export does
    streamed = models.save_hf(opened.config, opened.params, tmp_path / "streamed")
    for out in (from_hf, from_ckpt, streamed):
        assert weight_map(out) == layout
        assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(set(layout.values()))
        for file in sorted(set(layout.values())):
            ours, theirs = dict(iter_tensors(out / file)), dict(iter_tensors(source / file))
            assert ours.keys() == theirs.keys()
            assert all(ours[k].tobytes() == theirs[k].tobytes() for k in ours), file
    single = models.save_hf(model.config, model.params, tmp_path / "one_file", max_shard_size="1GB")
    assert sorted(p.name for p in single.iterdir() if "safetensors" in p.name) == ["model.safetensors"]
    resharded = models.save_hf(model.config, model.params, tmp_path / "resharded", max_shard_size=30_000)
    assert len(set(weight_map(resharded).values())) > len(set(layout.values()))
    for file in resharded.glob("*.safetensors"):  # full up to the size; a larger tensor (the embedding) alone
        tensors = dict(iter_tensors(file))
        assert len(tensors) == 1 or sum(t.nbytes for t in tensors.values()) <= 30_000, file


def test_single_file_source_stays_single(tiny_model_dirs, tmp_path):
    model = models.load_model(tiny_model_dirs["qwen3"])
    out = models.save_hf(model.config, model.params, tmp_path / "out", dtype="bfloat16")
    assert sorted(p.name for p in out.glob("*safetensors*")) == ["model.safetensors"]
    assert models.describe_hf(out).startswith("1 weight file model.safetensors (")
    assert models.describe_hf(out).endswith("; bfloat16")


@pytest.mark.parametrize("text, expected", [("500MB", 500 * 10**6), ("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29),
                                            ("123456", 123456), (4096, 4096), (" 40kb ", 40_000)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", "-5MB", "abc", "GB", "1.5XB", "nan", "inf", "", True])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="max_shard_size .*positive size"):
        parse_size(text)


TEXTS = ["hello world", "world hello hello", "unknown words here", "Numbers: 3 4\n"]


@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("custom", [True, False], ids=["word-level", "byte-level"])
def test_one_tokenizer_from_folder_checkpoint_and_export(tmp_path, family, custom):
    source = make_tiny_hf_model(family, tmp_path / "m", with_tokenizer=not custom)
    if custom:
        build_word_tokenizer(source, ["<eos>", "<pad>", "hello", "world"])
    reference = transformers.AutoTokenizer.from_pretrained(source)  # as the user loads it
    expected = [reference(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    direct = models.load_model(source)
    ckpt = models.save_model(tmp_path / "ckpt", direct.config, direct.params, source_dir=direct.source_dir)
    converted = models.load_model(ckpt)
    exported = models.save_hf(converted.config, converted.params, tmp_path / "hf", source_dir=converted.source_dir)
    for tokenizer_dir in (direct.tokenizer_dir, converted.tokenizer_dir, exported):
        tokenizer = load_tokenizer(tokenizer_dir)
        assert type(tokenizer) is type(reference), tokenizer_dir
        assert [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS] == expected, tokenizer_dir

"""One rule for names read from folders esjax did not write (esjax.common.paths), proven end to end: crafted
metadata in a checkpoint or model folder never makes convert / export / generate read or write outside their
targets. Each case snapshots the whole test tree (the victim folder beside the model included) before and after."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from esjax.cli.commands import main
from esjax.common.paths import UnsafePathError, check_tree, inside, plain_name
from test_bad_inputs import run_main, snapshot


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/etc/passwd", "a/b", "a\\b", "x\0y", "x\ny", 3, None,
                                  ["x"]])
def test_plain_name_refuses_anything_but_a_file_name(name):
    with pytest.raises(UnsafePathError, match="source.json"):
        plain_name(name, "source.json")


def test_inside_follows_links_only_within_the_folder(tmp_path):
    folder, outside = tmp_path / "model", tmp_path / "secret.txt"
    folder.mkdir()
    outside.write_text("secret")
    (folder / "real.json").write_text("{}")
    (folder / "alias.json").symlink_to("real.json")
    (folder / "leak.json").symlink_to(outside)
    (folder / "sub").mkdir()
    assert inside(folder, "alias.json") == folder / "alias.json"
    assert inside(folder, "absent.json", required=False) is None
    with pytest.raises(UnsafePathError, match="leading outside"):
        inside(folder, "leak.json")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        inside(folder, "sub")
    assert inside(folder, "sub", kind="dir") == folder / "sub"
    with pytest.raises(UnsafePathError, match="missing"):
        inside(folder, "absent.json")
    with pytest.raises(UnsafePathError, match="leading outside"):
        check_tree(folder, "model folder")
    (folder / "leak.json").unlink()
    check_tree(folder, "model folder")


def test_a_hub_cache_snapshot_may_link_to_its_blobs(tmp_path):
    """transformers' cache: snapshots/REV/config.json -> ../../blobs/HASH; inside the repository's cache folder."""
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("{}")
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/abc")
    assert inside(snap, "config.json") == snap / "config.json"
    check_tree(snap, "model folder")
    (tmp_path / "elsewhere").write_text("{}")
    (snap / "tokenizer.json").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="tokenizer.json"):
        check_tree(snap, "model folder")


@pytest.fixture(scope="module")
def checkpoint(qwen2_dir, tmp_path_factory):
    """An esjax checkpoint converted from the tiny qwen2 model."""
    out = tmp_path_factory.mktemp("ckpt") / "ckpt"
    assert main(["convert", "--from-hf", str(qwen2_dir), "--out", str(out)]) == 0
    return out


def _meta(edit):
    def apply(ckpt: Path, victim: Path):
        meta = json.loads((ckpt / "esjax_model.json").read_text())
        edit(meta, victim)
        (ckpt / "esjax_model.json").write_text(json.dumps(meta))
    return apply


def _weight_map(name: str):
    def edit(meta, victim):
        files = json.loads(meta["config"]["hf_weight_map_json"])
        meta["config"]["hf_weight_map_json"] = json.dumps(dict.fromkeys(files, name.replace("VICTIM", str(victim))))
    return _meta(edit)


def _link(entry: str, target: str):
    def apply(ckpt: Path, victim: Path):
        path = ckpt / entry
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        path.symlink_to(victim / target)
    return apply


CRAFTED = [  # (id, edit of a copy of the checkpoint, needle of the one-line error)
    ("weight-map-traversal", _weight_map("../../x.safetensors"), "hf_weight_map_json"),
    ("weight-map-absolute", _weight_map("VICTIM/x.safetensors"), "hf_weight_map_json"),
    ("weight-map-subfolder", _weight_map("sub/x.safetensors"), "hf_weight_map_json"),
    ("weight-map-not-safetensors", _weight_map("config.json"), "hf_weight_map_json"),
    ("weight-map-not-object", _meta(lambda m, v: m["config"].update(hf_weight_map_json="[1]")), "hf_weight_map_json"),
    ("weight-map-not-json", _meta(lambda m, v: m["config"].update(hf_weight_map_json="{")), "hf_weight_map_json"),
    ("weight-map-int", _meta(lambda m, v: m["config"].update(hf_weight_map_json=3)), "hf_weight_map_json"),
    ("config-record-vocab-huge", _meta(lambda m, v: m["config"].update(
        hf_config_json=json.dumps({**json.loads(m["config"]["hf_config_json"]), "vocab_size": 10**12}))),
     "vocab_size"),
    ("dtype-object", _meta(lambda m, v: m.update(dtype="object")), "dtype"),
    ("dtype-list", _meta(lambda m, v: m.update(dtype=["float32"])), "dtype"),
    ("vocab-huge", _meta(lambda m, v: m["config"].update(vocab_size=10**12)), "vocab_size"),
    ("vocab-disagrees", _meta(lambda m, v: m["config"].update(vocab_size=300)), "vocab_size"),
    ("config-not-object", _meta(lambda m, v: m.update(config=[1])), "config"),
    ("config-field-missing", _meta(lambda m, v: m["config"].pop("head_dim")), "config"),
    ("config-field-extra", _meta(lambda m, v: m["config"].update(evil=1)), "config"),
    ("format-list", _meta(lambda m, v: m.update(format=[1])), "format"),
    ("tokenizer-file-link", _link("tokenizer/special_tokens_map.json", "secret.json"), "special_tokens_map.json"),
    ("tokenizer-folder-link", _link("tokenizer", ""), "tokenizer"),
    ("params-link", _link("params", "params"), "params"),
    ("model-json-link", _link("esjax_model.json", "esjax_model.json"), "esjax_model.json"),
    ("deep-json", lambda ckpt, v: (ckpt / "esjax_model.json").write_text("[" * 100_000 + "]" * 100_000),
     "nested too deeply"),
]
# every field of the config, given a value of the wrong JSON type
CONFIG_FIELDS = ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
                 "rope_scaling", "max_position_embeddings", "tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias",
                 "qk_norm", "eos_token_ids", "bos_token_id", "pad_token_id", "hf_config_json", "hf_generation_json"]
FIELDS = [(f"field-{key}-{kind}", _meta(lambda m, v, key=key, value=value: m["config"].update({key: value})), key)
          for key in CONFIG_FIELDS for kind, value in (("list", [[]]), ("object", {"a": None}), ("string", "x"))]
# every crafted case through each command that reads a checkpoint; the field types (parsed in one place) by export
CASES = [(f"{case[0]}-{command}", *case[1:], command) for case in CRAFTED
         for command in ("export", "generate", "export-sharded")] + [(*case, "export") for case in FIELDS]


@pytest.mark.parametrize("edit, needle, command", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_crafted_checkpoint_reads_and_writes_only_inside(checkpoint, tmp_path, capsys, monkeypatch, edit, needle,
                                                         command):
    """A checkpoint folder from elsewhere, with one crafted field: one line naming it, exit 2, and not one file
    outside the target changed or created (the victim folder holds files the crafted names point to)."""
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim"
    shutil.copytree(checkpoint, victim)  # a real checkpoint the links point into
    (victim / "secret.json").write_text(json.dumps({"eos_token": "SECRET"}))
    (victim / "x.safetensors").write_bytes(b"precious")
    ckpt = tmp_path / "deep" / "er" / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    edit(ckpt, victim)
    out = tmp_path / "out"
    argv = {"export": ["export", str(ckpt), "--to-hf", str(out)],
            "generate": ["generate", "--model", str(ckpt), "--prompt", "x", "--max-new-tokens", "1"],
            "export-sharded": ["export", str(ckpt), "--to-hf", str(out), "--max-shard-size", "1KB"]}[command]
    before = snapshot(tmp_path)
    rc = run_main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err[-3000:]
    assert needle in err, err
    assert snapshot(tmp_path) == before and not out.exists()
    assert not os.path.lexists(tmp_path.parent / "x.safetensors")


def test_intact_checkpoint_exports_inside_its_target(checkpoint, tmp_path):
    """The control: the same commands on the unedited checkpoint succeed (the cases fail for their field)."""
    assert main(["generate", "--model", str(checkpoint), "--prompt", "x", "--max-new-tokens", "1"]) == 0
    for i, flags in enumerate(([], ["--max-shard-size", "1KB"])):
        assert main(["export", str(checkpoint), "--to-hf", str(tmp_path / f"out{i}"), *flags]) == 0
        assert {"config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / f"out{i}").iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out0", "out1"]

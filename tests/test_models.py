"""Decoder parity with transformers' PyTorch models, config parsing, HF import/export round trips."""

import json

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from esjax import models
from esjax.common.paths import UnsafePathError
from esjax.testing import TINY_FAMILIES, make_tiny_hf_model

PROMPTS = [[5, 17, 42, 99, 3, 250, 7, 12, 64], [9, 8, 7], [200, 100, 50, 25, 12, 6], [33]]


def left_padded(rows, pad=1):
    length = max(map(len, rows))
    tokens = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        tokens[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    return tokens, mask


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_logits_match_transformers(tiny_model_dirs, family):
    path = tiny_model_dirs[family]
    config, params = models.load_hf(path)
    tokens, mask = left_padded(PROMPTS)
    ours = np.asarray(models.forward_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask)))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    valid = mask.astype(bool)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=1e-4)


def test_config_features(tiny_model_dirs):
    qwen2 = models.load_config(tiny_model_dirs["qwen2"])
    llama = models.load_config(tiny_model_dirs["llama"])
    qwen3 = models.load_config(tiny_model_dirs["qwen3"])
    assert qwen2.qkv_bias and not qwen2.o_bias and qwen2.tie_word_embeddings and not qwen2.qk_norm
    assert llama.rope["rope_type"] == "llama3" and llama.num_groups == 4 and not llama.tie_word_embeddings
    assert qwen3.qk_norm and qwen3.head_dim == 32 and qwen3.head_dim * qwen3.num_attention_heads != qwen3.hidden_size
    assert qwen2.eos_token_ids == (0,)
    # llama3 scaling changes low frequencies and keeps high ones, exactly as transformers computes them
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    hf_cfg = transformers.AutoConfig.from_pretrained(tiny_model_dirs["llama"])
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    # numpy's and torch's float32 pow may differ by one ulp; the scaling itself must agree
    np.testing.assert_allclose(llama.inv_freq(), ref.numpy(), rtol=3e-7, atol=0)
    unscaled = 1.0 / (500000.0 ** (np.arange(0, 16, 2) / 16))
    assert not np.allclose(llama.inv_freq(), unscaled, rtol=1e-3)


def test_old_and_new_rope_keys_agree():
    base = dict(model_type="llama", vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    scaling = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    old = models.config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **scaling}})
    new = models.config_from_hf({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **scaling}})
    legacy_type = models.config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": {"type": "llama3", **scaling}})
    assert old == new == legacy_type
    np.testing.assert_array_equal(old.inv_freq(), new.inv_freq())


@pytest.mark.parametrize("change, field", [
    ({"model_type": "mistral"}, "model_type"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"vocab_size": "big"}, "vocab_size"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
])
def test_unsupported_config_names_the_field(change, field):
    base = dict(model_type="qwen2", vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(models.ModelConfigError, match=field):
        models.config_from_hf({**base, **change})


def test_missing_required_field():
    with pytest.raises(models.ModelConfigError, match="hidden_size"):
        models.config_from_hf({"model_type": "llama", "vocab_size": 10})


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_export_reload_identical(tiny_model_dirs, tmp_path, family):
    config, params = models.load_hf(tiny_model_dirs[family])
    out = models.save_hf(config, params, tmp_path / "export", source_dir=tiny_model_dirs[family])
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    a = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dirs[family], dtype=torch.float32).state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    from safetensors import safe_open
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert ("lm_head.weight" in f.keys()) == (not config.tie_word_embeddings)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_import_export_bytes_exact(tmp_path, dtype):
    src = make_tiny_hf_model("qwen3", tmp_path / "src", seed=3, dtype=dtype, with_tokenizer=False)
    config, params = models.load_hf(src, dtype=None)
    assert str(params["layers_0"]["self_attn"]["q_proj"]["kernel"].dtype) == dtype
    out = models.save_hf(config, params, tmp_path / "out", source_dir=src)
    from esjax.models.safetensors_io import iter_tensors
    original = dict(iter_tensors(src / "model.safetensors"))
    exported = dict(iter_tensors(out / "model.safetensors"))
    assert original.keys() == exported.keys()
    for k in original:
        assert original[k].dtype == exported[k].dtype and original[k].tobytes() == exported[k].tobytes(), k
    config2, params2 = models.load_hf(out, dtype=None)
    assert config2 == config
    for a, b in zip(*(jax_leaves(p) for p in (params, params2))):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def test_sharded_export_and_import(tiny_model_dirs, tmp_path):
    config, params = models.load_hf(tiny_model_dirs["llama"])
    out = models.save_hf(config, params, tmp_path / "sharded", max_shard_size="40KB")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    _, params2 = models.load_hf(out)
    for a, b in zip(jax_leaves(params), jax_leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert hf.config.num_hidden_layers == config.num_hidden_layers


def test_export_refuses_non_empty_target(tiny_model_dirs, tmp_path):
    config, params = models.load_hf(tiny_model_dirs["qwen2"])
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        models.save_hf(config, params, target)
    assert (target / "keep.txt").read_text() == "precious"
    models.save_hf(config, params, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_export_leaves_nothing(tiny_model_dirs, tmp_path, monkeypatch):
    config, params = models.load_hf(tiny_model_dirs["qwen2"])
    broken = dict(params, norm={"scale": jnp.zeros((3,))})
    with pytest.raises(models.CheckpointError, match=r"norm/scale.*\(3,\).*\(64,\)"):
        models.save_hf(config, broken, tmp_path / "out")
    from esjax.models import export

    def fail_midway(path, entries, metadata=None):
        path.write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(export, "write_file", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        models.save_hf(config, params, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_import_errors(tiny_model_dirs, tmp_path):
    from esjax.models.safetensors_io import iter_tensors, write_file
    src = tiny_model_dirs["qwen2"]
    tensors = dict(iter_tensors(src / "model.safetensors"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())

    def save(ts):
        write_file(bad / "model.safetensors", [(k, v.shape, v.dtype, lambda v=v: np.asarray(v)) for k, v in ts.items()])

    wrong = dict(tensors)
    wrong["model.norm.weight"] = np.ones((7,), np.float32)
    save(wrong)
    with pytest.raises(models.CheckpointError, match=r"model.norm.weight.*\(7,\).*\(64,\)"):
        models.load_hf(bad)
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    save(missing)
    with pytest.raises(models.CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        models.load_hf(bad)
    save({**tensors, "model.extra.weight": np.ones((2,), np.float32)})
    with pytest.warns(UserWarning, match="model.extra.weight"):
        models.load_hf(bad)


def test_esjax_checkpoint_round_trip(tiny_model_dirs, tmp_path):
    import jax
    config, params = models.load_hf(tiny_model_dirs["qwen3"], dtype="bfloat16")
    path = models.save_model(tmp_path / "ckpt", config, params, source_dir=tiny_model_dirs["qwen3"])
    loaded = models.load_model(path)
    assert loaded.config == config and loaded.tokenizer_dir is not None
    chex.assert_trees_all_equal_dtypes(params, loaded.params)
    chex.assert_trees_all_equal(params, loaded.params)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("model",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    placed = models.load_model(path, sharding=sharding).params
    assert jax.tree.leaves(placed)[0].sharding == sharding
    with pytest.raises(models.ModelConfigError, match="not a model"):
        models.load_model(tmp_path)


@pytest.mark.parametrize("shard", ["../victim/model.safetensors", "/ABS/victim/model.safetensors", "sub/../../x"])
def test_index_shard_names_stay_inside_the_model_directory(tiny_model_dirs, tmp_path, monkeypatch, shard):
    """Proof of concept: an index naming a shard outside its directory is refused before anything is opened, with
    the same message whether the target exists or not (nothing about other paths leaks)."""
    import builtins
    src = tiny_model_dirs["qwen2"]
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())  # a valid checkpoint
    shard = shard.replace("/ABS", str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "generation_config.json"):
        (bad / name).write_text((src / name).read_text())
    names = [name for name, _ in models.safetensors_io.iter_tensors(src / "model.safetensors")]
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    with pytest.raises(UnsafePathError, match="not a plain file name ending in '.safetensors' inside") as found:
        models.load_hf(bad)
    assert not any("victim" in f for f in opened)
    (victim / "model.safetensors").unlink()
    with pytest.raises(UnsafePathError) as absent:
        models.load_hf(bad)
    assert str(found.value) == str(absent.value)


def test_integer_weights_are_refused_with_the_tensor_name(tiny_model_dirs, tmp_path):
    """Every decoder parameter is a floating-point weight: an integer tensor in its place is an error naming the
    tensor, never silently cast (integer buffers the decoder does not use are ignored with a warning, like any
    unknown key)."""
    from esjax.models.safetensors_io import iter_tensors, write_file
    src = tiny_model_dirs["qwen2"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    tensors = {k: np.asarray(v) for k, v in iter_tensors(src / "model.safetensors")}
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].astype(np.int32)
    tensors["model.position_ids"] = np.arange(8, dtype=np.int64)
    write_file(bad / "model.safetensors", [(k, v.shape, v.dtype, lambda v=v: v) for k, v in tensors.items()])
    with pytest.raises(models.CheckpointError, match=r"'model.layers.0.mlp.up_proj.weight' has dtype int32"):
        models.load_hf(bad)
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].astype(np.float32)
    write_file(bad / "model.safetensors", [(k, v.shape, v.dtype, lambda v=v: v) for k, v in tensors.items()])
    with pytest.warns(UserWarning, match="model.position_ids"):
        config, params = models.load_hf(bad)
    assert params["layers_0"]["mlp"]["up_proj"]["kernel"].dtype == jnp.float32


ODD_JSON = [None, "x", -1, 0, 1.5, [], {}, True, 1e30, [1], {"a": 1}, 10 ** 30, 10 ** 400, float("nan"), ["a"],
            [[0]]]


def test_any_odd_config_field_is_a_model_config_error(tiny_model_dirs):
    """Every field of config.json / generation_config.json set to odd JSON values: the config parses, or a
    ModelConfigError names the file's field; never another exception."""
    src = tiny_model_dirs["qwen2"]
    cfg, gen = (json.loads((src / name).read_text()) for name in ("config.json", "generation_config.json"))
    keys = sorted(set(cfg) | set(gen) | {"head_dim", "rope_scaling", "rope_theta", "attention_bias", "mlp_bias",
                                         "pretraining_tp", "num_key_value_heads", "use_sliding_window",
                                         "rope_parameters", "layer_types", "architectures", "hidden_act"})
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 5e5}
    for key in [*rope, "type", "partial_rotary_factor"]:  # inside rope_parameters too
        for value in ODD_JSON:
            try:
                models.config_from_hf({**cfg, "rope_parameters": {**rope, key: value}}, gen)
            except models.ModelConfigError as e:
                assert "\n" not in str(e)
    for key in keys:
        for value in ODD_JSON:
            for changed in ({**cfg, key: value}, gen), (cfg, {**gen, key: value}):
                try:
                    models.config_from_hf(*changed)
                except models.ModelConfigError as e:
                    assert "\n" not in str(e)


def test_any_odd_safetensors_header_is_a_safetensors_error(tmp_path):
    """Header entries with odd dtype / shape / offsets (and headers that are not objects): SafetensorsError
    naming the file, never another exception (a zero-size tensor with a 1e30 dimension included)."""
    import struct

    from esjax.models.safetensors_io import SafetensorsError, iter_tensors
    path = tmp_path / "m.safetensors"
    for field in ("dtype", "shape", "data_offsets"):
        for value in [*ODD_JSON, [-1, 2], [0, 10 ** 30], [10 ** 30, 0], ["a"], "F32", [2, 2]]:
            entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 0] if field == "shape" else [0, 8], field: value}
            for header in ({"t": entry}, {"t": value}, [value], value):
                blob = json.dumps(header).encode()
                path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(8))
                try:
                    list(iter_tensors(path))
                except SafetensorsError as e:
                    assert str(path) in str(e)

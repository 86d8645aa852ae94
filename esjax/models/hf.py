"""Hugging Face checkpoints in: safetensors (single or sharded) -> the decoder's params pytree (export: ``export``)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from esjax.common.errors import EsjaxError
from esjax import distributed
from esjax.common.paths import inside, plain_name, read_json
from esjax.models.config import ModelConfig, ModelConfigError, load_config
from esjax.models.decoder import Params, param_shapes
from esjax.models.safetensors_io import DTYPES, iter_tensors, read_header

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")
INDEX_FILE = "model.safetensors.index.json"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(EsjaxError, ValueError):
    """A checkpoint that does not match its config; the message names the key."""


def hf_name_map(config: ModelConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF tensor name -> (params path, transpose?) for every parameter, in HF's canonical order."""
    out: dict[str, tuple[tuple[str, ...], bool]] = {"model.embed_tokens.weight": (("embed_tokens", "embedding"), False)}
    for i in range(config.num_hidden_layers):
        hf, fx = f"model.layers.{i}", f"layers_{i}"
        out[f"{hf}.input_layernorm.weight"] = ((fx, "input_layernorm", "scale"), False)
        for proj, bias in (("q_proj", config.qkv_bias), ("k_proj", config.qkv_bias), ("v_proj", config.qkv_bias),
                           ("o_proj", config.o_bias)):
            out[f"{hf}.self_attn.{proj}.weight"] = ((fx, "self_attn", proj, "kernel"), True)
            if bias:
                out[f"{hf}.self_attn.{proj}.bias"] = ((fx, "self_attn", proj, "bias"), False)
        if config.qk_norm:
            for norm in ("q_norm", "k_norm"):
                out[f"{hf}.self_attn.{norm}.weight"] = ((fx, "self_attn", norm, "scale"), False)
        out[f"{hf}.post_attention_layernorm.weight"] = ((fx, "post_attention_layernorm", "scale"), False)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            out[f"{hf}.mlp.{proj}.weight"] = ((fx, "mlp", proj, "kernel"), True)
            if config.mlp_bias:
                out[f"{hf}.mlp.{proj}.bias"] = ((fx, "mlp", proj, "bias"), False)
    out["model.norm.weight"] = (("norm", "scale"), False)
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = (("lm_head", "kernel"), True)
    return out


def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files of an HF directory: the shards its index names, else every ``*.safetensors`` file; each
    a regular file inside ``model_dir`` (:func:`esjax.common.paths.inside`)."""
    index = inside(model_dir, INDEX_FILE, required=False)
    if index is not None:
        content = read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a non-empty 'weight_map' "
                                  f"of tensor name -> shard file)")
        shards = sorted({plain_name(name, f"{index} weight_map", ".safetensors") for name in weight_map.values()})
        missing = [name for name in shards if not os.path.lexists(model_dir / name)]
        if missing:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
        return [inside(model_dir, name, f"{index} weight_map") for name in shards]
    files = [inside(model_dir, f.name) for f in sorted(model_dir.glob("*.safetensors"))]
    if not files:
        raise CheckpointError(f"{model_dir}: no *.safetensors weights found")
    return files


def checkpoint_dtype(model_dir: str | Path) -> np.dtype:
    """The dtype of the checkpoint's first floating-point tensor (float32 if it has none)."""
    header, _ = read_header(safetensors_files(Path(model_dir))[0])
    floats = (DTYPES.get(v["dtype"]) for v in header.values() if isinstance(v, dict) and isinstance(v.get("dtype"), str))
    return next((d for d in floats if d is not None and jnp.issubdtype(d, jnp.floating)), np.dtype(np.float32))


def load_hf(path: str | Path, dtype: Any = "float32", sharding: Any = None) -> tuple[ModelConfig, Params]:
    """Load an HF model directory into ``(config, params)``.

    dtype: parameter dtype ("float32", "bfloat16", "float16", or None to keep the checkpoint's). Tensors are
    read one at a time from memory-mapped files, converted and placed (with ``sharding`` — a
    ``jax.sharding.Sharding`` or a pytree of them matching params — when given), so host memory never holds two
    copies of the model. Every parameter must be present; unknown keys are reported with a warning. The returned
    config records which file held each tensor (``hf_weight_map_json``), the layout an export keeps.
    """
    model_dir = Path(path)
    config = load_config(model_dir)
    dtype = checkpoint_dtype(model_dir) if dtype is None else np.dtype(jnp.dtype(dtype))
    names = hf_name_map(config)
    shapes = traverse_util.flatten_dict(param_shapes(config))
    shardings = _sharding_for(sharding, shapes)
    flat: dict[tuple[str, ...], jax.Array] = {}
    unknown, weight_map = [], {}
    for file in safetensors_files(model_dir):
        for name, tensor in iter_tensors(file):
            weight_map[name] = file.name
            if name not in names:
                if name == "lm_head.weight" and config.tie_word_embeddings or name.endswith(_IGNORED_SUFFIXES):
                    continue
                unknown.append(name)
                continue
            key, transpose = names[name]
            if not jnp.issubdtype(tensor.dtype, jnp.floating):
                raise CheckpointError(f"{file}: tensor {name!r} has dtype {tensor.dtype}; model weights must be "
                                      f"floating point")
            got = tensor.shape[::-1] if transpose else tensor.shape
            want = shapes[key].shape
            if tuple(got) != tuple(want):
                hf_want = tuple(want[::-1]) if transpose else tuple(want)
                raise CheckpointError(f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {hf_want}")
            host = np.asarray(tensor.T if transpose else tensor).astype(dtype, copy=False)  # no copy when dtypes match
            flat[key] = distributed.put_global(host, shardings[key]) if shardings else jnp.asarray(host)
            del host
    missing = [n for n, (key, _) in names.items() if key not in flat]
    if missing:
        raise CheckpointError(f"{model_dir}: missing parameters: {', '.join(missing[:8])}"
                              + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    if unknown:
        warnings.warn(f"{model_dir}: ignored {len(unknown)} unknown checkpoint keys: {', '.join(unknown[:8])}",
                      stacklevel=2)
    config = dataclasses.replace(config, hf_weight_map_json=json.dumps(weight_map, sort_keys=True))
    return config, traverse_util.unflatten_dict(flat)


def _sharding_for(sharding: Any, shapes: dict) -> dict:
    if sharding is None:
        return {}
    if isinstance(sharding, jax.sharding.Sharding):
        return {k: sharding for k in shapes}
    return traverse_util.flatten_dict(sharding)


def check_param_shapes(config: ModelConfig, flat_params: dict) -> None:
    """Raise :class:`CheckpointError` naming the first missing, extra or mis-shaped parameter."""
    want = traverse_util.flatten_dict(param_shapes(config))
    for key in sorted(set(want) | set(flat_params)):
        name = "/".join(key)
        if key not in flat_params or key not in want:
            raise CheckpointError(f"parameter {name!r} is {'missing' if key in want else 'not part of this model'}")
        if tuple(flat_params[key].shape) != tuple(want[key].shape):
            raise CheckpointError(f"parameter {name!r} has shape {tuple(flat_params[key].shape)}, "
                                  f"expected {tuple(want[key].shape)}")


def tokenizer_files(source: Path) -> list[Path]:
    """The tokenizer files present in ``source``, each a regular file inside it (else UnsafePathError)."""
    found = (inside(source, name, required=False) for name in TOKENIZER_FILES)
    return [path for path in found if path is not None]


def copy_tokenizer_files(source: Path, dest: Path) -> list[str]:
    """Copy the tokenizer files of ``source`` (contents only: new files get the umask's mode); returns their names."""
    copied = []
    for path in tokenizer_files(source):
        shutil.copyfile(path, dest / path.name)
        copied.append(path.name)
    return copied


def is_hf_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or (p / INDEX_FILE).is_file())


__all__ = ["load_hf", "hf_name_map", "is_hf_dir", "CheckpointError", "ModelConfigError",
           "copy_tokenizer_files", "TOKENIZER_FILES"]

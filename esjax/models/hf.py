"""Hugging Face checkpoints in and out: safetensors (single or sharded) <-> the decoder's params pytree."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from esjax import distributed
from esjax.models.config import ModelConfig, ModelConfigError, load_config
from esjax.models.decoder import Params, param_shapes
from esjax.models.safetensors_io import DTYPES, iter_tensors, read_header, write_file

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")
INDEX_FILE = "model.safetensors.index.json"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
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
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no *.safetensors weights found")
    return files


def checkpoint_dtype(model_dir: str | Path) -> np.dtype:
    """The floating dtype of the checkpoint's first tensor."""
    header, _ = read_header(safetensors_files(Path(model_dir))[0])
    return next(DTYPES[v["dtype"]] for v in header.values())


def load_hf(path: str | Path, dtype: Any = "float32", sharding: Any = None) -> tuple[ModelConfig, Params]:
    """Load an HF model directory into ``(config, params)``.

    dtype: parameter dtype ("float32", "bfloat16", "float16", or None to keep the checkpoint's). Tensors are
    read one at a time from memory-mapped files, converted and placed (with ``sharding`` — a
    ``jax.sharding.Sharding`` or a pytree of them matching params — when given), so host memory never holds two
    copies of the model. Every parameter must be present; unknown keys are reported with a warning.
    """
    model_dir = Path(path)
    config = load_config(model_dir)
    dtype = checkpoint_dtype(model_dir) if dtype is None else np.dtype(jnp.dtype(dtype))
    names = hf_name_map(config)
    shapes = traverse_util.flatten_dict(param_shapes(config))
    shardings = _sharding_for(sharding, shapes)
    flat: dict[tuple[str, ...], jax.Array] = {}
    unknown = []
    for file in safetensors_files(model_dir):
        for name, tensor in iter_tensors(file):
            if name not in names:
                if name == "lm_head.weight" and config.tie_word_embeddings or name.endswith(_IGNORED_SUFFIXES):
                    continue
                unknown.append(name)
                continue
            key, transpose = names[name]
            got = tensor.shape[::-1] if transpose else tensor.shape
            want = shapes[key].shape
            if tuple(got) != tuple(want):
                hf_want = tuple(want[::-1]) if transpose else tuple(want)
                raise CheckpointError(f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {hf_want}")
            host = np.asarray(tensor.T if transpose else tensor).astype(dtype)
            flat[key] = distributed.put_global(host, shardings[key]) if shardings else jnp.asarray(host)
            del host
    missing = [n for n, (key, _) in names.items() if key not in flat]
    if missing:
        raise CheckpointError(f"{model_dir}: missing parameters: {', '.join(missing[:8])}"
                              + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    if unknown:
        warnings.warn(f"{model_dir}: ignored {len(unknown)} unknown checkpoint keys: {', '.join(unknown[:8])}",
                      stacklevel=2)
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


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    s = size.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * units[unit])
    return int(s)


def _shard_plan(entries: list, max_bytes: int) -> list[list]:
    shards, current, used = [], [], 0
    for entry in entries:
        size = int(np.prod(entry[1], dtype=np.int64)) * np.dtype(entry[2]).itemsize
        if current and used + size > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(entry)
        used += size
    return shards + [current]


def save_hf(config: ModelConfig, params: Params, out_dir: str | Path, source_dir: str | Path | None = None,
            dtype: Any = None, *, max_shard_size: int | str = "5GB", overwrite: bool = False) -> Path:
    """Write an HF model directory that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    Weights go to ``model.safetensors`` (or shards + index above ``max_shard_size``), metadata format=pt, in
    ``dtype`` (default: the params' own). config.json, generation_config.json and tokenizer files come from
    ``source_dir`` when given. Written to a temporary sibling directory, then renamed into place, so a failure never
    leaves a half-written model; a non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    flat = traverse_util.flatten_dict(params)
    check_param_shapes(config, flat)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    out_dtype = np.dtype(jnp.dtype(dtype)) if dtype is not None else None

    def entry(name: str, key: tuple[str, ...], transpose: bool):
        leaf = flat[key]
        leaf_dtype = out_dtype or np.dtype(leaf.dtype)
        shape = tuple(leaf.shape[::-1]) if transpose else tuple(leaf.shape)

        def get(leaf=leaf, transpose=transpose, leaf_dtype=leaf_dtype) -> np.ndarray:
            host = np.asarray(jax.device_get(leaf))
            return (host.T if transpose else host).astype(leaf_dtype, copy=False)
        return name, shape, leaf_dtype, get

    entries = [entry(name, key, t) for name, (key, t) in hf_name_map(config).items()]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        shards = _shard_plan(entries, _parse_size(max_shard_size))
        if len(shards) == 1:
            write_file(tmp / "model.safetensors", shards[0])
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                write_file(tmp / fname, shard)
                for name, shape, dt, _ in shard:
                    weight_map[name] = fname
                    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
            (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        _write_configs(config, tmp, source_dir, entries[0][2])
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_configs(config: ModelConfig, tmp: Path, source_dir: str | Path | None, weight_dtype: np.dtype) -> None:
    hf = config.to_hf_dict()
    dtype_name = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[weight_dtype.name]
    for key in ("torch_dtype", "dtype"):
        if key in hf:
            hf[key] = dtype_name
    if "torch_dtype" not in hf and "dtype" not in hf:
        hf["dtype"] = dtype_name
    (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    source = Path(source_dir) if source_dir else None
    gen_src = source / "generation_config.json" if source else None
    if gen_src and gen_src.is_file():
        shutil.copy2(gen_src, tmp / "generation_config.json")
    else:
        gen: dict[str, Any] = {"_from_model_config": True}
        if config.bos_token_id is not None:
            gen["bos_token_id"] = config.bos_token_id
        if config.eos_token_ids:
            ids = list(config.eos_token_ids)
            gen["eos_token_id"] = ids[0] if len(ids) == 1 else ids
        if config.pad_token_id is not None:
            gen["pad_token_id"] = config.pad_token_id
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if source:
        copy_tokenizer_files(source, tmp)


def copy_tokenizer_files(source: Path, dest: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
            copied.append(name)
    return copied


def _replace_dir(new: Path, target: Path) -> None:
    """Atomically move ``new`` into ``target``'s place (an old target is moved aside, then deleted)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def is_hf_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or (p / INDEX_FILE).is_file())


__all__ = ["load_hf", "save_hf", "hf_name_map", "is_hf_dir", "CheckpointError", "ModelConfigError",
           "copy_tokenizer_files", "TOKENIZER_FILES"]

"""Decoder configuration parsed from a Hugging Face ``config.json`` (Qwen2/2.5, Qwen3, Llama 3.x)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from esjax.common.errors import EsjaxError
from esjax.common.paths import inside, parse_json, plain_name, read_json

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ACTIVATIONS = ("silu",)
# the transformers classes of each supported model_type, the prefix a config.json's 'architectures' entries carry
ARCHITECTURE_PREFIX = {"qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama"}
MAX_INT = 2 ** 31 - 1  # sizes and counts in config.json: JAX indexes with int32


class ModelConfigError(EsjaxError, ValueError):
    """A ``config.json`` esjax cannot represent; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs; hashable so it can be a static jit argument.

    ``rope_scaling`` is a tuple of (key, value) pairs (hashable) holding the normalised RoPE parameters. The
    ``hf_*_json`` fields keep the source's files for export (not compared: no effect on compiled code).
    ``scan_layers`` is an execution choice, not part of the model: :func:`esjax.models.decoder.with_layer_scan`
    sets it, and :meth:`to_dict` leaves it out.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = (("rope_type", "default"),)
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    # how the decoder runs its layers: an execution choice, never stored (models.decoder.with_layer_scan)
    scan_layers: bool = False
    hf_config_json: str = dataclasses.field(default="{}", compare=False, repr=False)
    hf_generation_json: str = dataclasses.field(default="{}", compare=False, repr=False)
    hf_weight_map_json: str = dataclasses.field(default="{}", compare=False, repr=False)  # tensor name -> file

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def rope(self) -> dict[str, Any]:
        return dict(self.rope_scaling)

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies, float32 [head_dim // 2], computed as transformers does (incl. llama3 scaling)."""
        dim = self.head_dim
        base = np.float32(self.rope_theta)
        inv = (1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)))).astype(np.float32)
        rope = self.rope
        kind = rope.get("rope_type", "default")
        if kind == "linear":
            inv = inv / np.float32(rope["factor"])
        elif kind == "llama3":
            factor, low, high = (float(rope[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
            old_len = float(rope["original_max_position_embeddings"])
            # float32 throughout, and scalar / tensor as reciprocal * scalar, as torch evaluates it
            wavelen = np.reciprocal(inv) * np.float32(2 * math.pi)
            low_wl, high_wl = old_len / low, old_len / high
            scaled = np.where(wavelen > low_wl, inv / np.float32(factor), inv)
            smooth = (np.reciprocal(wavelen) * np.float32(old_len) - np.float32(low)) / np.float32(high - low)
            smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
            medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
            inv = np.where(medium, smoothed, scaled).astype(np.float32)
        return inv

    def num_params(self) -> int:
        """Number of parameters (the tied embedding counted once)."""
        d, f, h, kv, hd = self.hidden_size, self.intermediate_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        attn += (h * hd + 2 * kv * hd) * self.qkv_bias + d * self.o_bias + 2 * hd * self.qk_norm
        mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
        layer = attn + mlp + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + emb + d

    def to_hf_dict(self) -> dict[str, Any]:
        """The original ``config.json`` contents (for export)."""
        return json.loads(self.hf_config_json)

    def to_generation_dict(self) -> dict[str, Any]:
        """``generation_config.json`` for export: the source's (sampling defaults and all) with this config's
        bos / eos / pad ids merged in."""
        gen = json.loads(self.hf_generation_json) or {"_from_model_config": True}
        eos = self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids) or None
        for key, value in (("bos_token_id", self.bos_token_id), ("eos_token_id", eos), ("pad_token_id", self.pad_token_id)):
            if value is not None and _as_ids(gen.get(key)) != _as_ids(value):
                gen[key] = value
        return gen

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rope_scaling"] = dict(self.rope_scaling)
        del out["scan_layers"]
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> "ModelConfig":
        """The inverse of :meth:`to_dict`, checked: the config is rebuilt from the ``config.json`` /
        ``generation_config.json`` it records (with every check of :func:`config_from_hf`), each stored field must
        equal the rebuilt one, and the weight map must name plain ``*.safetensors`` files; else ModelConfigError
        naming ``where`` and the field."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "scan_layers"]
        if not isinstance(d, dict) or sorted(d) != sorted(names):
            found = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ModelConfigError(f"{where}: expected an object with the fields {names}, got {found}")
        records = {}
        for key in ("hf_config_json", "hf_generation_json", "hf_weight_map_json"):
            value = parse_json(d[key], f"{where}: field '{key}'") if isinstance(d[key], str) else None
            if not isinstance(value, dict):
                raise ModelConfigError(f"{where}: field '{key}' must be a JSON object in a string")
            records[key] = value
        for tensor, file in records["hf_weight_map_json"].items():
            plain_name(file, f"{where}: field 'hf_weight_map_json' (tensor {tensor!r})", ".safetensors")
        config = config_from_hf(records["hf_config_json"], records["hf_generation_json"], f"{where}: hf_config_json")
        config = dataclasses.replace(config, hf_weight_map_json=d["hf_weight_map_json"])
        for key, value in json.loads(json.dumps(config.to_dict())).items():  # as JSON holds it
            if d[key] != value or type(d[key]) is not type(value):
                raise ModelConfigError(f"{where}: field '{key}' = {d[key]!r} disagrees with the config.json it "
                                       f"records ({value!r})")
        return config


def _as_ids(value: Any) -> tuple:
    return tuple(value) if isinstance(value, list) else (value,)


def _require(cfg: dict[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in cfg:
        raise ModelConfigError(f"{where}: missing required field '{key}'")
    return _positive(cfg[key], key, typ, where)


def _positive(value: Any, key: str, typ: type, where: str) -> Any:
    """``value`` as a positive ``typ`` (int below 2**31, or a finite float from an int or float), else
    ModelConfigError naming ``key``."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2 ** 1000 else math.inf
    if not isinstance(value, typ) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ModelConfigError(f"{where}: field '{key}' must be a positive {typ.__name__}, got {value!r}")
    if typ is int and value > MAX_INT:
        raise ModelConfigError(f"{where}: field '{key}' = {value} is larger than {MAX_INT}, more than any device "
                               f"holds")
    return value


def _flag(cfg: dict[str, Any], key: str, where: str) -> bool:
    """A boolean field (absent or null: False)."""
    value = cfg.get(key)
    if value is not None and not isinstance(value, bool):
        raise ModelConfigError(f"{where}: field '{key}' must be true or false, got {value!r}")
    return bool(value)


def _token_id(value: Any, key: str, where: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ModelConfigError(f"{where}: field '{key}' must be a token id (an integer >= 0), got {value!r}")
    return value


def _rope_from(cfg: dict[str, Any], where: str) -> tuple[float, dict[str, Any]]:
    """Normalise old (rope_theta + rope_scaling) and new (rope_parameters) RoPE keys."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        raise ModelConfigError(f"{where}: field 'rope_parameters' with per-layer-type RoPE is not supported")
    if not isinstance(params, (dict, type(None))):
        raise ModelConfigError(f"{where}: field 'rope_parameters' must be an object, got {params!r}")
    params = dict(params or {})
    legacy = cfg.get("rope_scaling")
    if legacy:
        if not isinstance(legacy, dict):
            raise ModelConfigError(f"{where}: field 'rope_scaling' must be an object, got {legacy!r}")
        params = {**legacy, **params}
    theta = params.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    theta = _positive(theta, "rope_theta", float, where)
    kind = params.pop("rope_type", params.pop("type", "default")) or "default"
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ModelConfigError(
            f"{where}: field 'rope_type' = {kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ModelConfigError(f"{where}: field 'partial_rotary_factor' != 1 is not supported")
    out: dict[str, Any] = {"rope_type": kind}
    needed = {"default": (), "linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}[kind]
    for key in needed:
        if key not in params:
            raise ModelConfigError(f"{where}: rope_type {kind!r} needs field '{key}'")
        out[key] = _positive(params[key], key, float, where)
    if kind == "llama3":
        out["original_max_position_embeddings"] = _positive(
            params.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 8192)),
            "original_max_position_embeddings", int, where)
    return float(theta), out


def _eos_ids(cfg: dict[str, Any], gen: dict[str, Any], where: str) -> tuple[int, ...]:
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    if eos is None:
        return ()
    return tuple(_token_id(e, "eos_token_id", where) for e in (eos if isinstance(eos, list) else [eos]))


def _check_architectures(architectures: Any, model_type: str, where: str) -> None:
    """``architectures`` (absent, or a list of transformers class names) must name classes of ``model_type``."""
    prefix = ARCHITECTURE_PREFIX[model_type]
    if architectures is None:
        return
    if (not isinstance(architectures, list) or not architectures
            or not all(isinstance(a, str) and a.startswith(prefix) for a in architectures)):
        raise ModelConfigError(f"{where}: field 'architectures' = {architectures!r} disagrees with model_type "
                               f"{model_type!r} (expected {prefix}ForCausalLM)")


def config_from_hf(cfg: dict[str, Any], generation_config: dict[str, Any] | None = None, where: str = "config.json") -> ModelConfig:
    """Build a :class:`ModelConfig` from the dicts of ``config.json`` and ``generation_config.json``.

    Raises :class:`ModelConfigError` naming the offending field for anything unsupported.
    """
    if not isinstance(cfg, dict):
        raise ModelConfigError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    if not isinstance(generation_config, (dict, type(None))):
        raise ModelConfigError(f"{where}: generation_config.json must be a JSON object")
    gen = generation_config or {}
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelConfigError(
            f"{where}: field 'model_type' = {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    _check_architectures(cfg.get("architectures"), model_type, where)
    ints = {k: _require(cfg, k, int, where) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
    heads = ints["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads")
    kv_heads = heads if kv_heads is None else _positive(kv_heads, "num_key_value_heads", int, where)
    if heads % kv_heads:
        raise ModelConfigError(f"{where}: field 'num_key_value_heads' = {kv_heads!r} must divide num_attention_heads = {heads}")
    head_dim = ints["hidden_size"] // heads if cfg.get("head_dim") is None else cfg["head_dim"]
    if _positive(head_dim, "head_dim", int, where) % 2:
        raise ModelConfigError(f"{where}: field 'head_dim' must be an even integer, got {head_dim!r}")
    if cfg.get("head_dim") is None and ints["hidden_size"] % heads:
        raise ModelConfigError(f"{where}: field 'hidden_size' must be divisible by num_attention_heads without 'head_dim'")
    act = cfg.get("hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise ModelConfigError(f"{where}: field 'hidden_act' = {act!r} is not supported (supported: silu)")
    layer_types = cfg.get("layer_types") or []
    if not isinstance(layer_types, list):
        raise ModelConfigError(f"{where}: field 'layer_types' must be a list, got {layer_types!r}")
    uses_sliding = cfg.get("use_sliding_window", False) and (not layer_types or "sliding_attention" in layer_types)
    if uses_sliding or any(t != "full_attention" for t in layer_types):
        raise ModelConfigError(f"{where}: field 'use_sliding_window'/'layer_types': sliding-window attention is not supported")
    theta, rope = _rope_from(cfg, where)
    attention_bias = _flag(cfg, "attention_bias", where)
    if cfg.get("pretraining_tp", 1) not in (1, None):
        raise ModelConfigError(f"{where}: field 'pretraining_tp' != 1 is not supported")
    eps = _positive(cfg.get("rms_norm_eps", 1e-6), "rms_norm_eps", float, where)
    max_positions = _positive(cfg.get("max_position_embeddings", 32768), "max_position_embeddings", int, where)
    return ModelConfig(
        model_type=model_type,
        **ints,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(eps),
        rope_theta=theta,
        rope_scaling=tuple(sorted(rope.items())),
        max_position_embeddings=max_positions,
        tie_word_embeddings=_flag(cfg, "tie_word_embeddings", where),
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=attention_bias if model_type != "qwen2" else False,
        mlp_bias=_flag(cfg, "mlp_bias", where) if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        eos_token_ids=_eos_ids(cfg, gen, where),
        bos_token_id=_token_id(gen.get("bos_token_id", cfg.get("bos_token_id")), "bos_token_id", where),
        pad_token_id=_token_id(gen.get("pad_token_id", cfg.get("pad_token_id")), "pad_token_id", where),
        hf_config_json=json.dumps(cfg, sort_keys=True),
        hf_generation_json=json.dumps(gen, sort_keys=True),
    )


def load_config(model_dir: str | Path) -> ModelConfig:
    """Read ``config.json`` (+ ``generation_config.json`` when present) from an HF model directory (each a regular
    file inside it: :func:`esjax.common.paths.inside`)."""
    model_dir = Path(model_dir)
    path = inside(model_dir, "config.json", required=False)
    if path is None:
        raise ModelConfigError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    cfg = read_json(path)
    gen_path = inside(model_dir, "generation_config.json", required=False)
    gen = read_json(gen_path) if gen_path is not None else None
    if not isinstance(gen, (dict, type(None))):
        raise ModelConfigError(f"{gen_path}: expected a JSON object, got {type(gen).__name__}")
    return config_from_hf(cfg, gen, where=str(path))

"""Text in, text out: tokenise prompts (optionally with the chat template), generate, decode."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from esjax.common.errors import InputError
from esjax.models.config import ModelConfig, ModelConfigError
from esjax.models.decoder import Params
from esjax.generation.prompts import encode_prompts
from esjax.generation.sampling import GenerateOutput, SamplingConfig, completion_ids, generate_jit, pad_prompts


def eos_ids(config: ModelConfig, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids from generation_config.json, else the tokenizer's EOS token."""
    if config.eos_token_ids:
        return config.eos_token_ids
    return (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()


def pad_id(config: ModelConfig, tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, config.pad_token_id, *eos_ids(config, tokenizer)):
        if candidate is not None:
            return int(candidate)
    return 0


def sampling_for(config: ModelConfig, tokenizer: Any, **settings: Any) -> SamplingConfig:
    """A :class:`SamplingConfig` with the model's EOS and pad ids filled in."""
    return SamplingConfig(eos_token_ids=eos_ids(config, tokenizer), pad_token_id=pad_id(config, tokenizer), **settings)


# transformers' own defaults for the fields a generation_config.json leaves out (GenerationConfig)
HF_SAMPLING_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
UNSUPPORTED_FIELDS = {"repetition_penalty": 1.0, "num_beams": 1, "min_p": None, "typical_p": 1.0,
                      "no_repeat_ngram_size": 0}


def generation_defaults(config: ModelConfig) -> dict[str, Any]:
    """The decoding the model's ``generation_config.json`` asks for, read as transformers' ``generate`` reads it:
    greedy (``temperature`` 0) unless ``do_sample``; then its ``temperature``, ``top_p``, ``top_k`` (transformers'
    defaults 1.0, 1.0, 50 where absent); ``max_new_tokens`` when it sets one. Returns the keyword arguments of
    :class:`SamplingConfig`. A field of the wrong type or range raises :class:`ModelConfigError` naming it."""
    gen = {**HF_SAMPLING_DEFAULTS, **{k: v for k, v in (json.loads(config.hf_generation_json) or {}).items()
                                       if v is not None}}

    def field(name: str, integer: bool, valid, what: str) -> Any:
        value = gen[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (number and (not integer or float(value).is_integer()) and valid(value)):
            raise ModelConfigError(f"generation_config.json: field {name!r} must be {what}, got {value!r}")
        return int(value) if integer else float(value)

    if not isinstance(gen["do_sample"], bool):
        raise ModelConfigError(f"generation_config.json: field 'do_sample' must be true or false, "
                               f"got {gen['do_sample']!r}")
    out: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "top_k": 0}
    if "max_new_tokens" in gen:
        out["max_new_tokens"] = field("max_new_tokens", True, lambda v: v >= 1, "an integer >= 1")
    if gen["do_sample"]:
        out.update(temperature=field("temperature", False, lambda v: v >= 0, "a number >= 0"),
                   top_p=field("top_p", False, lambda v: 0 < v <= 1, "a number in (0, 1]"),
                   top_k=field("top_k", True, lambda v: v >= 0, "an integer >= 0"))
    return out


def unsupported_generation_fields(config: ModelConfig) -> dict[str, Any]:
    """Fields of ``generation_config.json`` that transformers would apply and esjax's sampler does not
    (``repetition_penalty`` other than 1, beams, ...): ``{name: value}``, for a note to the user."""
    gen = json.loads(config.hf_generation_json) or {}
    return {k: gen[k] for k, neutral in UNSUPPORTED_FIELDS.items() if gen.get(k) not in (None, neutral)}


def model_sampling(config: ModelConfig, tokenizer: Any, **overrides: Any) -> SamplingConfig:
    """A :class:`SamplingConfig` with the model's ``generation_config.json`` as defaults (:func:`generation_defaults`)
    and ``overrides`` (those not None) on top, as transformers' ``generate(**kwargs)``. Training and evaluation do
    not use this: they decode as their settings say (greedy unless configured)."""
    settings = {"max_new_tokens": 64, **generation_defaults(config)}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return sampling_for(config, tokenizer, **settings)


def check_context(config: ModelConfig, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise ValueError unless a prompt of ``prompt_tokens`` plus ``max_new_tokens`` fits the model's
    ``max_position_embeddings``."""
    if prompt_tokens + max_new_tokens > config.max_position_embeddings:
        raise InputError(f"a prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens exceeds the model's "
                         f"max_position_embeddings ({config.max_position_embeddings})")


def generate_texts(config: ModelConfig, params: Params, tokenizer: Any, prompts: Sequence[Any],
                   sampling: SamplingConfig | None = None, key: jax.Array | None = None
                   ) -> tuple[list[str], GenerateOutput]:
    """Generate for text or chat prompts; returns (completions without special tokens, raw output). ``sampling``
    None decodes as the model's ``generation_config.json`` says (:func:`model_sampling`)."""
    sampling = model_sampling(config, tokenizer) if sampling is None else sampling
    ids = encode_prompts(tokenizer, prompts)
    check_context(config, max(map(len, ids), default=0), sampling.max_new_tokens)
    tokens, mask = pad_prompts(ids, sampling.pad_token_id)
    key = jax.random.key(0) if key is None else key
    out = generate_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask), key, sampling)
    texts = tokenizer.batch_decode(completion_ids(out), skip_special_tokens=True)
    return texts, out

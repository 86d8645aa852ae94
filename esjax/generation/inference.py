"""Text in, text out: tokenise prompts (optionally with the chat template), generate, decode."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from esjax.models.config import ModelConfig
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


def check_context(config: ModelConfig, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise ValueError unless a prompt of ``prompt_tokens`` plus ``max_new_tokens`` fits the model's
    ``max_position_embeddings``."""
    if prompt_tokens + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"a prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens exceeds the model's "
                         f"max_position_embeddings ({config.max_position_embeddings})")


def generate_texts(config: ModelConfig, params: Params, tokenizer: Any, prompts: Sequence[Any],
                   sampling: SamplingConfig, key: jax.Array | None = None) -> tuple[list[str], GenerateOutput]:
    """Generate for text or chat prompts; returns (completions without special tokens, raw output)."""
    ids = encode_prompts(tokenizer, prompts)
    check_context(config, max(map(len, ids), default=0), sampling.max_new_tokens)
    tokens, mask = pad_prompts(ids, sampling.pad_token_id)
    key = jax.random.key(0) if key is None else key
    out = generate_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask), key, sampling)
    texts = tokenizer.batch_decode(completion_ids(out), skip_special_tokens=True)
    return texts, out

"""Batched generation with a KV cache: one jitted prefill + ``lax.while_loop`` decode, no Python loop over tokens.

Prompts are left-padded to a bucketed length (powers of two) so new batches reuse compiled code; positions come
from the attention mask; the cache is written at one shared slot per step; rows stop on any EOS id and the loop
exits when every row is done. Per-token log-probs (float32, logits / temperature) come back for GRPO.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from esjax.common.errors import EsjaxError
from esjax.models.config import ModelConfig
from esjax.models.decoder import Decoder, Params, make_model, model_variables, positions_from_mask, write_slots

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to decode. ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"invalid sampling settings: temperature={self.temperature}, top_p={self.top_p}, "
                             f"top_k={self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class EmptyPromptError(EsjaxError, ValueError):
    """A prompt that encodes to no tokens (there is nothing to condition on)."""


class GenerateOutput(NamedTuple):
    tokens: Array  # int32 [B, max_new_tokens], pad_token_id after a row's end
    logps: Array  # float32 [B, max_new_tokens], log p(token) under logits / temperature; 0 after the end
    lengths: Array  # int32 [B], generated tokens including the first EOS
    finished: Array  # bool [B], True where the row emitted an EOS id (False: hit max_new_tokens)


def filter_logits(logits: Array, top_k: int, top_p: float) -> Array:
    """Mask float32 logits [B, V] outside the top-k / nucleus top-p set with -inf (at least one token kept).
    ``top_k`` >= V keeps every token (as transformers clamps it)."""
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def _next_token(logits: Array, key: Array, s: SamplingConfig) -> tuple[Array, Array]:
    """(token int32 [B], its log-prob float32 [B]) from float32 logits [B, V]; ``key`` is one key or one per row."""
    scaled = logits / (s.temperature if not s.greedy else 1.0)
    if s.greedy:
        token = jnp.argmax(logits, axis=-1)
    elif key.ndim:
        filtered = filter_logits(scaled, s.top_k, s.top_p)
        token = jax.vmap(lambda k, row: jax.random.categorical(k, row))(key, filtered)
    else:
        token = jax.random.categorical(key, filter_logits(scaled, s.top_k, s.top_p), axis=-1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), token[:, None], axis=-1)[:, 0]
    return token.astype(jnp.int32), logp


class Population(NamedTuple):
    """Batch rows belong to ``size`` members (member-major: rows ``[m * B, (m + 1) * B)`` are member m's), and
    every forward runs under ``vmap`` over members with these ``in_axes`` for the params and lowrank trees
    (0: the leaf has a leading member axis, None: shared by all members). The loop itself is not vmapped, so the
    KV cache is still written with one ``dynamic_update_slice`` per step."""

    size: int
    params_axes: Any
    lowrank_axes: Any = None


def init_cache(config: ModelConfig, batch: int, length: int, dtype: Any, members: int | None = None
               ) -> tuple[dict[str, Array], ...] | dict[str, Array]:
    """Zero KV cache, per layer ``{"k", "v"}`` of [batch, K, length, D] (head-major, the layout attention reads), or
    [members, batch / members, K, length, D] split by member for a population decode. With
    ``config.scan_layers``, one ``{"k", "v"}`` of [L, batch, K, length, D] (or [L, members, batch / members, ...])."""
    rows = (batch,) if members is None else (members, batch // members)
    layer_shape = (config.num_key_value_heads, length, config.head_dim)
    if config.scan_layers:  # layer-major, so that the scan over layers slices it as it lies
        shape = (config.num_hidden_layers, *rows, *layer_shape)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    shape = (*rows, *layer_shape)
    return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.num_hidden_layers))


def _forward_fn(model: Decoder, params: Params, lowrank: Params | None, population: Population | None):
    """``fn(tokens, positions, kv_mask, cache, index) -> (last-position logits f32 [B, V], cache)``.

    With a population the cache is carried split by member, [M, B / M, K, S, D] (see :func:`init_cache`): only
    the small per-step inputs and logits are reshaped, so XLA updates the cache in place in the decode loop
    (reshaping the cache every step made it copy all of it several times per token).
    """
    scan = model.config.scan_layers

    def one(p, lr, tokens, positions, kv_mask, cache, index, write=True):  # p, lr: the model's layout
        variables = {"params": p} | ({"lowrank": lr} if lr is not None else {})
        hidden, cache = model.apply(variables, tokens, positions, kv_mask, cache, index, write)
        return model.apply(variables, hidden[:, -1], method=Decoder.logits), cache

    if population is None:
        return lambda *args: one(params, lowrank, *args)
    m = population.size
    split = lambda x: x.reshape(m, x.shape[0] // m, *x.shape[1:])  # noqa: E731
    # a scanned decoder's cache is layer-major [L, M, ...] and written here, outside vmap (see Decoder.__call__)
    cache_axis = 1 if scan else 0
    batched = jax.vmap(functools.partial(one, write=not scan), out_axes=(0, cache_axis),
                       in_axes=(population.params_axes, population.lowrank_axes, 0, 0, 0, cache_axis, None))

    def fn(tokens, positions, kv_mask, cache, index):
        logits, out = batched(params, lowrank, split(tokens), split(positions), split(kv_mask), cache, index)
        return logits.reshape(-1, logits.shape[-1]), write_slots(cache, out, index, axis=4) if scan else out
    return fn


def decode_dtype(params: Params) -> jnp.dtype:
    """The dtype :func:`generate` computes in by default: the params' own, except float32 for 16-bit params on CPU.

    XLA's CPU backend has no fast 16-bit matmul: it converts the weights to float32 for every decoded token. The
    platform is the params' own where known (concrete arrays), else ``jax.default_backend()`` (under a trace).
    """
    leaf = jax.tree.leaves(params)[0]
    platform = (jax.default_backend() if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "devices")
                else next(iter(leaf.devices())).platform)
    return jnp.dtype(jnp.float32) if platform == "cpu" and jnp.dtype(leaf.dtype).itemsize < 4 else jnp.dtype(leaf.dtype)


def generate(config: ModelConfig, params: Params, prompt_tokens: Array, prompt_mask: Array, key: Array,
             sampling: SamplingConfig, *, lowrank: Params | None = None, compute_dtype: Any = None,
             population: Population | None = None) -> GenerateOutput:
    """Decode up to ``sampling.max_new_tokens`` tokens after left-padded int32 prompts [B, P] with 0/1 mask [B, P].

    Pure; jit with ``config`` and ``sampling`` static (:data:`generate_jit`). ``key`` is one PRNG key, or one per
    row ([B] keys) so that a row's samples do not depend on the other rows. ``lowrank`` is an optional per-matrix
    ``{"a", "b"}`` perturbation (see :mod:`esjax.models.decoder`); ``population`` runs several members' params
    (and factors) over the member-major rows in one batched decode (see :class:`Population`).
    """
    dtype = jnp.dtype(compute_dtype or decode_dtype(params))
    params = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    variables = model_variables(config, params, lowrank)  # laid out once, outside the decode loop
    forward = _forward_fn(make_model(config, dtype=dtype), variables["params"], variables.get("lowrank"), population)
    batch, prompt_len = prompt_tokens.shape
    steps = sampling.max_new_tokens
    eos = jnp.asarray(sampling.eos_token_ids or (-1,), jnp.int32)
    kv_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.zeros((batch, steps), jnp.int32)], axis=1)
    logits, cache = forward(prompt_tokens, positions_from_mask(prompt_mask), kv_mask,
                            init_cache(config, batch, prompt_len + steps, dtype,
                                       None if population is None else population.size), 0)
    next_pos = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)
    step_key = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if key.ndim else jax.random.fold_in

    def cond(state):
        i, done = state[0], state[5]
        return (i < steps) & ~jnp.all(done)

    def body(state):
        i, cache, kv_mask, logits, out, done, lengths = state
        token, logp = _next_token(logits, step_key(key, i), sampling)
        token = jnp.where(done, sampling.pad_token_id, token)
        logp = jnp.where(done, 0.0, logp)
        out = (out[0].at[:, i].set(token), out[1].at[:, i].set(logp))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(token, eos)
        slot = prompt_len + i
        kv_mask = kv_mask.at[:, slot].set(1)
        logits, cache = forward(token[:, None], (next_pos + i)[:, None], kv_mask, cache, slot)
        return i + 1, cache, kv_mask, logits, out, done, lengths

    out = (jnp.full((batch, steps), sampling.pad_token_id, jnp.int32), jnp.zeros((batch, steps), jnp.float32))
    init = (jnp.int32(0), cache, kv_mask, logits, out, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32))
    _, _, _, _, (tokens, logps), done, lengths = jax.lax.while_loop(cond, body, init)
    return GenerateOutput(tokens, logps, lengths, done)


generate_jit = jax.jit(generate, static_argnames=("config", "sampling", "compute_dtype"))


def bucket_length(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum): prompt lengths in one bucket share a compiled program."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def pad_prompts(token_lists: Sequence[Sequence[int]], pad_token_id: int, length: int | None = None,
                minimum: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id lists to ``length`` (default: the bucketed longest) -> (tokens int32 [B, P], mask int32 [B, P]).

    Raises :class:`EmptyPromptError` for an empty id list.
    """
    empty = [row for row, ids in enumerate(token_lists) if not len(ids)]
    if empty:
        raise EmptyPromptError(f"prompt {empty[0]} encodes to no tokens"
                               + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""))
    longest = max(map(len, token_lists))
    length = length or bucket_length(longest, minimum)
    if longest > length:
        raise ValueError(f"prompt of {longest} tokens does not fit the length {length}")
    tokens = np.full((len(token_lists), length), pad_token_id, np.int32)
    mask = np.zeros((len(token_lists), length), np.int32)
    for row, ids in enumerate(token_lists):
        tokens[row, length - len(ids):] = ids
        mask[row, length - len(ids):] = 1
    return tokens, mask


def completion_ids(output: GenerateOutput) -> list[list[int]]:
    """Host lists of each row's generated ids (including its EOS, excluding padding)."""
    tokens, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
    return [tokens[i, : lengths[i]].tolist() for i in range(tokens.shape[0])]

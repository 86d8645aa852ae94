"""The decoder (Qwen2/2.5, Qwen3, Llama 3.x) as Flax linen modules, and pure functions around it.

Parameters are a plain pytree (``{"embed_tokens": {"embedding": [V, D]}, "layers_0": {...}, ..., "norm": {...}}``)
passed to :func:`flax.linen.Module.apply`; nothing is captured in closures, so ES can pass perturbed params and
GRPO can differentiate them. Linear kernels are stored ``[in, out]`` (the transpose of HF's ``[out, in]``).

An optional ``"lowrank"`` variable collection mirrors ``params`` with ``{"a": [m, r], "b": [n, r]}`` per matrix;
each matrix ``W`` [m, n] then acts as ``W + a @ b.T`` without ever being materialised (low-rank ES, EGGROLL).
The caller folds the noise scale into ``b``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from esjax.models.config import ModelConfig
from esjax.common.layers import STACKED, stack_layers, unstack_layers

Array = jax.Array
Params = dict[str, Any]
KVCache = tuple[dict[str, Array], ...]  # per layer {"k": [B, KV, S, Dh], "v": [B, KV, S, Dh]} (head-major)

_INIT = nn.initializers.normal(stddev=0.02)
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def _lowrank(module: nn.Module, name: str) -> dict[str, Array] | None:
    return module.get_variable("lowrank", name) if module.has_variable("lowrank", name) else None


class Linear(nn.Module):
    """``y = x @ kernel (+ x @ a @ b.T) (+ bias)``; kernel [in, out] in ``param_dtype``, math in ``dtype``."""

    features: int
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", _INIT, (x.shape[-1], self.features), self.param_dtype)
        y = x @ kernel.astype(self.dtype)
        if (lr := _lowrank(self, "kernel")) is not None:
            y = y + (x @ lr["a"].astype(self.dtype)) @ lr["b"].T.astype(self.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        return y


class Embed(nn.Module):
    """Token embedding [V, D]; ``attend`` reuses it as the output head of tied models (one parameter)."""

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.embedding = self.param("embedding", _INIT, (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, tokens: Array) -> Array:
        x = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
        if (lr := _lowrank(self, "embedding")) is not None:
            x = x + jnp.take(lr["a"], tokens, axis=0).astype(self.dtype) @ lr["b"].T.astype(self.dtype)
        return x

    def attend(self, h: Array) -> Array:
        """Logits ``h @ embedding.T`` in float32."""
        w = self.embedding.astype(self.dtype)
        logits = jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)
        if (lr := _lowrank(self, "embedding")) is not None:
            logits = logits + ((h @ lr["b"].astype(self.dtype)) @ lr["a"].T.astype(self.dtype)).astype(jnp.float32)
        return logits


class RMSNorm(nn.Module):
    """HF order: normalise in float32, cast back to the input dtype, multiply by the weight."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * xf.astype(self.dtype)


def rope_cos_sin(positions: Array, inv_freq: Array, dtype: Any) -> tuple[Array, Array]:
    """cos/sin tables [B, T, Dh] (half-split layout) for int positions [B, T]; computed in float32."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate x [B, T, H, Dh] with HF's ``rotate_half`` convention."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class Attention(nn.Module):
    config: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, kv_mask, cache, cache_index, scanned=False):
        c, (b, t, _) = self.config, x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = Linear(c.num_attention_heads * c.head_dim, c.qkv_bias, name="q_proj", **kw)(x)
        k = Linear(c.num_key_value_heads * c.head_dim, c.qkv_bias, name="k_proj", **kw)(x)
        v = Linear(c.num_key_value_heads * c.head_dim, c.qkv_bias, name="v_proj", **kw)(x)
        q = q.reshape(b, t, c.num_attention_heads, c.head_dim)
        k = k.reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = v.reshape(b, t, c.num_key_value_heads, c.head_dim)
        if c.qk_norm:
            q = RMSNorm(c.rms_norm_eps, name="q_norm", **kw)(q)
            k = RMSNorm(c.rms_norm_eps, name="k_norm", **kw)(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # keys and values head-major [B, K, S, D], the cache's layout: both attention contractions then read the
        # cache as it lies (a [B, S, K, D] cache made XLA transpose all of it for every decoded token)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        if cache is not None:
            index = (0, 0, cache_index, 0)
            new = {"k": k.astype(cache["k"].dtype), "v": v.astype(cache["v"].dtype)}
            k = jax.lax.dynamic_update_slice(cache["k"], new["k"], index)
            v = jax.lax.dynamic_update_slice(cache["v"], new["v"], index)
            # a scanned layer reads its cache and returns just the new slots (the decoder writes all layers' at
            # once, outside the scan: a cache carried through the scan made XLA copy all of it per token)
            cache = new if scanned else {"k": k, "v": v}
            if isinstance(cache_index, int):  # static (prefill): later slots are invisible to these queries
                k, v, kv_mask = k[:, :, :cache_index + t], v[:, :, :cache_index + t], kv_mask[:, :cache_index + t]
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        # Query t sits in cache slot cache_index + t and sees valid keys in slots <= its own.
        q_slot = cache_index + jnp.arange(t)
        allowed = (jnp.arange(k.shape[2])[None, :] <= q_slot[:, None])[None] & kv_mask[:, None, :].astype(bool)
        q = q.reshape(b, t, c.num_key_value_heads, c.num_groups, c.head_dim)
        scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * (c.head_dim**-0.5)
        scores = jnp.where(allowed[:, None, None], scores, _MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        # head-major output, then a transpose of this small tensor: XLA:CPU computes the [B, T, K, G, D] output
        # order directly ~2x slower per decoded token (same values)
        out = jnp.einsum("bkgts,bksd->bkgtd", probs, v).transpose(0, 3, 1, 2, 4)
        out = out.reshape(b, t, c.num_attention_heads * c.head_dim)
        return Linear(c.hidden_size, c.o_bias, name="o_proj", **kw)(out), cache


class MLP(nn.Module):
    config: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gate = Linear(c.intermediate_size, c.mlp_bias, name="gate_proj", **kw)(x)
        up = Linear(c.intermediate_size, c.mlp_bias, name="up_proj", **kw)(x)
        return Linear(c.hidden_size, c.mlp_bias, name="down_proj", **kw)(jax.nn.silu(gate) * up)


class Block(nn.Module):
    config: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, kv_mask, cache, cache_index, scanned=False):
        """Returns (x, cache): the cache updated, or with ``scanned`` just the new slots ``{"k", "v"}`` [B, K, T, D]."""
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h, cache = Attention(c, name="self_attn", **kw)(
            RMSNorm(c.rms_norm_eps, name="input_layernorm", **kw)(x), cos, sin, kv_mask, cache, cache_index, scanned)
        x = x + h
        x = x + MLP(c, name="mlp", **kw)(RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **kw)(x))
        return x, cache


class Decoder(nn.Module):
    """Causal LM. ``__call__`` returns (hidden [B, T, D] after the final norm, new cache); ``logits`` is the head.

    With ``config.scan_layers`` the params (and low-rank factors) are the stacked view of
    :mod:`esjax.common.layers` and the cache is ``{"k", "v"}`` of [L, B, K, S, D]: one ``lax.scan`` runs the layers.
    Otherwise the L layers are unrolled over ``layers_<i>`` params and a per-layer cache tuple.
    """

    config: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, **kw)
        if not c.scan_layers:  # else the stacked params are read in _scan
            self.layers = [Block(c, **kw) for _ in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, **kw)
        if not c.tie_word_embeddings:
            self.lm_head = Linear(c.vocab_size, False, **kw)

    def __call__(self, tokens: Array, positions: Array, kv_mask: Array, cache: KVCache | None = None,
                 cache_index: Array | int = 0, write_cache: bool = True) -> tuple[Array, KVCache | None]:
        """tokens, positions: int32 [B, T]; kv_mask: [B, S] 0/1 validity of every key slot (S = T without cache,
        the cache length with one); the T new tokens occupy slots ``cache_index .. cache_index + T - 1``.

        With ``scan_layers`` and ``write_cache=False`` the second output is just the new slots ``{"k", "v"}``
        [L, B, K, T, D], for the caller to write (:func:`write_slots`): under ``vmap`` over members, a write inside
        made JAX move the member axis of the whole cache, a copy per token."""
        x = self.embed_tokens(tokens)
        cos, sin = rope_cos_sin(positions, jnp.asarray(self.config.inv_freq()), self.dtype)
        if self.config.scan_layers:
            x, new = self._scan(x, cos, sin, kv_mask, cache, cache_index)
            if cache is not None and write_cache:
                cache = write_slots(cache, new, cache_index)
            return self.norm(x), (new if cache is not None and not write_cache else cache)
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer(x, cos, sin, kv_mask, None if cache is None else cache[i], cache_index)
            new_cache.append(layer_cache)
        return self.norm(x), (None if cache is None else tuple(new_cache))

    def _scan(self, x, cos, sin, kv_mask, cache, cache_index):
        """The layers as one ``lax.scan`` over the stacked params, factors and cache (read only) -> (x, the new keys
        and values of all layers [L, B, K, T, D]): a cache carried through the scan and written in it made XLA copy
        all of it per token."""
        stacked = self.get_variable("params", STACKED)
        lowrank = self.get_variable("lowrank", STACKED) if self.has_variable("lowrank", STACKED) else None
        block = Block(self.config, dtype=self.dtype, param_dtype=self.param_dtype, parent=None)

        # rematerialised: a gradient (GRPO) keeps each layer's input and recomputes the layer in the backward pass,
        # instead of holding every layer's activations (no effect without a gradient)
        @functools.partial(jax.checkpoint, prevent_cse=False)
        def step(x, layer):
            params, factors, layer_cache = layer
            variables = {"params": params} | ({"lowrank": factors} if factors is not None else {})
            return block.apply(variables, x, cos, sin, kv_mask, layer_cache, cache_index, True)

        return jax.lax.scan(step, x, (stacked, lowrank, cache))

    def logits(self, hidden: Array) -> Array:
        """float32 logits [..., V] from final hidden states [..., D]."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden)
        return self.lm_head(hidden).astype(jnp.float32)

    def logits_full(self, tokens: Array, positions: Array, kv_mask: Array) -> Array:
        """Logits [B, T, V] without a cache (also what ``init`` traces, so every parameter is created)."""
        return self.logits(self(tokens, positions, kv_mask)[0])


def with_layer_scan(config: ModelConfig, setting: Any = "auto", platform: str | None = None) -> ModelConfig:
    """``config`` with ``scan_layers`` from a setting: True/False, or "auto" = scan on TPUs (``platform`` default:
    ``jax.default_backend()``), where a dynamic slice of the stacked weights fuses into the matmul and compile time
    is what scanning saves; CPUs and GPUs run the layers unrolled."""
    if setting == "auto":
        scan = (platform or jax.default_backend()) == "tpu"
    else:
        scan = bool(setting)
    return dataclasses.replace(config, scan_layers=scan)


def write_slots(cache: dict[str, Array], new: dict[str, Array], cache_index: Array | int,
                axis: int = 3) -> dict[str, Array]:
    """A scanned decoder's cache [L, ..., S, D] with the new slots [L, ..., T, D] written at ``cache_index`` along
    the slot ``axis`` (3 for [L, B, K, S, D]; 4 with a member axis)."""
    def write(buf, slots):
        index = [0] * buf.ndim
        index[axis] = cache_index
        return jax.lax.dynamic_update_slice(buf, slots.astype(buf.dtype), index)
    return {name: write(cache[name], new[name]) for name in ("k", "v")}


def make_model(config: ModelConfig, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> Decoder:
    return Decoder(config, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype))


def positions_from_mask(attention_mask: Array) -> Array:
    """Left-padded 0/1 mask [B, T] -> int32 positions [B, T] (pads get 0), as HF derives them."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)


def init_params(config: ModelConfig, key: Array, dtype: Any = jnp.float32) -> Params:
    """Random parameters (normal 0.02, norms 1, biases 0) in ``dtype``, one ``layers_<i>`` subtree per layer."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    model = make_model(dataclasses.replace(config, scan_layers=False), param_dtype=dtype)
    return model.init(key, tokens, tokens, jnp.ones((1, 1), jnp.int32), method=Decoder.logits_full)["params"]


def param_shapes(config: ModelConfig, dtype: Any = jnp.float32) -> Params:
    """The params pytree as ``jax.ShapeDtypeStruct`` leaves (no memory allocated)."""
    return jax.eval_shape(lambda k: init_params(config, k, dtype), jax.random.key(0))


def model_variables(config: ModelConfig, params: Params, lowrank: Params | None = None) -> dict[str, Params]:
    """``Decoder.apply``'s variables in the layout ``config`` runs: the stacked view with ``scan_layers`` (a copy
    of the layers unless they come stacked: hoist this out of loops), else one subtree per layer."""
    layout = stack_layers if config.scan_layers else unstack_layers
    return {"params": layout(params)} | ({"lowrank": layout(lowrank)} if lowrank is not None else {})


def _apply(config, params, tokens, attention_mask, lowrank, compute_dtype, hidden_only):
    model = make_model(config, dtype=compute_dtype or jax.tree.leaves(params)[0].dtype)
    variables = model_variables(config, params, lowrank)
    hidden, _ = model.apply(variables, tokens, positions_from_mask(attention_mask), attention_mask)
    return hidden if hidden_only else model.apply(variables, hidden, method=Decoder.logits)


def forward(config: ModelConfig, params: Params, tokens: Array, attention_mask: Array, *, lowrank: Params | None = None,
            compute_dtype: Any = None) -> Array:
    """Logits float32 [B, T, V] for left-padded int32 ``tokens`` [B, T] and 0/1 ``attention_mask`` [B, T].

    ``compute_dtype`` defaults to the params' dtype. Pure: jit it with ``config`` static (see :func:`forward_jit`).
    """
    return _apply(config, params, tokens, attention_mask, lowrank, compute_dtype, hidden_only=False)


def hidden_states(config: ModelConfig, params: Params, tokens: Array, attention_mask: Array, *,
                  lowrank: Params | None = None, compute_dtype: Any = None) -> Array:
    """Final-norm hidden states [B, T, D] (feed chunks of them to :func:`logits_from_hidden`)."""
    return _apply(config, params, tokens, attention_mask, lowrank, compute_dtype, hidden_only=True)


def logits_from_hidden(config: ModelConfig, params: Params, hidden: Array, *, lowrank: Params | None = None) -> Array:
    """The output head: float32 logits [..., V] from hidden [..., D] (tied or untied)."""
    variables = {"params": params} | ({"lowrank": lowrank} if lowrank is not None else {})
    return make_model(config, dtype=hidden.dtype).apply(variables, hidden, method=Decoder.logits)


forward_jit = jax.jit(forward, static_argnames=("config", "compute_dtype"))

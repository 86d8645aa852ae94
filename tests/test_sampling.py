"""Generation: token-identical to transformers' greedy generate, EOS handling, sampling filters, log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from esjax import models
from esjax.generation.sampling import (SamplingConfig, bucket_length, completion_ids, filter_logits, generate_jit, pad_prompts)

PROMPTS = [[5, 17, 42, 99, 3, 250, 7, 12, 64], [9, 8, 7], [200, 100, 50, 25, 12, 6], [33, 34]]


def hf_greedy(path, prompts, max_new, eos):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens, mask = pad_prompts(prompts, pad_token_id=1, length=max(map(len, prompts)))
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                             do_sample=False, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=1,
                             min_new_tokens=0)
    gen = out[:, tokens.shape[1]:].numpy()
    rows = []
    for r in gen:
        r = r.tolist()
        rows.append(r[: r.index(eos) + 1] if eos in r else r)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("padded", [True, False])
def test_greedy_matches_transformers(tiny_model_dirs, family, padded):
    path = tiny_model_dirs[family]
    config, params = models.load_hf(path)
    prompts = PROMPTS if padded else [PROMPTS[0], PROMPTS[0][::-1]]
    tokens, mask = pad_prompts(prompts, pad_token_id=1, minimum=1 if not padded else 16)
    sampling = SamplingConfig(max_new_tokens=32, eos_token_ids=(), pad_token_id=1)
    out = generate_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), sampling)
    ours = completion_ids(out)
    assert all(len(r) == 32 for r in ours) and not np.asarray(out.finished).any()
    unused = next(i for i in range(config.vocab_size) if i not in set(sum(ours, [])))
    assert ours == hf_greedy(path, prompts, 32, eos=unused)
    # a token row 0 emits mid-way becomes the EOS: every row must stop at its first occurrence, as in transformers
    eos = ours[0][10]
    sampling_eos = SamplingConfig(max_new_tokens=32, eos_token_ids=(eos,), pad_token_id=1)
    out_eos = generate_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), sampling_eos)
    assert completion_ids(out_eos) == hf_greedy(path, prompts, 32, eos=eos)
    first = ours[0].index(eos) + 1
    assert int(out_eos.lengths[0]) == first and bool(out_eos.finished[0])
    assert (np.asarray(out_eos.tokens)[0, first:] == 1).all() and (np.asarray(out_eos.logps)[0, first:] == 0).all()


def test_logps_are_greedy_log_softmax(tiny_model_dirs):
    config, params = models.load_hf(tiny_model_dirs["qwen2"])
    tokens, mask = pad_prompts(PROMPTS, pad_token_id=1)
    out = generate_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
                       SamplingConfig(max_new_tokens=6, pad_token_id=1))
    full_tokens = np.concatenate([tokens, np.asarray(out.tokens)], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(np.asarray(out.tokens))], axis=1)
    logits = models.forward_jit(config, params, jnp.asarray(full_tokens), jnp.asarray(full_mask))
    logp = jax.nn.log_softmax(logits[:, tokens.shape[1] - 1:-1], axis=-1)
    expected = np.take_along_axis(np.asarray(logp), np.asarray(out.tokens)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logps), expected, atol=1e-5)


def test_sampling_is_keyed_and_top_k_one_is_greedy(tiny_model_dirs):
    config, params = models.load_hf(tiny_model_dirs["llama"])
    tokens, mask = jnp.asarray(pad_prompts(PROMPTS, 1)[0]), jnp.asarray(pad_prompts(PROMPTS, 1)[1])
    greedy = generate_jit(config, params, tokens, mask, jax.random.key(0), SamplingConfig(max_new_tokens=12))
    top1 = generate_jit(config, params, tokens, mask, jax.random.key(5),
                        SamplingConfig(max_new_tokens=12, temperature=0.7, top_k=1))
    np.testing.assert_array_equal(greedy.tokens, top1.tokens)
    hot = SamplingConfig(max_new_tokens=12, temperature=1.5, top_p=0.95)
    a = generate_jit(config, params, tokens, mask, jax.random.key(1), hot)
    b = generate_jit(config, params, tokens, mask, jax.random.key(1), hot)
    c = generate_jit(config, params, tokens, mask, jax.random.key(2), hot)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def test_filter_logits():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(np.asarray(filter_logits(logits, 2, 1.0))).tolist() == [[True, True, False, False]]
    assert np.isfinite(np.asarray(filter_logits(logits, 0, 0.7))).tolist() == [[True, True, False, False]]
    assert np.isfinite(np.asarray(filter_logits(logits, 0, 0.8))).tolist() == [[True, True, False, False]]
    assert np.isfinite(np.asarray(filter_logits(logits, 0, 0.81))).tolist() == [[True, True, True, False]]
    assert np.isfinite(np.asarray(filter_logits(logits, 0, 0.1))).tolist() == [[True, False, False, False]]
    assert np.array_equal(filter_logits(logits, 1000, 1.0), logits)  # top_k past the vocabulary keeps every token


def test_bucketing_reuses_compiled_program(tiny_model_dirs):
    config, params = models.load_hf(tiny_model_dirs["qwen2"])
    sampling = SamplingConfig(max_new_tokens=4, pad_token_id=1)
    fn = jax.jit(lambda p, t, m: generate_jit(config, p, t, m, jax.random.key(0), sampling).tokens)
    for prompts in ([[3, 4, 5]], [[3, 4, 5, 6, 7, 8, 9]], [[1] * 16]):
        tokens, mask = pad_prompts(prompts, 1)
        assert tokens.shape == (1, 16)
        fn(params, tokens, mask)
    assert fn._cache_size() == 1
    assert bucket_length(17) == 32 and bucket_length(3) == 16 and bucket_length(64) == 64
    with pytest.raises(ValueError):
        pad_prompts([[1] * 20], 1, length=16)


def test_early_exit_when_all_rows_done(tiny_model_dirs):
    config, params = models.load_hf(tiny_model_dirs["qwen2"])
    tokens, mask = pad_prompts(PROMPTS, 1)
    first = generate_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
                         SamplingConfig(max_new_tokens=1, pad_token_id=1))
    eos = tuple(int(t) for t in np.asarray(first.tokens)[:, 0])
    out = generate_jit(config, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
                       SamplingConfig(max_new_tokens=50, eos_token_ids=eos, pad_token_id=1))
    assert np.asarray(out.lengths).tolist() == [1] * len(PROMPTS) and np.asarray(out.finished).all()


def test_empty_prompt_is_an_error():
    from esjax.generation.sampling import EmptyPromptError
    with pytest.raises(EmptyPromptError, match="prompt 1 encodes to no tokens .and 1 more"):
        pad_prompts([[3, 4], [], [5], []], 1)


class _OnDevice:
    """A stand-in leaf for an array placed on another platform (dtype and devices() are all decode_dtype reads)."""

    def __init__(self, dtype, platform):
        self.dtype, self._platform = jnp.dtype(dtype), platform

    def devices(self):
        return {type("Device", (), {"platform": self._platform})()}


def test_decode_dtype_is_float32_for_16_bit_params_on_cpu_only(monkeypatch):
    from esjax.generation.sampling import decode_dtype
    assert decode_dtype({"w": jnp.ones(2, jnp.bfloat16)}) == jnp.float32  # CPU arrays (this test run)
    assert decode_dtype({"w": jnp.ones(2, jnp.float16)}) == jnp.float32
    assert decode_dtype({"w": jnp.ones(2, jnp.float32)}) == jnp.float32
    for platform in ("gpu", "tpu"):
        assert decode_dtype({"w": _OnDevice(jnp.bfloat16, platform)}) == jnp.bfloat16
        assert decode_dtype({"w": _OnDevice(jnp.float32, platform)}) == jnp.float32
    assert decode_dtype({"w": _OnDevice(jnp.bfloat16, "cpu")}) == jnp.float32
    def traced():
        return jax.eval_shape(lambda p: jnp.zeros((), decode_dtype(p)), {"w": jnp.ones(2, jnp.bfloat16)}).dtype
    assert traced() == jnp.float32  # under a trace: jax.default_backend()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert traced() == jnp.bfloat16


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield v


def _weight_converts(jaxpr, in_loop=False):
    """(inside a while loop?, shape) of every bf16 -> f32 conversion of a matrix in ``jaxpr``, nested ones too."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "convert_element_type" and eqn.invars[0].aval.dtype == jnp.bfloat16:
            if eqn.invars[0].aval.ndim == 2 and eqn.params["new_dtype"] == jnp.float32:
                found.append((in_loop, eqn.invars[0].aval.shape))
        for sub in _sub_jaxprs(eqn):
            found += _weight_converts(sub, in_loop or eqn.primitive.name == "while")
    return found


def test_bf16_params_on_cpu_decode_in_float32_converted_once(tiny_model_dirs):
    config, params = models.load_hf(tiny_model_dirs["llama"], dtype="bfloat16")
    upcast = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    tokens, mask = (jnp.asarray(a) for a in pad_prompts(PROMPTS, pad_token_id=1))
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.8, top_p=0.9, pad_token_id=1)
    ours = generate_jit(config, params, tokens, mask, jax.random.key(3), sampling)
    reference = generate_jit(config, upcast, tokens, mask, jax.random.key(3), sampling)
    for a, b in zip(ours, reference):  # the same program as with the weights upcast by hand: identical outputs
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from esjax.generation.sampling import generate
    jaxpr = jax.make_jaxpr(lambda p: generate(config, p, tokens, mask, jax.random.key(3), sampling))(params).jaxpr
    converts = _weight_converts(jaxpr)
    matrices = [x.shape for x in jax.tree.leaves(params) if x.ndim == 2]
    assert sorted(shape for _, shape in converts) == sorted(matrices)  # each weight matrix once ...
    assert not any(in_loop for in_loop, _ in converts)  # ... before the decode loop, never per token
    # XLA's temporaries: the float32 program's plus at most one float32 copy of the weights
    temp = {name: jax.jit(generate, static_argnames=("config", "sampling")).lower(
        config, p, tokens, mask, jax.random.key(3), sampling).compile().memory_analysis().temp_size_in_bytes
        for name, p in (("bf16", params), ("f32", upcast))}
    weights_f32 = sum(x.size * 4 for x in jax.tree.leaves(params))
    assert temp["bf16"] <= temp["f32"] + weights_f32, (temp, weights_f32)

"""GRPO update and step: exact gradients, device invariance, mu > 1, beta = 0, accumulation, bf16 master, learning."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.grpo import (GRPOConfig, build_batch, completion_logps, data_mesh, grpo_loss, grpo_step, init_state,
                        make_schedule, make_runner, frac_reward_zero_std, train_on_rollout)
from esjax.models import config_from_hf, init_params
from esjax.generation.sampling import SamplingConfig

MODEL = config_from_hf(dict(model_type="qwen2", vocab_size=32, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=True, eos_token_id=0))
SAMPLING = SamplingConfig(max_new_tokens=5, temperature=1.0, eos_token_ids=(0,), pad_token_id=1)
G, NUM_PROMPTS, PROMPT_LEN = 4, 2, 6
K = G * NUM_PROMPTS
FAST = {"xla_backend_optimization_level": 0}  # halves XLA:CPU compile time; same semantics


_logps = jax.jit(completion_logps, static_argnums=(0, 4), static_argnames="temperature", compiler_options=FAST)


@functools.cache
def _base_params():
    return jax.jit(init_params, static_argnums=0, compiler_options=FAST)(MODEL, jax.random.key(0))


def _params(dtype=jnp.float32):
    """Fresh buffers each call (a train step donates its state)."""
    return jax.tree.map(lambda x: jnp.array(x, dtype, copy=True), _base_params())


def _rollout():
    """A fixed rollout: left-padded prompts repeated G times, completions with EOS (0) and pads, rewards."""
    rng = np.random.default_rng(0)
    prompts = np.repeat(rng.integers(2, 32, (NUM_PROMPTS, PROMPT_LEN)), G, axis=0).astype(np.int32)
    mask = np.ones_like(prompts)
    mask[G:, :2] = 0  # second prompt is shorter (left padding)
    prompts[mask == 0] = SAMPLING.pad_token_id
    completions = rng.integers(2, 32, (K, SAMPLING.max_new_tokens)).astype(np.int32)
    for row, end in enumerate([2, 5, 1, 5, 3, 4, 5, 2]):  # first EOS at `end` (5: truncated)
        if end < SAMPLING.max_new_tokens:
            completions[row, end] = 0
            completions[row, end + 1:] = SAMPLING.pad_token_id
    rewards = rng.uniform(0, 1, K).astype(np.float32)
    return prompts, mask, completions, rewards


@functools.cache
def _train(config, devices=1, dtype="float32"):
    """One ``train`` call on the fixed rollout (one reward NaN: a failed reward function), cached per setting.

    ``init_state`` keeps the params without a copy and ``train`` donates the state, so each run gets fresh params.
    """
    prompts, mask, completions, rewards = _rollout()
    rewards[3] = np.nan
    runner = make_runner(config, MODEL, SAMPLING, data_mesh(jax.devices()[:devices]), compiler_options=FAST)
    return runner.train(init_state(config, _params(dtype), jax.random.key(0)), prompts, mask, completions, rewards)


def _assert_trees_close(a, b, rtol):
    """Leaf by leaf, ``max|a - b| <= rtol * max|a|`` (float reduction order moves small entries relatively more)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        assert np.abs(x - y).max() <= rtol * np.abs(x).max(), (np.abs(x - y).max(), np.abs(x).max())


def test_config_validation():
    assert GRPOConfig.from_dict({"num_generations": 4, "beta": 0.04}).beta == 0.04
    with pytest.raises(ValueError, match="Unknown GRPOConfig keys"):
        GRPOConfig.from_dict({"num_generation": 4})
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="ppo")
    with pytest.raises(ValueError, match="total_steps"):
        GRPOConfig(lr_schedule="cosine", warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="num_generations"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="use_bias_correction_kl"):
        GRPOConfig(use_bias_correction_kl="yes")
    config = GRPOConfig(num_generations=4, grad_accum_steps=2)
    config.check_devices(4, rollout_batch=8)
    with pytest.raises(ValueError, match=r"multiple of num_devices \* grad_accum_steps = 4 \* 2 = 8"):
        config.check_devices(4, rollout_batch=12)
    with pytest.raises(ValueError, match="multiple of 4"):
        config.check_devices(1, rollout_batch=6)
    hash(config)
    with pytest.raises(ValueError, match="temperature"):
        make_runner(config, MODEL, SamplingConfig(temperature=0.0))


def test_schedule_warmup_then_cosine():
    schedule = make_schedule(GRPOConfig(learning_rate=1.0, warmup_steps=4, lr_schedule="cosine", total_steps=12))
    np.testing.assert_allclose([schedule(s) for s in (0, 2, 4, 8, 12)], [0, 0.5, 1, 0.5, 0], atol=1e-6)


def test_flat_groups_count_failed_rewards_out():
    rewards = np.array([1, 1, np.nan, 0, 1, 0, np.nan, np.nan], np.float32)
    assert frac_reward_zero_std(rewards, group_size=2) == 0.75  # [1, 1], [nan, 0] (one valid), [nan, nan] are flat


def test_gradient_matches_finite_differences():
    """jax.grad of the loss (clipped ratio + beta * k3, chunked log-probs) vs central differences, fp32."""
    config = GRPOConfig(num_generations=G, beta=0.04, loss_type="grpo", logprob_chunk_size=2)
    prompts, mask, completions, rewards = _rollout()
    params = _params()
    batch = build_batch(config, SAMPLING, jnp.asarray(prompts), jnp.asarray(mask), jnp.asarray(completions),
                        jnp.asarray(rewards))
    logps, _ = _logps(MODEL, params, batch.tokens, batch.attention_mask, SAMPLING.max_new_tokens, temperature=1.0)
    noise = jax.random.normal(jax.random.key(3), logps.shape)  # old and ref differ from the policy (ratio != 1)
    batch = batch._replace(old_logps=logps + 0.05 * noise, ref_logps=logps - 0.3 + 0.1 * noise)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p: grpo_loss(config, MODEL, p, batch)[0]), compiler_options=FAST)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    direction = jax.tree.unflatten(treedef, [0.02 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    grads = jax.tree.leaves(loss_and_grad(params)[1])
    analytic = sum(jnp.vdot(g, d) for g, d in zip(grads, jax.tree.leaves(direction)))
    h = 1e-2  # params move by ~2e-4 per element
    loss = lambda s: loss_and_grad(jax.tree.map(lambda p, d: p + s * h * d, params, direction))[0]  # noqa: E731
    numeric = (loss(1.0) - loss(-1.0)) / (2 * h)
    assert abs(float(analytic)) > 1e-2
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-3)


def test_config_bias_correction_reaches_the_loss():
    """``GRPOConfig.use_bias_correction_kl`` (TRL's default True) is the loss's: KL times the importance ratio."""
    prompts, mask, completions, rewards = _rollout()
    params = _params()
    config = GRPOConfig(num_generations=G, beta=0.5)
    assert config.use_bias_correction_kl
    batch = build_batch(config, SAMPLING, jnp.asarray(prompts), jnp.asarray(mask), jnp.asarray(completions),
                        jnp.asarray(rewards))
    logps, _ = _logps(MODEL, params, batch.tokens, batch.attention_mask, SAMPLING.max_new_tokens, temperature=1.0)
    batch = batch._replace(old_logps=logps + 0.1, ref_logps=logps - 0.3)  # ratio exp(-0.1) on every token
    on = grpo_loss(config, MODEL, params, batch)[1]["kl"]
    off = grpo_loss(dataclasses.replace(config, use_bias_correction_kl=False), MODEL, params, batch)[1]["kl"]
    np.testing.assert_allclose(on, off * np.exp(-0.1), rtol=1e-5)


# Adam's first step is ~lr * sign(g): coordinates with |g| near adam_eps would turn float reduction-order noise
# into visible differences, so these comparisons use adam_eps=1 (update ~ lr * g, linear in the gradient).
EXACT = GRPOConfig(num_generations=G, learning_rate=1.0, adam_eps=1.0, beta=0.04, loss_type="dapo")


@pytest.mark.slow
def test_one_vs_four_devices_same_update():
    (s1, m1), (s4, m4) = _train(EXACT, 1), _train(EXACT, 4)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(s4.params))
    kernel = lambda p: np.asarray(p["layers_0"]["mlp"]["up_proj"]["kernel"])  # noqa: E731
    assert np.abs(kernel(s1.params) - kernel(_params())).max() > 1e-4
    _assert_trees_close(s1.params, s4.params, rtol=1e-6)
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_grad_accumulation_matches_full_batch():
    """dapo: 2 micro-batches of K/2 (rows interleaved, each sharded over 2 devices) == 1 batch of K.

    (grpo and dr_grpo average over rows and match the same way; bnpo divides by each micro-batch's own token
    count, as TRL does, and does not.)"""
    (s1, m1), (s2, m2) = _train(EXACT, 1), _train(dataclasses.replace(EXACT, grad_accum_steps=2), 2)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)
    _assert_trees_close(s1.params, s2.params, rtol=1e-6)


def test_rollout_log_probs_match_and_are_device_invariant():
    """The sampler's log-probs equal the training forward's; sampling does not depend on the device count."""
    config = GRPOConfig(num_generations=G)
    prompts, mask, _, _ = _rollout()
    params = _params()
    outs = [make_runner(config, MODEL, SAMPLING, data_mesh(jax.devices()[:n]), compiler_options=FAST).rollout(
        params, prompts, mask, jax.random.key(3)) for n in (1, 4)]
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    batch = build_batch(config, SAMPLING, jnp.asarray(prompts), jnp.asarray(mask), outs[0].tokens, jnp.zeros(K))
    logps, _ = _logps(MODEL, params, batch.tokens, batch.attention_mask, SAMPLING.max_new_tokens,
                      temperature=SAMPLING.temperature)
    valid = np.asarray(batch.completion_mask, bool)
    np.testing.assert_allclose(np.asarray(logps)[valid], np.asarray(outs[0].logps)[valid], atol=2e-5)


MU2 = GRPOConfig(num_generations=G, num_iterations=2, learning_rate=1e-2, epsilon=1e-3, beta=0.0)


def test_mu2_uses_stored_old_logps():
    """Iteration 1 sees ratio == 1; iteration 2 is clipped against the stored (pre-update) log-probs."""
    state, metrics = _train(MU2)
    assert int(state.step) == 2 and metrics["clip_ratio"].shape == (2,)
    np.testing.assert_allclose(metrics["ratio_mean"][0], 1.0, atol=1e-6)
    assert metrics["clip_ratio"][0] == 0 and metrics["clip_ratio"][1] > 0.2
    assert abs(float(metrics["ratio_mean"][1]) - 1) > 1e-4


def _dot_count(config):
    prompts, mask, completions, rewards = _rollout()
    state = jax.eval_shape(lambda: init_state(config, _params(), jax.random.key(0)))
    jaxpr = jax.make_jaxpr(lambda s: train_on_rollout(config, MODEL, SAMPLING, s, prompts, mask, completions,
                                                      rewards))(state)
    return len(re.findall(r"dot_general\[", str(jaxpr)))


def test_beta_zero_has_no_reference():
    state, metrics = _train(MU2)
    assert state.ref_params is None and "kl" not in metrics
    mu1 = dataclasses.replace(MU2, num_iterations=1)
    assert _dot_count(mu1) < _dot_count(dataclasses.replace(mu1, beta=0.04))  # no reference forward is traced
    state, metrics = _train(EXACT)  # beta = 0.04
    _assert_trees_close(state.ref_params, _params(), rtol=0)
    assert float(metrics["kl"][0]) < 1e-6  # policy == reference before the first update


def test_bf16_master_keeps_small_updates():
    """lr 1e-6 is far below bf16's resolution (~1e-4 at |w| = 0.02): the fp32 master keeps the step."""
    state, _ = _train(GRPOConfig(num_generations=G, learning_rate=1e-6), dtype="bfloat16")
    initial = jax.tree.leaves(_params(jnp.bfloat16))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.master))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state) if jnp.ndim(x))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.params))
    _assert_trees_close(state.params, jax.tree.map(lambda m: m.astype(jnp.bfloat16), state.master), rtol=0)
    master, params, initial = (np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in leaves])
                               for leaves in (jax.tree.leaves(state.master), jax.tree.leaves(state.params), initial))
    delta = np.abs(master - initial)
    assert 5e-7 < delta.max() < 2e-6 and np.mean(delta > 0) > 0.5  # Adam's first step: ~lr per element
    assert np.mean(params == initial) > 0.9  # ...which bf16 alone would have rounded away almost everywhere


def test_learns_first_token_reward():
    """A tiny random model learns to start its completions with token 7 (chance 1/32) within 25 steps."""
    config = GRPOConfig(num_generations=8, learning_rate=3e-2, max_grad_norm=None)
    runner = make_runner(config, MODEL, SamplingConfig(max_new_tokens=3, temperature=1.0, eos_token_ids=(0,),
                                                        pad_token_id=1), data_mesh(jax.devices()[:4]),
                         compiler_options=FAST)
    prompts = np.random.default_rng(1).integers(2, 32, (4, 6)).astype(np.int32)
    state = init_state(config, _params(), jax.random.key(0))
    seen = []

    def score(tokens, lengths, finished, prompt):
        seen.append(prompt)
        hit = tokens[:, 0] == 7
        return hit.astype(np.float32), hit

    history = []
    for _ in range(25):
        state, result = grpo_step(runner, state, prompts, np.ones_like(prompts), score)
        history.append(result.reward_mean)
        assert result.accuracy == pytest.approx(result.reward_mean)  # reward 1 exactly when correct
    assert set(result.metrics) >= {f"grpo/{k}" for k in ("loss", "grad_norm", "entropy", "lr", "clip_ratio",
                                                         "frac_reward_zero_std")}
    assert result.stats.nonfinite_rewards == 0 and 1 <= result.stats.completion_length <= 3  # shared names
    assert set(result.record()) >= {"reward_mean", "accuracy", "completion_length", "truncated_fraction"}
    assert np.array_equal(seen[0], np.repeat(np.arange(4), 8))  # row r answers prompt r // G
    assert history[0] < 0.2 and np.mean(history[-5:]) > 0.6
    assert int(state.step) == 25 and int(state.iteration) == 25

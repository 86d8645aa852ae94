"""Population rollouts: low-rank in-matmul forward, device invariance, divisibility checks."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es import ESConfig, apply_update
from esjax.es.noise import lowrank_perturb, perturb
from esjax.es.population import _strip_none, make_rollout, population_mesh
from esjax.es.step import es_init, es_step, make_runner
from esjax.models import config_from_hf, forward, init_params
from esjax.generation.sampling import SamplingConfig, pad_prompts

CONFIG = config_from_hf(dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=True, eos_token_id=0))
PARAMS = init_params(CONFIG, jax.random.key(0))
TOKENS, MASK = pad_prompts([[3, 4, 5, 9, 10], [6, 7], [11, 12, 13]], 1)


@pytest.mark.parametrize("non_matrix", ["full", "freeze"])
@pytest.mark.parametrize("rank", [1, 4])
def test_lowrank_in_matmul_equals_materialised(non_matrix, rank):
    es = ESConfig(population_size=4, sigma=0.05, noise="lowrank", rank=rank, non_matrix=non_matrix)
    for member in (0, 3):
        dense, lowrank = lowrank_perturb(es, PARAMS, jax.random.key(7), 2, member)
        factored = forward(CONFIG, dense, TOKENS, MASK, lowrank=_strip_none(lowrank))
        materialised = forward(CONFIG, perturb(es, PARAMS, jax.random.key(7), 2, member), TOKENS, MASK)
        np.testing.assert_allclose(factored, materialised, atol=2e-5, rtol=1e-5)
        assert not np.allclose(factored, forward(CONFIG, PARAMS, TOKENS, MASK), atol=1e-3)


@pytest.mark.parametrize("noise, temperature", [("full", 0.0), pytest.param("lowrank", 0.0, marks=pytest.mark.slow),
                                                pytest.param("lowrank", 1.0, marks=pytest.mark.slow)])
def test_rollout_identical_on_1_2_8_devices(noise, temperature):
    es = ESConfig(population_size=16, sigma=0.05, noise=noise, rank=2, antithetic=True)
    sampling = SamplingConfig(max_new_tokens=8, pad_token_id=1, temperature=temperature)
    outs = []
    for n in (1, 2, 8):
        rollout = make_rollout(es, CONFIG, sampling, population_mesh(jax.devices()[:n]), PARAMS, TOKENS.shape)
        out = rollout(PARAMS, jax.random.key(1), jnp.int32(0), TOKENS, MASK, jax.random.key(2))
        assert out.tokens.shape == (16, 3, 8)
        outs.append(np.asarray(out.logps))
    for other in outs[1:]:
        np.testing.assert_allclose(outs[0], other, atol=1e-6)
    assert len({row.tobytes() for row in outs[0]}) > 8  # members really differ


@pytest.mark.slow
def test_full_rank_chunking_matches_unchunked():
    sampling = SamplingConfig(max_new_tokens=6, pad_token_id=1)
    mesh = population_mesh(jax.devices()[:2])
    results = []
    for chunk in (1, 3, "auto"):
        es = ESConfig(population_size=6, sigma=0.05, population_chunk=chunk)
        rollout = make_rollout(es, CONFIG, sampling, mesh, PARAMS, TOKENS.shape)
        assert rollout.chunk == (3 if chunk == "auto" else chunk)
        results.append(np.asarray(rollout(PARAMS, jax.random.key(1), jnp.int32(4), TOKENS, MASK, jax.random.key(0)).logps))
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
    np.testing.assert_allclose(results[0], results[2], atol=1e-6)


def test_population_must_divide_devices():
    sampling = SamplingConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match="6 members does not split evenly over 4 devices"):
        make_rollout(ESConfig(population_size=6), CONFIG, sampling, population_mesh(jax.devices()[:4]), PARAMS,
                     TOKENS.shape)
    with pytest.raises(ValueError, match="antithetic|pair"):
        make_rollout(ESConfig(population_size=6, antithetic=True), CONFIG, sampling,
                     population_mesh(jax.devices()[:2]), PARAMS, TOKENS.shape)


@pytest.mark.slow
@pytest.mark.parametrize("group_baseline", [False, True])
def test_es_step_applies_the_update_to_the_scored_fitness(group_baseline):
    """es_step on 2 devices == apply_update with the fitness built from the rewards score_fn returned: each
    member's mean reward [N], or with group_baseline the per-prompt rewards [N, B] (which moves params differently)."""
    es = ESConfig(population_size=4, sigma=0.05, alpha=0.01, antithetic=True, group_baseline=group_baseline)
    sampling = SamplingConfig(max_new_tokens=5, pad_token_id=1)
    runner = make_runner(es, CONFIG, sampling, population_mesh(jax.devices()[:2]), PARAMS, TOKENS.shape)
    state = es_init(runner, PARAMS, jax.random.key(1))
    scored = []

    def score_fn(tokens, lengths, finished, prompt_ids):
        rewards = (tokens * (np.arange(tokens.shape[1]) < lengths[:, None])).sum(1) % 7 / 7 + prompt_ids
        scored.append(rewards.astype(np.float32))
        return scored[-1], rewards > 1

    state, result = es_step(runner, state, np.asarray(TOKENS), np.asarray(MASK), score_fn)
    per_prompt = scored[0].reshape(4, 3)  # rows are member-major: [N * B] -> [N, B]
    assert np.ptp(per_prompt, axis=0).all()  # members disagree on every prompt, so both fitness kinds matter
    fitness = per_prompt if group_baseline else per_prompt.mean(axis=1)
    expected = apply_update(es, PARAMS, jax.random.key(1), 0, fitness)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, atol=1e-6), state.params, expected)
    other = apply_update(dataclasses.replace(es, group_baseline=not group_baseline), PARAMS, jax.random.key(1), 0,
                         per_prompt.mean(axis=1) if group_baseline else per_prompt)
    assert not np.allclose(state.params["embed_tokens"]["embedding"], other["embed_tokens"]["embedding"])
    assert result.metrics["es/alpha"] == pytest.approx(0.01)
    assert result.reward_mean == pytest.approx(scored[0].mean(), rel=1e-6)  # the shared rollout statistics
    assert result.accuracy == np.mean(scored[0] > 1) and result.stats.nonfinite_rewards == 0


@pytest.mark.parametrize("noise, temperature", [("full", 0.0), pytest.param("lowrank", 1.0, marks=pytest.mark.slow)])
def test_prompt_chunks_match_one_decode(noise, temperature):
    """Decoding the prompts one at a time per member (prompt_chunk=1) gives the same rows, sampled ones included."""
    sampling = SamplingConfig(max_new_tokens=6, pad_token_id=1, temperature=temperature)
    mesh = population_mesh(jax.devices()[:2])
    results = []
    for prompt_chunk in (None, 1):
        es = ESConfig(population_size=4, sigma=0.05, noise=noise, rank=2, prompt_chunk=prompt_chunk)
        rollout = make_rollout(es, CONFIG, sampling, mesh, PARAMS, TOKENS.shape)
        out = rollout(PARAMS, jax.random.key(1), jnp.int32(4), TOKENS, MASK, jax.random.key(0))
        results.append(jax.tree.map(np.asarray, out))
    chex.assert_trees_all_close(*results, atol=1e-6)
    with pytest.raises(ValueError, match="prompt_chunk=2 must divide the 3 prompts"):
        make_rollout(ESConfig(population_size=4, prompt_chunk=2), CONFIG, sampling, mesh, PARAMS, TOKENS.shape)

"""Population rollouts: low-rank in-matmul forward, device invariance, divisibility checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es import ESConfig
from esjax.es.noise import lowrank_perturb, perturb
from esjax.es.population import _strip_none, make_rollout, population_mesh
from esjax.models import config_from_hf, forward, init_params
from esjax.sampling import SamplingConfig, pad_prompts

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


@pytest.mark.parametrize("noise, temperature", [("full", 0.0), ("lowrank", 0.0), ("lowrank", 1.0)])
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
    with pytest.raises(ValueError, match="multiple"):
        make_rollout(ESConfig(population_size=6), CONFIG, sampling, population_mesh(jax.devices()[:4]), PARAMS,
                     TOKENS.shape)
    with pytest.raises(ValueError, match="antithetic|pair"):
        make_rollout(ESConfig(population_size=6, antithetic=True), CONFIG, sampling,
                     population_mesh(jax.devices()[:2]), PARAMS, TOKENS.shape)

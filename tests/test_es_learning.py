"""ES learns: a tiny random model raises a simple reward within a few dozen steps (fixed seeds)."""

import jax
import numpy as np
import pytest

from esjax.es import ESConfig
from esjax.es.population import population_mesh
from esjax.es.step import es_init, es_step, make_runner
from esjax.models import config_from_hf, init_params
from esjax.generation.sampling import SamplingConfig, pad_prompts

CONFIG = config_from_hf(dict(model_type="qwen2", vocab_size=32, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=True))
TARGET = 7


def score(tokens, lengths, finished, slots):
    """Reward: the fraction of the 4 generated tokens that are TARGET."""
    rewards = (tokens[:, :4] == TARGET).mean(axis=1).astype(np.float32)
    return rewards, rewards == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["full", "lowrank"])
def test_es_raises_target_token_rate(noise):
    params = init_params(CONFIG, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(0, 32, (16, 6)).tolist()
    tokens, mask = pad_prompts(prompts, pad_token_id=0, minimum=8)
    es = ESConfig(population_size=16, sigma=0.05, alpha=0.1, antithetic=True, noise=noise, rank=2)
    runner = make_runner(es, CONFIG, SamplingConfig(max_new_tokens=4), population_mesh(  # greedy, as the paper
        jax.devices()[:2]), params, tokens.shape)
    state = es_init(runner, params, jax.random.key(1))
    curve = []
    for _ in range(30):
        state, result = es_step(runner, state, tokens, mask, score)
        curve.append(result.reward_mean)
    first, last = np.mean(curve[:3]), np.mean(curve[-3:])
    assert first < 0.1, curve  # ~1/32 for a random model
    assert last > 0.6, curve

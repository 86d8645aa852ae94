"""Fitness shaping and ESConfig validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es import ESConfig, centered_ranks, shape_fitness, zscore

shape_fitness_jit = jax.jit(shape_fitness, static_argnums=0)


def test_zscore():
    f = jnp.array([1.0, 2.0, 4.0, 9.0])
    z = np.asarray(zscore(f))
    np.testing.assert_allclose(z, (f - f.mean()) / (f.std() + 1e-8), rtol=1e-6)
    np.testing.assert_allclose([z.mean(), np.sum(z**2)], [0, 4], atol=1e-5)  # sum z^2 = N
    for const in (0.0, 0.1, -3.7):  # exactly tied fitness gives zero weights, not NaN or rounding noise / 1e-8
        np.testing.assert_array_equal(zscore(jnp.full(30, const)), np.zeros(30))


def test_centered_ranks():
    np.testing.assert_allclose(centered_ranks(jnp.array([3.0, 1.0, 2.0])), [0.5, -0.5, 0.0])
    np.testing.assert_allclose(centered_ranks(jnp.array([10.0, -5.0, 0.0, 7.0, 1.0])), [0.5, -0.5, -0.25, 0.25, 0.0])
    # Ties share the mean of their ranks (1 and 2 -> 1.5), so tied members get equal weight.
    np.testing.assert_allclose(centered_ranks(jnp.array([1.0, 1.0, 0.0, 2.0])), [0.0, 0.0, -0.5, 0.5])
    np.testing.assert_array_equal(centered_ranks(jnp.ones(5)), np.zeros(5))


def test_top_pairs_keeps_the_elite_antithetic_pairs():
    """ARS's top-b directions: pairs ranked by their better member; the rest get weight 0, the kept ones (N/2)/b."""
    f = jnp.array([1.0, 0.0, 3.0, 3.0, 0.0, 0.0, 2.0, 5.0])  # pair maxima 1, 3, 0, 5: pairs 3 and 1 are the elite
    plain = np.asarray(zscore(f))
    top2 = np.asarray(shape_fitness_jit(ESConfig(population_size=8, antithetic=True, top_pairs=2), f)[0])
    np.testing.assert_allclose(top2, np.array([0, 0, 2, 2, 0, 0, 2, 2]) * plain, rtol=1e-6)
    every = shape_fitness_jit(ESConfig(population_size=8, antithetic=True, top_pairs=4), f)[0]
    np.testing.assert_allclose(every, plain, rtol=1e-6)  # b = N / 2 is plain ES


@pytest.mark.parametrize("shaping", ["zscore", "centered_rank", "none"])
def test_nonfinite_fitness_counts_as_worst(shaping):
    config = ESConfig(population_size=6, shaping=shaping)
    w, metrics = shape_fitness_jit(config, jnp.array([1.0, jnp.nan, 3.0, jnp.inf, -jnp.inf, 2.0]))
    w = np.asarray(w)
    assert int(metrics["nonfinite"]) == 3 and np.all(np.isfinite(w))
    np.testing.assert_array_equal(w[[1, 3, 4]], np.full(3, w[0]))  # same weight as the worst finite member
    assert w[0] == w.min() < w[5] < w[2] == w.max()
    assert float(metrics["fitness_min"]) == 1.0 and float(metrics["fitness_max"]) == 3.0

    w, metrics = shape_fitness_jit(config, jnp.full(6, jnp.nan))
    np.testing.assert_array_equal(w, np.zeros(6))
    assert int(metrics["nonfinite"]) == 6


def test_group_baseline_weighs_every_prompt_group_equally():
    scores = jax.random.uniform(jax.random.key(0), (8, 3))
    config = ESConfig(population_size=8, group_baseline=True)
    w = shape_fitness_jit(config, scores)[0]
    # Invariant to each group's offset and scale, and a group on which all members tie contributes nothing.
    rescaled = scores * jnp.array([1.0, 100.0, 0.01]) + jnp.array([5.0, -2.0, 0.0])
    np.testing.assert_allclose(shape_fitness_jit(config, rescaled)[0], w, atol=1e-4)
    with_tied = jnp.concatenate([scores, jnp.full((8, 1), 0.5)], axis=1)
    np.testing.assert_allclose(shape_fitness_jit(config, with_tied)[0], w, atol=1e-5)
    # Without the baseline, [N, G] scores are averaged per member: the 100x group dominates (the others are
    # ~1% of the signal), unlike with the baseline.
    plain = ESConfig(population_size=8)
    np.testing.assert_allclose(shape_fitness_jit(plain, scores)[0], zscore(scores.mean(axis=1)), atol=1e-6)
    dominated = shape_fitness_jit(plain, rescaled)[0]
    np.testing.assert_allclose(dominated, zscore(scores[:, 1]), atol=0.05)
    assert np.max(np.abs(w - zscore(scores[:, 1]))) > 0.2
    # A NaN is the worst score of its own group.
    nan_scores = scores.at[2, 0].set(jnp.nan)
    np.testing.assert_allclose(shape_fitness_jit(config, nan_scores)[0],
                               shape_fitness_jit(config, scores.at[2, 0].set(scores[:, 0].min()))[0], atol=1e-6)


def test_shape_fitness_checks_shapes_and_jits():
    config = ESConfig(population_size=4)
    with pytest.raises(ValueError, match="N = 4"):
        shape_fitness(config, jnp.zeros(5))
    with pytest.raises(ValueError, match="group_baseline"):
        shape_fitness(dataclasses.replace(config, group_baseline=True), jnp.zeros(4))
    w, _ = shape_fitness_jit(config, jnp.arange(4.0))
    np.testing.assert_allclose(w, zscore(jnp.arange(4.0)))


def test_config_defaults_are_the_paper_and_hashable():
    config = ESConfig()
    assert (config.population_size, config.sigma, config.alpha, config.antithetic) == (30, 1e-3, 5e-4, False)
    assert config.shaping == "zscore" and config.noise == "full" and config.optimizer is None
    same = ESConfig.from_dict({"freeze": ["embed"], "optimizer": "adam", "optimizer_kwargs": {"b1": 0.8}})
    assert same.freeze == ("embed",) and same.optimizer_kwargs == (("b1", 0.8),)
    assert hash(same) == hash(ESConfig(freeze=("embed",), optimizer="adam", optimizer_kwargs=(("b1", 0.8),)))
    assert ESConfig.from_dict(same.to_dict()) == same
    assert same.is_frozen("embed_tokens/embedding") and not same.is_frozen("layers_0/mlp/up_proj/kernel")


@pytest.mark.parametrize("kwargs, num_devices, message", [
    ({"population_size": 30}, 4, r"30 members does not split evenly over 4 devices"),
    ({"population_size": 7, "antithetic": True}, 1, "must be even"),
    ({"population_size": 30, "antithetic": True}, 2, r"15 antithetic pairs does not split evenly over 2 devices"),
    ({"sigma": 0.0}, 1, "sigma"),
    ({"alpha": -1.0}, 1, "alpha"),
    ({"rank": 0}, 1, "rank"),
    ({"noise": "sparse"}, 1, "noise must be one of"),
    ({"non_matrix": "zero"}, 1, "non_matrix"),
    ({"shaping": "rank"}, 1, "shaping"),
    ({"optimizer": "adamm"}, 1, "optax optimizer name"),
    ({"freeze": ("(",)}, 1, "Invalid freeze regex"),
    ({"population_chunk": 0}, 1, "population_chunk"),
    ({"noise_scale": "layer"}, 1, "noise_scale must be one of"),
    ({"top_pairs": 2}, 1, "top_pairs needs antithetic"),
    ({"population_size": 8, "antithetic": True, "top_pairs": 5}, 1, r"int in 1\.\.4"),
])
def test_config_validation(kwargs, num_devices, message):
    with pytest.raises(ValueError, match=message):
        ESConfig(**kwargs).check_devices(num_devices)


def test_config_validation_accepts_device_multiples():
    assert ESConfig(population_size=32, antithetic=True).check_devices(8).population_size == 32
    assert ESConfig(population_size=30).check_devices(6)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"Unknown ESConfig keys \['popsize'\]"):
        ESConfig.from_dict({"popsize": 30})

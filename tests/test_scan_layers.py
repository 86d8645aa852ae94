"""The layers as one scan (``model.scan_layers``): the same logits, tokens, ES noise and training as unrolled."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax import models
from esjax.common.layers import slice_paths, stack_layers, unstack_layers
from esjax.es import noise
from esjax.es.config import ESConfig
from esjax.es.noise import leaf_paths
from esjax.es.population import rollout_population
from esjax.es.update import es_gradient
from esjax.generation.sampling import SamplingConfig, generate_jit
from esjax.models.decoder import with_layer_scan
from esjax.run.loop import train
from esjax.run.settings import SettingsError, load_settings

from test_train import es_overrides, grpo_overrides


def scanned(config):
    return dataclasses.replace(config, scan_layers=True)


def tiny(tiny_model_dirs, family):
    config = models.load_config(tiny_model_dirs[family])
    return config, models.init_params(config, jax.random.key(1))


def prompts(config, rows=3, length=9):
    tokens = jax.random.randint(jax.random.key(2), (rows, length), 0, config.vocab_size)
    return tokens, jnp.ones_like(tokens).at[0, :3].set(0)


def by_path(tree):
    return dict(zip(leaf_paths(tree), jax.tree.leaves(tree)))


@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_scanned_logits_and_greedy_tokens_equal_unrolled(tiny_model_dirs, family):
    config, params = tiny(tiny_model_dirs, family)
    tokens, mask = prompts(config)
    chex.assert_trees_all_close(models.forward_jit(scanned(config), params, tokens, mask),
                                models.forward_jit(config, params, tokens, mask), atol=1e-6)
    greedy = SamplingConfig(10, 0.0, eos_token_ids=(), pad_token_id=0)
    unrolled = generate_jit(config, params, tokens, mask, jax.random.key(3), greedy)
    scan = generate_jit(scanned(config), params, tokens, mask, jax.random.key(3), greedy)
    np.testing.assert_array_equal(scan.tokens, unrolled.tokens)


def test_stack_and_unstack_are_inverse(tiny_model_dirs):
    config, params = tiny(tiny_model_dirs, "qwen2")
    view = stack_layers(params)
    assert "layers" in view and not any(k.startswith("layers_") for k in view)
    assert jax.tree.leaves(view["layers"])[0].shape[0] == config.num_hidden_layers
    chex.assert_trees_all_equal(unstack_layers(view), params)
    assert stack_layers(view) is view and unstack_layers(params) is params
    assert slice_paths("layers/mlp/up_proj/kernel", view["layers"]["mlp"]["up_proj"]["kernel"]) == [
        f"layers_{i}/mlp/up_proj/kernel" for i in range(config.num_hidden_layers)]
    assert slice_paths("embed_tokens/embedding", None) is None


@pytest.mark.parametrize("kind", ["full", "lowrank"])
@pytest.mark.parametrize("scale", ["uniform", "rms"])
def test_stacked_view_gets_each_layers_own_noise_bit_for_bit(tiny_model_dirs, kind, scale):
    """A layer-stacked leaf's noise is its layers' noise: the same factors and perturbed weights, a partly frozen
    leaf's frozen layer unperturbed."""
    _, params = tiny(tiny_model_dirs, "qwen2")
    es = ESConfig(population_size=4, sigma=0.01, noise=kind, rank=2, noise_scale=scale,
                  freeze=("layers_1/self_attn/q_proj",))
    key = jax.random.key(5)
    flat = by_path(noise.lowrank_factors(es, params, key, 3, 1))
    stacked = by_path(unstack_layers(noise.lowrank_factors(es, stack_layers(params), key, 3, 1)))
    for path, value in flat.items():
        np.testing.assert_array_equal(stacked[path], value, err_msg=path)
    frozen = [p for p in stacked if p.startswith("layers_1/self_attn/q_proj/kernel")]
    assert frozen and all(not np.any(stacked[p]) for p in frozen if p.endswith(("kernel", "/b")))
    chex.assert_trees_all_equal(unstack_layers(noise.perturb(es, stack_layers(params), key, 3, 1)),
                                noise.perturb(es, params, key, 3, 1))


@pytest.mark.parametrize("kind", ["full", "lowrank"])
def test_es_direction_is_the_weighted_sum_of_member_noise(tiny_model_dirs, kind):
    """The update draws a leaf's layers together; its direction is still (1/N) sum_i w_i eps_i of the rollouts'
    noise, zero on frozen layers."""
    _, params = tiny(tiny_model_dirs, "qwen2")
    es = ESConfig(population_size=4, sigma=0.01, noise=kind, rank=2, noise_scale="rms",
                  freeze=("layers_1/self_attn/q_proj",))
    weights = jnp.array([0.3, -1.0, 2.0, 0.5])
    direction = jax.jit(lambda p: es_gradient(es, p, jax.random.key(5), 3, weights))(params)
    eps = [noise.member_noise(es, params, jax.random.key(5), 3, i) for i in range(4)]
    scales = jax.tree.unflatten(jax.tree.structure(params), noise.leaf_scales(es, params))
    expected = jax.tree.map(lambda s, *xs: s * sum(w * x for w, x in zip(weights / 4, xs)), scales, *eps)
    chex.assert_trees_all_close(direction, expected, atol=1e-5)
    assert not np.any(direction["layers_1"]["self_attn"]["q_proj"]["kernel"])


@pytest.mark.parametrize("kind", ["full", "lowrank"])
def test_scanned_population_rollout_equals_unrolled(tiny_model_dirs, kind):
    config, params = tiny(tiny_model_dirs, "llama")
    tokens, mask = prompts(config)
    es = ESConfig(population_size=4, sigma=0.01, noise=kind, rank=2, freeze=("layers_0/mlp",))
    sampling = SamplingConfig(8, 1.0, eos_token_ids=(), pad_token_id=0)
    members = jnp.arange(4, dtype=jnp.int32)
    run = lambda c: rollout_population(es, c, sampling, params, jax.random.key(5), jnp.int32(3), tokens,  # noqa: E731
                                       mask, jax.random.key(6), members, 2)
    scan, unrolled = run(scanned(config)), run(config)
    np.testing.assert_array_equal(scan.tokens, unrolled.tokens)
    np.testing.assert_allclose(scan[1], unrolled[1], atol=1e-5)


def test_scan_setting_and_the_stored_config(tiny_model_dirs, tmp_path):
    config = models.load_config(tiny_model_dirs["qwen2"])
    assert with_layer_scan(config, "auto", "tpu").scan_layers and not with_layer_scan(config, "auto", "cpu").scan_layers
    assert with_layer_scan(config, True, "cpu").scan_layers and not with_layer_scan(config, False, "tpu").scan_layers
    assert "scan_layers" not in scanned(config).to_dict()  # an execution choice: checkpoints do not record it
    assert models.ModelConfig.from_dict(json.loads(json.dumps(scanned(config).to_dict()))) == config
    assert load_settings(None, ["model.scan_layers=true"]).model.scan_layers is True
    with pytest.raises(SettingsError, match="scan_layers"):
        load_settings(None, ["model.scan_layers=sometimes"])


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [es_overrides, grpo_overrides], ids=["es", "grpo"])
def test_scanned_training_matches_unrolled(qwen2_dir, tmp_path, overrides):
    """The same run with the layers scanned: ES bitwise (the tokens match, the update is the same program),
    GRPO to float tolerance (the gradient flows through the stacked view)."""
    args = overrides(qwen2_dir, iterations=3)
    runs = {scan: models.load_model(train(load_settings(None, args + [f"model.scan_layers={scan}"]),
                                          tmp_path / str(scan), progress=False)["final_model"]).params
            for scan in ("true", "false")}
    if overrides is es_overrides:
        chex.assert_trees_all_equal(runs["true"], runs["false"])
    else:
        chex.assert_trees_all_close(runs["true"], runs["false"], atol=1e-5)

"""Seed-replayed ES noise: determinism, independence, distribution, antithetic pairs, low rank, freezing."""

import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es import ESConfig, leaf_paths, lowrank_factors, lowrank_perturb, member_noise, perturb, trainable_mask
from esjax.es.noise import leaf_ids, leaf_scales

KEY = jax.random.key(0)


def make_params(dtype=jnp.float32):
    """A small decoder-like tree: two same-shaped matrices, a bias, a 3-D leaf and an embedding."""
    k = jax.random.split(jax.random.key(1), 4)
    return {
        "embed_tokens": {"embedding": jax.random.normal(k[0], (32, 16), dtype)},
        "layers_0": {
            "self_attn": {"q_proj": {"kernel": jax.random.normal(k[1], (16, 16), dtype), "bias": jnp.zeros(16, dtype)},
                          "k_proj": {"kernel": jax.random.normal(k[2], (16, 16), dtype)}},
            "conv": jax.random.normal(k[3], (2, 3, 4), dtype),
        },
    }


def corr(x, y):
    return float(np.corrcoef(np.ravel(x), np.ravel(y))[0, 1])


def test_leaf_paths():
    assert leaf_paths(make_params()) == [
        "embed_tokens/embedding", "layers_0/conv", "layers_0/self_attn/k_proj/kernel",
        "layers_0/self_attn/q_proj/bias", "layers_0/self_attn/q_proj/kernel"]
    assert leaf_paths({"a": [jnp.zeros(1), {"b": jnp.zeros(1)}]}) == ["a/0", "a/1/b"]


def test_leaf_id_collision_raises():
    a, b = "layers_680608/w", "layers_4060004/w"  # collide in the low 31 bits of crc32 (found by search)
    assert zlib.crc32(a.encode()) & 0x7FFFFFFF == zlib.crc32(b.encode()) & 0x7FFFFFFF
    assert len(set(leaf_ids(["layers_0/w", "layers_1/w", a]))) == 3
    with pytest.raises(ValueError, match="same noise id"):
        member_noise(ESConfig(), {"layers_680608": {"w": jnp.zeros(2)}, "layers_4060004": {"w": jnp.zeros(2)}},
                     KEY, 0, 0)


@pytest.mark.parametrize("noise", ["full", "lowrank"])
def test_noise_is_a_pure_function_of_key_iteration_member_and_path(noise):
    config, params = ESConfig(noise=noise, rank=2), make_params()
    def leaf(key, it, m, p=params):
        return member_noise(config, p, key, it, m)["layers_0"]["self_attn"]["q_proj"]["kernel"]
    ref = leaf(KEY, 3, 5)
    np.testing.assert_array_equal(ref, leaf(KEY, 3, 5))  # bitwise replay
    for other in (leaf(jax.random.key(1), 3, 5), leaf(KEY, 4, 5), leaf(KEY, 3, 6)):
        assert abs(corr(ref, other)) < 0.5
    # A leaf's noise depends on its own path only, not on the rest of the tree.
    pruned = {"layers_0": {"self_attn": {"q_proj": params["layers_0"]["self_attn"]["q_proj"]}}}
    np.testing.assert_array_equal(ref, leaf(KEY, 3, 5, pruned))


@pytest.mark.parametrize("noise", ["full", "lowrank"])
def test_antithetic_pairs_are_exact_negatives(noise):
    config, params = ESConfig(population_size=4, antithetic=True, noise=noise), make_params()
    eps = [member_noise(config, params, KEY, 7, m) for m in range(4)]
    for k in range(2):
        chex.assert_trees_all_equal(eps[2 * k], jax.tree.map(jnp.negative, eps[2 * k + 1]))
    jax.tree.map(lambda a, b: np.testing.assert_array_less(abs(corr(a, b)), 0.5), eps[0], eps[2])
    # Without antithetic sampling, neighbours are independent draws.
    plain = [member_noise(ESConfig(noise=noise), params, KEY, 7, m) for m in range(2)]
    assert abs(corr(plain[0]["embed_tokens"]["embedding"], plain[1]["embed_tokens"]["embedding"])) < 0.5


def test_noise_is_iid_standard_normal_across_leaves_and_members():
    """Same-shaped leaves (the reference repos' shared-seed bug) and members are uncorrelated; eps ~ N(0, 1).

    For n iid N(0, 1) pairs the sample correlation has std 1/sqrt(n) and the sample mean 1/sqrt(n); the sample
    variance has std sqrt(2/n). A bound of 5 standard deviations fails by chance with probability < 1e-6.
    """
    shape = (100, 100)
    n = np.prod(shape)
    params = {"q": jnp.zeros(shape), "k": jnp.zeros(shape)}
    eps = [member_noise(ESConfig(), params, KEY, 0, m) for m in range(3)]
    draws = [e[name] for e in eps for name in ("q", "k")]
    for i in range(len(draws)):
        for j in range(i):
            assert abs(corr(draws[i], draws[j])) < 5 / np.sqrt(n), (i, j)
    x = np.concatenate([np.ravel(d) for d in draws])
    assert abs(x.mean()) < 5 / np.sqrt(x.size)
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / x.size)
    assert all(d.dtype == jnp.float32 for d in draws)


@pytest.mark.parametrize("noise, fn", [("full", member_noise), ("lowrank", lowrank_factors)])
def test_traced_member_and_iteration_give_the_same_noise(noise, fn):
    """Members as a traced vector under jit + vmap (as inside shard_map) replay the eager Python-int noise."""
    config = ESConfig(population_size=4, noise=noise, antithetic=True)
    params = {"w": jnp.zeros((16, 8)), "b": jnp.zeros(8)}
    batched = jax.jit(jax.vmap(lambda m, it: fn(config, params, KEY, it, m), in_axes=(0, None)))(
        jnp.arange(4, dtype=jnp.int32), jnp.int32(2))
    for m in range(4):
        jax.tree.map(lambda b, e: np.testing.assert_array_equal(b[m], e), batched, fn(config, params, KEY, 2, m))


def test_frozen_leaves_get_no_noise():
    params = make_params() | {"step": jnp.zeros((), jnp.int32)}
    config = ESConfig(freeze=(r"embed_tokens", r"k_proj/kernel$"))
    mask = trainable_mask(config, params)
    assert not mask["embed_tokens"]["embedding"] and not mask["layers_0"]["self_attn"]["k_proj"]["kernel"]
    assert not mask["step"] and mask["layers_0"]["self_attn"]["q_proj"]["kernel"]  # integer leaves never train
    eps = member_noise(config, params, KEY, 0, 1)
    assert not np.any(eps["embed_tokens"]["embedding"]) and not np.any(eps["layers_0"]["self_attn"]["k_proj"]["kernel"])
    assert np.all(eps["layers_0"]["self_attn"]["q_proj"]["kernel"] != 0)
    assert lowrank_factors(config, params, KEY, 0, 1)["embed_tokens"]["embedding"] is None
    moved = perturb(config, params, KEY, 0, 1)
    assert moved["embed_tokens"]["embedding"] is params["embed_tokens"]["embedding"]


@pytest.mark.parametrize("non_matrix", ["full", "freeze"])
def test_lowrank_factor_structure(non_matrix):
    config, params = ESConfig(noise="lowrank", rank=3, non_matrix=non_matrix), make_params()
    factors = lowrank_factors(config, params, KEY, 0, 0)
    emb = factors["embed_tokens"]["embedding"]
    assert emb["a"].shape == (32, 3) and emb["b"].shape == (16, 3) and emb["a"].dtype == jnp.float32
    bias, conv = factors["layers_0"]["self_attn"]["q_proj"]["bias"], factors["layers_0"]["conv"]
    eps = member_noise(config, params, KEY, 0, 0)
    if non_matrix == "full":
        assert bias.shape == (16,) and conv.shape == (2, 3, 4)
        np.testing.assert_array_equal(eps["layers_0"]["conv"], conv)
    else:
        assert bias is None and conv is None
        assert not np.any(eps["layers_0"]["conv"]) and not np.any(eps["layers_0"]["self_attn"]["q_proj"]["bias"])


def test_lowrank_noise_has_unit_variance_and_rank_r():
    """E = A B^T / sqrt(r) has E[E_jk^2] = 1; its rank is r (almost surely, for r <= min(m, n)).

    The entries of one member share rows of A and B, so the per-member mean of E_jk^2 fluctuates with relative
    variance about 2 (1/m + 1/n) / r (from |a_l|^2 |b_l|^2); for m = n = 128, r = 4 and 64 members the average
    has std ~ sqrt(2 * (2/128) / 4 / 64) ~ 0.011, so 0.06 is > 5 std, while a missing 1/sqrt(r) gives 4.
    """
    r, members = 4, 64
    config, params = ESConfig(noise="lowrank", rank=r), {"w": jnp.zeros((128, 128))}
    eps = jax.vmap(lambda m: member_noise(config, params, KEY, 0, m)["w"])(jnp.arange(members))
    assert abs(float(jnp.mean(eps**2)) - 1) < 0.06
    assert abs(float(jnp.mean(eps))) < 0.05
    small = member_noise(ESConfig(noise="lowrank", rank=3), {"w": jnp.zeros((20, 12))}, KEY, 0, 0)["w"]
    s = np.linalg.svd(np.asarray(small, np.float64), compute_uv=False)
    assert s[2] > 0.1 * s[0] and s[3] < 1e-5 * s[0]  # rank 3 up to float32 rounding


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_perturb_adds_sigma_eps_in_fp32(dtype):
    config, params = ESConfig(sigma=0.1), make_params(dtype)
    moved, eps = perturb(config, params, KEY, 1, 2), member_noise(config, params, KEY, 1, 2)
    expected = jax.tree.map(lambda p, e: (p.astype(jnp.float32) + 0.1 * e).astype(dtype), params, eps)
    chex.assert_trees_all_equal(moved, expected)
    assert all(x.dtype == dtype for x in jax.tree.leaves(moved))


def test_rms_noise_scale_moves_every_leaf_by_the_same_fraction():
    """noise_scale="rms": leaf noise times rms(leaf) / rms(trainable); the total noise norm is that of "uniform"."""
    params = {"big": 3.0 * jnp.ones((40, 10)), "small": 0.01 * jnp.ones(20), "frozen": jnp.full(5, 7.0)}
    config = ESConfig(sigma=0.1, noise_scale="rms", freeze=("frozen",))
    total = np.sqrt((400 * 9.0 + 20 * 1e-4) / 420)
    scales = leaf_scales(config, params)  # tree order: big, frozen, small
    np.testing.assert_allclose([float(s) for s in scales], [3.0 / total, 1.0, 0.01 / total], rtol=1e-6)
    np.testing.assert_allclose(sum(float(s)**2 * x.size for s, x, k in zip(scales, jax.tree.leaves(params), (1, 0, 1))
                                   if k), 420, rtol=1e-6)
    moved, eps = perturb(config, params, KEY, 1, 2), member_noise(config, params, KEY, 1, 2)
    for name in ("big", "small"):  # the same relative move, 0.1 * eps / total, on both scales
        np.testing.assert_allclose((moved[name] - params[name]) / params[name], 0.1 * eps[name] / total, rtol=2e-4,
                                   atol=1e-6)
    np.testing.assert_array_equal(moved["frozen"], params["frozen"])
    assert leaf_scales(ESConfig(), params) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("noise_scale", ["uniform", "rms"])
def test_lowrank_perturb_factors_equal_the_materialised_perturbation(noise_scale):
    config = ESConfig(population_size=2, sigma=0.1, noise="lowrank", rank=2, antithetic=True, noise_scale=noise_scale)
    params = make_params()
    dense, lowrank = lowrank_perturb(config, params, KEY, 0, 1)
    assert lowrank["layers_0"]["conv"] is None
    effective = jax.tree.map(lambda p, f: p if f is None else p + f["a"] @ f["b"].T, dense, lowrank)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), effective,
                 perturb(config, params, KEY, 0, 1))


@pytest.mark.parametrize("shape", [(), (1,), (7,), (33, 17), (2, 3, 5), (264, 96)])
def test_standard_normal_is_jax_random_normal_bit_for_bit(shape):
    """The unrolled Threefry replays jax.random.normal exactly: eagerly, under jit and under vmap over keys."""
    from esjax.es.noise import standard_normal
    keys = jax.random.split(jax.random.fold_in(KEY, len(shape)), 3)
    expected = np.asarray(jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys))
    assert np.array_equal(np.asarray(standard_normal(keys[0], shape)), expected[0])
    assert np.array_equal(np.asarray(jax.jit(jax.vmap(lambda k: standard_normal(k, shape)))(keys)), expected)

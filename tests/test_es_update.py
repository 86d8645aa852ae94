"""The ES update: equality with the explicit sum, the displacement law, frozen leaves, bf16 master weights, optax."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es import ESConfig, apply_update, es_gradient, init_state, member_noise, shape_fitness, update_state

KEY = jax.random.key(0)
N = 6


def make_params(dtype=jnp.float32):
    """A matrix, a non-matrix leaf (full noise or frozen in low-rank mode) and a leaf the tests freeze."""
    k = jax.random.split(jax.random.key(1), 2)
    return {"proj": {"kernel": jax.random.normal(k[0], (12, 8), dtype)},
            "conv": jax.random.normal(k[1], (2, 3, 4), dtype), "norm": {"scale": jnp.ones(8, dtype)}}


def rms_scales(config, params):
    """noise_scale="rms" in float64: rms(leaf) / rms(all trainable leaves), 1 on frozen leaves."""
    frozen = lambda path: config.is_frozen(jax.tree_util.keystr(path, simple=True, separator="/"))  # noqa: E731
    flat = {path: np.asarray(x, np.float64) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    trained = [x for path, x in flat.items() if not frozen(path)]
    total = np.sqrt(sum(np.sum(x**2) for x in trained) / sum(x.size for x in trained))
    return jax.tree.unflatten(jax.tree.structure(params), [
        1.0 if frozen(path) else np.sqrt(np.mean(x**2)) / total for path, x in flat.items()])


def explicit_delta(config, params, iteration, fitness):
    """alpha / N * sum_i w_i eps_i (times each leaf's noise scale) in float64, from materialised per-member noise."""
    weights = np.asarray(shape_fitness(config, fitness)[0], np.float64)
    eps = [member_noise(config, params, KEY, iteration, i) for i in range(config.population_size)]
    scales = (rms_scales(config, params) if config.noise_scale == "rms"
              else jax.tree.map(lambda _: 1.0, params))
    return jax.tree.map(lambda s, *e: s * config.alpha / len(e) * np.einsum("i,i...->...", weights, np.stack(e, 0)),
                        scales, *eps)


def fp32(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def assert_tree_close(actual, expected, **tol):
    chex.assert_trees_all_close(jax.tree.map(lambda a: np.asarray(a, np.float64), actual), expected, **tol)


es_gradient_jit = jax.jit(es_gradient, static_argnums=0)
apply_update_jit = jax.jit(apply_update, static_argnums=0)
update_state_jit = jax.jit(update_state, static_argnums=0)


@pytest.mark.parametrize("noise", ["full", "lowrank"])
@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("dtype, noise_scale", [(jnp.float32, "uniform"), (jnp.bfloat16, "uniform"),
                                                (jnp.float32, "rms")])
def test_update_equals_explicit_sum_of_materialised_noise(noise, antithetic, dtype, noise_scale):
    config = ESConfig(population_size=N, alpha=0.05, noise=noise, rank=2, antithetic=antithetic, freeze=("norm",),
                      noise_scale=noise_scale)
    params, fitness = make_params(dtype), jax.random.uniform(jax.random.key(2), (N,))
    expected = jax.tree.map(lambda p, d: np.float64(fp32(p)) + d, params, explicit_delta(config, params, 3, fitness))
    if dtype == jnp.float32:
        new = apply_update_jit(config, params, KEY, 3, fitness)
    else:  # bf16: the fp32 master weights hold the exact step; params are the master rounded to bf16.
        config = dataclasses.replace(config, master_fp32=True)
        state = init_state(config, params, KEY).replace(iteration=jnp.int32(3))
        state, _ = update_state_jit(config, state, fitness)
        jax.tree.map(lambda p, m: np.testing.assert_array_equal(p, m.astype(dtype)), state.params, state.master)
        new = state.master
    # Steps are ~1e-2 on O(1) weights: the tolerance is about one float32 ulp of the result.
    assert_tree_close(new, expected, rtol=2e-7, atol=2e-7)
    np.testing.assert_array_equal(new["norm"]["scale"], fp32(params)["norm"]["scale"])  # frozen


@pytest.mark.parametrize("antithetic", [False, True])
def test_partial_member_sums_add_up(antithetic):
    """Devices may sum their own members (first_member = device * N_local, traced) and psum: same direction."""
    config, params = ESConfig(population_size=N, antithetic=antithetic), make_params()
    fitness = jax.random.normal(jax.random.key(3), (N,))
    weights = shape_fitness(config, fitness)[0]
    parts = [es_gradient_jit(config, params, KEY, 0, weights[i:i + 2], first_member=jnp.int32(i))
             for i in range(0, N, 2)]
    expected = jax.tree.map(lambda d: d / config.alpha, explicit_delta(config, params, 0, fitness))
    assert_tree_close(jax.tree.map(lambda *x: sum(x), *parts), expected, rtol=1e-5, atol=1e-7)


# Displacement law. For fitness independent of the noise, sum_i z_i eps_i given z is N(0, sum z_i^2 I_d) = N(0, N I_d)
# (z-scores have sum z_i^2 = N), so ||delta||^2 = (alpha / N)^2 * N * chi2_d: mean alpha^2 d / N, relative std
# sqrt(2 / d) per step. Over T iid steps the mean has relative std sqrt(2 / (d T)) = 0.002 for d = 1e4, T = 50:
# the 1% tolerance is 5 std. Shared noise across members would give 0, a wrong 1/N or scale a factor >= 2.
#
# Low rank, E_i = A_i B_i^T / sqrt(r): E<E_i, E_j> = d_leaf delta_ij still gives the same mean. Its variance
# (derivation: expand ||E||^2 = tr(A^T A B^T B) / r in Wishart moments) is, relative to the mean squared,
# Var(||E_i||^2) / d_leaf^2 = 2 (1/m + 1/n) / r + (2r + 2) / (r m n) ~ 0.020 for m = n = 100, r = 2; with two
# independent leaves and sum_i z_i^4 <= N^2 the diagonal terms give a per-step relative variance <= 0.0102, and
# the cross terms sum_{i != j} z_i z_j <E_i, E_j> add <= 2 / d. So the relative std of the mean over T = 50 steps
# is <= sqrt(0.0103 / 50) = 0.0144 (a worst case; sum z^4 ~ 3N makes it ~0.005): 8% is > 5 std.
@pytest.mark.parametrize("noise, shapes, tol", [("full", {"w": (100, 100)}, 0.01),
                                                ("lowrank", {"w": (100, 100), "v": (100, 100)}, 0.08)])
def test_displacement_law(noise, shapes, tol):
    n, steps = 30, 50
    config = ESConfig(population_size=n, noise=noise, rank=2, freeze=("frozen",))
    params = {k: jnp.zeros(s) for k, s in shapes.items()} | {"frozen": jnp.zeros(5000)}
    d = sum(np.prod(s) for s in shapes.values())

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(0, 0))
    def sq_norm(iteration, fitness):
        grad = es_gradient(config, params, KEY, iteration, shape_fitness(config, fitness)[0])
        return sum(jnp.sum((config.alpha * g) ** 2) for g in jax.tree.leaves(grad))

    fitness = jax.random.normal(jax.random.key(4), (steps, n))
    mean = float(jnp.mean(sq_norm(jnp.arange(steps), fitness)))
    expected = config.alpha**2 * d / n
    assert abs(mean / expected - 1) < tol, (mean, expected)


def test_frozen_leaves_never_change():
    config = ESConfig(population_size=N, alpha=0.1, freeze=(r"^norm/",), optimizer="adamw",
                      optimizer_kwargs={"weight_decay": 0.5}, master_fp32=True)
    params = make_params()
    state = init_state(config, params, KEY)
    for t in range(2):
        state, _ = update_state_jit(config, state, jax.random.normal(jax.random.key(t), (N,)))
    np.testing.assert_array_equal(state.params["norm"]["scale"], params["norm"]["scale"])
    assert not np.allclose(state.params["proj"]["kernel"], params["proj"]["kernel"])
    # The optimizer is masked: no moments are kept for the frozen (8,) leaf.
    assert [x.shape for x in jax.tree.leaves(state.opt_state) if x.shape == (8,)] == []


def test_optax_sgd_and_update_state_reproduce_the_plain_update():
    """optax minimises, so sgd(learning_rate=alpha) on the negated ES direction is the plain ES step."""
    plain, sgd = ESConfig(population_size=N), ESConfig(population_size=N, optimizer="sgd")
    expected = make_params()
    s_plain, s_sgd = init_state(plain, expected, KEY), init_state(sgd, expected, KEY)
    for t in range(3):
        fitness = jax.random.normal(jax.random.key(10 + t), (N,))
        expected = apply_update_jit(plain, expected, KEY, t, fitness)
        s_plain, m_plain = update_state_jit(plain, s_plain, fitness)
        s_sgd, m_sgd = update_state_jit(sgd, s_sgd, fitness)
    assert int(s_sgd.iteration) == 3 and s_plain.opt_state is None and s_plain.master is None
    assert not np.allclose(expected["proj"]["kernel"], make_params()["proj"]["kernel"])
    chex.assert_trees_all_equal(s_plain.params, expected)
    assert_tree_close(s_sgd.params, fp32(expected), rtol=0, atol=1e-7)
    np.testing.assert_allclose(m_sgd["update_norm"], m_plain["update_norm"], rtol=1e-6)
    assert set(m_plain) == {"fitness_mean", "fitness_std", "fitness_min", "fitness_max", "nonfinite", "update_norm",
                            "alpha"}


@pytest.mark.parametrize("optimizer", [None, "sgd"])
def test_alpha_schedule_scales_each_step(optimizer):
    """With a cosine schedule, step t is the constant-alpha step with alpha_t = alpha (1 + cos(pi t / T)) / 2: full
    at t = 0, half at T / 2, nothing at T (the same for the optax path, which counts its own steps)."""
    total, alpha = 4, 0.3
    decayed = ESConfig(population_size=N, alpha=alpha, alpha_schedule="cosine", total_steps=total, optimizer=optimizer)
    state = init_state(decayed, make_params(), KEY)
    for t in range(total + 1):
        fitness = jax.random.normal(jax.random.key(20 + t), (N,))
        alpha_t = alpha * (1 + np.cos(np.pi * t / total)) / 2
        before = state.params
        state, metrics = update_state_jit(decayed, state, fitness)
        np.testing.assert_allclose(metrics["alpha"], alpha_t, rtol=1e-6, atol=1e-9)
        if t == total:
            chex.assert_trees_all_equal(state.params, before)
            break
        expected = apply_update_jit(ESConfig(population_size=N, alpha=alpha_t), before, KEY, t, fitness)
        assert_tree_close(state.params, fp32(expected), rtol=0, atol=1e-6)


def test_alpha_schedule_validation():
    with pytest.raises(ValueError, match="alpha_schedule='cosine' needs total_steps"):
        ESConfig(alpha_schedule="cosine")
    with pytest.raises(ValueError, match="alpha_schedule must be one of"):
        ESConfig(alpha_schedule="exponential", total_steps=10)
    assert ESConfig(alpha_schedule="linear", warmup_steps=2, total_steps=10).alpha_at()(1) == pytest.approx(2.5e-4)


def test_bf16_master_weights_keep_updates_that_plain_bf16_rounds_away():
    """The reference repos' bug: 1e-4-sized steps on O(1) bf16 weights (ulp 2^-8) round back to the same value.

    Per element the step is ~ alpha / sqrt(N) = 2e-4, far below half an ulp (2e-3) in [0.5, 1), so plain bf16
    training never moves; fp32 master weights follow the fp32 run and their bf16 view is its nearest rounding.
    """
    config = ESConfig(population_size=8, alpha=5e-4)
    master_config = dataclasses.replace(config, master_fp32=True)
    init = {"w": jax.random.uniform(jax.random.key(5), (64, 64), jnp.float32, 0.5, 1.0).astype(jnp.bfloat16)}
    ref, plain = fp32(init), init
    state = init_state(master_config, init, KEY)
    for t in range(20):
        fitness = jax.random.normal(jax.random.key(100 + t), (8,))
        ref, plain = apply_update_jit(config, ref, KEY, t, fitness), apply_update_jit(config, plain, KEY, t, fitness)
        state, _ = update_state_jit(master_config, state, fitness)
    moved = np.linalg.norm(ref["w"] - fp32(init)["w"])
    assert moved > 1e-3
    assert np.linalg.norm(fp32(plain)["w"] - fp32(init)["w"]) < 0.01 * moved  # lost entirely
    assert np.linalg.norm(state.master["w"] - ref["w"]) < 1e-4 * moved  # kept
    assert state.params["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(state.params["w"], state.master["w"].astype(jnp.bfloat16))


def test_nonfinite_fitness_does_not_poison_the_update():
    config, params = ESConfig(population_size=N), make_params()
    fitness = jnp.array([0.1, jnp.nan, 0.5, jnp.inf, 0.2, 0.3])
    state, metrics = update_state_jit(config, init_state(config, params, KEY), fitness)
    assert int(metrics["nonfinite"]) == 2
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
    assert float(metrics["update_norm"]) > 0

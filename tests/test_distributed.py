"""esjax.distributed in one process: process-group discovery, meshes, partition rules, sharded seed replay, and
tensor parallelism (a "model" mesh axis) giving the results of the unsharded model for forward, ES and GRPO."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from esjax import distributed
from esjax.distributed import ClusterSpec, build_mesh, cluster_from_env, first_slurm_host
from esjax.es import ESConfig
from esjax.es.noise import lowrank_factors, lowrank_perturb, member_noise, perturb, standard_normal
from esjax.es.population import population_mesh
from esjax.es.step import es_init, es_step, make_runner
from esjax import grpo
from esjax.grpo import GRPOConfig, data_mesh, grpo_step
from esjax.models import config_from_hf, forward_jit, init_params, param_shapes
from esjax.models.sharding import (UnmatchedLeafError, leaf_path, param_specs, partition_spec, shard_tree,
                                   tree_shardings)
from esjax.generation.sampling import SamplingConfig, pad_prompts
from esjax.run.plan import MeshPlan, plan_devices
from esjax.run.settings import SettingsError, load_settings

FAST = {"xla_backend_optimization_level": 0}
QWEN2 = config_from_hf(dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=True, eos_token_id=0))
LLAMA = config_from_hf(dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1,
                            tie_word_embeddings=False, eos_token_id=0))
TOKENS, MASK = pad_prompts([[3, 4, 5, 9, 10], [6, 7], [11, 12, 13], [20, 21, 22, 23]], 1, minimum=8)
Q_KERNEL = ("layers_0", "self_attn", "q_proj", "kernel")


def _leaf(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _params(config, seed=0):
    return jax.device_get(jax.jit(init_params, static_argnums=0)(config, jax.random.key(seed)))


# ------------------------------------------------------------------------------------------- process group
def test_cluster_from_env_sources():
    assert cluster_from_env({}) is None
    spec = cluster_from_env({"ESJAX_COORDINATOR": "10.0.0.2:1234", "ESJAX_NUM_PROCESSES": "4", "ESJAX_PROCESS_ID": "3",
                             "ESJAX_LOCAL_DEVICE_IDS": "0,1"})
    assert spec == ClusterSpec("env", "10.0.0.2:1234", 4, 3, (0, 1))
    assert spec.kwargs() == dict(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3,
                                 local_device_ids=[0, 1])
    assert cluster_from_env({"ESJAX_COORDINATOR": "head", "ESJAX_NUM_PROCESSES": "2",
                             "ESJAX_PROCESS_ID": "0"}).coordinator == "head:8476"
    assert cluster_from_env({"ESJAX_COORDINATOR": "h:1", "ESJAX_NUM_PROCESSES": "1", "ESJAX_PROCESS_ID": "0"}) is None
    with pytest.raises(ValueError, match="ESJAX_PROCESS_ID"):
        cluster_from_env({"ESJAX_COORDINATOR": "h:1", "ESJAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match=r"\[0, ESJAX_NUM_PROCESSES=2\)"):
        cluster_from_env({"ESJAX_COORDINATOR": "h:1", "ESJAX_NUM_PROCESSES": "2", "ESJAX_PROCESS_ID": "2"})
    slurm = {"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_JOB_NODELIST": "gpu[003-006,9],cpu1"}
    assert cluster_from_env(slurm) == ClusterSpec("slurm", "gpu003:8476", 4, 2)
    assert cluster_from_env(slurm | {"ESJAX_COORDINATOR_PORT": "2222"}).coordinator == "gpu003:2222"
    assert cluster_from_env(slurm | {"SLURM_NTASKS": "1"}) is None
    assert cluster_from_env(slurm | {"ESJAX_DISTRIBUTED": "off"}) is None
    assert cluster_from_env({"ESJAX_DISTRIBUTED": "tpu"}).kwargs() == {}
    assert cluster_from_env({"TPU_WORKER_HOSTNAMES": "w0,w1"}) == ClusterSpec("tpu")
    for nodes, first in [("node001", "node001"), ("a,b", "a"), ("n[07-09]", "n07"), ("x-[1,3]", "x-1")]:
        assert first_slurm_host(nodes) == first
    info = distributed.initialize({})  # one process: nothing to join
    assert (info.process_id, info.num_processes, info.source) == (0, 1, "single")
    assert distributed.is_main_process()


# -------------------------------------------------------------------------------------------------- meshes
def test_build_mesh_and_the_run_mesh_plan():
    mesh = build_mesh({"population": -1, "model": 2})
    assert dict(mesh.shape) == {"population": 4, "model": 2}
    assert list(mesh.devices.reshape(-1)) == sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    assert dict(build_mesh([("data", 2), ("model", 2)]).shape) == {"data": 2, "model": 2}
    for bad, message in [({"a": -1, "b": -1}, "at most one -1"), ({"a": 3, "b": 3}, "needs 9 devices"),
                         ({"a": -1, "b": 3}, "cannot be split"), ({"a": 0}, "positive")]:
        with pytest.raises(ValueError, match=message):
            build_mesh(bad)
    es = plan_devices(load_settings(None, ["train.devices=4", "es.population_size=8"]))
    assert es == MeshPlan("population", 4, 1) and es.build().axis_names == ("population",)
    grpo = plan_devices(load_settings(None, ["method=grpo", "sampling.temperature=1", "train.model_parallel=4", "train.prompts_per_iteration=2"]))
    assert dict(grpo.build().shape) == {"data": 2, "model": 4}
    too_many = load_settings(None, ["train.devices=3", "train.model_parallel=4", "es.population_size=6"])
    with pytest.raises(SettingsError, match="needs 12 devices"):  # the settings load; the run's plan refuses
        plan_devices(too_many)


def test_partition_rules():
    specs = param_specs(param_shapes(QWEN2), 2, QWEN2)
    want = {"embed_tokens/embedding": P("model", None), "norm/scale": P(),
            "layers_0/self_attn/q_proj/kernel": P(None, "model"), "layers_0/self_attn/q_proj/bias": P("model"),
            "layers_0/self_attn/k_proj/kernel": P(None, "model"), "layers_0/self_attn/o_proj/kernel": P("model", None),
            "layers_0/mlp/gate_proj/kernel": P(None, "model"), "layers_0/mlp/up_proj/kernel": P(None, "model"),
            "layers_0/mlp/down_proj/kernel": P("model", None), "layers_0/input_layernorm/scale": P()}
    flat = {leaf_path(p): s for p, s in
            jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]}
    assert {k: flat[k] for k in want} == want
    # one KV head cannot be split over 2 devices: k/v replicated, q still split by heads; untied head by vocab
    llama = param_specs(param_shapes(LLAMA), 2, LLAMA)
    assert _leaf(llama, ("layers_0", "self_attn", "k_proj", "kernel")) == P()
    assert _leaf(llama, Q_KERNEL) == P(None, "model")
    assert llama["lm_head"]["kernel"] == P(None, "model")
    assert partition_spec("layers_0/mlp/up_proj/kernel", (32, 66), 4) == P()  # 66 columns do not split in 4
    assert partition_spec("opt_state/0/mu/layers_3/mlp/down_proj/kernel", (64, 32), 2) == P("model", None)
    assert partition_spec("layers_0/mlp/down_proj/kernel", (64, 32), 1) == P()
    assert partition_spec("layers_0/mlp/down_proj/bias", (32,), 2) == P()  # an unnamed vector: replicated
    with pytest.raises(UnmatchedLeafError, match="layers_0/mlp/new_proj/kernel"):  # an unnamed matrix: an error
        partition_spec("layers_0/mlp/new_proj/kernel", (64, 32), 2)
    assert partition_spec("layers_0/mlp/new_proj/kernel", (64, 32), 1) == P()  # no model axis: nothing to decide


# -------------------------------------------------------------------------------------- sharded seed replay
@pytest.mark.parametrize("normal", [lambda k: jax.random.normal(k, (64, 48)), lambda k: standard_normal(k, (64, 48))],
                         ids=["jax.random.normal", "es.noise.standard_normal"])
def test_sharded_noise_equals_unsharded_noise(normal):
    assert jax.config.jax_threefry_partitionable
    key = jax.random.key(42)
    whole = np.asarray(jax.random.normal(key, (64, 48), jnp.float32))
    for shape, spec in [((4, 2), P(None, "model")), ((2, 4), P("model", None)), ((1, 8), P(None, "model"))]:
        mesh = build_mesh([("population", shape[0]), ("model", shape[1])])
        noise = jax.jit(normal, out_shardings=NamedSharding(mesh, spec))(key)
        assert noise.sharding.spec == spec and noise.addressable_shards[0].data.shape != (64, 48)
        assert np.array_equal(np.asarray(noise), whole)
    # each device draws only its own block: the partitioned program's random-bit op has the shard's shape
    mesh = build_mesh({"population": 1, "model": 8})
    hlo = jax.jit(normal, out_shardings=NamedSharding(mesh, P(None, "model"))).lower(key).compile().as_text()
    assert "f32[64,6]" in hlo and "f32[64,48]" not in hlo


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["full", "lowrank"])
def test_member_noise_of_model_sharded_params_equals_unsharded(noise):
    """The same jitted seed replay on one device and on params split over a model axis of 4."""
    es = ESConfig(population_size=8, sigma=0.1, noise=noise, rank=2, antithetic=True)
    params = jax.device_put(_params(QWEN2), jax.devices()[0])
    mesh = build_mesh({"population": 2, "model": 4})
    sharded = shard_tree(params, mesh, QWEN2)
    assert _leaf(sharded, Q_KERNEL).sharding.spec == P(None, "model")
    shardings = tree_shardings(mesh, params, QWEN2)
    key = jax.random.key(1)

    def replay(p):  # the drawn noise (eps or low-rank factors), the perturbed params, the materialised noise
        perturbed = perturb(es, p, key, 3, 2) if noise == "full" else lowrank_perturb(es, p, key, 3, 2)
        return lowrank_factors(es, p, key, 3, 5), perturbed, member_noise(es, p, key, 3, 5)

    want = jax.jit(replay)(params)
    got = jax.jit(replay, out_shardings=(shardings, None, shardings) if noise == "full" else None)(sharded)
    if noise == "full":  # generated straight into the leaf's sharding
        assert _leaf(got[0], Q_KERNEL).sharding.spec == P(None, "model")
    # bitwise: the draws, and full rank / low rank's factored form of the perturbed params
    chex.assert_trees_all_equal(want[:2], got[:2])
    # a materialised low-rank a @ b.T is a (split) matmul: equal up to rounding
    chex.assert_trees_all_close(want[2], got[2], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------ tensor parallel
@pytest.mark.parametrize("config, models", [(QWEN2, (2,)), (LLAMA, (2, 4))], ids=["qwen2", "llama"])
def test_model_axis_forward_equals_unsharded(config, models):
    params = jax.device_put(_params(config, seed=1), jax.devices()[0])
    want = np.asarray(forward_jit(config, params, TOKENS, MASK))
    for model in models:
        sharded = shard_tree(params, build_mesh({"population": -1, "model": model}), config)
        got = forward_jit(config, sharded, TOKENS, MASK)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def _row_score(tokens, lengths, finished, slots):
    """A reward that varies with any generated token (a random model is enough)."""
    rewards = ((tokens.astype(np.int64) * np.arange(1, tokens.shape[1] + 1)).sum(1) % 17 / 16.0).astype(np.float32)
    return rewards, rewards > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["full", "lowrank"])
def test_es_step_model_axis_2_equals_model_axis_1(noise):
    es = ESConfig(population_size=4, sigma=0.05, alpha=0.05, noise=noise, rank=2, master_fp32=True)
    sampling = SamplingConfig(max_new_tokens=3, pad_token_id=1)
    params = _params(QWEN2, seed=2)
    results = []
    for mesh in (population_mesh(jax.devices()[:2]), build_mesh({"population": 2, "model": 2})):
        runner = make_runner(es, QWEN2, sampling, mesh, params, TOKENS.shape)
        state = es_init(runner, params, jax.random.key(7))
        state, result = es_step(runner, state, TOKENS, MASK, _row_score)
        assert result.metrics["es/update_norm"] > 0
        results.append((state, result))
    (one, m1), (two, m2) = results
    assert _leaf(two.params, Q_KERNEL).sharding.spec == P(None, "model")
    assert _leaf(two.master, Q_KERNEL).sharding.spec == P(None, "model")
    assert m1.reward_mean == m2.reward_mean  # the same completions
    chex.assert_trees_all_close(one.params, two.params, atol=1e-6)


@pytest.mark.slow
def test_grpo_step_model_axis_2_equals_model_axis_1():
    config = GRPOConfig(num_generations=4, learning_rate=1e-2)
    sampling = SamplingConfig(max_new_tokens=3, temperature=1.0, eos_token_ids=(0,), pad_token_id=1)
    results = []
    for mesh in (data_mesh(jax.devices()[:2]), build_mesh({"data": 2, "model": 2})):
        runner = grpo.make_runner(config, QWEN2, sampling, mesh, compiler_options=FAST)
        state = grpo.grpo_init(runner, jax.tree.map(jnp.asarray, _params(QWEN2, seed=3)), jax.random.key(5))
        state, result = grpo_step(runner, state, TOKENS[:2], MASK[:2], _row_score)
        assert result.metrics["grpo/grad_norm"] > 0
        results.append((state, result))
    (one, m1), (two, m2) = results
    assert _leaf(two.params, Q_KERNEL).sharding.spec == P(None, "model")
    assert _leaf(two.opt_state[1][0].mu, Q_KERNEL).sharding.spec == P(None, "model")
    assert m1.reward_mean == m2.reward_mean  # the same samples
    np.testing.assert_allclose(m1.metrics["grpo/loss"], m2.metrics["grpo/loss"], rtol=1e-5, atol=1e-7)
    # the gradient (Adam's first moment after one step) agrees to float32 reduction-order precision ...
    for a, b in zip(jax.tree.leaves(one.opt_state[1][0].mu), jax.tree.leaves(two.opt_state[1][0].mu)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(a).max())
    # ... and so do the params, within 1% of Adam's first step (lr * g / (|g| + eps) ~ lr * sign(g)), which turns
    # a reordering difference in a near-zero gradient element into a visible one
    chex.assert_trees_all_close(one.params, two.params, atol=1e-2 * config.learning_rate, rtol=1e-4)


# --------------------------------------------------------------------------------------- host <-> devices
def test_row_helpers_one_process():
    mesh = build_mesh({"data": 4, "model": 2})
    rows = NamedSharding(mesh, P("data"))  # split over "data", each row on the 2 devices of its model group
    host = np.arange(24, dtype=np.float32).reshape(8, 3)
    x = distributed.put_global(host, rows)
    ids, (back,) = distributed.addressable_rows(x)
    assert ids.tolist() == list(range(8)) and np.array_equal(back, host)
    assert np.array_equal(distributed.gather_rows(ids[::-1], back[::-1], 8), host)
    assert np.array_equal(np.asarray(distributed.put_global(host, rows)), host)
    key = distributed.put_global(jax.random.key(3), NamedSharding(mesh, P()))
    assert np.array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(3)))
    assert distributed.allgather(np.float64(0.1)).tolist() == [0.1]
    with pytest.raises(ValueError, match="missing"):
        distributed.gather_rows(np.arange(3), np.zeros(3), 4)

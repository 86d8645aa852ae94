"""Compiling a step ahead, in background threads: the same results as the plain calls, no second compile, and a
failed background compile raised at the call that needed it (esjax/common/ahead.py, ESMethod.compile_ahead)."""

import dataclasses
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from esjax.common.ahead import Ahead
from esjax.es import ESConfig
from esjax.es.population import population_mesh
from esjax.es.step import ESMethod
from esjax.generation.sampling import SamplingConfig, pad_prompts
from esjax.methods.protocol import Batch
from esjax.models import config_from_hf, init_params

CONFIG = config_from_hf(dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=True, eos_token_id=0))
PARAMS = init_params(CONFIG, jax.random.key(0))
BATCH = Batch(*(np.asarray(x) for x in pad_prompts([[3, 4, 5, 9, 10], [6, 7], [11, 12, 13]], 1)))


@pytest.fixture
def compiles():
    """The programs XLA compiles while the test runs: (function name, thread name) per backend compile."""
    seen = []

    def listen(event, seconds, **kwargs):
        if event.endswith("backend_compile_duration"):
            seen.append((kwargs.get("fun_name"), threading.current_thread().name))
    monitoring.register_event_duration_secs_listener(listen)
    yield seen
    monitoring.unregister_event_duration_listener(listen)


def test_ahead_call_is_the_plain_call_and_compiles_nothing(compiles):
    fn = jax.jit(lambda x, y: (jnp.sin(x) @ y.T, x.sum() * 3))
    x, y = jnp.arange(12.0).reshape(3, 4), jnp.ones((5, 4))
    ahead = Ahead(fn, x, y, name="toy")
    ahead.wait()
    assert [name for name, thread in compiles if thread == "esjax-compile-toy"] == ["jit(<lambda>)"]
    compiles.clear()
    chex.assert_trees_all_equal(ahead(x, y), fn(x, y))
    assert compiles == []  # the call found the background compile's executable in fn's cache
    assert ahead.lower(x, y).as_text() == fn.lower(x, y).as_text()  # other attributes are fn's


class Refused(ValueError):
    pass


def test_a_failed_background_compile_raises_at_the_call():
    def body(x):
        if x.shape[0] > 2:
            raise Refused(f"{x.shape[0]} rows: too many")
        return x
    ahead = Ahead(jax.jit(body), jnp.zeros(3), name="refused")  # the constructor does not raise
    with pytest.raises(Refused, match="3 rows: too many"):
        ahead(jnp.zeros(3))
    with pytest.raises(Refused, match="3 rows: too many"):  # afterwards: the plain function's behaviour
        ahead(jnp.zeros(3))
    np.testing.assert_array_equal(ahead(jnp.ones(2)), np.ones(2))


@pytest.mark.parametrize("devices, group_baseline, scan", [(1, False, False),
                                                            pytest.param(2, True, False, marks=pytest.mark.slow),
                                                            pytest.param(1, False, True, marks=pytest.mark.slow)])
def test_es_step_compiled_ahead_equals_the_plain_step(compiles, devices, group_baseline, scan):
    """Two ES steps with the rollout and update compiled ahead: bitwise the plain method's states and metrics, and
    no compile on the calling thread during the steps (layers unrolled, or scanned as on TPUs)."""
    es = ESConfig(population_size=4, sigma=0.05, alpha=0.01, antithetic=True, group_baseline=group_baseline)
    sampling = SamplingConfig(max_new_tokens=5, pad_token_id=1)
    mesh = population_mesh(jax.devices()[:devices])
    config = dataclasses.replace(CONFIG, scan_layers=scan)

    def score(tokens, lengths, finished, prompt):
        return ((tokens * (np.arange(tokens.shape[1]) < lengths[:, None])).sum(1) % 7 / 7 + prompt), prompt > 0

    results = []
    for ahead in (False, True):
        method = ESMethod(es, config, sampling, mesh, PARAMS, BATCH.tokens.shape)
        state = method.init(PARAMS, jax.random.key(1))
        if ahead:
            method.compile_ahead(state, BATCH)
            method.runner.rollout.fn.wait()
            method.runner.update.wait()
            compiles.clear()
        steps = []
        for _ in range(2):
            state, result = method.step(state, BATCH, score)
            steps.append({k: v for k, v in result.record().items() if not k.startswith("time/")})
        results.append((jax.device_get(state), steps))
        if ahead:
            assert compiles == []
    chex.assert_trees_all_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_es_step_raises_the_background_compile_error(monkeypatch):
    es = ESConfig(population_size=2, sigma=0.05, alpha=0.01)
    sampling = SamplingConfig(max_new_tokens=3, pad_token_id=1)
    method = ESMethod(es, CONFIG, sampling, population_mesh(jax.devices()[:1]), PARAMS, BATCH.tokens.shape)
    state = method.init(PARAMS, jax.random.key(1))

    class Refusing:  # a jitted function whose compile fails (e.g. libtpu refusing a program too big)
        def __init__(self, fn, name):
            self.fn, self.name = fn, name

        def lower(self, *args):
            raise MemoryError(f"the {self.name} needs 12 GiB of temporaries")

        def __call__(self, *args):
            return self.fn(*args)
    runner = method.runner
    method.runner = runner._replace(rollout=runner.rollout._replace(fn=Refusing(runner.rollout.fn, "rollout")),
                                    update=Refusing(runner.update, "update"))
    method.compile_ahead(state, BATCH)  # starts, does not raise
    with pytest.raises(MemoryError, match="the rollout needs 12 GiB"):
        method.step(state, BATCH, lambda tokens, *_: (np.zeros(len(tokens)), np.zeros(len(tokens), bool)))


@pytest.mark.slow
def test_grpo_step_compiled_ahead_equals_the_plain_step(compiles):
    """GRPO's rollout and training step compiled ahead: bitwise the plain step, nothing compiled by the call."""
    from esjax.grpo import GRPOConfig, GRPOMethod
    config = GRPOConfig(num_generations=2, learning_rate=0.01)
    sampling = SamplingConfig(max_new_tokens=4, temperature=1.0, pad_token_id=1)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))

    def score(tokens, lengths, finished, prompt):
        return (tokens.sum(1) % 5 / 5).astype(np.float32), prompt > 0

    results = []
    for ahead in (False, True):
        method = GRPOMethod(config, CONFIG, sampling, mesh, PARAMS, BATCH.tokens.shape)
        state = method.init(jax.tree.map(jnp.copy, PARAMS), jax.random.key(1))
        if ahead:
            method.compile_ahead(state, BATCH)
            method.runner.rollout_fn.wait()
            next(iter(method.runner.train_fn.programs.values())).wait()
            compiles.clear()
        state, result = method.step(state, BATCH, score)
        results.append((jax.device_get(state), result.record()))
        if ahead:
            assert compiles == []
    chex.assert_trees_all_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]

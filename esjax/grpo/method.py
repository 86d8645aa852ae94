"""GRPO's description for the run layer (:class:`esjax.methods.registry.MethodSpec`), registered as ``"grpo"``."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from esjax.common import memory
from esjax.distributed.mesh import DATA_AXIS
from esjax.grpo.config import GRPOConfig
from esjax.grpo.step import GRPOMethod
from esjax.methods.programs import MethodPrograms, Program, abstract, abstract_key, device_bytes, placed
from esjax.methods.registry import MethodSpec, register
from esjax.models.config import ModelConfig
from esjax.models.sharding import tree_shardings


def _units(grpo: GRPOConfig, prompts: int) -> tuple[int, str]:
    g, m = grpo.num_generations, grpo.grad_accum_steps
    what = f"{prompts * g} rollout rows (train.prompts_per_iteration {prompts} x grpo.num_generations {g})"
    return grpo.units(prompts), what + (f" in {m} micro-batches" if m > 1 else "")


def _grow_units(grpo: GRPOConfig, prompts: int, groups: int) -> str:
    unit = groups * grpo.grad_accum_steps
    fit = next(p for p in itertools.count(prompts) if p * grpo.num_generations % unit == 0)
    return f"train.prompts_per_iteration={fit}"


def _check(grpo: GRPOConfig, settings: Any) -> None:
    if settings.sampling.temperature <= 0:
        raise ValueError(f"sampling.temperature={settings.sampling.temperature} (greedy) does not work with method "
                         f"grpo: the G completions of a prompt would be identical and every advantage 0; set "
                         f"sampling.temperature > 0, e.g. 1.0")
    grpo.check_devices(1, settings.train.prompts_per_iteration * grpo.num_generations)


def plan(grpo: GRPOConfig, model: ModelConfig, dtype_bytes: int, groups: int, mp: int, prompts: int, seq: int,
         at_once: int | None = None, prompt_len: int = 0) -> dict[str, Any]:
    """Rollout rows per device group and :func:`memory.grpo_memory`."""
    rows = prompts * grpo.num_generations
    kv_token = memory.kv_bytes_per_token(model.num_hidden_layers, model.num_key_value_heads, model.head_dim,
                                         dtype_bytes)
    activations = memory.decode_activations(rows // groups, prompt_len, model.hidden_size, model.intermediate_size,
                                            model.num_attention_heads, model.vocab_size, mp, dtype_bytes)
    estimate = memory.grpo_memory(model.num_params(), kv_token, model.num_key_value_heads, mp, rows // groups, seq,
                                  dtype_bytes, activations)
    return {"rollout_rows": rows, "rows_per_device": rows // groups, "memory_per_device_bytes": estimate,
            "program_bytes": {"grpo rollout": estimate["total"], "grpo update": estimate["state"]},
            "resident_bytes": estimate["state"]}


def describe(plan: dict) -> str:
    return (f"work: {plan['rollout_rows']} rollout rows = {plan['rows_per_device']} per device group, "
            f"model axis {plan['model_axis']}")


def programs(grpo: GRPOConfig, model: ModelConfig, sampling: Any, mesh: Any, params: Any, prompts: int,
             prompt_len: int, members: int | None = None) -> MethodPrograms:
    """The rollout and the train step of one iteration (``esjax.grpo.step``'s), for abstract arguments."""
    from esjax.grpo.step import make_runner, train_program
    from esjax.grpo.update import init_state
    rows = prompts * grpo.num_generations
    grpo = grpo.check_devices(mesh.shape[DATA_AXIS], rows)
    runner = make_runner(grpo, model, sampling, mesh)
    state = jax.eval_shape(lambda p: init_state(grpo, p, jax.random.key(0)), params)
    state = placed(state, tree_shardings(mesh, state, model))
    tokens = abstract(mesh, (rows, prompt_len), jnp.int32, P(DATA_AXIS))
    completions = abstract(mesh, (rows, sampling.max_new_tokens), jnp.int32, P(DATA_AXIS))
    rewards = abstract(mesh, (rows,), jnp.float32, P(DATA_AXIS))
    train, key = train_program(grpo, model, sampling, mesh, state), abstract_key(mesh)
    resident = device_bytes(state) - device_bytes(state.params)
    rollout = Program("grpo rollout", lambda: runner.rollout_fn.lower(state.params, tokens, tokens, key), resident)
    update = Program("grpo update", lambda: train.lower(state, tokens, tokens, completions, rewards), 0)
    return MethodPrograms([rollout, update], state.params, resident)


def shrink(grpo: GRPOConfig, prompts: int, groups: int, members: int | None, over: dict[str, float]) -> list[str]:
    """More micro-batches for an update ``over`` the device memory."""
    if "grpo update" not in over:
        return []
    m, rows = grpo.grad_accum_steps, prompts * grpo.num_generations
    return [f"grpo.grad_accum_steps={m * k}" for k in (2, 4, 8, 16, 32, 64)
            if k >= over["grpo update"] and rows % (groups * m * k) == 0][:3]


SPEC = register(MethodSpec(
    name="grpo", config_class=GRPOConfig, axis=DATA_AXIS, schedule_key="lr_schedule",
    steps_per_iteration=lambda grpo: grpo.num_iterations, units=_units, grow_units=_grow_units, check=_check,
    build=GRPOMethod, plan=plan, describe=describe, programs=programs, shrink=shrink))

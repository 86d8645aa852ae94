"""GRPO's description for the run layer (:class:`esjax.methods.registry.MethodSpec`), registered as ``"grpo"``."""

from __future__ import annotations

import itertools
from typing import Any

from esjax.common import memory
from esjax.distributed.mesh import DATA_AXIS
from esjax.grpo.config import GRPOConfig
from esjax.grpo.step import GRPOMethod
from esjax.methods.registry import MethodSpec, register
from esjax.models.config import ModelConfig


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
         at_once: int | None = None) -> dict[str, Any]:
    """Rollout rows per device group and :func:`memory.grpo_memory`."""
    rows = prompts * grpo.num_generations
    kv_token = memory.kv_bytes_per_token(model.num_hidden_layers, model.num_key_value_heads, model.head_dim,
                                         dtype_bytes)
    estimate = memory.grpo_memory(model.num_params(), kv_token, model.num_key_value_heads, mp, rows // groups, seq,
                                  dtype_bytes)
    return {"rollout_rows": rows, "rows_per_device": rows // groups, "memory_per_device_bytes": estimate}


def describe(plan: dict) -> str:
    return (f"work: {plan['rollout_rows']} rollout rows = {plan['rows_per_device']} per device group, "
            f"model axis {plan['model_axis']}")


SPEC = register(MethodSpec(
    name="grpo", config_class=GRPOConfig, axis=DATA_AXIS, schedule_key="lr_schedule",
    steps_per_iteration=lambda grpo: grpo.num_iterations, units=_units, grow_units=_grow_units, check=_check,
    build=GRPOMethod, plan=plan, describe=describe))

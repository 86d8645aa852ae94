"""ES's description for the run layer (:class:`esjax.methods.registry.MethodSpec`), registered as ``"es"``."""

from __future__ import annotations

from typing import Any

from esjax.common import memory
from esjax.distributed.mesh import POPULATION_AXIS
from esjax.es.config import ESConfig
from esjax.es.population import members_at_once
from esjax.es.step import ESMethod
from esjax.methods.registry import MethodSpec, register
from esjax.models.config import ModelConfig


def _units(es: ESConfig, prompts: int) -> tuple[int, str]:
    n = es.population_size
    return es.units(), f"population {n} = {n // 2} antithetic pairs" if es.antithetic else f"population {n}"


def _grow_units(es: ESConfig, prompts: int, groups: int) -> str:
    step = groups * (2 if es.antithetic else 1)
    return f"es.population_size={-(-es.population_size // step) * step}"


def _check(es: ESConfig, settings: Any) -> None:
    prompts = settings.train.prompts_per_iteration
    if es.prompt_chunk and prompts % es.prompt_chunk:
        raise ValueError(f"es.prompt_chunk={es.prompt_chunk} must divide train.prompts_per_iteration={prompts}")


def plan(es: ESConfig, model: ModelConfig, dtype_bytes: int, groups: int, mp: int, prompts: int, seq: int,
         at_once: int | None) -> dict[str, Any]:
    """Members per device group, how many decode at once over how many prompts, and :func:`memory.es_memory`."""
    local = es.population_size // groups
    at_once = local if es.noise == "lowrank" else (at_once or 1)
    rows = min(prompts, es.prompt_chunk or prompts)
    kv_token = memory.kv_bytes_per_token(model.num_hidden_layers, model.num_key_value_heads, model.head_dim,
                                         dtype_bytes)
    largest_leaf = max(model.vocab_size * model.hidden_size, model.hidden_size * model.intermediate_size)
    estimate = memory.es_memory(model.num_params(), largest_leaf, kv_token, model.num_key_value_heads, mp, at_once,
                                rows, seq, es.noise, dtype_bytes, es.master_fp32)
    return {"population": es.population_size, "members_per_device": local, "members_at_once": at_once,
            "prompts_per_decode": rows, "noise": es.noise, "memory_per_device_bytes": estimate}


def describe(plan: dict) -> str:
    return (f"work: population {plan['population']} = {plan['members_per_device']} members per device group, "
            f"{plan['members_at_once']} decoded at once over {plan['prompts_per_decode']} prompts "
            f"({plan['noise']} rank), model axis {plan['model_axis']}")


SPEC = register(MethodSpec(
    name="es", config_class=ESConfig, axis=POPULATION_AXIS, schedule_key="alpha_schedule",
    steps_per_iteration=lambda es: 1, units=_units, grow_units=_grow_units, check=_check, build=ESMethod,
    plan=plan, describe=describe,
    decode_rows=lambda es, model, new_tokens, mesh, params, shape: members_at_once(es, model, new_tokens, mesh,
                                                                                   params, shape)))

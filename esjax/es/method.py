"""ES's description for the run layer (:class:`esjax.methods.registry.MethodSpec`), registered as ``"es"``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from esjax.common import memory
from esjax.distributed.mesh import POPULATION_AXIS
from esjax.es.config import ESConfig
from esjax.es.population import members_at_once
from esjax.es.step import ESMethod
from esjax.methods.programs import MethodPrograms, Program, abstract, abstract_key, device_bytes, placed
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
         at_once: int | None, prompt_len: int = 0) -> dict[str, Any]:
    """Members per device group, how many decode at once over how many prompts, and :func:`memory.es_memory`."""
    local = es.population_size // groups
    at_once = local if es.noise == "lowrank" else (at_once or 1)
    rows = min(prompts, es.prompt_chunk or prompts)
    kv_token = memory.kv_bytes_per_token(model.num_hidden_layers, model.num_key_value_heads, model.head_dim,
                                         dtype_bytes)
    # the update draws a leaf name's noise for all layers at once (es.update.es_gradient)
    largest_leaf = max(model.vocab_size * model.hidden_size,
                       model.num_hidden_layers * model.hidden_size * model.intermediate_size)
    activations = memory.decode_activations(at_once * rows, prompt_len, model.hidden_size, model.intermediate_size,
                                            model.num_attention_heads, model.vocab_size, mp, dtype_bytes)
    estimate = memory.es_memory(model.num_params(), largest_leaf, kv_token, model.num_key_value_heads, mp, at_once,
                                rows, seq, es.noise, dtype_bytes, es.master_fp32, activations)
    per_program = memory.es_programs(estimate)
    return {"population": es.population_size, "members_per_device": local, "members_at_once": at_once,
            "prompts_per_decode": rows, "noise": es.noise, "memory_per_device_bytes": estimate,
            "program_bytes": {"es rollout": per_program["rollout"], "es update": per_program["update"]},
            "resident_bytes": estimate["weights"] + estimate["master_fp32"]}


def describe(plan: dict) -> str:
    return (f"work: population {plan['population']} = {plan['members_per_device']} members per device group, "
            f"{plan['members_at_once']} decoded at once over {plan['prompts_per_decode']} prompts "
            f"({plan['noise']} rank), model axis {plan['model_axis']}")


# Share of a device's memory the members decoded at once may fill when planning for a deviceless target.
MEMBER_SHARE = 0.8


def programs(es: ESConfig, model: ModelConfig, sampling: Any, mesh: Any, params: Any, prompts: int, prompt_len: int,
             members: int | None) -> MethodPrograms:
    """The rollout and the update of one iteration (``esjax.es.step.make_runner``'s), for abstract arguments."""
    from esjax.es.step import make_runner
    from esjax.es.update import init_state
    es = dataclasses.replace(es, population_chunk=members or "auto")
    runner = make_runner(es, model, sampling, mesh, params, (prompts, prompt_len))
    state = placed(jax.eval_shape(lambda p: init_state(es, p, jax.random.key(0)), params), runner.state_sharding)
    key, it = abstract_key(mesh), abstract(mesh, (), jnp.int32)
    tokens = abstract(mesh, (prompts, prompt_len), jnp.int32)
    fitness = abstract(mesh, (es.population_size, prompts) if es.group_baseline else (es.population_size,),
                       jnp.float32)
    resident = device_bytes(state) - device_bytes(state.params)
    rollout = Program("es rollout", lambda: runner.rollout.fn.lower(state.params, key, it, tokens, tokens, key),
                      resident)
    return MethodPrograms([rollout, Program("es update", lambda: runner.update.lower(state, fitness), 0)],
                          state.params, resident)


def decode_within(es: ESConfig, model: ModelConfig, dtype: Any, mesh: Any, prompts: int, prompt_len: int,
                  new_tokens: int, memory_bytes: int) -> int | None:
    """Members one device of ``memory_bytes`` decodes at once: the largest divisor of its members whose copies and
    KV cache fill at most :data:`MEMBER_SHARE` of it (the compile then checks it); None where the run does not
    choose (low rank decodes every member at once; an explicit ``population_chunk``)."""
    if es.noise == "lowrank" or es.population_chunk != "auto":
        return None
    groups = mesh.shape[POPULATION_AXIS]
    local, size = es.population_size // groups, jnp.dtype(dtype).itemsize
    weights = model.num_params() * size // max(1, mesh.size // groups)
    rows = min(prompts, es.prompt_chunk or prompts)
    kv = rows * (prompt_len + new_tokens) * memory.kv_bytes_per_token(
        model.num_hidden_layers, model.num_key_value_heads, model.head_dim, size)
    fits = int(MEMBER_SHARE * memory_bytes) // max(1, weights + kv)
    return next((c for c in range(local, 0, -1) if local % c == 0 and c <= fits), 1)


def shrink(es: ESConfig, prompts: int, groups: int, members: int | None, over: dict[str, float]) -> list[str]:
    """Fewer members decoded at once (full rank), then fewer prompts per decode, for a rollout ``over`` too big."""
    if "es rollout" not in over:
        return []
    need, members, local = over["es rollout"], members or 1, es.population_size // groups
    out = [f"es.population_chunk={c}" for c in range(members - 1, 0, -1)
           if es.noise == "full" and local % c == 0 and members / c >= need]
    current = es.prompt_chunk or prompts
    return out + [f"es.prompt_chunk={c}" for c in range(current - 1, 0, -1)
                  if prompts % c == 0 and current / c >= need][:4]


SPEC = register(MethodSpec(
    name="es", config_class=ESConfig, axis=POPULATION_AXIS, schedule_key="alpha_schedule",
    steps_per_iteration=lambda es: 1, units=_units, grow_units=_grow_units, check=_check, build=ESMethod,
    plan=plan, describe=describe, programs=programs, decode_within=decode_within, shrink=shrink,
    decode_rows=lambda es, model, new_tokens, mesh, params, shape: members_at_once(es, model, new_tokens, mesh,
                                                                                   params, shape)))

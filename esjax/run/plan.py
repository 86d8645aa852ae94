"""The start-of-run report: the devices, the mesh, the work and the memory of each device.

Printed when a run starts and written to ``run_plan.json`` in the run directory. The memory estimate per device
uses :mod:`esjax.run.memory` (the formulas of docs/scaling.md): the params, the fp32 master or the GRPO optimizer
state, the perturbed member copies and the KV cache of one decode.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from esjax import distributed
from esjax.run import memory
from esjax.models.config import ModelConfig

GiB = 1 << 30


def device_summary() -> dict[str, Any]:
    """Kind, platform and counts of the visible devices, and this process's first device's memory where JAX reports
    it (only addressable devices report memory: with several processes ``jax.devices()[0]`` may be another's)."""
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() or {}
    return {"kind": dev.device_kind, "platform": dev.platform, "count": jax.device_count(),
            "local_count": jax.local_device_count(), "processes": jax.process_count(),
            "memory_bytes": stats.get("bytes_limit")}


def plan_report(method: str, method_config: Any, model: ModelConfig, param_dtype: Any, mesh: Mesh,
                prompts: int, prompt_len: int, max_new_tokens: int, members_at_once: int | None = None) -> dict:
    """What each device of ``mesh`` does in one iteration and how much memory it needs (bytes).

    ES: ``method_config`` is an ESConfig; members are split over the population axis, ``members_at_once`` decode
    together (full rank; low rank decodes all of a device's members at once) over ``es.prompt_chunk`` prompts.
    GRPO: a GRPOConfig; the prompts x num_generations rows are split over the data axis.
    """
    axis = distributed.POPULATION_AXIS if method == "es" else distributed.DATA_AXIS
    groups, mp = int(mesh.shape[axis]), distributed.axis_size(mesh, distributed.MODEL_AXIS)
    dtype_bytes = jnp.dtype(param_dtype).itemsize
    d = model.num_params()
    kv_token = memory.kv_bytes_per_token(model.num_hidden_layers, model.num_key_value_heads, model.head_dim,
                                         dtype_bytes)
    seq = prompt_len + max_new_tokens
    used = groups * mp
    plan: dict[str, Any] = {
        "method": method, "devices": device_summary(), "devices_used": used, "devices_idle": jax.device_count() - used,
        "mesh": {str(k): int(v) for k, v in mesh.shape.items()}, "model_axis": mp, "params": d,
        "param_dtype": str(jnp.dtype(param_dtype)), "prompts_per_iteration": prompts, "prompt_len": prompt_len,
        "max_new_tokens": max_new_tokens}
    if method == "es":
        es = method_config
        local = es.population_size // groups
        at_once = local if es.noise == "lowrank" else (members_at_once or 1)
        rows = min(prompts, es.prompt_chunk or prompts)
        largest_leaf = max(model.vocab_size * model.hidden_size, model.hidden_size * model.intermediate_size)
        estimate = memory.es_memory(d, largest_leaf, kv_token, model.num_key_value_heads, mp, at_once, rows, seq,
                                    es.noise, dtype_bytes, es.master_fp32)
        plan |= {"population": es.population_size, "members_per_device": local, "members_at_once": at_once,
                 "prompts_per_decode": rows, "noise": es.noise}
    else:
        rows = prompts * method_config.num_generations
        estimate = memory.grpo_memory(d, kv_token, model.num_key_value_heads, mp, rows // groups, seq, dtype_bytes)
        plan |= {"rollout_rows": rows, "rows_per_device": rows // groups}
    plan["memory_per_device_bytes"] = {k: int(v) for k, v in estimate.items()}
    return plan


def format_plan(plan: dict) -> str:
    """The report as a few human-readable lines."""
    dev, mesh = plan["devices"], " x ".join(f"{k} {v}" for k, v in plan["mesh"].items())
    lines = [f"devices: {dev['count']} x {dev['kind']} ({dev['platform']}, {dev['processes']} process"
             f"{'es' if dev['processes'] > 1 else ''}); using {plan['devices_used']}"
             + (f", {plan['devices_idle']} idle" if plan["devices_idle"] else "") + f"; mesh {mesh}"]
    if plan["method"] == "es":
        lines.append(f"work: population {plan['population']} = {plan['members_per_device']} members per device "
                     f"group, {plan['members_at_once']} decoded at once over {plan['prompts_per_decode']} prompts "
                     f"({plan['noise']} rank), model axis {plan['model_axis']}")
    else:
        lines.append(f"work: {plan['rollout_rows']} rollout rows = {plan['rows_per_device']} per device group, "
                     f"model axis {plan['model_axis']}")
    mem = plan["memory_per_device_bytes"]
    parts = ", ".join(f"{k} {_size(v)}" for k, v in mem.items() if k != "total" and v)
    have = dev["memory_bytes"]
    fit = f" of {_size(have)} on the device" if have else ""
    lines.append(f"memory per device (estimate): {_size(mem['total'])}{fit} ({parts})")
    return "\n".join(lines)


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / (1 << 20):.1f} MiB"

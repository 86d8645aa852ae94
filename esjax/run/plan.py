"""The device plan and the start-of-run report: the devices, the mesh, the work and the memory of each device.

:func:`plan_devices` makes the mesh plan when a run starts, from the settings after overrides (a resumed run may
move to another device count). :func:`plan_report` is printed when a run starts and written to ``run_plan.json``
in the run directory; its memory estimate per device is the method's (its :class:`~esjax.methods.registry.
MethodSpec` ``plan``, with the formulas of :mod:`esjax.common.memory` and docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from esjax import distributed
from esjax.methods import registry
from esjax.models.config import ModelConfig
from esjax.run.settings import RunSettings, SettingsError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class MeshPlan:
    """The run's devices: ``devices`` on the method's axis (ES: members, GRPO: rollout rows) x ``model_parallel``
    on the ``"model"`` axis (tensor parallel; the axis is left out when 1)."""

    axis: str  # the method's axis (MethodSpec.axis): distributed.POPULATION_AXIS (ES), DATA_AXIS (GRPO)
    devices: int
    model_parallel: int = 1

    def build(self, devices: Any = None) -> jax.sharding.Mesh:
        """The mesh over ``devices`` (default: every device; ``esjax plan`` passes a TPU topology's)."""
        model = [(distributed.MODEL_AXIS, self.model_parallel)] if self.model_parallel > 1 else []
        return distributed.build_mesh([(self.axis, self.devices), *model], devices)


def plan_devices(settings: RunSettings, device_count: int | None = None) -> MeshPlan:
    """Devices on the method's axis: ``train.devices``, or by default every one of the ``device_count /
    train.model_parallel`` model groups (``device_count``: the visible devices). Either must split the method's
    units (ES: members or antithetic pairs; GRPO: micro-batch rows) evenly; a default that would leave devices
    idle is refused with the settings that fix it (a ``train.devices`` that divides them, or more units)."""
    spec, train = registry.get(settings.method), settings.train
    count = jax.device_count() if device_count is None else device_count
    units, what = spec.units(settings.method_config, train.prompts_per_iteration)
    groups, mp = max(1, count // train.model_parallel), train.model_parallel
    if train.devices is not None:
        if train.devices * mp > count:
            raise SettingsError(f"train.devices={train.devices} x train.model_parallel={mp} needs "
                                f"{train.devices * mp} devices but only {count} are visible")
        if units % train.devices:
            fits = max(d for d in range(1, min(groups, units) + 1) if units % d == 0)
            raise SettingsError(f"{what} cannot be split evenly over train.devices={train.devices}: set "
                                f"train.devices={fits} or {spec.grow_units(settings.method_config, train.prompts_per_iteration, train.devices)}")
        return MeshPlan(spec.axis, train.devices, mp)
    best = max(d for d in range(1, groups + 1) if units % d == 0)
    if best * mp < count:
        accept = f"set train.devices={best} (uses {best * mp} of {count})"
        if best == groups:  # the model axis does not divide the devices
            raise SettingsError(f"train.model_parallel={mp} leaves {count - groups * mp} of {count} devices idle: "
                                f"{accept}, or a train.model_parallel that divides {count}")
        over = f"{groups} devices" if mp == 1 else f"{groups} model groups of {mp} devices"
        grow = spec.grow_units(settings.method_config, train.prompts_per_iteration, groups)
        raise SettingsError(f"{what} cannot be split evenly over {over}: {accept} or {grow}")
    return MeshPlan(spec.axis, best, mp)


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

    ``method`` names a registered method and ``method_config`` is its config; its description's ``plan`` adds the
    work per device and the memory terms. ES: members are split over the population axis, ``members_at_once``
    decode together (full rank; low rank decodes all of a device's members at once) over ``es.prompt_chunk``
    prompts. GRPO: the prompts x num_generations rows are split over the data axis.
    """
    spec = registry.get(method)
    groups, mp = int(mesh.shape[spec.axis]), distributed.axis_size(mesh, distributed.MODEL_AXIS)
    used = groups * mp
    plan: dict[str, Any] = {
        "method": method, "devices": device_summary(), "devices_used": used, "devices_idle": jax.device_count() - used,
        "mesh": {str(k): int(v) for k, v in mesh.shape.items()}, "model_axis": mp, "params": model.num_params(),
        "param_dtype": str(jnp.dtype(param_dtype)), "prompts_per_iteration": prompts, "prompt_len": prompt_len,
        "max_new_tokens": max_new_tokens}
    plan |= spec.plan(method_config, model, jnp.dtype(param_dtype).itemsize, groups, mp, prompts,
                      prompt_len + max_new_tokens, members_at_once, prompt_len)
    plan["memory_per_device_bytes"] = {k: int(v) for k, v in plan["memory_per_device_bytes"].items()}
    return plan


def format_plan(plan: dict) -> str:
    """The report as a few human-readable lines."""
    dev, mesh = plan["devices"], " x ".join(f"{k} {v}" for k, v in plan["mesh"].items())
    lines = [f"devices: {dev['count']} x {dev['kind']} ({dev['platform']}, {dev['processes']} process"
             f"{'es' if dev['processes'] > 1 else ''}); using {plan['devices_used']}"
             + (f", {plan['devices_idle']} idle" if plan["devices_idle"] else "") + f"; mesh {mesh}"]
    lines.append(registry.get(plan["method"]).describe(plan))
    mem = plan["memory_per_device_bytes"]
    parts = ", ".join(f"{k} {_size(v)}" for k, v in mem.items() if k != "total" and v)
    have = dev["memory_bytes"]
    fit = f" of {_size(have)} on the device" if have else ""
    lines.append(f"memory per device (estimate): {_size(mem['total'])}{fit} ({parts})")
    return "\n".join(lines)


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / (1 << 20):.1f} MiB"

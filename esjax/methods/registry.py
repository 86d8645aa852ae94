"""One description per training method, registered by name: what the run layer needs to know about a method.

The run layer (settings, device plan, resume, loop) never branches on a method's name: it looks the method up here
and asks its :class:`MethodSpec`. ES's description is :data:`esjax.es.method.SPEC`, GRPO's
:data:`esjax.grpo.method.SPEC`; each module registers its own on import. A third method is one new module that
calls :func:`register` plus its name in :data:`BUILTIN` (or an import of it before the settings are loaded).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from esjax.methods.protocol import Method

# name -> module whose import registers it (imported the first time a name is looked up)
BUILTIN = {"es": "esjax.es.method", "grpo": "esjax.grpo.method"}
_REGISTRY: dict[str, MethodSpec] = {}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A training method as the run layer sees it; ``config`` below is an instance of ``config_class``.

    Attributes:
        name: the ``method:`` setting, the name of its settings section and the prefix of its own metrics.
        config_class: frozen dataclass with ``from_dict``, ``to_dict`` and ``check_devices``; its constructor
            runs every check that needs no devices.
        axis: the mesh axis its parallel unit is split over (:mod:`esjax.distributed.mesh`).
        schedule_key: the config field naming its step-size schedule, or None; a decaying one (not "constant")
            without ``total_steps`` gets the run's optimizer steps as its config's ``total_steps``.
        steps_per_iteration: config -> optimizer steps per training iteration (the schedule's unit).
        units: (config, prompts per iteration) -> (count, description) of what its devices split evenly, e.g.
            ``(15, "population 30 = 15 antithetic pairs")``.
        grow_units: (config, prompts, groups) -> a ``key=value`` setting that makes the units split over
            ``groups`` devices (the second fix an idle-device refusal suggests).
        check: (config, run settings) -> None; the checks that span its section and the others (a ValueError
            names the problem), e.g. GRPO's sampling temperature.
        build: (config, model config, sampling, mesh, params, batch shape) -> :class:`Method`.
        plan: (config, ModelConfig, dtype bytes, groups, model axis, prompts, sequence length, rows at once,
            prompt length) -> its work per device and the memory terms ``{"memory_per_device_bytes": {..., "total"}}``,
            optionally with ``"program_bytes"`` (formula per program name, compared with the compiled programs by
            ``esjax plan``) and ``"resident_bytes"`` (what stays on a device between programs).
        describe: plan dict -> one line of the start-of-run report.
        decode_rows: (config, model config, new tokens, mesh, params, batch shape) -> how many of a device's
            units decode at once (None: all of them), for the plan.
        programs: (config, model config, sampling, mesh, abstract params, prompts, prompt length, units decoded at
            once) -> :class:`esjax.methods.programs.MethodPrograms`, the programs of one iteration built by the
            same builders as its training step, for ``esjax plan`` to compile.
        decode_within: (config, model config, dtype, mesh, prompts, prompt length, new tokens, device bytes) -> units
            a device of that memory decodes at once (a deviceless target), or None to use ``decode_rows``.
        shrink: (config, prompts, device groups, units decoded at once, {program: factor over the device memory})
            -> ``key=value`` changes of its own section that shrink those programs, nearest first.
    """

    name: str
    config_class: type
    axis: str
    schedule_key: str | None
    steps_per_iteration: Callable[[Any], int]
    units: Callable[[Any, int], tuple[int, str]]
    grow_units: Callable[[Any, int, int], str]
    check: Callable[[Any, Any], None]
    build: Callable[..., Method]
    plan: Callable[..., dict]
    describe: Callable[[dict], str]
    decode_rows: Callable[..., int | None] = lambda *_: None
    programs: Callable[..., Any] | None = None
    decode_within: Callable[..., int | None] = lambda *_: None
    shrink: Callable[..., list[str]] = lambda *_: []


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` under ``spec.name`` (a second registration of a name replaces the first)."""
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    """Every method's name: the built-in ones and any registered since."""
    return tuple(dict.fromkeys([*BUILTIN, *_REGISTRY]))


def get(name: str) -> MethodSpec:
    """The description of method ``name``; KeyError naming the known ones if there is none."""
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(names())})")
    return _REGISTRY[name]

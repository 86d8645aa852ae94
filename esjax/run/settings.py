"""Run settings: YAML files loaded into typed, validated dataclasses, with ``--set a.b=value`` overrides.

:func:`load_settings` resolves everything once: the sections become typed dataclasses (each registered method's
config, :mod:`esjax.methods.registry`, with a decaying schedule's ``total_steps`` filled in) and every check that
spans sections runs. Nothing here looks at the devices: the device plan is made when a run starts, from the
settings after overrides (:func:`esjax.run.plan.plan_devices`), so saved settings load on any machine. Unknown keys
and wrong types are errors naming the key and the file. The effective settings are saved in the run directory
(``config.yaml``) so that a run can be resumed or repeated exactly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from esjax.common.files import write_text_atomic
from esjax.methods import registry
from esjax.run.settings_yaml import FieldError, SettingsError, apply_overrides, check_integers, parse_yaml


def _at_least(settings: Any, **minimums: float) -> None:
    """Raise :class:`FieldError` for the first field of ``settings`` below its minimum (None fields pass)."""
    for name, low in minimums.items():
        value = getattr(settings, name)
        if value is not None and not value >= low:
            raise FieldError(name, f"must be >= {low}, got {value!r}")


DType = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    path: str = "embedded"  # an HF directory, an esjax checkpoint, or "embedded" (the packaged tiny model)
    dtype: DType | None = None  # parameter dtype; None keeps the checkpoint's
    compute_dtype: DType | None = None
    # run the layers as one lax.scan (compile once, not per layer): auto = on TPUs (esjax.common.layers)
    scan_layers: Literal["auto", True, False] = "auto"

    def __post_init__(self):
        if not self.path:
            raise FieldError("path", "must name a model")


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    name: str = "countdown_procedural"
    options: dict = dataclasses.field(default_factory=dict)  # passed to esjax.tasks.get(name, **options)
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("train", "test")
    train_limit: int | None = None  # use only the first N training examples
    eval_limit: int | None = 200  # evaluate on the first N examples of each eval split
    iterations: int | None = None  # budget of this stage in a continual sequence (None: train.iterations)
    file: str | None = None  # a Python file registering a user task

    def __post_init__(self):
        if not self.name:
            raise FieldError("name", "must name a task")
        _at_least(self, train_limit=1, eval_limit=1, iterations=1)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0 = greedy (the ES paper); GRPO needs > 0
    top_p: float = 1.0
    top_k: int = 0
    eval_max_new_tokens: int | None = None  # default: max_new_tokens (evaluation is always greedy)

    def __post_init__(self):
        _at_least(self, max_new_tokens=1, temperature=0.0, top_k=0, eval_max_new_tokens=1)
        if not 0 < self.top_p <= 1:
            raise FieldError("top_p", f"must be in (0, 1], got {self.top_p!r}")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    iterations: int = 500
    prompts_per_iteration: int = 200  # prompts every member (ES) / every group (GRPO) sees per iteration
    seed: int = 0
    eval_every: int = 50  # 0: only at the start and the end
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_batch_size: int = 256
    devices: int | None = None  # devices on the population/data axis (None: see MeshPlan)
    model_parallel: int = 1  # devices per tensor-parallel group: the mesh's "model" axis (esjax.distributed)
    compilation_cache: str | None = None  # XLA cache folder, or "off"; None: ESJAX_COMPILATION_CACHE or the default
    compile_ahead: bool = True  # compile a stage's step in background threads, beside its first evaluation

    def __post_init__(self):
        _at_least(self, iterations=1, prompts_per_iteration=1, seed=0, eval_every=0, checkpoint_every=0,
                  keep_checkpoints=1, eval_batch_size=1, devices=1, model_parallel=1)


# A field from_dict does not read: load_settings fills it in (to_dict writes it as the method sections).
DERIVED = {"derived": True}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Every setting of a run. Each registered method's config is an attribute named after it (``settings.es``,
    ``settings.grpo``: the YAML sections of the same names); ``method_config`` is the one that trains."""

    method: str = "es"  # a registered method (esjax.methods.registry): "es" or "grpo"
    model: ModelSettings = ModelSettings()
    task: TaskSettings | None = None  # one task, or
    stages: tuple[TaskSettings, ...] = ()  # a continual sequence of tasks, trained in order
    sampling: SamplingSettings = SamplingSettings()
    train: TrainSettings = TrainSettings()
    configs: dict = dataclasses.field(default_factory=dict, metadata=DERIVED)  # {method name: its config}

    def __getattr__(self, name: str) -> Any:  # settings.es, settings.grpo, ...: the method sections
        configs = self.__dict__.get("configs", {})
        if name in configs:
            return configs[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def task_stages(self) -> tuple[TaskSettings, ...]:
        return self.stages or (self.task or TaskSettings(),)

    @property
    def method_config(self) -> Any:
        return self.configs[self.method]


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("derived")]


def _check(value: Any, hint: Any, key: str, where: str) -> Any:
    """Coerce ``value`` to the type ``hint`` (dataclasses recursively) or raise naming ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return from_dict(hint, value, where, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(value, option, key, where)
            except SettingsError as e:
                errors.append(str(e))
        raise SettingsError(errors[0] if len(errors) == 1 else f"{where}: '{key}' has the wrong type: {value!r}")
    if origin is Literal:
        if value not in args:
            raise SettingsError(f"{where}: '{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: '{key}' must be a list, got {value!r}")
        return tuple(_check(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return value
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise SettingsError(f"{where}: '{key}' must be {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "<settings>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in _fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise SettingsError(f"{where}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})")
    values = {k: _check(v, hints[k], prefix + k, where) for k, v in data.items()}
    try:
        return cls(**values)
    except FieldError as e:
        raise SettingsError(f"{where}: '{prefix}{e.field}' {e.problem}") from None


def to_dict(settings: Any) -> Any:
    """Plain data (the YAML of ``config.yaml``): dataclasses as dicts, a method's config as its own ``to_dict``."""
    if isinstance(settings, RunSettings):
        sections = {f.name: to_dict(getattr(settings, f.name)) for f in _fields(RunSettings)}
        return sections | {name: config.to_dict() for name, config in settings.configs.items()}
    if dataclasses.is_dataclass(settings):
        return {f.name: to_dict(getattr(settings, f.name)) for f in _fields(type(settings))}
    if isinstance(settings, (list, tuple)):
        return [to_dict(v) for v in settings]
    return settings


def load_settings(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunSettings:
    """Read a YAML run config (None: defaults), apply ``--set`` overrides, validate (without looking at the
    devices: :func:`esjax.run.plan.plan_devices` plans them for a run)."""
    where = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SettingsError(f"{path}: config file not found" if not path.exists() else f"{path}: not a file")
        try:
            data = parse_yaml(path.read_text(), str(path)) or {}
        except UnicodeDecodeError:
            raise SettingsError(f"{path}: not a text (UTF-8) file") from None
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides)
    check_integers(data, where)
    names = registry.names()
    settings = from_dict(RunSettings, {k: v for k, v in data.items() if k not in names}, where)
    if settings.method not in names:
        raise SettingsError(f"{where}: 'method' must be one of {', '.join(map(repr, names))}, got "
                            f"{settings.method!r}")
    configs = {name: _method_config(registry.get(name), data.get(name), settings.train.iterations, where)
               for name in names}
    return _check_sections(dataclasses.replace(settings, configs=configs), where)


def _method_config(spec: registry.MethodSpec, section: Any, iterations: int, where: str) -> Any:
    """A method's config from its section; a decaying schedule without ``total_steps`` ends with the run's last
    optimizer step (``iterations`` x the method's steps per iteration)."""
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise SettingsError(f"{where}: '{spec.name}' must be a mapping, got {section!r}")
    try:
        if spec.schedule_key and section.get(spec.schedule_key, "constant") != "constant" \
                and section.get("total_steps") is None:
            steps = spec.steps_per_iteration(spec.config_class.from_dict({**section, spec.schedule_key: "constant"}))
            section = {**section, "total_steps": iterations * steps}
        return spec.config_class.from_dict(section)
    except (TypeError, ValueError) as e:  # their from_dict checks the keys, the constructor the values
        raise SettingsError(f"{where}: {spec.name}: {e}") from None


def _check_sections(settings: RunSettings, where: str) -> RunSettings:
    """The checks that span sections (none needs the devices); returns ``settings``."""
    if settings.task is not None and settings.stages:
        raise SettingsError(f"{where}: give either 'task' or 'stages', not both")
    try:
        registry.get(settings.method).check(settings.method_config, settings)
    except ValueError as e:
        raise SettingsError(f"{where}: {e}") from None
    return settings


def save_settings(settings: RunSettings, path: str | Path) -> None:
    write_text_atomic(Path(path), yaml.safe_dump(to_dict(settings), sort_keys=False))

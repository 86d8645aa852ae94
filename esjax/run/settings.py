"""Run settings: YAML files loaded into typed, validated dataclasses, with ``--set a.b=value`` overrides.

:func:`load_settings` resolves everything once, before a run starts: the sections become typed dataclasses (the
method's own :class:`~esjax.es.ESConfig` / :class:`~esjax.grpo.GRPOConfig`, with a decaying schedule's
``total_steps`` filled in), every cross-section check runs (:func:`resolve`), and the devices are planned
(:class:`MeshPlan`). Unknown keys and wrong types are errors naming the key and the file. The effective settings
are saved in the run directory (``config.yaml``) so that a run can be resumed or repeated exactly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import jax
import yaml

from esjax import distributed
from esjax.common.files import write_text_atomic
from esjax.es.config import ESConfig
from esjax.grpo.config import GRPOConfig
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

    def __post_init__(self):
        _at_least(self, iterations=1, prompts_per_iteration=1, seed=0, eval_every=0, checkpoint_every=0,
                  keep_checkpoints=1, eval_batch_size=1, devices=1, model_parallel=1)


@dataclasses.dataclass(frozen=True)
class MeshPlan:
    """The run's devices: ``devices`` on the method's axis (ES: members, GRPO: rollout rows) x ``model_parallel``
    on the ``"model"`` axis (tensor parallel; the axis is left out when 1)."""

    axis: str  # distributed.POPULATION_AXIS (ES) or distributed.DATA_AXIS (GRPO)
    devices: int
    model_parallel: int = 1

    def build(self, devices: Any = None) -> jax.sharding.Mesh:
        """The mesh over ``devices`` (default: every device; ``esjax plan`` passes a TPU topology's)."""
        model = [(distributed.MODEL_AXIS, self.model_parallel)] if self.model_parallel > 1 else []
        return distributed.build_mesh([(self.axis, self.devices), *model], devices)


# A field derived from the others when the settings are resolved: neither read from nor written to config.yaml.
DERIVED = {"derived": True}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    method: Literal["es", "grpo"] = "es"
    model: ModelSettings = ModelSettings()
    task: TaskSettings | None = None  # one task, or
    stages: tuple[TaskSettings, ...] = ()  # a continual sequence of tasks, trained in order
    sampling: SamplingSettings = SamplingSettings()
    train: TrainSettings = TrainSettings()
    es: ESConfig = ESConfig()  # used when method is "es"
    grpo: GRPOConfig = GRPOConfig()  # used when method is "grpo"
    mesh: MeshPlan | None = dataclasses.field(default=None, compare=False, metadata=DERIVED)  # set by resolve()

    def task_stages(self) -> tuple[TaskSettings, ...]:
        return self.stages or (self.task or TaskSettings(),)

    @property
    def method_config(self) -> ESConfig | GRPOConfig:
        return self.es if self.method == "es" else self.grpo


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("derived")]


def _check(value: Any, hint: Any, key: str, where: str) -> Any:
    """Coerce ``value`` to the type ``hint`` (dataclasses recursively) or raise naming ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: '{key}' must be a mapping, got {value!r}")
        if hint in (ESConfig, GRPOConfig):  # their own from_dict checks the keys, __post_init__ the values
            try:
                return hint.from_dict(value)
            except (TypeError, ValueError) as e:
                raise SettingsError(f"{where}: {key}: {e}") from None
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
    if isinstance(settings, (ESConfig, GRPOConfig)):
        return settings.to_dict()
    if dataclasses.is_dataclass(settings):
        return {f.name: to_dict(getattr(settings, f.name)) for f in _fields(type(settings))}
    if isinstance(settings, (list, tuple)):
        return [to_dict(v) for v in settings]
    return settings


def load_settings(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                  device_count: int | None = None) -> RunSettings:
    """Read a YAML run config (None: defaults), apply ``--set`` overrides, validate; the mesh is planned for
    ``device_count`` devices (default: the visible ones; ``esjax plan`` passes a target's)."""
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
    sections = {k: v for k, v in data.items() if k not in ("es", "grpo")}
    settings = from_dict(RunSettings, sections, where)
    steps = {"es": settings.train.iterations, "grpo": settings.train.iterations}
    methods = {}
    for name, schedule in (("es", "alpha_schedule"), ("grpo", "lr_schedule")):
        section = data.get(name) or {}
        if name == "grpo" and isinstance(section, dict) and isinstance(section.get("num_iterations", 1), int):
            steps[name] *= section.get("num_iterations", 1)  # GRPO's schedule counts optimizer steps
        methods[name] = _check(_with_total_steps(section, schedule, steps[name]), _METHOD_CONFIGS[name], name, where)
    return resolve(dataclasses.replace(settings, **methods), where, device_count)


_METHOD_CONFIGS = {"es": ESConfig, "grpo": GRPOConfig}


def _with_total_steps(section: Any, schedule_key: str, steps: int) -> Any:
    """A decaying schedule without ``total_steps`` ends with the run's last update."""
    if not isinstance(section, dict) or section.get(schedule_key, "constant") == "constant" \
            or section.get("total_steps") is not None:
        return section
    return {**section, "total_steps": steps}


def resolve(settings: RunSettings, where: str = "<settings>", device_count: int | None = None) -> RunSettings:
    """The checks that span sections, and the mesh plan for ``device_count`` devices (default: the visible ones):
    ``settings`` with ``mesh`` set (run before training)."""
    if settings.task is not None and settings.stages:
        raise SettingsError(f"{where}: give either 'task' or 'stages', not both")
    train = settings.train
    count = jax.device_count() if device_count is None else device_count
    plan = plan_mesh(settings, where, count)
    if plan.devices * plan.model_parallel > count:
        raise SettingsError(f"{where}: train.devices={plan.devices} x train.model_parallel={plan.model_parallel} "
                            f"needs {plan.devices * plan.model_parallel} devices but only {count} "
                            f"are visible")
    try:
        if settings.method == "es":
            settings.es.validate(plan.devices)
        else:
            settings.grpo.validate(plan.devices, train.prompts_per_iteration * settings.grpo.num_generations)
    except ValueError as e:
        raise SettingsError(f"{where}: {settings.method}: {e}") from None
    return dataclasses.replace(settings, mesh=plan)


def plan_mesh(settings: RunSettings, where: str = "<settings>", device_count: int | None = None) -> MeshPlan:
    """Devices on the population (ES) / data (GRPO) axis: ``train.devices``, or by default every one of the
    ``device_count / train.model_parallel`` model groups, which must split the population (ES: N, or N/2
    antithetic pairs; GRPO: the rollout batch) evenly: a split that would leave devices idle is refused with
    the settings that fix it (a ``train.devices`` that divides it, or a population / batch that uses them all)."""
    train = settings.train
    axis = distributed.POPULATION_AXIS if settings.method == "es" else distributed.DATA_AXIS
    if train.devices is not None:
        return MeshPlan(axis, train.devices, train.model_parallel)
    count = jax.device_count() if device_count is None else device_count
    groups = max(1, count // train.model_parallel)
    if settings.method == "es":
        units = settings.es.population_size // (2 if settings.es.antithetic else 1)
    else:
        units = train.prompts_per_iteration * settings.grpo.num_generations
    best = max(d for d in range(1, groups + 1) if units % d == 0)
    if best * train.model_parallel < count:
        raise SettingsError(f"{where}: {_idle_devices(settings, best, groups, count)}")
    return MeshPlan(axis, best, train.model_parallel)


def _idle_devices(settings: RunSettings, best: int, groups: int, count: int) -> str:
    """Why the default mesh would leave devices idle, and the settings that fix it."""
    mp = settings.train.model_parallel
    accept = f"set train.devices={best} (uses {best * mp} of {count})"
    if best == groups:  # the model axis does not divide the devices
        return f"train.model_parallel={mp} leaves {count - groups * mp} of {count} devices idle: {accept}, or a " \
               f"train.model_parallel that divides {count}"
    over = f"{groups} devices" if mp == 1 else f"{groups} model groups of {mp} devices"
    if settings.method == "es":
        n, step = settings.es.population_size, groups * (2 if settings.es.antithetic else 1)
        what = f"population {n} = {n // 2} antithetic pairs" if settings.es.antithetic else f"population {n}"
        return f"{what} does not split over {over}: {accept} or es.population_size={-(-n // step) * step}"
    g, prompts = settings.grpo.num_generations, settings.train.prompts_per_iteration
    fit = next(p for p in range(prompts, prompts + groups + 1) if p * g % groups == 0)
    return f"{prompts * g} rollout rows (train.prompts_per_iteration {prompts} x grpo.num_generations {g}) do not " \
           f"split over {over}: {accept} or train.prompts_per_iteration={fit}"


def save_settings(settings: RunSettings, path: str | Path) -> None:
    write_text_atomic(Path(path), yaml.safe_dump(to_dict(settings), sort_keys=False))

"""One description per method: the run layer reads everything method-specific from the registry, so a third
method is one module that registers its MethodSpec (here, a toy one defined in this file)."""

import dataclasses

import pytest

from esjax.common.strict import strict_from_dict
from esjax.distributed.mesh import DATA_AXIS
from esjax.methods import registry
from esjax.run.plan import plan_devices
from esjax.run.resume import settings_changes
from esjax.run.settings import SettingsError, load_settings, save_settings


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    rows_per_prompt: int = 3
    total_steps: int | None = None

    def __post_init__(self):
        if self.rows_per_prompt < 1:
            raise ValueError(f"rows_per_prompt must be >= 1, got {self.rows_per_prompt}")

    @classmethod
    def from_dict(cls, d):
        return strict_from_dict(cls, d)

    def to_dict(self):
        return dataclasses.asdict(self)


def _check(config, settings):
    if settings.sampling.top_k == 1:
        raise ValueError("toy needs sampling.top_k != 1")


@pytest.fixture(scope="module")
def toy():
    spec = registry.register(registry.MethodSpec(
        name="toy", config_class=ToyConfig, axis=DATA_AXIS, schedule_key=None,
        steps_per_iteration=lambda c: 2,
        units=lambda c, prompts: (prompts * c.rows_per_prompt, f"{prompts * c.rows_per_prompt} toy rows"),
        grow_units=lambda c, prompts, groups: "toy.rows_per_prompt=8", check=_check,
        build=lambda *a: None, plan=lambda *a: {"memory_per_device_bytes": {"total": 0}}, describe=lambda p: "toy"))
    yield spec
    registry._REGISTRY.pop("toy")


def test_builtin_methods_are_described():
    assert registry.names()[:2] == ("es", "grpo")
    es, grpo = registry.get("es"), registry.get("grpo")
    assert (es.axis, grpo.axis) == ("population", "data")
    assert es.steps_per_iteration(load_settings(None).es) == 1
    assert grpo.steps_per_iteration(load_settings(None, ["grpo.num_iterations=3"]).grpo) == 3
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        registry.get("nope")


def test_a_registered_method_is_a_settings_section_a_plan_and_a_resume(toy, tmp_path):
    settings = load_settings(None, ["method=toy", "toy.rows_per_prompt=2", "train.prompts_per_iteration=4"])
    assert settings.toy == ToyConfig(2) and settings.method_config is settings.toy and settings.es.sigma == 1e-3
    save_settings(settings, tmp_path / "config.yaml")
    again = load_settings(tmp_path / "config.yaml")
    assert again == settings and settings_changes(settings, again) == {}
    assert plan_devices(settings).axis == DATA_AXIS and plan_devices(settings).devices == 8  # 8 rows over 8
    with pytest.raises(SettingsError, match=r"12 toy rows cannot be split evenly over 8 devices: set "
                                            r"train.devices=6 \(uses 6 of 8\) or toy.rows_per_prompt=8"):
        plan_devices(load_settings(None, ["method=toy", "train.prompts_per_iteration=4"]))
    with pytest.raises(SettingsError, match="toy: rows_per_prompt must be >= 1"):
        load_settings(None, ["method=toy", "toy.rows_per_prompt=0"])
    with pytest.raises(SettingsError, match="toy needs sampling.top_k != 1"):
        load_settings(None, ["method=toy", "sampling.top_k=1"])
    with pytest.raises(SettingsError, match="unknown key 'toy.nope'|Unknown ToyConfig keys"):
        load_settings(None, ["method=toy", "toy.nope=1"])


def test_an_unknown_method_names_the_known_ones():
    with pytest.raises(SettingsError, match=r"'method' must be one of 'es', 'grpo'"):
        load_settings(None, ["method=nope"])

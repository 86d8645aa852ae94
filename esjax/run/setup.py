"""Starting a run: check the run directory and saved settings, plan the devices, load the model into its
shardings, build the stages, then create the run directory and write the start-of-run report.

Everything that can fail on bad input is checked before the run directory is written, so a failed start leaves
nothing behind that would block the corrected command.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
from jax.sharding import Mesh

from esjax import distributed
from esjax.generation.inference import sampling_for
from esjax.generation.sampling import SamplingConfig
from esjax.methods import registry
from esjax.methods.protocol import Method
from esjax.models import load_model
from esjax.models.decoder import Params
from esjax.models.decoder import with_layer_scan
from esjax.models.sharding import param_shardings
from esjax.models.store import LoadedModel
from esjax.run.directory import RunDirError, prepare_run_dir_once
from esjax.run.plan import format_plan, plan_devices, plan_report
from esjax.run.resume import CONFIG_FILE, settings_changes
from esjax.run.settings import RunSettings, load_settings
from esjax.run.stages import Stage, batch_shape, build_stages, resolve_model_path


@dataclasses.dataclass
class RunSetup:
    """What a started run trains with: its settings, devices, model, tokenizer and stages."""

    settings: RunSettings
    out_dir: Path
    mesh: Mesh
    model: LoadedModel
    tokenizer: Any
    eval_sampling: SamplingConfig  # greedy, eval_max_new_tokens
    stages: list[Stage]
    log: Callable[[str], None]

    def make_method(self, stage: Stage, params: Params) -> Method:
        """The settings' method for ``stage``'s batch shape on the run's mesh (compiles its rollout and update)."""
        s = self.settings
        sampling = sampling_for(self.model.config, self.tokenizer, max_new_tokens=s.sampling.max_new_tokens,
                                temperature=s.sampling.temperature, top_p=s.sampling.top_p, top_k=s.sampling.top_k)
        return registry.get(s.method).build(s.method_config, self.model.config, sampling, self.mesh, params,
                                            batch_shape(s, stage))


def set_up(settings: RunSettings, out_dir: str | Path, resume: bool, changes: Mapping[str, Any],
           log: Callable[[str], None]) -> RunSetup:
    """Check, plan, load and build, then create (or reopen) the run directory; see the module's docstring.

    ``changes``: on resume, how ``settings`` differ from the saved ones (:func:`esjax.run.resume.resume_settings`);
    any other difference is refused."""
    out_dir = Path(out_dir)
    prepare_run_dir_once(out_dir, settings, resume, create=False)
    if resume:
        _check_saved_settings(out_dir, settings, changes)
    mesh = plan_devices(settings).build()  # here, from the settings the run continues with: any device count
    # the config, tokenizer and tasks first: a run that would not fit is refused before any weight is read
    from esjax.generation.tokenizer import load_tokenizer
    from esjax.run.compile import model_files
    path = resolve_model_path(settings.model.path)
    model_config, tokenizer_dir = model_files(path)
    if tokenizer_dir is None:
        raise RunDirError(f"{settings.model.path}: the model has no tokenizer files")
    tokenizer = load_tokenizer(tokenizer_dir)
    eval_sampling = sampling_for(model_config, tokenizer, temperature=0.0, max_new_tokens=(
        settings.sampling.eval_max_new_tokens or settings.sampling.max_new_tokens))
    stages = build_stages(settings, model_config, tokenizer, eval_sampling)
    from esjax.run.planner import check_fits  # compiled for abstract params where devices report memory
    memory_plan = check_fits(settings, batch_shape(settings, stages[0])[1])
    # params are born on the mesh: replicated over the method's axis, split over "model" by the partition rules
    model = load_model(path, dtype=settings.model.dtype, sharding=lambda config: param_shardings(mesh, config))
    model = model._replace(config=with_layer_scan(model.config, settings.model.scan_layers,
                                                  mesh.devices.flat[0].platform))
    prepare_run_dir_once(out_dir, settings, resume)
    setup = RunSetup(settings, out_dir, mesh, model, tokenizer, eval_sampling, stages, log)
    report_plan(setup, memory_plan)
    return setup


def _check_saved_settings(out_dir: Path, settings: RunSettings, changes: Mapping[str, Any]) -> None:
    """A resumed run trains with its saved settings, or with the ``changes`` the caller declared."""
    unexpected = sorted(set(settings_changes(load_settings(out_dir / CONFIG_FILE), settings)) - set(changes))
    if unexpected:
        raise RunDirError(f"{out_dir}: the settings differ from the run's {CONFIG_FILE} in "
                          f"{', '.join(unexpected)}; resume with esjax.run.resume.resume_settings (esjax train "
                          f"--resume without CONFIG, or with --allow-changes)")


def report_plan(setup: RunSetup, memory_plan: dict | None = None) -> None:
    """The start-of-run report (:mod:`esjax.run.plan`): logged, and ``run_plan.json`` in the run directory; with
    ``memory_plan`` (:func:`esjax.run.planner.check_fits`'s), the compiler's memory figures too."""
    s, model = setup.settings, setup.model
    shape, new_tokens = batch_shape(s, setup.stages[0]), s.sampling.max_new_tokens
    at_once = registry.get(s.method).decode_rows(s.method_config, model.config, new_tokens, setup.mesh, model.params,
                                                 shape)
    dtype = jax.tree.leaves(model.params)[0].dtype
    plan = plan_report(s.method, s.method_config, model.config, dtype, setup.mesh, *shape, new_tokens, at_once)
    if memory_plan:  # the compiler's figure, as esjax plan prints it
        from esjax.run.planner import verdict
        plan["compiled_memory_per_device_bytes"] = {p["program"]: p["total"] for p in memory_plan["programs"]}
        setup.log(f"memory per device (compiled): {verdict(memory_plan['peak_bytes'], memory_plan['target']['memory_bytes'])} "
                  f"({memory_plan['peak_program']})")
    setup.log(format_plan(plan))
    if distributed.is_main_process():
        (setup.out_dir / "run_plan.json").write_text(json.dumps(plan, indent=2) + "\n")

"""``esjax plan``: compile every program of a run for its target devices and read the memory one device needs.

The programs are those ``esjax train`` runs, built by the same builders (the method's own,
``MethodSpec.programs``, and ``esjax.generation.sampling.generate_jit``) from the same
resolved settings, for ``jax.ShapeDtypeStruct`` parameters placed with the run's shardings: only the model's
``config.json`` is read (or the shipped shape of a known model, ``esjax/assets/model_shapes``), no weights. Each
program is lowered on the target's mesh and compiled by its compiler (libtpu's for a TPU slice, deviceless), and
``memory_analysis()`` gives one device's bytes: arguments, outputs, aliased (donated) and temporaries. A program's
total adds the run's state the program does not take (``resident``: e.g. the fp32 master during the rollout).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from esjax.generation.sampling import SamplingConfig, generate_jit
from esjax.models.config import ModelConfig, config_from_hf, load_config
from esjax.models.decoder import param_shapes
from esjax.models.sharding import param_shardings
from esjax.methods import registry
from esjax.methods.programs import Program, abstract, abstract_key, placed
from esjax.run.settings import RunSettings
from esjax.run.topology import PlanError, Target

SHAPES_DIR = Path(__file__).resolve().parents[1] / "assets" / "model_shapes"
DEFAULT_PROMPT_LEN = 128


def shipped_shapes() -> dict[str, Path]:
    """Model name (lower case, as in its Hub ID) -> the shipped ``config.json`` fields of that model."""
    return {p.stem.lower(): p for p in sorted(SHAPES_DIR.glob("*.json"))}


def model_shape(path: str) -> tuple[ModelConfig, str]:
    """The model's config and stored dtype without reading weights: ``embedded``, an HF directory's
    ``config.json``, an esjax checkpoint's metadata, or the shipped shape of a known model named by its directory
    or Hub ID (``~/models/Qwen2.5-7B-Instruct``, ``Qwen/Qwen2.5-7B-Instruct``)."""
    from esjax.models.store import is_esjax_checkpoint, read_model_config
    from esjax.run.embedded import EMBEDDED_MODEL_DIR
    local = EMBEDDED_MODEL_DIR if path == "embedded" else Path(path).expanduser()
    if is_esjax_checkpoint(local):
        return read_model_config(local)
    file = local / "config.json"
    if not file.is_file():
        file = _cached_config(path) or shipped_shapes().get(local.name.lower())
    if file is None:
        known = ", ".join(p.stem for p in shipped_shapes().values())
        raise PlanError(f"model.path {path}: no config.json there and no shipped shape of that name; set model.path "
                        f"to a model directory or one of {known}")
    config = load_config(local) if file == local / "config.json" else None  # its own errors name the field
    hf = json.loads(Path(file).read_text())
    config = config or config_from_hf(hf, where=str(file))
    try:
        return config, str(jnp.dtype(hf.get("torch_dtype") or hf.get("dtype") or "float32"))
    except TypeError:  # e.g. "auto": the weights' own dtype, unknown without them
        return config, "float32"


def model_files(path: str | Path) -> tuple[ModelConfig, Path | None]:
    """A model's config and tokenizer directory without reading its weights (as ``esjax.models.load_model`` finds
    them: an esjax checkpoint's ``tokenizer/``, an HF directory itself)."""
    from esjax.models.store import is_esjax_checkpoint, load_model
    path = Path(path)
    if not is_esjax_checkpoint(path) and not (path / "config.json").is_file():
        load_model(path)  # raises its own error for what is not a model
    config, _ = model_shape(str(path))
    tokenizer = path / "tokenizer" if is_esjax_checkpoint(path) else path
    return config, tokenizer if tokenizer.is_dir() else None


def _cached_config(path: str) -> Path | None:
    """A Hub ID's ``config.json`` when the Hugging Face cache holds it (never the network)."""
    from esjax.models.hub import parse_hub_id
    hub = parse_hub_id(path)
    if hub is None:
        return None
    try:
        import huggingface_hub
        found = huggingface_hub.try_to_load_from_cache(hub[0], "config.json", revision=hub[1])
    except Exception:  # a malformed cache: fall back to the shipped shape
        return None
    return Path(found) if isinstance(found, str) else None


# libtpu's refusal: "the total memory required for HLO temporaries (945.72G) exceeds available HBM (95.73G)"
_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def sampling_of(settings: RunSettings, model: ModelConfig, evaluation: bool = False) -> SamplingConfig:
    s = settings.sampling
    pad = next((i for i in (model.pad_token_id, *model.eos_token_ids) if i is not None), 0)
    if evaluation:
        return SamplingConfig(s.eval_max_new_tokens or s.max_new_tokens, 0.0, eos_token_ids=model.eos_token_ids,
                              pad_token_id=pad)
    return SamplingConfig(s.max_new_tokens, s.temperature, s.top_p, s.top_k, model.eos_token_ids, pad)


def members_guess(settings: RunSettings, model: ModelConfig, dtype: Any, target: Target, mesh: Any,
                  prompt_len: int) -> int | None:
    """Units (ES members) one device decodes at once: for a deviceless target the method's rule on a device of the
    target's memory (``MethodSpec.decode_within``), else what the run picks on these devices (``decode_rows``);
    None where the method decodes all its rows at once. The compile then checks it."""
    spec, config = registry.get(settings.method), settings.method_config
    batch, new_tokens = settings.train.prompts_per_iteration, settings.sampling.max_new_tokens
    if target.deviceless:
        guess = spec.decode_within(config, model, dtype, mesh, batch, prompt_len, new_tokens, target.memory_bytes)
        if guess is not None:
            return guess
    return spec.decode_rows(config, model, new_tokens, mesh, param_shapes(model, dtype), (batch, prompt_len))


def eval_rows(settings: RunSettings) -> int:
    """Rows of one evaluation decode: the eval batch, or the first stage's whole eval split when smaller."""
    stage = settings.task_stages()[0]
    return min(settings.train.eval_batch_size, stage.eval_limit or settings.train.eval_batch_size)


def build_programs(settings: RunSettings, model: ModelConfig, dtype: Any, mesh: Any, prompt_len: int,
                   members: int | None = None) -> list[Program]:
    """The programs of one iteration (the method's own, ``MethodSpec.programs``) and of an evaluation, with
    abstract arguments on ``mesh``."""
    spec = registry.get(settings.method)
    if spec.programs is None:
        raise PlanError(f"method {settings.method!r} describes no programs to compile (MethodSpec.programs)")
    params = placed(param_shapes(model, dtype), param_shardings(mesh, model, dtype))
    batch = settings.train.prompts_per_iteration
    method = spec.programs(settings.method_config, model, sampling_of(settings, model), mesh, params, batch,
                           prompt_len, members)
    rows = eval_rows(settings)
    eval_tokens, key = abstract(mesh, (rows, prompt_len), jnp.int32), abstract_key(mesh)
    evaluation = sampling_of(settings, model, evaluation=True)
    return [*method.programs, Program("evaluate", lambda: generate_jit.lower(
        model, method.params, eval_tokens, eval_tokens, key, evaluation), method.resident)]


def analyse(program: Program) -> dict[str, Any]:
    """Compile ``program`` and read one device's memory, the compiler's cost estimate and the compile time."""
    t0 = time.perf_counter()
    try:
        compiled = program.lower().compile()
    except jax.errors.JaxRuntimeError as e:  # libtpu refuses a program that cannot fit (CompileTimeHbmOom)
        need = _OOM.search(str(e))
        if need is None:
            raise
        temp = int(float(need[1]) * _UNITS[need[2]])
        return {"program": program.name, "argument": 0, "output": 0, "alias": 0, "temp": temp,
                "resident": program.resident, "total": temp + program.resident, "flops": None,
                "bytes_accessed": None, "compile_s": round(time.perf_counter() - t0, 1),
                "compile_error": " ".join(str(e).split())[:300]}
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "alias", "temp")}
    out["resident"] = program.resident
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["resident"]
    try:
        cost = compiled.cost_analysis()
        cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    except Exception:  # not every backend estimates costs
        cost = {}
    flops, moved = cost.get("flops"), cost.get("bytes accessed")
    out["flops"] = float(flops) if flops and flops > 0 else None
    out["bytes_accessed"] = float(moved) if moved and moved > 0 else None
    return {"program": program.name, **out, "compile_s": round(seconds, 1)}

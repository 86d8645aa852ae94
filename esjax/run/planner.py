"""``esjax plan`` end to end: settings -> compiled programs -> fits or not, and the smallest change that fits.

:func:`plan` resolves the settings for the target's device count (``esjax.run.settings.load_settings``, the
resolution ``esjax train`` uses), compiles every program (:mod:`esjax.run.compile`) and compares each one's total
with the device memory. When one does not fit it tries the changes that shrink that program, nearest first
(members decoded at once, prompts per decode, the model axis, micro-batches, the evaluation batch), compiling each,
and reports the first that fits. :func:`format_plan` prints the report; the JSON form is the returned dict.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax.numpy as jnp

from esjax.models.decoder import with_layer_scan
from esjax.run.compile import DEFAULT_PROMPT_LEN, analyse, build_programs, eval_rows, members_guess, model_shape
from esjax.methods import registry
from esjax.run.plan import plan_devices
from esjax.run.settings import RunSettings, SettingsError, load_settings
from esjax.run.topology import GiB, PlanError, Target, local_target

MAX_TRIES = 8  # candidate changes compiled before giving up


def planned(settings: RunSettings, target: Target) -> RunSettings:
    """``settings``, once their device plan for ``target`` is made (a split that leaves devices idle raises
    SettingsError here, as loading settings for a run's devices would)."""
    plan_devices(settings, target.count)
    return settings


def compile_settings(settings: RunSettings, target: Target, prompt_len: int = DEFAULT_PROMPT_LEN,
                     memory_bytes: int | None = None) -> dict[str, Any]:
    """Compile ``settings`` for ``target`` (its mesh from :func:`esjax.run.plan.plan_devices`): the report dict."""
    from esjax.run.plan import plan_report
    config, stored = model_shape(settings.model.path)
    dtype = jnp.dtype(settings.model.dtype or stored)
    mesh = plan_devices(settings, target.count).build(list(target.devices))
    config = with_layer_scan(config, settings.model.scan_layers, target.devices[0].platform)
    limit = memory_bytes or target.memory_bytes
    members = members_guess(settings, config, dtype, target, mesh, prompt_len)
    t0 = time.perf_counter()
    programs = [analyse(p) for p in build_programs(settings, config, dtype, mesh, prompt_len, members)]
    for p in programs:
        p["fits"] = limit is None or p["total"] <= limit
    report = plan_report(settings.method, settings.method_config, config, dtype, mesh,
                         settings.train.prompts_per_iteration, prompt_len, settings.sampling.max_new_tokens, members)
    formula = report["memory_per_device_bytes"]
    per_program = dict(report.get("program_bytes", {}))
    if "resident_bytes" in report:
        per_program["evaluate"] = report["resident_bytes"] + evaluate_bytes(settings, config, dtype, mesh, prompt_len)
    for p in programs:
        if p["program"] in per_program:
            p["formula"] = int(per_program[p["program"]])
    peak = max(programs, key=lambda p: p["total"])
    return {"target": {"name": target.name, "kind": target.kind, "devices": target.count, "memory_bytes": limit,
                       "deviceless": target.deviceless},
            "model": {"path": settings.model.path, "params": config.num_params(), "dtype": dtype.name,
                      "layers": config.num_hidden_layers, "scan_layers": config.scan_layers},
            "method": settings.method, "mesh": {str(k): int(v) for k, v in mesh.shape.items()},
            "members_at_once": members, "prompts": settings.train.prompts_per_iteration, "prompt_len": prompt_len,
            "max_new_tokens": settings.sampling.max_new_tokens, "programs": programs,
            "peak_bytes": peak["total"], "peak_program": peak["program"], "fits": all(p["fits"] for p in programs),
            "formula_bytes": {k: int(v) for k, v in formula.items()},
            "compile_s": round(time.perf_counter() - t0, 1)}


def evaluate_bytes(settings: RunSettings, model: Any, dtype: Any, mesh: Any, prompt_len: int) -> float:
    """The formula's evaluation decode per device, besides what stays resident: its rows' KV cache and
    activations (:mod:`esjax.common.memory`), the rows split over the data axis as ``build_programs`` feeds them."""
    from esjax.common import memory
    rows = eval_rows(settings)
    mp = int(mesh.shape.get("model", 1))
    size = jnp.dtype(dtype).itemsize
    seq = prompt_len + (settings.sampling.eval_max_new_tokens or settings.sampling.max_new_tokens)
    kv = rows * seq * memory.kv_bytes_per_token(model.num_hidden_layers, model.num_key_value_heads, model.head_dim,
                                                size) / memory.kv_split(model.num_key_value_heads, mp)
    return kv + memory.decode_activations(rows, prompt_len, model.hidden_size, model.intermediate_size,
                                          model.num_attention_heads, model.vocab_size, mp, size)


def candidates(settings: RunSettings, report: dict[str, Any], devices: int) -> list[str]:
    """``--set`` changes that shrink the programs that do not fit, nearest first; a change that divides a
    program's temporaries by k is skipped while k is below what they exceed the device memory by."""
    programs = {p["program"]: p for p in report["programs"] if not p["fits"]}
    limit = report["target"]["memory_bytes"] or 1
    over = {name: p["temp"] / max(1, limit - (p["total"] - p["temp"])) if p["total"] - p["temp"] < limit
            else float("inf") for name, p in programs.items()}
    batch, mp = settings.train.prompts_per_iteration, settings.train.model_parallel
    spec = registry.get(settings.method)
    out = spec.shrink(settings.method_config, batch, report["mesh"][spec.axis], report["members_at_once"],
                      {name: factor for name, factor in over.items() if name != "evaluate"})
    if set(programs) - {"evaluate"}:
        out += [f"train.model_parallel={k}" for k in (2, 4, 8, 16) if k > mp and devices % k == 0]
    if "evaluate" in programs:
        b = settings.train.eval_batch_size
        out += [f"train.eval_batch_size={b // k}" for k in (2, 4, 8, 16) if b // k >= 1 and k >= over["evaluate"]]
    return out


def plan(config: str | None, overrides: list[str], target: Target, prompt_len: int = DEFAULT_PROMPT_LEN,
         memory_bytes: int | None = None, search: bool = True,
         log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Plan ``config`` + ``overrides`` on ``target``; when it does not fit, ``report["suggestion"]`` is the first
    candidate change (:func:`candidates`) that fits, found by compiling, or None."""
    def load(extra: list[str]) -> RunSettings:
        return planned(load_settings(config, [*overrides, *extra]), target)
    report = {"config": config, "overrides": list(overrides)}
    return report | search_fit(load, target, prompt_len, memory_bytes, search, log)


def search_fit(load: Callable[[list[str]], RunSettings], target: Target, prompt_len: int,
               memory_bytes: int | None = None, search: bool = True,
               log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """:func:`compile_settings` of ``load([])``; when it does not fit, each candidate change ``load([change])``
    compiled in turn until one fits (``report["suggestion"]``)."""
    settings = load([])
    report = compile_settings(settings, target, prompt_len, memory_bytes) | {"suggestion": None}
    if report["fits"] or not search:
        return report
    tried = []
    for change in candidates(settings, report, target.count)[:MAX_TRIES]:
        log(f"does not fit; trying --set {change}")
        try:
            other = load([change])
        except SettingsError:
            continue
        attempt = compile_settings(other, target, prompt_len, memory_bytes)
        tried.append({"set": change, "peak_bytes": attempt["peak_bytes"], "fits": attempt["fits"]})
        if attempt["fits"]:
            report["suggestion"] = {"set": change, "peak_bytes": attempt["peak_bytes"],
                                    "peak_program": attempt["peak_program"]}
            break
    return report | {"tried": tried}


def check_fits(settings: RunSettings, prompt_len: int, target: Target | None = None) -> dict[str, Any] | None:
    """Before a run loads its weights: on devices that report their memory (GPU, TPU), compile its programs for
    abstract params and raise :class:`PlanError` with the change that fits when they do not; None on CPU."""
    import tempfile
    from pathlib import Path
    from esjax.run.settings import save_settings
    target = target or local_target()
    if target.memory_bytes is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "config.yaml"
        save_settings(settings, saved)
        report = search_fit(lambda extra: planned(load_settings(saved, extra), target), target, prompt_len)
    if not report["fits"]:
        s = report["suggestion"]
        fix = f"--set {s['set']} fits ({_size(s['peak_bytes'])})" if s else "see esjax plan CONFIG for the programs"
        raise PlanError(f"the run does not fit on {target.kind}: {report['peak_program']} "
                        f"{verdict(report['peak_bytes'], target.memory_bytes)} per device (compiled, before loading "
                        f"the weights); {fix}")
    return report


def _in(n: float | None, unit: int) -> str:
    return "-" if n is None else f"{n / unit:.2f}"


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.1f} MiB"


def verdict(total: int, limit: int | None) -> str:
    """"fits, 9.1 GiB of 16 GiB" / "does not fit: needs 21.3 GiB of 16 GiB"."""
    if limit is None:
        return f"needs {_size(total)} (the device reports no memory limit)"
    return f"fits, {_size(total)} of {_size(limit)}" if total <= limit else \
        f"does not fit: needs {_size(total)} of {_size(limit)}"


def format_plan(report: dict[str, Any]) -> str:
    """The report as a table, one row per program (GiB per device), and the verdict."""
    t, m, limit = report["target"], report["model"], report["target"]["memory_bytes"]
    how = "compiled by libtpu, deviceless" if t["deviceless"] else "compiled for this host's devices"
    mesh = " x ".join(f"{k} {v}" for k, v in report["mesh"].items())
    work = f"{report['prompts']} prompts x ({report['prompt_len']} + {report['max_new_tokens']}) tokens"
    if report["members_at_once"]:
        work += f", {report['members_at_once']} members decoded at once per device"
    unit, name = (GiB, "GiB") if report["peak_bytes"] >= GiB else (1 << 20, "MiB")
    lines = [f"target: {t['name']}: {t['devices']} x {t['kind']}"
             + (f", {_size(limit)} each" if limit else "") + f" ({how})",
             f"run: {report['method']} on {m['path']} ({m['params'] / 1e9:.2f}B params, {m['dtype']}, "
             f"{m['layers']} layers); mesh {mesh}; {work}",
             f"{'program':13s} {'args':>7s} {'temps':>7s} {'out':>7s} {'alias':>7s} {'state':>7s} {'total':>7s}"
             f"  {'TFLOP':>8s} {'GB moved':>8s} {'compile s':>9s}  per device ({name})"]
    for p in report["programs"]:
        flops = "-" if p["flops"] is None else f"{p['flops'] / 1e12:.1f}"
        moved = "-" if p["bytes_accessed"] is None else f"{p['bytes_accessed'] / 1e9:.1f}"
        sizes = " ".join(f"{_in(p[k], unit):>7s}" for k in ("argument", "temp", "output", "alias", "resident", "total"))
        lines.append(f"{p['program']:13s} {sizes}  {flops:>8s} "
                     f"{moved:>8s} {p['compile_s']:>9.1f}  {verdict(p['total'], limit)}"
                     + (" (temporaries alone: the compiler refused it)" if "compile_error" in p else ""))
    ratios = ", ".join(f"{p['program']} {p['total'] / p['formula']:.2f}x" for p in report["programs"]
                       if p.get("formula"))
    lines.append(f"formula (esjax.common.memory): {_size(report['formula_bytes']['total'])} per device; "
                 f"compiled peak {_size(report['peak_bytes'])} ({report['peak_program']})"
                 + (f"; compiled / formula: {ratios}" if ratios else ""))
    if report["fits"]:
        lines.append(f"verdict: {verdict(report['peak_bytes'], limit)}")
    else:
        s = report.get("suggestion")
        fix = (f"--set {s['set']} fits ({_size(s['peak_bytes'])}, found by compiling)" if s else
               "no single change tried fits (" + ", ".join(x["set"] for x in report.get("tried", [])) + ")")
        lines.append(f"verdict: {verdict(report['peak_bytes'], limit)} ({report['peak_program']}); {fix}")
    return "\n".join(lines)

"""``esjax plan``: every program of a run compiled for its target devices, per-device memory, fits or the change
that fits (simulated CPU devices); TPU slice names; a deviceless TPU compile where libtpu is installed."""

import importlib.util
import json

import jax
import pytest

from esjax.cli import main
from esjax.run.compile import model_shape
from esjax.run.planner import plan
from esjax.run.topology import PlanError, local_target, slice_shape

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
TINY_ES = """method: es
model: {path: embedded}
task: {name: countdown_procedural, eval_limit: 8, eval_splits: [test],
       options: {prompt_style: short, counts: [3], number_range: [1, 30], train_size: 16, test_size: 8}}
sampling: {max_new_tokens: 4}
train: {prompts_per_iteration: 4, eval_batch_size: 8, devices: 2}
es: {population_size: 8, noise: full, population_chunk: 4}
"""
TINY_GRPO = """method: grpo
model: {path: embedded}
task: {name: countdown_procedural, eval_limit: 4}
sampling: {max_new_tokens: 4, temperature: 1.0}
train: {prompts_per_iteration: 4, eval_batch_size: 4, devices: 2, model_parallel: 2}
grpo: {num_generations: 2}
"""
FIELDS = {"argument", "output", "alias", "temp", "resident", "total", "flops", "bytes_accessed", "compile_s", "fits"}


def _config(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_es_plan_compiles_every_program_on_cpu_devices(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", _config(tmp_path, TINY_ES), "--prompt-len", "16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [p["program"] for p in report["programs"]] == ["es rollout", "es update", "evaluate"]
    assert report["mesh"] == {"population": 2} and report["members_at_once"] == 4 and report["fits"]
    for p in report["programs"]:
        assert FIELDS <= set(p) and p["compile_s"] >= 0
        assert p["total"] == p["argument"] + p["output"] - p["alias"] + p["temp"] + p["resident"]
    rollout, update, _ = report["programs"]
    assert rollout["resident"] <= 8 and update["alias"] > 0  # fp32 params: no master (the iteration); donated
    assert report["peak_bytes"] == max(p["total"] for p in report["programs"])
    printed = capsys.readouterr().out
    assert "es rollout" in printed and "the device reports no memory limit" in printed


@pytest.mark.slow
def test_plan_that_does_not_fit_names_the_change_that_fits(tmp_path, capsys):
    config = _config(tmp_path, TINY_ES)
    base = plan(config, [], local_target(), prompt_len=16, search=False)
    rollout = base["programs"][0]["total"]
    fewer = plan(config, ["es.population_chunk=2"], local_target(), prompt_len=16, search=False)
    # room for everything but the 4-member rollout: the nearest change that fits is 2 members at once
    limit = (max(fewer["peak_bytes"], *(p["total"] for p in base["programs"][1:])) + rollout) // 2
    assert fewer["peak_bytes"] < limit < rollout
    with pytest.raises(SystemExit) as exit_code:  # esjax plan exits 1 when the run does not fit
        main(["plan", config, "--prompt-len", "16", "--device-memory", str(limit / (1 << 30)), "--json",
              str(tmp_path / "p.json")])
    report = json.loads((tmp_path / "p.json").read_text())
    assert exit_code.value.code == 1 and not report["fits"] and not report["programs"][0]["fits"]
    assert report["suggestion"]["set"] == "es.population_chunk=2"
    assert "does not fit: needs" in capsys.readouterr().out


def test_grpo_plan_on_a_data_x_model_mesh(tmp_path):
    report = plan(_config(tmp_path, TINY_GRPO), [], local_target(), prompt_len=16)
    assert [p["program"] for p in report["programs"]] == ["grpo rollout", "grpo update", "evaluate"]
    assert report["mesh"] == {"data": 2, "model": 2}
    rollout, update, _ = report["programs"]
    assert rollout["resident"] > 0  # the optimizer state stays while the rollout runs
    assert update["alias"] > 0 and update["temp"] > 0


@pytest.mark.parametrize("name, grid", [("v5e-4", (2, 2)), ("v5litepod-16", (4, 4)), ("v5p-8", (2, 2, 1)),
                                        ("v4-32", (2, 2, 4)), ("v6e-8", (2, 4))])
def test_slice_names(name, grid):
    assert slice_shape(name)[1] == grid


@pytest.mark.parametrize("name", ["v7x-8", "v5p-6", "v5e-3", "tpu", "v4-2"])
def test_unknown_topology_is_one_line_exit_2(tmp_path, capsys, name):
    assert main(["plan", _config(tmp_path, TINY_ES), "--topology", name]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--topology" in err
    with pytest.raises(PlanError):
        slice_shape(name)


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed")
def test_missing_libtpu_names_the_install(tmp_path, capsys):
    assert main(["plan", _config(tmp_path, TINY_ES), "--topology", "v5e-4"]) == 2
    assert "pip install 'esjax[tpu]'" in capsys.readouterr().err


def test_unplannable_config_is_one_line_exit_2(tmp_path, capsys):
    config = _config(tmp_path, TINY_ES.replace("embedded", "~/models/NoSuchModel-1B"))
    assert main(["plan", config]) == 2
    err = capsys.readouterr().err
    assert "no shipped shape" in err and "Qwen2.5-7B-Instruct" in err


@pytest.mark.parametrize("path, params", [("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768),
                                          ("~/models/Qwen2.5-7B-Instruct", 7_615_616_512),
                                          ("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248),
                                          ("Qwen/Qwen3-4B-Instruct-2507", 4_022_468_096)])
def test_shipped_shapes_by_hub_id_or_directory_name(path, params):
    config, dtype = model_shape(path)
    assert config.num_params() == params and dtype == "bfloat16"  # the model cards' parameter counts


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install 'esjax[tpu]', Python >= 3.12)")
def test_deviceless_tpu_compile_of_the_tiny_model(tmp_path):
    from esjax.run.topology import tpu_target
    target = tpu_target("v5e-4")
    assert target.count == 4 and target.memory_bytes == 16 << 30
    report = plan(_config(tmp_path, TINY_ES.replace("devices: 2", "devices: 4")), [], target, prompt_len=16)
    assert report["fits"] and report["target"]["deviceless"] and report["mesh"] == {"population": 4}
    assert all(p["program"] and p["total"] > 0 for p in report["programs"])
    assert jax.devices()[0].platform == "cpu"  # nothing ran on a TPU


@pytest.mark.slow
def test_train_refuses_a_run_that_does_not_fit_before_reading_weights(tmp_path, monkeypatch):
    import dataclasses

    import esjax.run.loop as loop
    import esjax.run.planner as planner
    import esjax.run.setup as setup
    from esjax.run.settings import load_settings
    config = _config(tmp_path, TINY_ES)
    seen = []  # the run's prompt length (its tokenised prompts, bucketed): on CPU the check compiles nothing
    monkeypatch.setattr(planner, "check_fits", lambda settings, length: seen.append(length))
    loop.Run(load_settings(config), tmp_path / "probe", progress=False)
    monkeypatch.undo()
    fits = plan(config, ["es.population_chunk=2"], local_target(), prompt_len=seen[0], search=False)
    whole = plan(config, [], local_target(), prompt_len=seen[0], search=False)
    limit = (fits["peak_bytes"] + whole["peak_bytes"]) // 2
    assert fits["peak_bytes"] < limit < whole["peak_bytes"]
    monkeypatch.setattr(planner, "local_target", lambda: dataclasses.replace(local_target(), memory_bytes=limit))
    monkeypatch.setattr(setup, "load_model", lambda *a, **k: pytest.fail("weights read before the memory check"))
    with pytest.raises(planner.PlanError, match=r"does not fit on cpu: es rollout does not fit: needs .* per device "
                                                r"\(compiled, before loading the weights\); --set "
                                                r"es.population_chunk=2 fits"):
        loop.Run(load_settings(config), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


PLAN_THEN_TRAIN = """
import dataclasses, sys
from pathlib import Path
from esjax.common.compile_cache import enable_compilation_cache
import esjax.run.planner as planner
from esjax.run.loop import train
from esjax.run.settings import load_settings
from esjax.run.topology import local_target
config, out, cache, listing = sys.argv[1:]
enable_compilation_cache(cache)
check = planner.search_fit
def search_fit(*args, **kwargs):  # the pre-flight check, then a listing of the cache entries it wrote
    report = check(*args, **kwargs)
    Path(listing).write_text("\\n".join(sorted(p.name for p in Path(cache).glob("*-cache"))))
    return report
planner.search_fit = search_fit
planner.local_target = lambda: dataclasses.replace(local_target(), memory_bytes=64 << 30)  # like a GPU: checks fit
train(load_settings(config, ["train.iterations=1"]), out, progress=False)
"""


@pytest.mark.slow
def test_train_runs_the_programs_its_memory_check_compiled(tmp_path):
    """On a device that reports its memory, `esjax train` compiles its programs once before loading the weights;
    the run's rollout, update and evaluation are those same programs: with the compilation cache on, the run adds
    no cache entry for them (it loads what the check compiled instead of compiling again)."""
    import os
    import subprocess
    import sys
    cache, listing = tmp_path / "xla", tmp_path / "after_check.txt"
    run = subprocess.run([sys.executable, "-c", PLAN_THEN_TRAIN, _config(tmp_path, TINY_ES), str(tmp_path / "run"),
                          str(cache), str(listing)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "ESJAX_COMPILATION_CACHE": str(cache)})
    assert run.returncode == 0, run.stderr[-3000:]
    checked = set(listing.read_text().split())
    programs = ("jit_body", "jit_update_state", "jit_generate")  # the rollout (shard_map body), update, evaluation
    assert {name.split("-")[0] for name in checked} >= set(programs)
    added = {p.name for p in cache.glob("*-cache")} - checked
    assert not [name for name in added if name.startswith(programs)], sorted(added)

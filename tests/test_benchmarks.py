"""The accelerator device check runs end to end (``--smoke``: CPU, tiny shapes) and writes every figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_tokens_that_fit_takes_the_largest_multiple_within_the_time():
    from benchmarks.device_check import tokens_that_fit
    # 10 s fixed + 0.1 s per token, 60 s allowed -> 500 tokens -> 448 (multiples of 64)
    assert tokens_that_fit(1024, 64, 0.1, 10.0, 60.0) == 448
    assert tokens_that_fit(1024, 64, 0.001, 10.0, 60.0) == 1024  # everything fits
    assert tokens_that_fit(1024, 64, 1.0, 100.0, 60.0) == 64  # nothing fits: the smallest run


@pytest.mark.slow
def test_device_check_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "check.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["complete"] and r["smoke"] and r["platform"] == "cpu" and r["jax"]
    assert set(r["stage_seconds"]) == {"decode", "es_rollout", "es_update", "start", "es_paper", "grpo_paper"}
    update = r["es_update"]
    assert update["esjax_update"]["median_s"] > 0 and update["update_over_read_write"] > 0
    assert update["param_bytes"] == 2 * r["params"]  # bf16
    start = r["start"]  # the smoke check times esjax generate only: a cold and a warm process on one fresh cache
    assert start["generate_cold_process"]["runs"] == start["generate_warm_process"]["runs"] == 1
    assert [d["batch"] for d in r["decode"]] == [4, 8]
    assert all(d["decode_tokens_per_s"] > 0 and d["tokens_per_s"] > 0 for d in r["decode"])
    assert "roofline_fraction" not in r["decode"][0] and r["peak_hbm_bytes_per_s"] is None  # no peaks for a CPU
    for noise in ("full", "lowrank"):
        assert 0 < r["es_rollout"][noise]["ratio_vs_plain_generation"]
        assert r["es_rollout"][noise]["update_s"] > 0
    es = r["es_paper"]
    assert es["new_tokens_run"] <= es["new_tokens"] and es["iteration_s_extrapolated"] >= es["measured"]["full"]["rollout_s"]
    grpo = r["grpo_paper"]
    assert grpo["step_s_extrapolated"] > 0 and grpo["measured"]["rows"] == 8
    for line in ("decode batch 8", "ES N=4 full rank", "ES N=4 low rank", "ES update N=4", "esjax generate process",
                 "ES iteration", "GRPO step"):
        assert line in run.stdout

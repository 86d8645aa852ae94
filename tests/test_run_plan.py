"""The start-of-run report and the device split, on 8 simulated CPU devices."""

import json

import jax
import numpy as np
import pytest

from esjax.models import config_from_hf
from esjax.run.plan import format_plan, plan_devices, plan_report
from esjax.run.settings import SettingsError, load_settings

GiB = 1 << 30


def plan(*overrides, devices=None):
    return plan_devices(load_settings(None, list(overrides)), devices)


def test_a_population_that_leaves_devices_idle_is_refused_with_the_fix():
    assert jax.device_count() == 8
    pairs = ["es.population_size=30", "es.antithetic=true"]
    settings = load_settings(None, pairs)  # settings load without looking at the devices
    with pytest.raises(SettingsError, match=r"^population 30 = 15 antithetic pairs cannot be split evenly over 8 "
                                            r"devices: set train.devices=5 \(uses 5 of 8\) or "
                                            r"es.population_size=32$"):
        plan_devices(settings)
    assert plan(*pairs, "train.devices=5").devices == 5  # the first fix, followed
    assert plan("es.population_size=32", "es.antithetic=true").devices == 8  # the second
    assert plan(*pairs, devices=1).devices == 1 and plan(*pairs, devices=5).devices == 5  # other machines
    with pytest.raises(SettingsError, match=r"population 30 = 15 antithetic pairs cannot be split evenly over 4 "
                                            r"model groups of 2 devices: set train.devices=3 \(uses 6 of 8\) or "
                                            r"es.population_size=32"):
        plan(*pairs, "train.model_parallel=2")
    with pytest.raises(SettingsError, match=r"population 30 cannot be split evenly over 8 devices: set "
                                            r"train.devices=6 \(uses 6 of 8\) or es.population_size=32"):
        plan("es.population_size=30", "es.antithetic=false")
    with pytest.raises(SettingsError, match=r"train.model_parallel=3 leaves 2 of 8 devices idle: set train.devices=2 "
                                            r"\(uses 6 of 8\)"):
        plan("es.population_size=32", "train.model_parallel=3")
    with pytest.raises(SettingsError, match=r"15 antithetic pairs cannot be split evenly over train.devices=4: set "
                                            r"train.devices=5 or es.population_size=32"):
        plan(*pairs, "train.devices=4")


def test_a_grpo_batch_that_leaves_devices_idle_is_refused_with_the_fix():
    grpo = ["method=grpo", "sampling.temperature=1", "train.prompts_per_iteration=5", "grpo.num_generations=4"]
    with pytest.raises(SettingsError, match=r"20 rollout rows \(train.prompts_per_iteration 5 x grpo.num_generations "
                                            r"4\) cannot be split evenly over 8 devices: set train.devices=5 \(uses 5 "
                                            r"of 8\) or train.prompts_per_iteration=6"):
        plan(*grpo)
    assert plan(*grpo, "train.devices=5").devices == 5
    assert plan("method=grpo", "sampling.temperature=1", "train.prompts_per_iteration=6", "grpo.num_generations=4").devices == 8
    with pytest.raises(SettingsError, match=r"in 2 micro-batches cannot be split evenly over 8 devices: set "
                                            r"train.devices=5 \(uses 5 of 8\) or train.prompts_per_iteration=8"):
        plan(*grpo, "grpo.grad_accum_steps=2")


def qwen05():
    return config_from_hf(dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                               num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                               rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
                               max_position_embeddings=32768), where="qwen05")


def test_es_report_counts_work_and_memory_per_device():
    """Qwen2.5-0.5B, bf16, N = 32 on 4 population groups x model axis 2: the paper's 200 prompts x 1152 tokens."""
    model = qwen05()
    settings = load_settings(None, ["es.population_size=32", "train.model_parallel=2", "es.master_fp32=true"])
    mesh = plan_devices(settings).build()
    plan = plan_report("es", settings.es, model, "bfloat16", mesh, 200, 128, 1024, members_at_once=2)
    assert plan["mesh"] == {"population": 4, "model": 2} and plan["devices_used"] == 8 and plan["devices_idle"] == 0
    assert plan["members_per_device"] == 8 and plan["members_at_once"] == 2 and plan["prompts_per_decode"] == 200
    d = 494_032_768  # Qwen2.5-0.5B's parameter count
    assert plan["params"] == d
    mem = plan["memory_per_device_bytes"]
    kv = 200 * 1152 * (2 * 24 * 2 * 64 * 2) / 2  # rows x tokens x K/V bytes per token, 2 KV heads split over 2
    assert mem["weights"] == d * 2 // 2 and mem["master_fp32"] == d * 4 // 2
    assert mem["perturbed_copies"] == 2 * d * 2 // 2 and mem["kv_cache"] == 2 * kv
    # the decode's other temporaries, 2 members x 200 rows: the prefill's MLP, attention and hidden buffers, logits
    rows = 400
    act = rows * 128 * (3 * 4864 / 2 + 4 * 896) * 2 + 2 * rows * 14 / 2 * 128 ** 2 * 4 + 3 * rows * 151936 * 4
    assert mem["activations"] == int(act)
    assert abs(mem["total"] - (mem["weights"] + mem["master_fp32"] + mem["perturbed_copies"] + mem["kv_cache"]
                               + act)) <= 1
    assert 6.9 < mem["total"] / GiB < 7.1  # 0.46 weights + 0.92 master + 0.92 copies + 2.64 KV + 2.06 activations
    assert plan["program_bytes"]["es update"] < plan["program_bytes"]["es rollout"] == mem["total"]
    lines = format_plan(plan)
    assert "using 8; mesh population 4 x model 2" in lines and "8 members per device group, 2 decoded at once" in lines


def test_grpo_report_rows_per_device():
    model = qwen05()
    settings = load_settings(None, ["method=grpo", "sampling.temperature=1", "train.prompts_per_iteration=32", "grpo.num_generations=8",
                                    "train.devices=4", "train.model_parallel=2"])
    mesh = plan_devices(settings).build()
    plan = plan_report("grpo", settings.grpo, model, "bfloat16", mesh, 32, 128, 1024)
    assert plan["rollout_rows"] == 256 and plan["rows_per_device"] == 64
    mem = plan["memory_per_device_bytes"]
    assert mem["state"] == 18 * 494_032_768 / 2 and mem["kv_cache"] == 64 * 1152 * 12288 / 2
    assert mem["activations"] > 0 and plan["program_bytes"]["grpo update"] == mem["state"]


def test_a_run_writes_its_plan(qwen2_dir, tmp_path, capsys):
    from esjax.run.loop import Run
    settings = load_settings(None, [f"model.path={qwen2_dir}", "task.options={prompt_style: short, counts: [3], "
                                    "train_size: 8, test_size: 4}", "train.iterations=1",
                                    "train.prompts_per_iteration=4", "sampling.max_new_tokens=4",
                                    "es.population_size=4", "train.devices=2"])
    Run(settings, tmp_path / "run", progress=False)
    plan = json.loads((tmp_path / "run" / "run_plan.json").read_text())
    assert plan["devices"]["count"] == 8 and plan["devices_used"] == 2 and plan["devices_idle"] == 6
    assert plan["mesh"] == {"population": 2} and plan["members_per_device"] == 2
    assert plan["prompts_per_iteration"] == 4 and plan["max_new_tokens"] == 4
    out = capsys.readouterr().out
    assert "using 2, 6 idle" in out and "memory per device (estimate)" in out
    assert np.isclose(plan["memory_per_device_bytes"]["weights"], plan["params"] * 4)

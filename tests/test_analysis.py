"""esjax.analysis: update geometry on hand-built pytrees, KL estimators against exact KL, interpolation endpoints,
and an end-to-end ``esjax analyze`` run on tiny random models (plus bad input)."""

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.cli import analyze as analysis_cli
from esjax.analysis import geometry, interpolation, kl, runs
from esjax.es import ESConfig
from esjax.run.evaluate import PromptSet, evaluate
from esjax.generation.inference import sampling_for
from esjax.models import forward, load_model, save_model
from esjax.generation.sampling import generate_jit
from esjax.run.settings import load_settings, save_settings


# ------------------------------------------------------------------------------------------------- geometry
def hand_update(scale=1.0):
    """A params-shaped pytree whose leaves are constants with known squared norms."""
    full = lambda shape, v: jnp.full(shape, v * scale, jnp.float32)  # noqa: E731
    return {"embed_tokens": {"embedding": full((4, 3), 1.0)},                      # 12
            "layers_0": {"self_attn": {"q_proj": {"kernel": full((3, 3), 2.0),     # 36
                                                  "bias": full((3,), 1.0)},        # 3
                                       "k_norm": {"scale": full((3,), 1.0)}},      # 3
                         "input_layernorm": {"scale": full((3,), 0.0)}},           # 0
            "layers_1": {"mlp": {"down_proj": {"kernel": full((3, 3), 1.0)}}},     # 9
            "norm": {"scale": full((3,), 1.0)},                                    # 3
            "lm_head": {"kernel": full((3, 4), 0.5)}}                              # 3


def test_norms_per_group_on_a_hand_built_tree():
    delta = hand_update()
    base = jax.tree.map(lambda x: x * 0 + 0.7, delta)  # a nonzero base: only the difference counts
    model = jax.tree.map(jnp.add, base, delta)
    stats = geometry.norm_stats(geometry.leaf_sq_norms(base, model))
    assert stats["global"] == pytest.approx(math.sqrt(69), rel=1e-6)
    assert stats["per_layer"] == pytest.approx({"embedding": math.sqrt(12), "layers_0": math.sqrt(42),
                                                "layers_1": 3.0, "final_norm": math.sqrt(3), "lm_head": math.sqrt(3)})
    assert list(stats["per_layer"]) == ["embedding", "layers_0", "layers_1", "final_norm", "lm_head"]
    assert stats["per_module"] == pytest.approx({"q": math.sqrt(39), "down": 3.0, "norms": math.sqrt(6),
                                                 "embedding": math.sqrt(12), "lm_head": math.sqrt(3)})
    for group in ("per_layer", "per_module", "per_leaf"):  # groups add up in squares to the global norm
        assert sum(v ** 2 for v in stats[group].values()) == pytest.approx(stats["global"] ** 2, rel=1e-6)


def test_module_types_and_layer_order():
    assert [geometry.module_type(p) for p in (
        "layers_3/self_attn/v_proj/bias", "layers_0/self_attn/o_proj/kernel", "layers_2/mlp/gate_proj/kernel",
        "layers_2/mlp/up_proj/kernel", "layers_0/self_attn/q_norm/scale", "layers_0/post_attention_layernorm/scale",
        "norm/scale", "embed_tokens/embedding", "lm_head/kernel")] == [
        "v", "o", "gate", "up", "norms", "norms", "norms", "embedding", "lm_head"]
    assert geometry.layer_order(["lm_head", "layers_10", "final_norm", "layers_2", "embedding"]) == [
        "embedding", "layers_2", "layers_10", "final_norm", "lm_head"]


def test_cosines_on_a_hand_built_tree():
    a = hand_update()
    b = jax.tree.map(lambda x: x, a)
    b["layers_1"]["mlp"]["down_proj"]["kernel"] = -a["layers_1"]["mlp"]["down_proj"]["kernel"]  # opposite there
    b["lm_head"]["kernel"] = jnp.zeros_like(a["lm_head"]["kernel"])                             # b absent there
    zero = jax.tree.map(jnp.zeros_like, a)
    cos = geometry.cosine_stats(geometry.leaf_inner(zero, a, b), geometry.leaf_sq_norms(zero, a),
                                geometry.leaf_sq_norms(zero, b))
    # <a, b> = 69 - 9 - 9 - 3 = 48; ||a||^2 = 69; ||b||^2 = 69 - 3 = 66
    assert cos["global"] == pytest.approx(48 / math.sqrt(69 * 66), rel=1e-6)
    assert cos["per_layer"]["layers_0"] == pytest.approx(1.0)
    assert cos["per_layer"]["layers_1"] == pytest.approx(-1.0)
    assert cos["per_layer"]["lm_head"] is None
    assert cos["per_module"]["down"] == pytest.approx(-1.0)
    other = jax.tree.map(lambda x: x * 3.0, a)  # scale-invariant, and cos(a, a) = 1
    same = geometry.cosine_stats(geometry.leaf_inner(zero, a, other), geometry.leaf_sq_norms(zero, a),
                                 geometry.leaf_sq_norms(zero, other))
    assert same["global"] == pytest.approx(1.0, rel=1e-6)


def test_topk_energy_of_rank_one_and_known_spectra():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(16, 1)), rng.normal(size=(1, 8))
    base = {"layers_0": {"mlp": {"up_proj": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)},
                                 "down_proj": {"kernel": jnp.zeros((2, 2), jnp.float32)}}},
            "norm": {"scale": jnp.ones((8,), jnp.float32)}}
    model = jax.tree.map(lambda x: x, base)
    model["layers_0"]["mlp"]["up_proj"]["kernel"] = base["layers_0"]["mlp"]["up_proj"]["kernel"] + u @ v
    model["layers_0"]["mlp"]["down_proj"]["kernel"] = jnp.diag(jnp.asarray([3.0, 4.0]))
    model["norm"]["scale"] = base["norm"]["scale"] + 1.0
    e = geometry.energy_stats(geometry.leaf_singular_values(base, model), ks=(1, 2))
    up = e["per_leaf"]["layers_0/mlp/up_proj/kernel"]
    assert up["top1"] == pytest.approx(1.0, abs=1e-5) and up["stable_rank"] == pytest.approx(1.0, abs=1e-4)
    down = e["per_leaf"]["layers_0/mlp/down_proj/kernel"]
    assert down["top1"] == pytest.approx(16 / 25) and down["top2"] == pytest.approx(1.0)
    assert "norm/scale" not in e["per_leaf"]  # only matrices have a spectrum
    full_rank = geometry.topk_energy(np.linalg.svd(rng.normal(size=(16, 8)), compute_uv=False), 1)
    assert 0 < full_rank < 0.5


def test_es_theory_and_trained_parameter_count():
    assert geometry.es_theory_norm(0.01, 400, 25, 4) == pytest.approx(0.01 * 50)
    params = {"layers_0": {"mlp": {"up_proj": {"kernel": jnp.zeros((4, 5))}}}, "norm": {"scale": jnp.zeros((3,))}}
    assert runs.trained_param_count(params) == 23
    assert runs.trained_param_count(params, ESConfig(freeze=("norm",))) == 20


# ---------------------------------------------------------------------------------------------------- KL
@pytest.fixture(scope="module")
def tiny(qwen2_dir):
    """(config, base params, fine-tuned params, tokenizer, sampling, conciseness prompts) on a tiny qwen2."""
    from esjax import tasks
    from esjax.generation.tokenizer import load_tokenizer
    model = load_model(qwen2_dir)
    leaves, tree = jax.tree.flatten(model.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    ft = jax.tree.unflatten(tree, [x + 0.03 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    tok = load_tokenizer(model.tokenizer_dir)
    sampling = sampling_for(model.config, tok, max_new_tokens=8)
    task = tasks.get("conciseness")
    prompts = PromptSet(task, tok, task.split("test")[:6], sampling.pad_token_id)
    return model.config, model.params, ft, tok, sampling, task, prompts


def test_exact_kl_matches_numpy_and_is_chunk_invariant(tiny):
    config, base, ft, _, sampling, _, prompts = tiny
    tokens, mask = (jnp.asarray(x) for x in prompts.rows(np.arange(6)))
    out = generate_jit(config, ft, tokens, mask, jax.random.key(0), kl.kl_sampling(sampling))
    res = kl.token_kl(config, ft, base, tokens, mask, out.tokens, sampling.eos_token_ids, chunk_size=8)
    chunked = kl.token_kl_jit(config, ft, base, tokens, mask, out.tokens, sampling.eos_token_ids, chunk_size=3)
    for x, y in zip(res, chunked):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    # direct: full logits of both models on prompt + completion, numpy log-softmax, KL at each completion position
    cmask = np.asarray(res.mask)
    seq = jnp.concatenate([tokens, out.tokens], axis=1)
    attention = jnp.concatenate([mask, jnp.asarray(cmask, jnp.int32)], axis=1)
    t = out.tokens.shape[1]
    def lsm(z):  # log-softmax in float64
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lf = lsm(np.asarray(forward(config, ft, seq, attention), np.float64))[:, -t - 1:-1]
    lb = lsm(np.asarray(forward(config, base, seq, attention), np.float64))[:, -t - 1:-1]
    exact = (np.exp(lf) * (lf - lb)).sum(-1)
    np.testing.assert_allclose(np.asarray(res.exact) * cmask, exact * cmask, rtol=1e-4, atol=1e-6)
    picked = np.take_along_axis(lf - lb, np.asarray(out.tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(res.k1) * cmask, picked * cmask, rtol=1e-4, atol=1e-5)
    assert cmask.sum() > 6 and np.all(np.asarray(res.k3) >= -1e-6) and np.all(np.asarray(res.exact) >= -1e-6)


@pytest.mark.slow
def test_k1_and_k3_are_unbiased_for_the_exact_kl(tiny):
    config, base, ft, _, sampling, _, prompts = tiny
    # 6 prompts x 48 samples: means over the sampled tokens vs the exact KL at the same prefixes
    result = kl.kl_drift(config, ft, base, prompts, sampling, jax.random.key(3), samples_per_prompt=48,
                         batch_size=96)
    assert result.num_sequences == 288 and result.num_tokens > 288
    assert result.exact > 0.01
    for est in ("k1", "k3"):
        diff = abs(getattr(result, est) - result.exact)
        assert diff < 4 * getattr(result, f"{est}_stderr"), (est, result)
    same = kl.kl_drift(config, base, base, prompts, sampling, jax.random.key(0), batch_size=4)
    assert same.exact == pytest.approx(0, abs=1e-6) and same.k1 == pytest.approx(0, abs=1e-6)
    assert same.num_sequences == 6  # the wrapped-around last batch is trimmed


# --------------------------------------------------------------------------------------------- interpolation
@pytest.mark.slow
def test_interpolation_endpoints_reproduce_the_models(tiny):
    config, base, ft, tok, sampling, task, prompts = tiny
    assert all(bool(jnp.all(x == y)) for x, y in zip(jax.tree.leaves(interpolation.lerp(base, ft, 0.0)),
                                                     jax.tree.leaves(base)))
    points = interpolation.curve(config, tok, task, prompts, sampling, lambda a: interpolation.lerp(base, ft, a),
                                 [0.0, 1.0], batch_size=8)
    for point, params in zip(points, (base, ft)):
        direct = evaluate(config, params, tok, task, prompts, sampling, 8)
        assert (point["accuracy"], point["mean_reward"]) == (direct.accuracy, direct.mean_reward)
    u = interpolation.unit_direction(base, ft)
    r = interpolation.random_unit_direction(jax.random.key(0), base, ft)
    norm = lambda t: float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(t))))  # noqa: E731
    assert norm(u) == pytest.approx(1.0, rel=1e-5) and norm(r) == pytest.approx(1.0, rel=1e-5)
    for lu, lr in zip(jax.tree.leaves(u), jax.tree.leaves(r)):  # same per-leaf norm profile
        assert float(jnp.linalg.norm(lr.ravel())) == pytest.approx(float(jnp.linalg.norm(lu.ravel())), rel=1e-4)
    moved = interpolation.along(base, u, norm(jax.tree.map(jnp.subtract, ft, base)))
    for x, y in zip(jax.tree.leaves(moved), jax.tree.leaves(ft)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_barrier_and_grids():
    flat = [{"x": x, "accuracy": 0.2 + 0.2 * x} for x in (0.0, 0.5, 1.0)]
    assert interpolation.barrier(flat) == pytest.approx(0.0)
    dip = [{"x": 0.0, "accuracy": 0.5}, {"x": 0.25, "accuracy": 0.1}, {"x": 1.0, "accuracy": 0.3},
           {"x": 1.2, "accuracy": 0.0}]
    assert interpolation.barrier(dip) == pytest.approx(0.75 * 0.5 + 0.25 * 0.3 - 0.1)
    assert interpolation.barrier([{"x": 0.5, "accuracy": 1.0}]) is None
    assert interpolation.parse_grid("-0.2:1.2:8", ()) == pytest.approx([-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2])
    assert interpolation.parse_grid("0, .5,1", ()) == [0.0, 0.5, 1.0]
    assert len(interpolation.parse_grid(None, np.linspace(0, 1, 11))) == 11
    with pytest.raises(ValueError, match="START:STOP:NUM"):
        interpolation.parse_grid("0:1", ())


# --------------------------------------------------------------------------------------------- end to end
def perturbed(model, seed, scale):
    leaves, tree = jax.tree.flatten(model.params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def fake_run(root, base_dir, stages, method="es"):
    """A run directory as esjax train leaves it (config.yaml + stages/<k>-<task>), with hand-made params."""
    root.mkdir()
    tasks = ", ".join("{name: %s, iterations: %d, options: {prompt_style: short, counts: [3], test_size: 16}}"
                      % (name, it) if name == "countdown_procedural" else "{name: %s, iterations: %d}" % (name, it)
                      for name, it, _ in stages)
    settings = load_settings(None, [f"model.path={base_dir}", f"method={method}", f"stages=[{tasks}]",
                                    "es.population_size=8", "es.alpha=0.01", "sampling.max_new_tokens=5"])
    save_settings(settings, root / "config.yaml")
    base = load_model(base_dir)
    for k, (name, _, params) in enumerate(stages):
        save_model(root / "stages" / f"{k}-{name}", base.config, params, source_dir=base_dir)
    return root


def parse(argv):
    parser = argparse.ArgumentParser(prog="esjax")
    analysis_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.slow
def test_analyze_end_to_end_writes_the_report(qwen2_dir, tmp_path):
    base = load_model(qwen2_dir)
    s0 = perturbed(base, 1, 0.02)
    s1 = jax.tree.map(lambda a, p, b: a + (p - b), s0, perturbed(base, 2, 0.02), base.params)  # continues from s0
    run = fake_run(tmp_path / "es_run", qwen2_dir, [("conciseness", 3, s0), ("countdown_procedural", 2, s1)])
    save_model(tmp_path / "other", base.config, perturbed(base, 3, 0.01), source_dir=qwen2_dir)
    out = tmp_path / "report"
    args = parse(["analyze", "--base", str(qwen2_dir), "--model", f"es={run}", "--model", f"other={tmp_path / 'other'}",
                  "--tasks", "countdown_procedural,conciseness", "--out", str(out), "--limit", "3",
                  "--grid=-0.5:1:4", "--probe-grid", "0,1", "--topk", "1,2", "--no-progress"])
    args.func(args)
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"geometry", "accuracy", "kl", "drift", "interpolation", "probes"}
    assert report["models"]["es"]["method"] == "es" and report["models"]["es"]["stage"] == 1
    assert report["settings"]["max_new_tokens"] == 5  # from the run's config
    theory = report["geometry"]["theory"]["es"]
    d = sum(np.size(x) for x in jax.tree.leaves(base.params))
    assert (theory["iterations"], theory["population"], theory["trained_params"]) == (5, 8, d)
    assert theory["theory"] == pytest.approx(0.01 * math.sqrt(d * 5 / 8))
    assert [p["iterations"] for p in theory["points"]] == [3, 5]
    assert "other" not in report["geometry"]["theory"]
    assert report["kl"]["es"]["conciseness"]["on_task"] is True
    assert report["kl"]["other"]["conciseness"]["on_task"] is None
    drift = report["drift"]["es_run"]
    assert drift["stages"] == ["0-conciseness", "1-countdown_procedural"] and np.array(drift["exact"]).shape == (2, 2)
    assert set(report["interpolation"]) == {"base->es", "base->other", "es->other"}
    points = report["interpolation"]["base->es"]["conciseness"]["points"]
    assert [p["x"] for p in points] == pytest.approx([-0.5, 0.0, 0.5, 1.0])
    assert points[1]["accuracy"] == report["accuracy"]["base"]["conciseness"]["accuracy"]
    assert set(report["probes"]["tasks"]["conciseness"]) == {"es", "random(es)", "other", "random(other)"}
    md = (out / "report.md").read_text()
    for png in ("norms_per_layer", "norms_per_module", "cosine_per_layer", "energy_topk", "displacement", "kl_exact",
                "drift_es_run", "interp_conciseness", "probes_countdown_procedural"):
        assert (out / f"{png}.png").stat().st_size > 1000 and f"({png}.png)" in md


def test_bad_input_raises_one_line_errors(qwen2_dir, tmp_path):
    from esjax.tasks import UnknownTaskError

    def run(*extra, model=None):
        args = parse(["analyze", "--base", str(qwen2_dir), "--model", model or f"m={qwen2_dir}", "--tasks",
                      "conciseness", "--out", str(tmp_path / "o"), "--no-progress", *extra])
        args.func(args)
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        run(model=str(qwen2_dir))
    with pytest.raises(FileNotFoundError, match="no such model"):
        run(model=f"m={tmp_path / 'missing'}")
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'"):
        args = parse(["analyze", "--base", str(qwen2_dir), "--model", f"m={qwen2_dir}", "--tasks", "nope",
                      "--out", str(tmp_path / "o")])
        args.func(args)
    with pytest.raises(ValueError, match="unknown section"):
        run("--skip", "kl,bogus")
    with pytest.raises(ValueError, match="reserved"):
        run(model=f"base={qwen2_dir}")
    with pytest.raises(ValueError, match="ALPHA,N,T"):
        run("--es-hparams", "m=0.1,8")
    assert not (tmp_path / "o").exists()


def test_a_run_directory_never_runs_its_task_file_without_the_flag(qwen2_dir, tmp_path, capsys):
    """Proof of concept: a run directory someone sent, whose config.yaml names a Python task file that would
    create a marker when imported. ``esjax analyze`` refuses with one line (exit 2) and the file is never
    imported; only --trust-task-file imports it."""
    import shutil

    from esjax.cli.commands import main
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    run = tmp_path / "run"
    run.mkdir()
    save_settings(load_settings(None, [f"model.path={qwen2_dir}", "task.name=evil_task", f"task.file={evil}",
                                       "train.devices=1"]),
                  run / "config.yaml")
    shutil.copytree(qwen2_dir, run / "stages" / "0-evil_task")
    out = tmp_path / "report"
    argv = ["analyze", "--base", str(qwen2_dir), "--model", f"sent={run}", "--tasks", "evil_task", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust-task-file" in err and "evil.py" in err
    assert not marker.exists() and not out.exists()
    assert main([*argv, "--trust-task-file"]) == 2  # imported (it registers no task: unknown task)
    assert marker.read_text() == "code ran" and "unknown task 'evil_task'" in capsys.readouterr().err

"""Two real JAX processes (jax.distributed over localhost, gloo CPU collectives), two simulated devices each.

They run the real training loop (3 ES iterations, 2 GRPO iterations, orbax checkpoints, stage saves) and must end
with exactly the parameters of a one-process run over the same number of devices; then a model-sharded state
goes through an orbax save / restore round trip with both processes taking part.

Run as a script, this file is the worker: ``python test_distributed_multiprocess.py OUT MODEL_DIR TASK_FILE``
with ``ESJAX_COORDINATOR`` / ``ESJAX_NUM_PROCESSES`` / ``ESJAX_PROCESS_ID`` set (as ``esjax.distributed`` reads).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

DEVICES_PER_PROCESS = 2

TASK_FILE = textwrap.dedent('''
    """A task whose reward varies with any completion text, so that a random tiny model gets a nonzero update."""
    from esjax.tasks import Task, register

    @register("byte_sum", replace=True)
    class ByteSum(Task):
        name = "byte_sum"
        truncated_reward = None  # score truncated completions too

        def __init__(self):
            super().__init__({"train": [{"prompt": f"count to {i}:"} for i in range(12)],
                              "test": [{"prompt": f"say {i}"} for i in range(4)]})

        def prompt(self, example):
            return example["prompt"]

        def score(self, completion, example):
            reward = (sum(completion.encode()) % 97) / 96.0
            return reward, {"answer": float(reward > 0.5)}
''')


def run_overrides(model_dir, task_file):
    common = [f"model.path={model_dir}", "task.name=byte_sum", f"task.file={task_file}", "task.eval_splits=[]",
              "train.eval_every=0", "sampling.max_new_tokens=5",
              "train.checkpoint_every=2", "train.devices=4"]
    es = common + ["train.iterations=3", "train.prompts_per_iteration=3", "es.population_size=8", "es.sigma=0.05",
                   "es.alpha=0.02", "es.antithetic=true"]
    grpo = common + ["method=grpo", "train.iterations=2", "train.prompts_per_iteration=2", "sampling.temperature=1.0",
                     "grpo.num_generations=4", "grpo.learning_rate=0.01",
                     "grpo.adam_eps=0.001"]  # damps Adam's amplification of rounding in near-zero gradients
    return {"es": es, "grpo": grpo}


def train_both(out, model_dir, task_file):
    """Train ES then GRPO; returns {method: (summary, final params leaves as numpy)}."""
    import jax
    import numpy as np

    from esjax.models import load_model
    from esjax.run.settings import load_settings
    from esjax.run.loop import train

    results = {}
    for method, overrides in run_overrides(model_dir, task_file).items():
        summary = train(load_settings(None, overrides), Path(out) / method, progress=False)
        params = load_model(summary["final_model"]).params  # an orbax restore: every process takes part
        results[method] = (summary, [np.asarray(x) for x in jax.tree.leaves(params)])
    return results


def checkpoint_round_trip(out):
    """A state split over a ("population", "model") mesh spanning both processes: save, restore, compare shards."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from esjax import distributed
    from esjax.run.checkpoints import RunCheckpoints
    from esjax.models import config_from_hf, init_params, load_model, save_model
    from esjax.models.sharding import param_shardings, shard_tree

    config = config_from_hf(dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True, eos_token_id=0))
    mesh = distributed.build_mesh({"population": -1, "model": 2})
    host = init_params(config, jax.random.key(3))
    params = shard_tree(jax.device_get(host), mesh, config)
    state = {"params": params, "step": distributed.replicate(np.int32(7), mesh),
             "key": distributed.replicate(jax.random.key(5), mesh)}
    checkpoints = RunCheckpoints(Path(out) / "ckpt", keep=1)
    checkpoints.save(1, state, {"iteration": 1, "process_count": jax.process_count()})
    target = jax.tree.map(lambda x: x if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else jnp.zeros_like(x),
                          state)
    restored, meta = checkpoints.restore(target)
    checkpoints.close()
    assert meta == {"iteration": 1, "process_count": jax.process_count()}, meta
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert a.sharding == b.sharding, (a.sharding, b.sharding)
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        for sa, sb in zip(a.addressable_shards, b.addressable_shards):
            assert np.array_equal(np.asarray(sa.data), np.asarray(sb.data))
    saved = save_model(Path(out) / "model", config, params, overwrite=True)
    loaded = load_model(saved, sharding=lambda c: param_shardings(mesh, c)).params
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        assert a.sharding == b.sharding
        for sa, sb in zip(a.addressable_shards, b.addressable_shards):
            assert np.array_equal(np.asarray(sa.data), np.asarray(sb.data))
    return True


def worker(out, model_dir, task_file):
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from esjax import distributed

    info = distributed.initialize()
    assert (info.num_processes, jax.device_count(), jax.local_device_count()) == (2, 4, DEVICES_PER_PROCESS), info
    import numpy as np

    t0 = time.perf_counter()
    results = train_both(out, model_dir, task_file)
    ok = checkpoint_round_trip(Path(out) / "round_trip")
    if distributed.is_main_process():
        np.savez(Path(out) / "params.npz", **{f"{m}_{i}": x for m, (_, leaves) in results.items()
                                              for i, x in enumerate(leaves)})
        (Path(out) / "result.json").write_text(json.dumps({"round_trip": ok, "seconds": time.perf_counter() - t0}))
    print(f"process {info.process_id} done in {time.perf_counter() - t0:.1f}s", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    import jax
    import numpy as np

    from esjax.models import load_model
    from esjax.testing import make_tiny_hf_model

    qwen2_dir = make_tiny_hf_model("qwen2", tmp_path / "qwen2", layer_types=["full_attention"],
                                   num_hidden_layers=1)  # one layer: faster compiles
    task_file = tmp_path / "byte_sum_task.py"
    task_file.write_text(TASK_FILE)
    port, out = _free_port(), tmp_path / "multi"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ESJAX_"))}
    env |= {"JAX_PLATFORMS": "cpu", "ESJAX_COORDINATOR": f"127.0.0.1:{port}", "ESJAX_NUM_PROCESSES": "2",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS} "
                         "--xla_backend_optimization_level=0"}
    procs = [subprocess.Popen([sys.executable, __file__, str(out), str(qwen2_dir), str(task_file)],
                              env=env | {"ESJAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        single = train_both(tmp_path / "single", qwen2_dir, task_file)  # meanwhile: one process, 4 of 8 devices
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, "\n".join(line for line in log.splitlines() if "Gloo" not in line)[-4000:]
    assert json.loads((out / "result.json").read_text())["round_trip"]
    multi = np.load(out / "params.npz")
    def strip(path):
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "seconds"))}
                for line in path.read_text().splitlines()]
    for method, (summary, leaves) in single.items():
        assert len(leaves) == 14
        initial = jax.tree.leaves(load_model(qwen2_dir).params)
        assert any(not np.allclose(np.asarray(a), b) for a, b in zip(initial, leaves)), f"{method} did not train"
        got, want = strip(out / method / "metrics.jsonl"), strip(tmp_path / "single" / method / "metrics.jsonl")
        if method == "es":  # only N fitness values cross processes and the update is replicated: bitwise equal
            for i, leaf in enumerate(leaves):
                assert np.array_equal(multi[f"es_{i}"], leaf), i
            assert got == want
        else:  # the gradient all-reduce sums in another order over gloo than inside one process
            for i, leaf in enumerate(leaves):
                np.testing.assert_allclose(multi[f"grpo_{i}"], leaf, rtol=1e-5, atol=1e-7)
            assert got == [pytest.approx(r, rel=1e-4, abs=1e-6) for r in want]
        # only process 0 wrote metrics, plots and the summary; every process took part in the orbax saves
        assert (out / method / "summary.json").is_file()
        assert (out / method / "checkpoints" / str(summary["iterations"])).is_dir()
        assert (out / method / "stages" / "0-byte_sum" / "esjax_model.json").is_file()

if __name__ == "__main__":
    worker(*sys.argv[1:4])

"""GRPO step throughput (rollout + scoring + loss + update), next to TRL's GRPOTrainer; log-prob pass memory.

    python benchmarks/grpo_step.py --shape tiny                                      # CPU (+ TRL if importable)
    python benchmarks/grpo_step.py --shape tiny --trl-python /tmp/trlvenv/bin/python # TRL from another venv
    python benchmarks/grpo_step.py --shape qwen2.5-0.5b --dtype bfloat16 --prompts 16 --chunk 128   # GPU

Every completion runs to ``--new-tokens`` (no EOS; TRL gets ``min_new_tokens``) so both sides do the same work.
TRL runs in a subprocess (``--trl-python``, default this interpreter, skipped when ``trl`` is not importable
there) on the same random model saved in HF format, with the same batch, lengths, sampling and loss settings.
Memory: XLA's compiled temp bytes (``memory_analysis``) of the log-prob pass with and without sequence chunking,
for this shape and for Qwen2.5-0.5B's output head (compiled only, never run). Writes
``benchmarks/grpo_step-<shape>-<platform>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import SHAPE_NAMES, device_info, model_config, peak_memory_bytes, write_result  # noqa: E402
from esjax.grpo import (GRPOConfig, completion_logps, data_mesh, grpo_init, grpo_step, make_runner,  # noqa: E402
                        token_logps)
from esjax.models import init_params  # noqa: E402
from esjax.generation.sampling import SamplingConfig  # noqa: E402

TRL_WORKER = r"""
import json, random, string, sys, tempfile, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
import trl

a = json.loads(sys.argv[1])
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(a["model_dir"])
model = AutoModelForCausalLM.from_pretrained(a["model_dir"], dtype=torch.float32)
rng = random.Random(0)
steps = a["warmup"] + a["repeats"]
prompts = ["".join(rng.choice(string.ascii_lowercase) for _ in range(a["prompt_len"]))
           for _ in range(a["prompts"] * steps)]
assert len(tok(prompts[0])["input_ids"]) == a["prompt_len"]

def reward(completions, **kwargs):
    return [float(c[:1] in "aeiou") for c in completions]

class Timer(TrainerCallback):
    times = []
    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)

with tempfile.TemporaryDirectory() as out:
    config = trl.GRPOConfig(
        output_dir=out, per_device_train_batch_size=a["prompts"] * a["generations"],
        num_generations=a["generations"], max_completion_length=a["new_tokens"],
        generation_kwargs={"min_new_tokens": a["new_tokens"]}, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=1e-6, beta=0.0, loss_type="grpo", num_iterations=1, gradient_accumulation_steps=1,
        gradient_checkpointing=False, use_cpu=True, bf16=False, report_to="none", logging_steps=10**6,
        save_strategy="no", max_steps=steps, shuffle_dataset=False, seed=0, disable_dropout=True)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=config, processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[Timer()])
    trainer.train()
times = Timer.times[a["warmup"]:]
print("TRL_RESULT " + json.dumps({"trl": trl.__version__, "torch": torch.__version__,
                                  "torch_threads": torch.get_num_threads(), "step_s_all": times,
                                  "step_s": sorted(times)[len(times) // 2]}))
"""


def esjax_steps(config, model, params, sampling, prompts, mask, steps, devices=None):
    """Per-step seconds of ``grpo_step`` and of its rollout / train parts (first step: compilation), on a data mesh
    of ``devices`` (default: all)."""
    runner = make_runner(config, model, sampling, data_mesh(devices))
    state = grpo_init(runner, params, jax.random.key(0))
    marks = {}

    def score(tokens, lengths, finished, prompt):
        marks["scored"] = time.perf_counter()
        even = tokens[:, 0] % 2 == 0
        return even.astype(np.float32), even

    rows = []
    for _ in range(steps):
        start = time.perf_counter()
        state, result = grpo_step(runner, state, prompts, mask, score)
        metrics = result.record()
        end = time.perf_counter()
        rows.append({"step_s": end - start, "rollout_s": marks["scored"] - start, "train_s": end - marks["scored"]})
    return rows, metrics, runner, state


def measure_grpo(model, params, prompts: int, generations: int, prompt_len: int, new_tokens: int, chunk: int,
                 repeats: int, devices=None, grad_accum_steps: int = 1) -> dict:
    """Median seconds of a full GRPO step (rollout of prompts x generations rows to exactly ``new_tokens``, scoring,
    loss, update in ``grad_accum_steps`` micro-batches) over ``repeats`` steps after a first one that compiles, on
    ``devices`` (default: all). ``params`` are donated."""
    config = GRPOConfig(num_generations=generations, learning_rate=1e-6, logprob_chunk_size=chunk,
                        grad_accum_steps=grad_accum_steps)
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, eos_token_ids=(), pad_token_id=1)
    rows_n = prompts * generations
    rng = np.random.default_rng(0)
    tokens = rng.integers(8, min(model.vocab_size, 264), (prompts, prompt_len)).astype(np.int32)  # x G in the step
    rows, metrics, _, _ = esjax_steps(config, model, params, sampling, tokens, np.ones_like(tokens), 1 + repeats,
                                      devices)
    median = lambda key: float(np.median([r[key] for r in rows[1:]]))  # noqa: E731
    step_s = median("step_s")
    return {"prompts": prompts, "generations": generations, "rows": rows_n, "prompt_len": prompt_len,
            "new_tokens": new_tokens, "dtype": str(jax.tree.leaves(params)[0].dtype), "logprob_chunk_size": chunk,
            "grad_accum_steps": grad_accum_steps,
            "first_step_s_incl_compile": round(rows[0]["step_s"], 3), "step_s": round(step_s, 4),
            "rollout_s": round(median("rollout_s"), 4), "train_s": round(median("train_s"), 4),
            "completion_tokens_per_s": round(rows_n * new_tokens / step_s, 1),
            "total_tokens_per_s": round(rows_n * (prompt_len + new_tokens) / step_s, 1),
            "peak_memory_bytes": peak_memory_bytes(),
            "final_metrics": {k: float(f"{v:.5g}") for k, v in metrics.items()}}


def temp_bytes(fn, *args) -> int:
    """XLA's temp (scratch) bytes of ``jit(fn)`` compiled for ``args`` (arrays or ShapeDtypeStructs)."""
    return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def head_memory(vocab, hidden, rows, length, chunk, dtype) -> dict[str, int]:
    """Temp bytes of value_and_grad of the summed log-probs through the output head, unchunked vs chunked.

    ``*_grad_hidden``: gradient w.r.t. the hidden states only (the logits' share); ``*_grad_head``: also w.r.t. the
    [V, D] head, whose float32 gradient accumulator is a fixed cost that chunking cannot remove.
    """
    spec = jax.ShapeDtypeStruct
    args = (spec((rows, length, hidden), dtype), spec((vocab, hidden), dtype), spec((rows, length), jnp.int32))

    def loss(chunk_size, h, w, targets):
        logps, _ = token_logps(h, lambda x: jnp.einsum("btd,vd->btv", x, w, preferred_element_type=jnp.float32),
                               targets, chunk_size=chunk_size)
        return logps.sum()

    result = {"logits_f32_bytes": rows * length * vocab * 4}
    for name, argnums in (("grad_hidden", 0), ("grad_head", (0, 1))):
        for label, c in (("unchunked", None), ("chunked", chunk)):
            fn = jax.value_and_grad(lambda h, w, t, c=c: loss(c, h, w, t), argnums=argnums)
            result[f"{label}_temp_bytes_{name}"] = temp_bytes(fn, *args)
    return result


def model_logprob_memory(model, params, rows, prompt_len, new_tokens, chunk) -> dict[str, int]:
    """Temp bytes of value_and_grad of the summed completion log-probs of the whole model, unchunked vs chunked."""
    tokens = jax.ShapeDtypeStruct((rows, prompt_len + new_tokens), jnp.int32)

    def fn(c):
        def loss(p, t):
            return completion_logps(model, p, t, jnp.ones_like(t), new_tokens, chunk_size=c)[0].sum()
        return jax.value_and_grad(loss)

    return {"unchunked_temp_bytes": temp_bytes(fn(None), params, tokens),
            "chunked_temp_bytes": temp_bytes(fn(chunk), params, tokens)}


def trl_step_seconds(python, model, params, args) -> dict | str:
    """TRL's median GRPO step seconds in a subprocess, or why it was skipped."""
    probe = subprocess.run([python, "-c", "import trl"], capture_output=True)
    if probe.returncode:
        return f"skipped: trl is not importable by {python}"
    from esjax.models import save_hf
    from esjax.generation.tokenizer import build_byte_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, params, Path(tmp) / "m")
        build_byte_tokenizer(Path(tmp) / "m")
        job = dict(model_dir=str(Path(tmp) / "m"), prompts=args.prompts, generations=args.generations,
                   prompt_len=args.prompt_len, new_tokens=args.new_tokens, warmup=1, repeats=args.repeats)
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"TOKENIZERS_PARALLELISM": "false"}
        run = subprocess.run([python, "-c", TRL_WORKER, json.dumps(job)], capture_output=True, text=True, env=env)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("TRL_RESULT ")]
    if run.returncode or not lines:
        return "failed: " + (run.stderr or run.stdout)[-2000:]
    return json.loads(lines[-1].removeprefix("TRL_RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=SHAPE_NAMES)
    ap.add_argument("--prompts", type=int, default=4, help="B, prompts per step")
    ap.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--chunk", type=int, default=16, help="logprob_chunk_size of the esjax step")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trl-python", default=sys.executable, help="interpreter that has trl (compared on CPU)")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    model = model_config(args.shape)
    params = jax.jit(init_params, static_argnums=(0, 2))(model, jax.random.key(0), args.dtype)
    host_params = jax.device_get(params)  # init_state keeps params without a copy and the step donates them
    result = {"benchmark": "grpo_step", "shape": args.shape, "params": model.num_params(), **device_info(),
              **measure_grpo(model, params, args.prompts, args.generations, args.prompt_len, args.new_tokens,
                             args.chunk, args.repeats)}
    rows_n = args.prompts * args.generations
    completion_tokens = rows_n * args.new_tokens
    result["logprob_memory"] = {
        "model": model_logprob_memory(model, host_params, rows_n, args.prompt_len, args.new_tokens, args.chunk),
        "qwen2.5-0.5b_head": {"vocab": 151936, "hidden": 896,
                              **head_memory(151936, 896, rows_n, args.new_tokens, args.chunk, jnp.dtype(args.dtype))},
    }
    if not args.no_trl and result["platform"] == "cpu":
        trl = trl_step_seconds(args.trl_python, model, host_params, args)
        result["trl"] = trl
        if isinstance(trl, dict):
            result |= {"trl_step_s": round(trl["step_s"], 4),
                       "trl_completion_tokens_per_s": round(completion_tokens / trl["step_s"], 1),
                       "speedup_vs_trl": round(trl["step_s"] / result["step_s"], 2)}
    out = args.out or Path(__file__).parent / f"grpo_step-{args.shape}-{result['platform']}.json"
    write_result(out, result)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

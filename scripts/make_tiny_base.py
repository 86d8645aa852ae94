#!/usr/bin/env python
"""Train the embedded tiny Countdown model from scratch on CPU and write it as an HF model directory.

Supervised traces: prompt (``countdown_procedural``, short style) + ``</think>\\n<answer>EXPR</answer>`` + EOS,
where EXPR is the generator's solution without its outer parentheses; the loss is on completion tokens only.
Training data comes from the task's "train" split under ``--data-seed``. Every ``--eval-every`` steps the model is
scored (greedy) on a validation set, the first ``--val-size`` problems of split "test" under ``--data-seed``
(test-split problems are never trained on, and the first problems of a deduplicated stream are distributed like
the held-out set, unlike its tail); training stops at the first checkpoint whose validation accuracy reaches
``--stop-acc`` (or after ``--steps``). The saved files are then scored on the fixed held-out set (the first
``--eval-size`` problems of split "test" of the task with seed 0) and the result is recorded in ``esjax_base.json``.
Deterministic on a given machine (fixed seeds; XLA CPU); about 3 minutes on 2 CPU cores.

    python scripts/make_tiny_base.py --out esjax/assets/tiny_countdown --overwrite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="esjax/assets/tiny_countdown", help="output HF model directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--seed", type=int, default=0, help="init and batch-order seed")
    p.add_argument("--data-seed", type=int, default=1, help="task seed of the training traces (eval uses seed 0)")
    # task
    p.add_argument("--number-range", type=int, nargs=2, default=(1, 30))
    p.add_argument("--counts", type=int, nargs="+", default=(3,))
    p.add_argument("--operations", default="+-*/")
    p.add_argument("--target-range", type=int, nargs=2, default=(1, 100))
    p.add_argument("--train-problems", type=int, default=16000, help="distinct training problems")
    p.add_argument("--val-size", type=int, default=500, help="validation problems (split 'test' under --data-seed)")
    # model
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=264)
    # optimisation
    p.add_argument("--steps", type=int, default=3000, help="maximum training steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--stop-acc", type=float, default=0.2, help="stop at the first checkpoint with val accuracy >= this")
    # held-out eval
    p.add_argument("--eval-size", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--save-dtype", default="float32", choices=("float32", "bfloat16"))
    return p.parse_args(argv)


def completion_text(example) -> str:
    solution = example["solution"]
    if solution.startswith("(") and solution.endswith(")"):
        solution = solution[1:-1]  # the outer parentheses of the whole expression
    return f"</think>\n<answer>{solution}</answer>"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import jax
    import jax.numpy as jnp
    import optax

    jax.config.update("jax_default_matmul_precision", "highest")  # as the test suite runs

    from esjax import tasks
    from esjax.run.embedded import BASE_FILE, evaluate_greedy
    from esjax.models import config_from_hf, forward, init_params, load_model, save_hf
    from esjax.generation.tokenizer import build_byte_tokenizer

    t_start = time.time()
    task_options = dict(prompt_style="short", counts=list(args.counts), number_range=list(args.number_range),
                        operations=list(args.operations), target_range=list(args.target_range))
    train_task = tasks.get("countdown_procedural", seed=args.data_seed, **{
        k: tuple(v) if isinstance(v, list) else v for k, v in task_options.items()})
    eval_task = tasks.get("countdown_procedural", seed=0, **{
        k: tuple(v) if isinstance(v, list) else v for k, v in task_options.items()})
    tokenizer = build_byte_tokenizer()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    # data -----------------------------------------------------------------------------------------------
    train = train_task.generate(args.train_problems, "train")
    val = train_task.generate(args.val_size, "test")  # never trained on; distributed like the held-out set
    held_out = eval_task.generate(args.eval_size, "test")
    rows, starts = [], []
    for ex in train:
        prompt = tokenizer(train_task.render_prompt(ex), add_special_tokens=False)["input_ids"]
        completion = tokenizer(completion_text(ex), add_special_tokens=False)["input_ids"] + [eos]
        rows.append(prompt + completion)
        starts.append(len(prompt))
    check = train[0]
    joint = tokenizer(train_task.render_prompt(check) + completion_text(check), add_special_tokens=False)["input_ids"]
    assert joint == rows[0][:-1], "prompt and completion must tokenize independently"
    longest_completion = max(len(r) - s for r, s in zip(rows, starts))
    assert longest_completion <= args.max_new_tokens, (longest_completion, args.max_new_tokens)
    length = max(map(len, rows))
    tokens = np.full((len(rows), length), pad, np.int32)
    attn = np.zeros((len(rows), length), np.int32)
    weights = np.zeros((len(rows), length), np.float32)  # 1 where the token at t+1 is a completion token
    for i, (r, s) in enumerate(zip(rows, starts)):
        tokens[i, :len(r)] = r
        attn[i, :len(r)] = 1
        weights[i, s - 1:len(r) - 1] = 1.0
    n_train_rewards = sum(train_task.reward(completion_text(ex), ex)[1]["answer"] for ex in train[:200])
    assert n_train_rewards == 200, "the reference completions must score"
    print(f"data: {len(train)} train traces (len <= {length}, completion <= {longest_completion} tokens incl. EOS), "
          f"{len(val)} val, {len(held_out)} held-out test; {time.time() - t_start:.1f}s", flush=True)

    # model ----------------------------------------------------------------------------------------------
    hf_config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": args.vocab_size,
        "hidden_size": args.hidden, "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "hidden_act": "silu",
        "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "use_sliding_window": False, "attention_dropout": 0.0, "initializer_range": 0.02,
        "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": pad, "torch_dtype": args.save_dtype,
    }
    config = config_from_hf(hf_config, {"eos_token_id": eos, "pad_token_id": pad})
    params = init_params(config, jax.random.key(args.seed))
    print(f"model: qwen2 hidden={args.hidden} layers={args.layers} heads={args.heads}/{args.kv_heads} "
          f"ffn={args.intermediate} vocab={args.vocab_size}: {config.num_params():,} params", flush=True)

    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup, args.steps, args.lr * 0.1)
    decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=args.weight_decay, mask=decay_mask))
    opt_state = optimizer.init(params)

    def loss_fn(p, tok, mask, w):
        logits = forward(config, p, tok, mask)[:, :-1]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:])
        return jnp.sum(ce * w[:, :-1]) / jnp.sum(w[:, :-1])

    @jax.jit
    def train_step(p, state, tok, mask, w):
        loss, grads = jax.value_and_grad(loss_fn)(p, tok, mask, w)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(rows))
    cursor, losses, history = 0, [], []
    stopped_at, t_train = args.steps, time.time()
    for step in range(1, args.steps + 1):
        if cursor + args.batch_size > len(order):
            order, cursor = rng.permutation(len(rows)), 0
        idx = np.sort(order[cursor:cursor + args.batch_size])
        cursor += args.batch_size
        params, opt_state, loss = train_step(params, opt_state, tokens[idx], attn[idx], weights[idx])
        losses.append(float(loss))
        if step % args.eval_every == 0 or step == args.steps:
            res = evaluate_greedy(config, params, tokenizer, train_task, val, args.max_new_tokens)
            history.append({"step": step, "loss": round(float(np.mean(losses[-args.eval_every:])), 5),
                            "val_accuracy": res["accuracy"], "val_mean_reward": round(res["mean_reward"], 5)})
            print(f"step {step:5d}  loss {history[-1]['loss']:.4f}  val acc {res['accuracy']:.3f}  "
                  f"reward {res['mean_reward']:.3f}  format {res['mean_format']:.2f}  "
                  f"{time.time() - t_train:.0f}s  e.g. {res['completions'][0]!r}", flush=True)
            if res["accuracy"] >= args.stop_acc:
                stopped_at = step
                break
    train_seconds = time.time() - t_train

    # save + held-out eval of the saved files --------------------------------------------------------------
    out = Path(args.out)
    save_hf(config, params, out, dtype=args.save_dtype, overwrite=args.overwrite)
    build_byte_tokenizer(out)
    out.chmod(0o755)  # save_hf writes through a private temporary directory
    model = load_model(out)
    from esjax.generation.tokenizer import load_tokenizer

    tok = load_tokenizer(out)
    settings = {"split": "test", "size": args.eval_size, "max_new_tokens": args.max_new_tokens, "temperature": 0.0,
                "batch_size": args.eval_size}
    res = evaluate_greedy(model.config, model.params, tok, eval_task, held_out, args.max_new_tokens,
                          settings["batch_size"])
    in_memory = evaluate_greedy(config, params, tokenizer, eval_task, held_out, args.max_new_tokens, args.eval_size)
    print(f"held-out test: accuracy {res['accuracy']:.3f}  mean reward {res['mean_reward']:.4f}  "
          f"(in-memory params: {in_memory['accuracy']:.3f})", flush=True)
    info = {
        "format": 1,
        "description": "Tiny Qwen2 trained from scratch on procedural Countdown traces by scripts/make_tiny_base.py",
        "task": {"name": "countdown_procedural", "options": {"seed": 0, **task_options}},
        "training": {
            "script": "scripts/make_tiny_base.py", "args": vars(args) | {"counts": list(args.counts),
                                                                        "number_range": list(args.number_range),
                                                                        "target_range": list(args.target_range)},
            "data": (f"first {args.train_problems} problems of split 'train' of the task with seed={args.data_seed}; "
                     "completion '</think>\\n<answer>' + solution without outer parentheses + '</answer>' + EOS; "
                     "loss on completion tokens only"),
            "validation": (f"first {args.val_size} problems of split 'test' of the task with seed={args.data_seed} "
                           "(checkpoint selection only)"),
            "optimizer": (f"AdamW(b1=0.9, b2=0.98, wd={args.weight_decay} on matrices), clip 1.0, warmup-cosine "
                          f"lr {args.lr} over {args.steps} steps ({args.warmup} warmup, floor 0.1x)"),
            "steps_run": stopped_at, "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - t_start, 1), "history": history,
            "platform": f"{platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__}",
        },
        "model": {"params": config.num_params(), "dtype": args.save_dtype},
        "eval": {
            "definition": (f"countdown_procedural with the task options above (seed 0), split 'test', first "
                           f"{args.eval_size} problems (task.generate({args.eval_size}, 'test')); raw short prompts; "
                           f"greedy decoding, max_new_tokens={args.max_new_tokens}, EOS id {eos}, all prompts in one "
                           "batch; completions decoded with skip_special_tokens=True; accuracy = task.is_correct"),
            "settings": settings,
            "accuracy": res["accuracy"], "correct": round(res["accuracy"] * res["n"]),
            "mean_reward": round(res["mean_reward"], 6), "mean_format": round(res["mean_format"], 6),
            "truncated": res["truncated"],
        },
    }
    (out / BASE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.2f} MB) in "
          f"{time.time() - t_start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ES paper's training loop, ported to CPU, on ``esjax demo``'s model, problems, reward and shape: the yardstick
for esjax's first iteration (``benchmarks/es_costs.py --sections start`` runs it as a fresh process).

    python benchmarks/reference_loop.py --iterations 4          # prints one JSON line

The loop is the one of github.com/VsonicV/es-fine-tuning-paper (``es_fine-tuning_countdown.py``), in PyTorch eager
mode with transformers' model: per iteration, N seeds; per member, every parameter perturbed in place
(``torch.Generator.manual_seed(seed)``, ``randn``, ``add_(sigma * noise)``), greedy ``model.generate`` for the
iteration's prompts (left-padded), the rewards scored, then the same noise subtracted; the rewards z-scored; per
parameter the noise regenerated from each seed, weighted, summed, divided by N and added times alpha. Its
shape is the demo's (``esjax/assets/demo_es.yaml``): the embedded model (float32), N = 64 (the paper draws no
antithetic pairs: 64 draws), 50 Countdown problems per iteration in esjax's batch order, 24 new tokens, the
task's own reward. Nothing is compiled, so its first iteration costs about what the later ones do.

Output: ``process_s`` (wall, this process), ``start_s`` (imports, model, tokenizer, problems: before the first
iteration), ``iterations_s`` (each iteration's wall seconds), ``first_iteration_s``, ``steady_iteration_s`` (the
median of the later ones), ``torch_threads``.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: its fastest for this tiny model on a "
                    "loaded machine, where 2 threads spin-wait: 0.09 s vs 2.7-5.4 s per generate call at load ~8)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esjax.cli.commands import DEMO_CONFIG
    from esjax.run.embedded import EMBEDDED_MODEL_DIR
    from esjax.run.settings import load_settings
    from esjax.run.stages import batch_indices, load_task

    torch.set_num_threads(args.threads)
    settings = load_settings(DEMO_CONFIG)
    stage = settings.task_stages()[0]
    task = load_task(stage)
    examples = task.split(stage.train_split)[: stage.train_limit]
    es, batch = settings.es, settings.train.prompts_per_iteration
    model = AutoModelForCausalLM.from_pretrained(str(EMBEDDED_MODEL_DIR), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(EMBEDDED_MODEL_DIR))
    tokenizer.padding_side = "left"
    params = [p for _, p in model.named_parameters()]
    generator = torch.Generator()

    def add_noise(seed: int, scale: float) -> None:
        for param in params:
            generator.manual_seed(seed)
            param.data.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))

    def mean_reward(rows: list[dict]) -> float:
        enc = tokenizer([task.prompt(e) for e in rows], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=settings.sampling.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return float(np.mean([task.reward(t, e)[0] for t, e in zip(texts, rows)]))

    population = es.population_size
    start_s = time.perf_counter() - START
    seconds = []
    for it in range(args.iterations):
        t0 = time.perf_counter()
        rows = [examples[i] for i in batch_indices(settings.train.seed, 0, it, batch, len(examples))]
        seeds = np.random.default_rng(it).integers(0, 2 ** 30, population)
        rewards = []
        for seed in seeds:
            add_noise(int(seed), es.sigma)
            rewards.append(mean_reward(rows))
            add_noise(int(seed), -es.sigma)
        r = np.asarray(rewards)
        z = (r - r.mean()) / (r.std() + 1e-8)
        for param in params:
            update = torch.zeros_like(param)
            for seed, w in zip(seeds, z):
                generator.manual_seed(int(seed))
                noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                noise.mul_(float(w))
                update.add_(noise)
            update.div_(population)
            param.data.add_(es.alpha * update)
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"process_s": round(time.perf_counter() - START, 3), "start_s": round(start_s, 3),
                      "iterations_s": [round(s, 3) for s in seconds], "first_iteration_s": round(seconds[0], 3),
                      "steady_iteration_s": round(float(np.median(seconds[1:] or seconds)), 3),
                      "torch_threads": torch.get_num_threads(), "population": population, "prompts": batch,
                      "max_new_tokens": settings.sampling.max_new_tokens}))


if __name__ == "__main__":
    main()

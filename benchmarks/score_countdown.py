"""Score 10,000 Countdown completions (paper reward) on one core; goal: under one second.

The mix is deterministic (seeded) and built from procedurally generated problems, so no data file is needed:
35% correct (full format, 200-2000 characters of reasoning), 20% wrong (bad value, reused or missing numbers),
20% malformed (missing or unclosed tags, ``9**9**9``, ``=``, LaTeX), 10% several answer blocks, 10% long
(~4,000-8,000 characters, the length of a 1024-token truncated completion, no answer), 5% empty or short.

    python benchmarks/score_countdown.py [--n 10000] [--out benchmarks/score_countdown.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import esjax.tasks as tasks  # noqa: E402

WORDS = "so we need to reach the target let me try adding then subtracting the larger numbers first".split()


def reasoning(rng: random.Random, chars: int) -> str:
    out, n = [], 0
    while n < chars:
        if rng.random() < 0.8:
            w = rng.choice(WORDS)
        else:
            w = f"{rng.randint(1, 99)} {rng.choice('+-*/')} {rng.randint(1, 99)}"
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def make_completion(rng: random.Random, ex: dict) -> str:
    nums, sol = ex["numbers"], ex["solution"]
    think = reasoning(rng, rng.randint(200, 2000))
    kind = rng.random()
    if kind < 0.35:  # correct
        return f"{think}</think>\n<answer>{sol}</answer>"
    if kind < 0.55:  # wrong: value, reused or missing numbers
        bad = rng.choice([f"{sol} + 1", " + ".join(map(str, nums)), " * ".join(map(str, nums[:-1])),
                          f"{nums[0]} + {nums[0]} - {nums[-1]}"])
        return f"{think}</think>\n<answer>{bad}</answer>"
    if kind < 0.75:  # malformed
        return rng.choice([f"{think} <answer>{sol}", f"{think}</think>\n<answer>{sol} = {ex['target']}</answer>",
                           f"{think}</think>\n<answer>9**9**9</answer>", f"{think}</think>\\boxed{{{sol}}}",
                           f"{think}</think>\n<answer>\\frac{{{nums[0]}}}{{{nums[1]}}}</answer>", think])
    if kind < 0.85:  # several answer blocks
        return f"{think}</think>\n<answer>{nums[0]} + 1</answer> wait <answer>{sol}</answer>"
    if kind < 0.95:  # long, truncated, no answer
        return reasoning(rng, rng.randint(4000, 8000))
    return rng.choice(["", "</think>", "<answer></answer>", "I cannot solve this."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", default=str(Path(__file__).with_name("score_countdown.json")))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    task = tasks.get("countdown_procedural", seed=0, train_size=500, test_size=1)
    problems = task.split("train")
    rng = random.Random(0)
    pairs = [(make_completion(rng, ex), ex) for ex in (problems[i % len(problems)] for i in range(args.n))]
    task.reward(*pairs[0])  # warm-up
    reward = task.reward
    start = time.perf_counter()
    rewards = [reward(c, ex)[0] for c, ex in pairs]
    seconds = time.perf_counter() - start
    result = {
        "completions": args.n,
        "seconds": round(seconds, 4),
        "per_completion_us": round(seconds / args.n * 1e6, 2),
        "mean_chars": round(sum(len(c) for c, _ in pairs) / args.n, 1),
        "mean_reward": round(sum(rewards) / args.n, 4),
        "correct_fraction": round(sum(r >= 1.0 for r in rewards) / args.n, 4),
        "machine": {"python": platform.python_version(), "implementation": platform.python_implementation(),
                    "system": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "cores_used": 1},
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""``esjax plan`` for every shipped paper config on its recommended TPU slice, deviceless, and the table of
docs/scaling.md section 7.

    python benchmarks/plan_configs.py --run          # compile them all (needs libtpu: pip install 'esjax[tpu]')
    python benchmarks/plan_configs.py                # print the markdown table from benchmarks/plans/*.json

Each plan is ``esjax plan CONFIG --topology SLICE --set ... --json benchmarks/plans/<config>-<slice>.json``: every
program compiled by libtpu's compiler for the slice on this (CPU) machine, memory per chip from
``compiled.memory_analysis()``. The paper's N = 30 splits over 2 population groups, so a 4-chip v5p-8 runs a
model axis of 2 (the 7B/8B configs set it; the others get ``--set train.model_parallel=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "plans"
MP2 = ("train.model_parallel=2",)
# (config, slice, --set overrides): the recommended slice of each paper config
PLANS = [(c, "v5p-8", ()) for c in ("es_countdown_qwen2.5-7b", "es_countdown_llama3.1-8b")] + [
    (c, "v5p-8", MP2) for c in (
        "es_countdown_qwen2.5-0.5b", "es_countdown_qwen2.5-1.5b", "es_countdown_qwen2.5-3b", "es_countdown_llama3.2-1b",
        "es_countdown_llama3.2-3b", "es_sequential_qwen3-4b", "es_sequential_llama3.2-3b", "grpo_sequential_qwen3-4b",
        "grpo_sequential_llama3.2-3b", "es_conciseness_qwen2.5-7b_sigma1.0e-3")]
# and one smaller slice each: v5e (16 GiB chips) for the small models, v6e-4 (4 x 32 GiB) for the 7B/8B ones
SMALLER = [(c, "v5e-4", MP2) for c in ("es_countdown_qwen2.5-0.5b", "es_countdown_qwen2.5-1.5b",
                                       "es_countdown_llama3.2-1b")] + [
    (c, "v5e-8", ("train.model_parallel=4",)) for c in (
        "es_countdown_qwen2.5-3b", "es_countdown_llama3.2-3b", "es_sequential_qwen3-4b", "es_sequential_llama3.2-3b",
        "grpo_sequential_qwen3-4b", "grpo_sequential_llama3.2-3b")] + [
    (c, "v6e-4", ()) for c in ("es_countdown_qwen2.5-7b", "es_countdown_llama3.1-8b",
                               "es_conciseness_qwen2.5-7b_sigma1.0e-3")]
GiB = 1 << 30


def run(config: str, slice_name: str, sets: tuple[str, ...]) -> int:
    cmd = [sys.executable, "-m", "esjax.cli", "plan", str(ROOT / "configs" / f"{config}.yaml"), "--topology",
           slice_name, "--json", str(OUT / f"{config}-{slice_name}.json")] + [a for s in sets for a in ("--set", s)]
    env = os.environ | {"TPU_SKIP_MDS_QUERY": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(cmd, env=env).returncode


def table() -> str:
    rows = ["| config | slice | model axis | members at once | rollout GiB | update GiB | evaluate GiB | chip GiB | "
            "fits | compiled / formula (rollout, update, evaluate) | compile s (rollout / update / evaluate) |",
            "|" + "---|" * 11]
    for path in sorted(OUT.glob("*.json")):
        r = json.loads(path.read_text())
        progs = {p["program"].split()[-1]: p for p in r["programs"]}
        gib = lambda name: f"{progs[name]['total'] / GiB:.2f}"  # noqa: E731
        ratio = lambda p: f"{p['total'] / p['formula']:.2f}" if p.get("formula") else "-"  # noqa: E731
        rows.append(f"| {Path(r['config']).stem} {' '.join('--set ' + s for s in r['overrides'])} | "
                    f"{r['target']['name']} | {r['mesh'].get('model', 1)} | {r['members_at_once'] or '-'} | "
                    f"{gib('rollout')} | {gib('update')} | {gib('evaluate')} | "
                    f"{r['target']['memory_bytes'] / GiB:.0f} | {'yes' if r['fits'] else 'no'} | "
                    f"{', '.join(ratio(progs[k]) for k in ('rollout', 'update', 'evaluate'))} | "
                    f"{' / '.join(str(round(progs[k]['compile_s'])) for k in ('rollout', 'update', 'evaluate'))} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="compile every plan (skips those with a JSON already)")
    ap.add_argument("--smaller", action="store_true", help="also each config's smaller slice (SMALLER)")
    args = ap.parse_args()
    if args.run:
        OUT.mkdir(exist_ok=True)
        for config, slice_name, sets in PLANS + (SMALLER if args.smaller else []):
            if not (OUT / f"{config}-{slice_name}.json").is_file():
                run(config, slice_name, sets)
    print(table())


if __name__ == "__main__":
    main()

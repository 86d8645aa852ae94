"""``esjax analyze``: register the subcommand (:func:`add_parser`) and run it (:func:`run`).

Bad input raises ValueError / FileNotFoundError with a one-line message; esjax's CLI turns those into exit 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from esjax.analysis import SECTIONS
from esjax.cli.args import positive_int


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1")
    return values


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``); sets
    ``func=run``."""
    p = subparsers.add_parser(
        "analyze", help="compare a base model with fine-tuned ones: update geometry, KL drift, interpolation",
        description="Update norms/cosines/low-rankness, KL(model || base) on each task's prompts, continual drift "
                    "matrices, linear interpolation and direction probes; writes report.json, report.md and PNGs.")
    p.add_argument("--base", required=True, metavar="PATH", help="HF dir, esjax checkpoint, run dir or 'embedded'")
    p.add_argument("--model", action="append", default=[], required=True, metavar="NAME=PATH",
                   help="a fine-tuned model (repeat); PATH may be a run directory or RUN/stages/<k>-<task>")
    p.add_argument("--tasks", required=True, metavar="NAME[,NAME]", help="tasks whose prompts are used")
    p.add_argument("--task-option", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="task options (default: the options the models' runs trained with)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, default=200, help="prompts per task (default 200)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: the runs' setting, else 128")
    p.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch")
    p.add_argument("--grid", default=None, metavar="START:STOP:NUM|A,B,..",
                   help="interpolation points a (default 0:1:11; use --grid=-0.2:1.2:15 for extrapolation)")
    p.add_argument("--probe-grid", default=None, metavar="START:STOP:NUM|A,B,..",
                   help="probe distances as fractions of the largest update norm (default 0,.25,.5,.75,1,1.5)")
    p.add_argument("--kl-samples", type=positive_int, default=1, help="sampled completions per prompt for KL")
    p.add_argument("--kl-batch-size", type=positive_int, default=64)
    p.add_argument("--kl-chunk", type=positive_int, default=64, help="completion positions per logits chunk")
    p.add_argument("--topk", type=_ints, default=(1, 4, 16), metavar="K[,K]", help="top-k energy fractions")
    p.add_argument("--es-hparams", action="append", default=[], metavar="NAME=ALPHA,N,T",
                   help="ES theory inputs for a model outside an ES run directory")
    p.add_argument("--skip", default="", metavar="SECTION[,SECTION]", help=f"any of {','.join(SECTIONS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-task-file", action="store_true",
                   help="import the Python task files the runs' config.yaml name (runs code from those directories)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def options_from_args(args: argparse.Namespace):
    """:class:`esjax.analysis.Options` from parsed arguments."""
    from esjax.analysis.analyze import Options
    from esjax.analysis.interpolation import parse_grid
    defaults = Options()
    return Options(split=args.split, limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                   grid=tuple(parse_grid(args.grid, defaults.grid, "--grid")),
                   probe_grid=tuple(parse_grid(args.probe_grid, defaults.probe_grid, "--probe-grid")),
                   kl_samples=args.kl_samples, kl_batch_size=args.kl_batch_size, kl_chunk=args.kl_chunk,
                   topk=tuple(args.topk), seed=args.seed,
                   skip=frozenset(s.strip() for s in args.skip.split(",") if s.strip()),
                   progress=not args.no_progress and sys.stderr.isatty())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``esjax analyze`` from parsed arguments; prints where the report went and returns the report."""
    from esjax.analysis.analyze import analyze
    from esjax.analysis.runs import parse_es_hparams, parse_named, parse_task_options
    options = options_from_args(args)
    models = parse_named(args.model)
    report = analyze(args.base, models, args.tasks.split(","), args.out, options,
                     parse_task_options(args.task_option), parse_es_hparams(args.es_hparams), args.trust_task_file)
    print(f"wrote {args.out}/report.json and {args.out}/report.md")
    for name, norms in report.get("geometry", {}).get("norms", {}).items():
        print(f"  ||delta {name}|| = {norms['global']:.4g}")
    for pair, cos in report.get("geometry", {}).get("cosine", {}).items():
        print(f"  cos({pair}) = {cos['global']:.4g}" if cos["global"] is not None else f"  cos({pair}) = n/a")
    return report

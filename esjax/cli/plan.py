"""``esjax plan``: register the subcommand (:func:`add_parser`) and run it (:func:`run`).

Compiles every program of a run for its target devices (a TPU slice, deviceless through libtpu, or the local
devices) and prints the memory one device needs per program (:mod:`esjax.run.planner`). Exit 2 with one line for an
unknown topology, a config that cannot be planned or libtpu missing; exit 1 when the run does not fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from esjax.cli.args import positive_int


def _gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of GiB, got {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``plan`` subcommand to ``subparsers``; sets ``func=run``."""
    p = subparsers.add_parser(
        "plan", help="compile a run for its target devices and report the memory one device needs",
        description="Lower and compile the run's programs (ES rollout + update or GRPO rollout + update, and the "
                    "evaluation generate) with abstract parameters (no weights read) for a TPU slice or the local "
                    "devices; per program: arguments, temporaries, outputs, aliased bytes, total vs device memory, "
                    "FLOPs, compile time; when it does not fit, the smallest change that does.")
    p.add_argument("config", metavar="CONFIG", help="YAML file (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. es.sigma=0.002")
    p.add_argument("--topology", default="local", metavar="NAME",
                   help="local (default: this host's devices) or a TPU slice: v4-8, v5e-8/v5litepod-8, v5p-16, v6e-8")
    p.add_argument("--prompt-len", type=positive_int, default=128,
                   help="prompt tokens (the run buckets its longest prompt to a power of two; default 128)")
    p.add_argument("--device-memory", type=_gib, default=None, metavar="GIB",
                   help="memory per device to plan against (default: the target's; CPU devices report none)")
    p.add_argument("--no-search", action="store_true", help="do not look for a change that fits")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    from esjax.run.planner import format_plan, plan
    from esjax.run.topology import GiB, target
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"{args.config}: config file not found")
    if args.json and not Path(args.json).parent.is_dir():
        raise FileNotFoundError(f"--json {args.json}: no such directory {Path(args.json).parent}")
    import jax
    # the plan reports compile times, so it compiles (and a deviceless TPU executable cannot be read back from the
    # persistent cache anyway: JAX warns on every lookup)
    jax.config.update("jax_enable_compilation_cache", False)
    device = target(args.topology)
    memory = int(args.device_memory * GiB) if args.device_memory else None
    report = plan(args.config, args.set, device, args.prompt_len, memory, search=not args.no_search,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_plan(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if not report["fits"]:
        sys.exit(1)

"""The ``esjax`` command line. User errors (:class:`esjax.common.errors.EsjaxError`, and the OS refusing a file)
print one line on stderr and exit with code 2; any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from esjax.cli.args import (EXIT_USER_ERROR, OneLineParser, nonnegative_float, nonnegative_int, positive_int,
                            probability, seed)
from esjax.cli.quiet import quiet_libraries
from esjax.common.errors import EsjaxError

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "assets" / "demo_es.yaml"


class UsageError(EsjaxError):
    """Bad input from the user (message printed as is)."""


def _load(path: str, dtype: str | None = None):
    from esjax.models import load_model
    from esjax.models.decoder import with_layer_scan
    model = load_model(path, dtype=dtype)  # a folder, a checkpoint or a Hub ID; ModelNotFoundError otherwise
    return model._replace(config=with_layer_scan(model.config))  # the layers scanned where that pays (TPUs)


def cmd_convert(args: argparse.Namespace) -> None:
    from esjax.models import save_model
    from esjax.models.hub import resolve_model_path
    source = resolve_model_path(args.from_hf)
    model = _load(str(source), args.dtype)
    if model.source_dir is None or not Path(source, "config.json").is_file():
        raise UsageError(f"{args.from_hf}: --from-hf expects a Hugging Face model directory")
    out = save_model(args.out, model.config, model.params, source_dir=model.source_dir, overwrite=args.overwrite)
    print(f"wrote esjax checkpoint {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from esjax.models import describe_hf, open_model, save_hf
    from esjax.models.export import parse_size
    if args.max_shard_size is not None:
        parse_size(args.max_shard_size, "--max-shard-size")  # before loading anything
    model = open_model(args.model)  # an esjax checkpoint's weights stay on disk, read as they are written
    out = save_hf(model.config, model.params, args.to_hf, source_dir=model.source_dir, dtype=args.dtype,
                  max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    layout = f"shards of at most {args.max_shard_size}" if args.max_shard_size else "the source's shard layout"
    print(f"wrote Hugging Face model {out}: {describe_hf(out)}; {layout}")


def cmd_generate(args: argparse.Namespace) -> None:
    import jax

    from esjax.generation.inference import generate_texts, model_sampling, unsupported_generation_fields
    from esjax.generation.sampling import EmptyPromptError
    from esjax.generation.tokenizer import load_tokenizer
    if args.greedy and any(v is not None for v in (args.temperature, args.top_p, args.top_k)):
        raise UsageError("--greedy cannot be combined with --temperature, --top-p or --top-k")
    model = _load(args.model, args.dtype)
    if model.tokenizer_dir is None:
        raise UsageError(f"{args.model}: no tokenizer files next to the model")
    tokenizer = load_tokenizer(model.tokenizer_dir)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    flags = {"temperature": 0.0, "top_p": 1.0, "top_k": 0} if args.greedy else \
        {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    sampling = model_sampling(model.config, tokenizer, max_new_tokens=args.max_new_tokens, **flags)
    try:
        texts, _ = generate_texts(model.config, model.params, tokenizer, [prompt] * args.num_samples, sampling,
                                  jax.random.key(args.seed))
    except EmptyPromptError:
        raise UsageError(f"--prompt {args.prompt!r} encodes to no tokens with the model's tokenizer "
                         f"({type(tokenizer).__name__} from {model.tokenizer_dir})") from None
    how = "greedy" if sampling.greedy else (f"temperature {sampling.temperature:g}, top_p {sampling.top_p:g}, "
                                            f"top_k {sampling.top_k}")
    ignored = unsupported_generation_fields(model.config)
    note = f"; not applied: {', '.join(f'{k} {v}' for k, v in ignored.items())}" if ignored else ""
    print(f"decoding: {how}, at most {sampling.max_new_tokens} new tokens (flags over the model's "
          f"generation_config.json{note})", file=sys.stderr)
    for i, text in enumerate(texts):
        if args.num_samples > 1:
            print(f"--- sample {i}")
        print(text)


def cmd_train(args: argparse.Namespace) -> None:
    import time

    from esjax import distributed
    from esjax.run.record import check_settings_record
    from esjax.run.resume import resume_settings
    from esjax.run.settings import load_settings
    from esjax.run.loop import train
    info = distributed.initialize()  # joins a multi-process run (env / SLURM / Cloud TPU); no-op otherwise
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR (the run directory to continue)")
    if info.num_processes > 1 and not args.out:
        raise UsageError("a multi-process run needs --out DIR, one directory on a filesystem all hosts share")
    if args.allow_changes and not args.resume:
        raise UsageError("--allow-changes applies to --resume only")
    changes = {}
    if args.resume:
        check_settings_record(args.out)  # before config.yaml is read: it must be what the checkpoints record
        settings, changes = resume_settings(args.out, args.config, args.set, args.allow_changes, args.trust_task_file)
    else:
        settings = load_settings(args.config, args.set)
    out = args.out or f"runs/{Path(args.config).stem if args.config else 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = train(settings, out, resume=args.resume, progress=not args.no_progress, changes=changes)
    if distributed.is_main_process():
        _print_summary(summary)


def _print_summary(summary: dict) -> None:
    if "test_accuracy_before" in summary:
        print(f"test accuracy: {summary['test_accuracy_before']:.3f} -> {summary['test_accuracy_after']:.3f}")
    print(f"run directory: {summary['run_dir']}")
    for plot in summary.get("plots", []):
        print(f"plot: {plot}")
    print(f"final model: {summary['final_model']}")


def _task_options(pairs: list[str]) -> dict:
    from esjax.run.settings import parse_yaml
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--task-option {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        options[key] = parse_yaml(value, f"--task-option {key}")
    return options


def cmd_eval(args: argparse.Namespace) -> None:
    import json

    from esjax import tasks
    from esjax.run.evaluate import PromptSet, evaluate
    from esjax.generation.inference import sampling_for
    from esjax.generation.tokenizer import load_tokenizer
    from esjax.run.stages import resolve_model_path
    model = _load(str(resolve_model_path(args.model)), args.dtype)
    if model.tokenizer_dir is None:
        raise UsageError(f"{args.model}: no tokenizer files next to the model")
    if args.task_file:
        tasks.load_task_file(args.task_file)
    task = tasks.get(args.task, **_task_options(args.task_option))
    tokenizer = load_tokenizer(model.tokenizer_dir)
    examples = task.split(args.split)[: args.limit]
    sampling = sampling_for(model.config, tokenizer, max_new_tokens=args.max_new_tokens)
    prompts = PromptSet(task, tokenizer, examples, sampling.pad_token_id)
    progress = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm
        progress = tqdm(total=len(examples), desc=f"eval {args.task}/{args.split}", unit="ex")
    result = evaluate(model.config, model.params, tokenizer, task, prompts, sampling, args.batch_size, progress)
    if progress is not None:
        progress.close()
    summary = {"model": args.model, "task": args.task, "split": args.split, **result.summary()}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.task}/{args.split}: accuracy {result.accuracy:.4f}, mean reward {result.mean_reward:.4f} "
              f"over {result.num_examples} examples (mean length {result.mean_length:.1f} tokens)")


def cmd_demo(args: argparse.Namespace) -> None:
    """The README's main job: ES fine-tuning of the embedded tiny model on Countdown, on CPU, in minutes."""
    import time

    from esjax.run.settings import load_settings
    from esjax.run.loop import train
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR (the demo run directory to continue)")
    if args.resume:
        from esjax.run.record import check_settings_record
        from esjax.run.resume import resume_settings
        check_settings_record(args.out)
        settings, _ = resume_settings(args.out, None, args.set)  # the demo run's saved settings
    else:
        settings = load_settings(DEMO_CONFIG, args.set)
    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    es = settings.es
    task = settings.task_stages()[-1]
    if "test" not in task.eval_splits:
        raise UsageError(f"task.eval_splits={list(task.eval_splits)}: the demo reports test accuracy, keep 'test'")
    print(f"esjax demo: ES fine-tuning of the embedded tiny model (330k params) on Countdown, on CPU\n"
          f"  population {es.population_size} (antithetic pairs), sigma {es.sigma}, alpha {es.alpha}, "
          f"{settings.train.iterations} iterations x {settings.train.prompts_per_iteration} fresh problems; "
          f"test accuracy on {task.eval_limit} held-out problems, greedy", flush=True)
    start = time.perf_counter()
    summary = train(settings, out, resume=args.resume, progress=not args.no_progress)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nbase test accuracy:       {summary['test_accuracy_before']:.1%}")
    print(f"fine-tuned test accuracy: {summary['test_accuracy_after']:.1%}  "
          f"({100 * (summary['test_accuracy_after'] - summary['test_accuracy_before']):+.1f} points, {minutes:.1f} min)")
    print(f"run directory: {summary['run_dir']}")
    print(f"reward plot:   {summary['plots'][0]}")
    print(f"export to Hugging Face format:\n  esjax export {summary['final_model']} --to-hf {summary['run_dir']}/hf")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="esjax", description="ES and GRPO fine-tuning of LLMs in JAX.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show other libraries' warnings and logs (transformers, absl, orbax); ESJAX_VERBOSE=1 too")
    sub = parser.add_subparsers(dest="command", required=True)
    dtypes = ["float32", "bfloat16", "float16"]

    p = sub.add_parser("convert", help="HF model directory -> esjax (orbax) checkpoint")
    p.add_argument("--from-hf", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="CKPT")
    p.add_argument("--dtype", choices=dtypes, default=None, help="parameter dtype (default: the checkpoint's)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="esjax checkpoint or HF directory -> HF safetensors directory")
    p.add_argument("model", metavar="CKPT_OR_DIR")
    p.add_argument("--to-hf", required=True, metavar="OUT")
    p.add_argument("--dtype", choices=dtypes, default=None, help="weight dtype (default: the params')")
    p.add_argument("--max-shard-size", default=None, metavar="SIZE",
                   help="e.g. 500MB, 2GB or bytes (default: the source's shard layout, else 5GB shards)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("--model", required=True, metavar="PATH")
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="default: the model's generation_config.json, else 64")
    p.add_argument("--temperature", type=nonnegative_float, default=None,
                   help="0 = greedy (default: the model's generation_config.json, as transformers' generate)")
    p.add_argument("--top-p", type=probability, default=None)
    p.add_argument("--top-k", type=nonnegative_int, default=None, help="0 = no top-k filter")
    p.add_argument("--greedy", action="store_true", help="greedy decoding whatever generation_config.json says")
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--dtype", choices=dtypes, default=None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="ES or GRPO fine-tuning from a YAML config")
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG", help="YAML file (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. es.sigma=0.002")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (default runs/<config>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its saved settings (config.yaml)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: apply CONFIG/--set settings that differ from the saved ones (recorded in "
                        "settings_history.jsonl)")
    p.add_argument("--trust-task-file", action="store_true",
                   help="with --resume and no CONFIG: import the Python task file the run's config.yaml names")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy and mean reward of a model on a task split (greedy)")
    p.add_argument("--model", required=True, metavar="PATH", help="HF dir, esjax checkpoint, or 'embedded'")
    p.add_argument("--task", required=True)
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task-file", default=None, help="a Python file registering the task")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--max-new-tokens", type=positive_int, default=1024)
    p.add_argument("--dtype", choices=dtypes, default=None)
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON line")
    p.set_defaults(func=cmd_eval)

    from esjax.cli.analyze import add_parser as add_analyze_parser
    add_analyze_parser(sub)
    from esjax.cli.plan import add_parser as add_plan_parser
    add_plan_parser(sub)
    from esjax.tasks.prepare import add_parser as add_data_parser
    add_data_parser(sub)

    p = sub.add_parser("demo", help="ES fine-tuning of the embedded tiny model on Countdown (CPU, minutes)")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (default runs/demo-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo setting")
    p.add_argument("--resume", action="store_true", help="continue the demo run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        from esjax.common.compile_cache import enable_compilation_cache
        enable_compilation_cache()  # before any jit: ESJAX_COMPILATION_CACHE or ~/.cache/esjax/xla
        func(args)
    except (EsjaxError, OSError) as e:  # bad input (and files the OS refuses); anything else is a bug: traceback
        print(f"esjax {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _one_line(error: BaseException) -> str:
    """The message of a user error on one line; an OSError as ``file: reason``."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        message = f"{error.filename}: {error.strerror}"
    else:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(message).split())

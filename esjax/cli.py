"""The ``esjax`` command line. User errors print one line on stderr and exit with code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

EXIT_USER_ERROR = 2


class UsageError(Exception):
    """Bad input from the user (message printed as is)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from esjax.models import CheckpointError, ModelConfigError
    from esjax.models.safetensors_io import SafetensorsError
    return (UsageError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ModelConfigError,
            CheckpointError, SafetensorsError)


def _load(path: str, dtype: str | None = None):
    from esjax.models import load_model
    if not Path(path).exists():
        raise UsageError(f"{path}: no such model directory or checkpoint")
    return load_model(path, dtype=dtype)


def cmd_convert(args: argparse.Namespace) -> None:
    from esjax.models import save_model
    model = _load(args.from_hf, args.dtype)
    if model.source_dir is None or not Path(args.from_hf, "config.json").is_file():
        raise UsageError(f"{args.from_hf}: --from-hf expects a Hugging Face model directory")
    out = save_model(args.out, model.config, model.params, source_dir=model.source_dir, overwrite=args.overwrite)
    print(f"wrote esjax checkpoint {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from esjax.models import save_hf
    model = _load(args.model)
    out = save_hf(model.config, model.params, args.to_hf, source_dir=model.source_dir, dtype=args.dtype,
                  max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"wrote Hugging Face model {out}")


def cmd_generate(args: argparse.Namespace) -> None:
    import jax

    from esjax.inference import generate_texts, sampling_for
    from esjax.tokenizer import load_tokenizer
    model = _load(args.model, args.dtype)
    if model.tokenizer_dir is None:
        raise UsageError(f"{args.model}: no tokenizer files next to the model")
    tokenizer = load_tokenizer(model.tokenizer_dir)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    sampling = sampling_for(model.config, tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k)
    texts, _ = generate_texts(model.config, model.params, tokenizer, [prompt] * args.num_samples, sampling,
                              jax.random.key(args.seed))
    for i, text in enumerate(texts):
        if args.num_samples > 1:
            print(f"--- sample {i}")
        print(text)


def cmd_demo(args: argparse.Namespace) -> None:
    """Placeholder until the embedded model lands: generate with a random tiny model on a Countdown prompt."""
    import jax

    from esjax.inference import generate_texts, sampling_for
    from esjax.models import config_from_hf, init_params
    from esjax.tokenizer import build_byte_tokenizer
    config = config_from_hf(dict(model_type="qwen2", vocab_size=264, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True, eos_token_id=0, pad_token_id=1))
    tokenizer = build_byte_tokenizer()
    params = init_params(config, jax.random.key(0))
    texts, _ = generate_texts(config, params, tokenizer, ["Numbers: 3 7 2\nTarget: 17\n<think>"],
                              sampling_for(config, tokenizer, max_new_tokens=16))
    print(f"random tiny model says: {texts[0]!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esjax", description="ES and GRPO fine-tuning of LLMs in JAX.")
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
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("--model", required=True, metavar="PATH")
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=dtypes, default=None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the README's main job")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except _user_errors() as e:
        message = str(e) if not isinstance(e, KeyError) else e.args[0]
        print(f"esjax {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValueError as e:  # invalid settings reported by esjax's own validation
        print(f"esjax {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

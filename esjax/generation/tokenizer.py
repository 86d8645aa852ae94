"""Small byte-level tokenizers built locally (tests, the embedded model), saved as standard HF files.

The pipeline is Qwen2's (NFC, Qwen's split regex, byte-level BPE) with no merges, i.e. one token per byte:
transformers v5 rebuilds a ``qwen2``/``qwen3`` model's tokenizer with exactly that pipeline, so
``AutoTokenizer.from_pretrained`` gives the same ids whichever class it picks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from esjax.common.errors import InputError
from esjax.common.paths import check_tree

DEFAULT_SPECIAL = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
DEFAULT_ADDED = ("<think>", "</think>", "<answer>", "</answer>")
QWEN_SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                    r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_byte_tokenizer(out_dir: str | Path | None = None, special: Sequence[str] = DEFAULT_SPECIAL,
                         added: Sequence[str] = DEFAULT_ADDED):
    """A byte-level ``PreTrainedTokenizerFast``: ids are ``special`` tokens, then ``added`` words, then 256 bytes.

    EOS is ``special[0]``, PAD ``special[1]``; a ChatML-style chat template is attached. Saved to ``out_dir``
    (``tokenizer.json`` + ``tokenizer_config.json``) when given, loadable with ``AutoTokenizer``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate([*special, *added, *symbols])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], continuing_subword_prefix="", end_of_word_suffix="",
                                fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=special[0], pad_token=special[1],
                                  unk_token=special[0], additional_special_tokens=list(special[2:]))
    tok.add_tokens([AddedToken(t, normalized=False) for t in added])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(path: str | Path):
    """``AutoTokenizer`` from a directory, set up for left-padded batched generation. transformers reads what it
    finds there, so every file it could read must lie inside the directory (:func:`esjax.common.paths.check_tree`)
    and the tokenizer files must be regular files."""
    from transformers import AutoTokenizer

    from esjax.models.hf import tokenizer_files

    path = Path(path)
    check_tree(path, "tokenizer folder")
    names = {f.name for f in tokenizer_files(path)}
    if not names & {"tokenizer.json", "tokenizer_config.json"}:
        raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers/tokenizers raise many types for broken files; report which directory
        raise InputError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    tok.padding_side = "left"
    return tok

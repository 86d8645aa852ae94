"""Prompts as the model sees them: a raw text or a chat conversation, to text and to token ids.

A raw text prompt is encoded as its tokenizer encodes text by default, special tokens included (Llama 3's
``<|begin_of_text|>``; nothing for Qwen, whose tokenizer adds no BOS), as ``tokenizer(text)`` does in the
reference code. A chat conversation goes through the tokenizer's chat template, whose text already holds any
BOS the model expects, and is encoded without adding special tokens again (as transformers'
``apply_chat_template(tokenize=True)`` does), so no prompt gets a BOS twice.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from esjax.common.errors import EsjaxError

Prompt = str | Sequence[dict[str, str]]
_UNENCODABLE = re.compile("[\x00\ud800-\udfff]")  # NUL, and lone surrogates (no UTF-8 form)


class PromptError(EsjaxError, ValueError):
    """A prompt that is not text or a chat conversation of text, or holds characters no tokenizer takes."""


def check_prompt(prompt: Any, where: str = "prompt") -> None:
    """PromptError naming ``where`` unless ``prompt`` is a str, or a list of ``{"role": str, "content": str}``
    messages, free of NUL and lone surrogates (UTF-8 cannot encode them; tokenizers fail on them)."""
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                   and isinstance(m.get("content"), str) for m in prompt):
        texts = [m["content"] for m in prompt] + [m["role"] for m in prompt]
    else:
        raise PromptError(f"{where}: expected a string or a list of {{'role': str, 'content': str}} messages, got "
                          f"{type(prompt).__name__}")
    for text in texts:
        bad = _UNENCODABLE.search(text)
        if bad:
            raise PromptError(f"{where}: character U+{ord(bad.group()):04X} at offset {bad.start()} cannot be "
                              f"encoded (NUL or a lone surrogate); remove it")


def render(tokenizer: Any, prompt: Prompt) -> str:
    """A raw text prompt as is; a chat conversation through the tokenizer's chat template (generation prompt on)."""
    if isinstance(prompt, str):
        return prompt
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise PromptError("a chat prompt needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of one prompt (see the module docstring).

    Raw text that already starts with the tokenizer's BOS text is encoded without adding another one. A prompt
    :func:`check_prompt` refuses raises :class:`PromptError`.
    """
    check_prompt(prompt)
    text = render(tokenizer, prompt)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = isinstance(prompt, str) and not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt (:func:`encode_prompt`); a refused prompt's error names its index."""
    for i, p in enumerate(prompts):
        check_prompt(p, f"prompt {i}")
    return [encode_prompt(tokenizer, p) for p in prompts]

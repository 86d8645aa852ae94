"""Prompts as the model sees them: a raw text or a chat conversation, to text and to token ids.

A raw text prompt is encoded as its tokenizer encodes text by default, special tokens included (Llama 3's
``<|begin_of_text|>``; nothing for Qwen, whose tokenizer adds no BOS), as ``tokenizer(text)`` does in the
reference code. A chat conversation goes through the tokenizer's chat template, whose text already holds any
BOS the model expects, and is encoded without adding special tokens again (as transformers'
``apply_chat_template(tokenize=True)`` does), so no prompt gets a BOS twice.
"""

from __future__ import annotations

from typing import Any, Sequence

Prompt = str | Sequence[dict[str, str]]


def render(tokenizer: Any, prompt: Prompt) -> str:
    """A raw text prompt as is; a chat conversation through the tokenizer's chat template (generation prompt on)."""
    if isinstance(prompt, str):
        return prompt
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("a chat prompt needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of one prompt (see the module docstring).

    Raw text that already starts with the tokenizer's BOS text is encoded without adding another one.
    """
    text = render(tokenizer, prompt)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = isinstance(prompt, str) and not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt (:func:`encode_prompt`)."""
    return [encode_prompt(tokenizer, p) for p in prompts]

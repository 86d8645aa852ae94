"""Prompt encoding: raw text gets the tokenizer's BOS (as Llama 3's does), a chat-templated prompt gets it once."""

import re

import numpy as np
import pytest

from esjax import tasks
from esjax.run.evaluate import PromptSet
from esjax.generation.prompts import encode_prompt, encode_prompts, render
from esjax.generation.tokenizer import build_byte_tokenizer

BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
LLAMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def bos_tokenizer(tmp_path_factory):
    """A byte-level tokenizer whose post-processor prepends a BOS (as Llama 3's does), with a chat template that
    writes the BOS itself; saved and loaded back through ``AutoTokenizer`` as users load it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    special = [BOS, EOT, "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"]
    vocab = {t: i for i, t in enumerate(special + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                        special_tokens=[(BOS, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOT, pad_token="<|pad|>",
                                  additional_special_tokens=special[2:4])
    tok.chat_template = LLAMA_STYLE_TEMPLATE
    out = tmp_path_factory.mktemp("bos_tokenizer")
    tok.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))


def test_raw_text_gets_the_tokenizers_bos(bos_tokenizer):
    tok = bos_tokenizer
    bare = tok("Solve: 3 + 5 =", add_special_tokens=False)["input_ids"]
    assert bare and tok.bos_token_id not in bare
    ids = encode_prompt(tok, "Solve: 3 + 5 =")
    assert ids == [tok.bos_token_id] + bare == tok("Solve: 3 + 5 =")["input_ids"]
    # a raw prompt that already starts with the BOS text keeps exactly one
    assert encode_prompt(tok, BOS + "Solve: 3 + 5 =") == ids


def test_chat_prompt_gets_the_bos_once(bos_tokenizer):
    tok = bos_tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Numbers: [1, 2]"}]
    ids = encode_prompt(tok, messages)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    expected = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    assert ids == list(expected["input_ids"])  # what transformers itself encodes for a chat template
    assert tok.decode(ids) == render(tok, messages)


def test_tokenizer_without_bos_adds_nothing(tmp_path):
    from transformers import AutoTokenizer

    build_byte_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Solve: 3 + 5 ="
    assert encode_prompt(tok, text) == tok(text, add_special_tokens=False)["input_ids"]
    chat = [{"role": "user", "content": text}]
    assert encode_prompts(tok, [chat]) == [tok(render(tok, chat), add_special_tokens=False)["input_ids"]]


def test_prompt_set_rows_hold_one_bos(bos_tokenizer):
    tok = bos_tokenizer
    for name in ("conciseness", "boolq"):  # a raw-text task and a chat task
        task = tasks.get(name)
        examples = task.split("test")[:3]
        prompts = PromptSet(task, tok, examples, tok.pad_token_id)
        for row, mask, ex in zip(prompts.tokens, prompts.mask, examples, strict=True):
            ids = np.asarray(row)[np.asarray(mask, bool)].tolist()
            assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id, name
            assert ids == encode_prompt(tok, task.prompt(ex))


def test_chat_prompt_needs_a_template():
    with pytest.raises(ValueError, match="chat template"):
        render(None, [{"role": "user", "content": "hi"}])
    assert render(None, "raw") == "raw"


@pytest.mark.parametrize("prompt, needle", [
    ("a\ud800b", "U+D800 at offset 1"), ("a\x00b", "U+0000 at offset 1"),
    ([{"role": "user", "content": "x\udfff"}], "U+DFFF"), (5, "got int"),
    ([{"role": "user", "content": 5}], "got list"), ([{"content": "hi"}], "got list")])
def test_unencodable_prompts_are_one_error_naming_the_prompt(bos_tokenizer, prompt, needle):
    """Through the Python API (generate_texts, PromptSet): NUL, lone surrogates and non-text prompts are refused
    before the tokenizer sees them (it raised TypeError deep inside)."""
    from esjax.generation.prompts import PromptError
    with pytest.raises(PromptError, match=rf"^prompt 1: .*{re.escape(needle)}"):
        encode_prompts(bos_tokenizer, ["fine", prompt])
    assert encode_prompts(bos_tokenizer, ["é😀\t\n"])  # other characters are text

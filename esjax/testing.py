"""Tiny random Hugging Face models built locally with transformers (tests, benchmarks, docs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_FAMILIES = ("qwen2", "llama", "qwen3")


def tiny_hf_config(family: str, vocab_size: int = 272, **overrides: Any):
    """A small transformers config of each supported family, exercising that family's special features.

    qwen2: q/k/v bias, tied embeddings; llama: GQA 4:1, llama3 RoPE scaling, untied head;
    qwen3: q/k norm, explicit head_dim != hidden/heads, untied head.
    """
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    if family == "qwen2":
        cfg = transformers.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-6,
                                       rope_theta=10000.0)
    elif family == "llama":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64, "rope_theta": 500000.0}
        cfg = transformers.LlamaConfig(**common, num_key_value_heads=1, tie_word_embeddings=False, rms_norm_eps=1e-5,
                                       rope_parameters=rope)
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(**common, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                                       rms_norm_eps=1e-6, rope_theta=1000000.0)
    else:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(TINY_FAMILIES)})")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_tiny_hf_model(family: str, out_dir: str | Path, *, seed: int = 0, dtype: str = "float32",
                       with_tokenizer: bool = True, **overrides: Any) -> Path:
    """Save a random tiny transformers model (+ a byte-level tokenizer) to ``out_dir``; returns the path."""
    import torch
    import transformers

    from esjax.generation.tokenizer import build_byte_tokenizer

    out_dir = Path(out_dir)
    cfg = tiny_hf_config(family, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # random norm weights so the test sees them
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(out_dir))
    if with_tokenizer:
        build_byte_tokenizer(out_dir)
    return out_dir


def build_word_tokenizer(out_dir: str | Path, words: list[str]) -> None:
    """Save a custom word-level tokenizer (whitespace split, not byte-level BPE) as standard HF files.

    ``words[0]`` is EOS, ``words[1]`` PAD; other words map to ``[UNK]``. transformers 5 rebuilds a
    ``qwen2``/``qwen3`` model's tokenizer from the model type, so in such a model folder it encodes text to [].
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate([*words, "[UNK]"])}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=words[0], pad_token=words[1], unk_token="[UNK]")
    tok.save_pretrained(str(out_dir))


def make_hub_cache(model_dir: str | Path, hf_home: str | Path, repo_id: str, revisions: tuple[str, ...] = ("main",),
                   commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay out ``model_dir``'s files as huggingface_hub caches a download of ``repo_id``, under
    ``hf_home/hub/models--org--name``: each file's bytes in ``blobs/<sha256>``, ``snapshots/<commit>/<file>`` a
    relative symlink to its blob, and ``refs/<revision>`` holding the commit for every revision name. Returns the
    snapshot folder. With ``HF_HOME=hf_home`` and ``HF_HUB_OFFLINE=1``, ``repo_id`` loads from this cache."""
    import hashlib
    import os

    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(Path(model_dir).iterdir()):
        if not file.is_file():
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    for revision in revisions:
        (repo / "refs" / revision).write_text(commit)
    return snapshot

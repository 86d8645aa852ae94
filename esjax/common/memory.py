"""Per-device memory of an ES or GRPO iteration: the formulas of docs/scaling.md, in bytes.

Used by the start-of-run report (:mod:`esjax.run.plan`) and by ``benchmarks/scaling_model.py``; checked against
XLA's compiled memory analysis in ``benchmarks/compiled_memory.py``. ``mp`` is the model axis: a leaf split over it
costs 1/mp per device; KV heads that do not divide it are replicated (the cache does not split).
"""

from __future__ import annotations


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    """KV cache bytes of one token of one row: K and V, every layer."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def kv_split(kv_heads: int, mp: int) -> int:
    """How many ways the KV cache splits over the model axis (1 when the KV heads do not divide it)."""
    return mp if kv_heads % mp == 0 else 1


def decode_activations(rows: int, prompt_len: int, hidden: int, intermediate: int, heads: int, vocab: int, mp: int,
                       dtype_bytes: int = 2) -> float:
    """Temporaries of one batched decode of ``rows`` rows besides its KV cache, per device: the prefill's MLP (gate,
    up and their product, 3 x rows x P x I / mp), its attention scores and probabilities in float32
    (2 x rows x H / mp x P^2 x 4) and four hidden-size buffers (4 x rows x P x D), then the sampler's float32 logits
    and two copies of them (3 x rows x V x 4; the vocabulary gathered). What libtpu's compiled decodes hold on top of
    the cache (docs/scaling.md)."""
    prefill = rows * prompt_len * (3 * intermediate / mp + 4 * hidden) * dtype_bytes
    attention = 2 * rows * heads / mp * prompt_len ** 2 * 4
    return prefill + attention + 3 * rows * vocab * 4


def es_memory(params: int, largest_leaf: int, kv_per_token: int, kv_heads: int, mp: int, members: int,
              prompts: int, seq: int, noise: str, dtype_bytes: int = 2, master_fp32: bool = True,
              activations: float = 0.0) -> dict[str, float]:
    """Bytes per device of an ES iteration decoding ``members`` at once over ``prompts`` rows of ``seq`` tokens.

    weights: the params (W / mp); master_fp32: 4 d / mp; perturbed_copies: one W / mp per full-rank member decoded
    at once (low rank shares the weights); kv_cache: members x prompts x seq x kv_per_token / kv_split;
    activations: the decode's other temporaries (:func:`decode_activations` of members x prompts rows); the update
    draws a leaf's noise for all layers at once: an fp32 accumulator and one member's fp32 noise of the largest
    ``largest_leaf`` (elements, all layers of one name). The rollout and the update do not overlap:
    total = weights + master + max(copies + KV + activations, update) (:func:`es_programs` splits it by program).
    """
    weights = params * dtype_bytes / mp
    master = 4 * params / mp if master_fp32 else 0
    copies = members * weights if noise == "full" else 0
    kv = members * prompts * seq * kv_per_token / kv_split(kv_heads, mp)
    update = 2 * 4 * largest_leaf / mp
    return {"weights": weights, "master_fp32": master, "perturbed_copies": copies, "kv_cache": kv,
            "activations": activations, "update_transient": update,
            "total": weights + master + max(copies + kv + activations, update)}


def es_programs(terms: dict[str, float]) -> dict[str, float]:
    """Per-program bytes per device from :func:`es_memory`'s terms: the rollout and the update."""
    resident = terms["weights"] + terms["master_fp32"]
    return {"rollout": resident + terms["perturbed_copies"] + terms["kv_cache"] + terms["activations"],
            "update": resident + terms["update_transient"]}


def grpo_memory(params: int, kv_per_token: int, kv_heads: int, mp: int, rows: int, seq: int,
                dtype_bytes: int = 2, activations: float = 0.0) -> dict[str, float]:
    """Bytes per device of a GRPO step: params, an fp32 master for 16-bit params, Adam's m and v, fp32 gradients
    (2 + 4 + 8 + 4 bytes per parameter for bf16, / mp), the rollout's KV cache for ``rows`` rows and its decode
    ``activations`` (:func:`decode_activations`); the update's activations (backward through the policy) are not
    counted."""
    state = (dtype_bytes + (4 if dtype_bytes < 4 else 0) + 8 + 4) * params / mp
    kv = rows * seq * kv_per_token / kv_split(kv_heads, mp)
    return {"state": state, "kv_cache": kv, "activations": activations, "total": state + kv + activations}

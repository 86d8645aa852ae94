"""KL drift ``KL(fine-tuned || base)`` on a task's prompts, from completions sampled from the fine-tuned model.

For each completion token x_t (prefix h_t), with ``lf = log p_ft(.|h_t)`` and ``lb = log p_base(.|h_t)``:

    k1 = lf[x_t] - lb[x_t]                          unbiased, high variance, can be negative
    k3 = exp(lb[x_t] - lf[x_t]) - (lb[x_t] - lf[x_t]) - 1     unbiased, >= 0 (GRPO's KL penalty)
    exact = sum_v exp(lf[v]) * (lf[v] - lb[v])      the exact per-token KL at that prefix

All three are averaged over completion tokens (the completion mask: up to and including the first EOS).
``E[k1] = E[k3] = E[exact]`` under the fine-tuned model's sampling distribution, which is why completions are
sampled at temperature 1 with no top-k / top-p filter. The head runs in chunks of the completion
(``lax.map``), so ``B x chunk x V`` logits are the most ever held.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from esjax.run.evaluate import PromptSet
from esjax.grpo.logprobs import from_chunks, to_chunks
from esjax.grpo.losses import completion_mask
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params, hidden_states, logits_from_hidden
from esjax.generation.sampling import SamplingConfig, generate_jit

Array = jax.Array


def estimators(logp_ft: Array, logp_base: Array) -> tuple[Array, Array]:
    """Per-token ``(k1, k3)`` from the sampled tokens' log-probs under the fine-tuned and base models."""
    log_ratio = logp_base - logp_ft
    return -log_ratio, jnp.expm1(log_ratio) - log_ratio


class TokenKL(NamedTuple):
    """Per completion token, float32 [B, T] each."""

    k1: Array
    k3: Array
    exact: Array
    mask: Array  # 1 for completion tokens (up to and including the first EOS)


def _kl_chunk(config: ModelConfig, params_ft: Params, params_base: Params, h_ft: Array, h_base: Array,
              targets: Array) -> tuple[Array, Array, Array]:
    lf = jax.nn.log_softmax(logits_from_hidden(config, params_ft, h_ft).astype(jnp.float32), axis=-1)
    lb = jax.nn.log_softmax(logits_from_hidden(config, params_base, h_base).astype(jnp.float32), axis=-1)
    pick = lambda lp: jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]  # noqa: E731
    return pick(lf), pick(lb), jnp.sum(jnp.exp(lf) * (lf - lb), axis=-1)


def token_kl(config: ModelConfig, params_ft: Params, params_base: Params, prompt_tokens: Array, prompt_mask: Array,
             completions: Array, eos_token_ids: tuple[int, ...], chunk_size: int = 64) -> TokenKL:
    """k1, k3 and exact KL at every completion token.

    Args:
        prompt_tokens, prompt_mask: left-padded int32 [B, P] prompts and their 0/1 mask.
        completions: int32 [B, T] completion tokens (from the fine-tuned model, padded after the EOS).
        eos_token_ids: ids that end a completion (static).
        chunk_size: completion positions per head chunk (static); bounds logits memory to B x chunk x V.
    """
    cmask = completion_mask(completions, eos_token_ids)
    tokens = jnp.concatenate([prompt_tokens, completions], axis=1).astype(jnp.int32)
    attention = jnp.concatenate([prompt_mask.astype(jnp.int32), cmask], axis=1)
    t = completions.shape[1]
    h_ft = hidden_states(config, params_ft, tokens, attention)[:, -t - 1:-1]
    h_base = hidden_states(config, params_base, tokens, attention)[:, -t - 1:-1]
    body = lambda xs: _kl_chunk(config, params_ft, params_base, *xs)  # noqa: E731
    chunk = min(chunk_size, t)
    lf, lb, exact = jax.lax.map(body, (to_chunks(h_ft, chunk), to_chunks(h_base, chunk),
                                       to_chunks(completions, chunk)))
    lf, lb, exact = (from_chunks(x, t) for x in (lf, lb, exact))
    k1, k3 = estimators(lf, lb)
    return TokenKL(k1, k3, exact, cmask.astype(jnp.float32))


token_kl_jit = jax.jit(token_kl, static_argnames=("config", "eos_token_ids", "chunk_size"))


@dataclasses.dataclass
class KLResult:
    """Token-weighted means over completion tokens (``k1``, ``k3``, ``exact``), their standard errors over
    sequences (ratio estimator), and per-sequence sums averaged over sequences (``*_seq``: the KL between the
    two models' completion distributions, for k1 and exact)."""

    k1: float
    k3: float
    exact: float
    k1_stderr: float
    k3_stderr: float
    exact_stderr: float
    k1_seq: float
    exact_seq: float
    num_sequences: int
    num_tokens: int

    def summary(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _ratio_stderr(sums: np.ndarray, counts: np.ndarray) -> float:
    """Standard error of ``sum(sums) / sum(counts)`` over independent sequences (delta method)."""
    mean = sums.sum() / counts.sum()
    n = len(sums)
    return float(np.sqrt(np.sum((sums - mean * counts) ** 2) * n / max(n - 1, 1)) / counts.sum())


def aggregate(parts: list[TokenKL]) -> KLResult:
    """Means and standard errors over the sequences of several :class:`TokenKL` batches."""
    mask = np.concatenate([np.asarray(p.mask) for p in parts])
    counts = mask.sum(1)
    sums = {k: np.concatenate([np.asarray(getattr(p, k)) * np.asarray(p.mask) for p in parts]).sum(1)
            for k in ("k1", "k3", "exact")}
    total = max(counts.sum(), 1.0)
    return KLResult(**{k: float(s.sum() / total) for k, s in sums.items()},
                    **{f"{k}_stderr": _ratio_stderr(s, counts) if counts.sum() else 0.0 for k, s in sums.items()},
                    k1_seq=float(sums["k1"].mean()), exact_seq=float(sums["exact"].mean()),
                    num_sequences=int(len(counts)), num_tokens=int(counts.sum()))


def kl_sampling(sampling: SamplingConfig) -> SamplingConfig:
    """``sampling`` at temperature 1 without filters: the fine-tuned model's own distribution."""
    return dataclasses.replace(sampling, temperature=1.0, top_p=1.0, top_k=0)


def kl_drift(config: ModelConfig, params_ft: Params, params_base: Params, prompts: PromptSet,
             sampling: SamplingConfig, key: Array, *, samples_per_prompt: int = 1, batch_size: int = 64,
             chunk_size: int = 64, progress: Any = None) -> KLResult:
    """``KL(ft || base)`` on ``prompts``: ``samples_per_prompt`` completions per prompt sampled from ``params_ft``
    (``kl_sampling(sampling)``; batch ``b`` uses ``fold_in(key, b)``), scored by :func:`token_kl`.

    Batches have one shape (the last wraps around and its extra rows are dropped): one compilation.
    ``progress``: a tqdm-like object advanced by the number of sequences done.
    """
    sampling = kl_sampling(sampling)
    rows = np.repeat(np.arange(len(prompts)), samples_per_prompt)
    batch = min(batch_size, len(rows))
    parts = []
    for b, start in enumerate(range(0, len(rows), batch)):
        index = rows[np.arange(start, start + batch) % len(rows)]
        tokens, mask = (jnp.asarray(x) for x in prompts.rows(index))
        out = generate_jit(config, params_ft, tokens, mask, jax.random.fold_in(key, b), sampling)
        kl = token_kl_jit(config, params_ft, params_base, tokens, mask, out.tokens, sampling.eos_token_ids,
                          chunk_size)
        keep = min(batch, len(rows) - start)
        parts.append(TokenKL(*(np.asarray(x)[:keep] for x in kl)))
        if progress is not None:
            progress.update(keep)
    return aggregate(parts)

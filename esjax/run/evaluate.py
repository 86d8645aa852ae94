"""Greedy evaluation of a model on a task split: accuracy and mean reward (training loop, ``esjax eval``, analysis)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from esjax import distributed
from esjax.common.errors import InputError
from esjax.generation.inference import check_context
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params
from esjax.generation.prompts import encode_prompts
from esjax.generation.sampling import EmptyPromptError, SamplingConfig, bucket_length, generate_jit, pad_prompts
from esjax.run.scoring import score_rows


@dataclasses.dataclass
class EvalResult:
    accuracy: float
    mean_reward: float
    num_examples: int
    mean_length: float
    mean_parts: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. {"format": .., "answer": ..}
    truncated: int = 0  # completions that hit the token limit without an EOS
    texts: list[str] = dataclasses.field(default_factory=list, repr=False)
    correct: list[bool] = dataclasses.field(default_factory=list, repr=False)

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "mean_reward": self.mean_reward, "num_examples": self.num_examples,
                "mean_length": self.mean_length}


class PromptSet:
    """Examples with their prompts tokenised once (``esjax.generation.prompts.encode_prompt``), left-padded to one bucketed
    length."""

    def __init__(self, task: Any, tokenizer: Any, examples: Sequence[dict], pad_token_id: int):
        self.examples = list(examples)
        if not self.examples:
            raise InputError(f"task {getattr(task, 'name', task)!r}: no examples to evaluate")
        ids = encode_prompts(tokenizer, [task.prompt(e) for e in self.examples])
        self.longest = max(map(len, ids))  # tokens of the longest prompt
        try:
            self.tokens, self.mask = pad_prompts(ids, pad_token_id, length=bucket_length(self.longest))
        except EmptyPromptError as e:
            raise EmptyPromptError(f"task {getattr(task, 'name', task)!r}: {e} with the model's tokenizer "
                                   f"({type(tokenizer).__name__})") from None

    def __len__(self) -> int:
        return len(self.examples)

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens[index], self.mask[index]


def placer(params: Params) -> Callable[[Any], jax.Array]:
    """How evaluation places its prompts and key: replicated over the mesh the params live on (as ``esjax plan``
    compiles the evaluation, so a run finds the program its pre-flight check compiled in the compilation cache),
    or left to ``jit`` where the params are not on a mesh."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if isinstance(sharding, NamedSharding):
        return lambda x: distributed.replicate(x, sharding.mesh)
    return jnp.asarray


def evaluate(config: ModelConfig, params: Params, tokenizer: Any, task: Any, prompts: PromptSet,
             sampling: SamplingConfig, batch_size: int = 256, progress: Any = None) -> EvalResult:
    """Greedy generation for every prompt (fixed batch shape: one compilation), scored by ``task``."""
    sampling = dataclasses.replace(sampling, temperature=0.0)
    check_context(config, prompts.longest, sampling.max_new_tokens)
    n = len(prompts)
    batch = min(batch_size, n)
    place = placer(params)
    rewards, correct, lengths, texts, parts, truncated = [], [], [], [], [], 0
    for start in range(0, n, batch):
        index = np.arange(start, start + batch) % n  # the last batch wraps around to keep the shape
        tokens, mask = prompts.rows(index)
        out = generate_jit(config, params, place(tokens), place(mask), place(jax.random.key(0)), sampling)
        keep = slice(0, min(batch, n - start))
        scores = score_rows(task, tokenizer, prompts.examples, index[keep], np.asarray(out.tokens)[keep],
                            np.asarray(out.lengths)[keep], np.asarray(out.finished)[keep])
        rewards.append(scores.rewards)
        correct.append(scores.correct)
        lengths.append(scores.lengths)
        texts += scores.texts
        parts.append(scores.parts)
        truncated += int(scores.truncated.sum())
        if progress is not None:
            progress.update(keep.stop)
    rewards_all, correct_all = np.concatenate(rewards), np.concatenate(correct)
    mean_parts = {name: float(np.nanmean(np.concatenate([p[name] for p in parts if name in p])))
                  for name in dict.fromkeys(k for p in parts for k in p)}
    return EvalResult(accuracy=float(correct_all.mean()), mean_reward=float(np.nanmean(rewards_all)),
                      num_examples=n, mean_length=float(np.concatenate(lengths).mean()), mean_parts=mean_parts,
                      truncated=truncated, texts=texts, correct=correct_all.tolist())

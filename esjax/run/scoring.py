"""Host-side scoring of generated token ids with a task's reward (shared by ES, GRPO and evaluation)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from esjax.common.errors import EsjaxError


class RewardError(EsjaxError, RuntimeError):
    """A task's reward function raised; the run stops with this message (user code, not a crash of esjax)."""


class Scores(NamedTuple):
    rewards: np.ndarray  # float32 [K]; NaN where the reward was not finite
    correct: np.ndarray  # bool [K]
    lengths: np.ndarray  # int32 [K] generated tokens
    texts: list[str]
    parts: dict[str, np.ndarray]  # float32 [K] per reward part (e.g. "format", "answer"); NaN where a row lacks it
    truncated: np.ndarray  # bool [K]: hit the token limit without an EOS


def score_rows(task: Any, tokenizer: Any, examples: Sequence[dict], example_index: np.ndarray, tokens: np.ndarray,
               lengths: np.ndarray, finished: np.ndarray) -> Scores:
    """Decode rows ``tokens`` [K, T] (valid up to ``lengths``) and score row k against ``examples[example_index[k]]``.

    A row that hit the token limit without an EOS counts as truncated. Non-finite rewards become NaN (the ES
    shaping treats them as the worst, GRPO gives them zero advantage); a reward function that raises stops the
    run with a :class:`RewardError` naming the task.
    """
    ids = [row[:n].tolist() for row, n in zip(np.asarray(tokens), np.asarray(lengths))]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    rewards = np.empty(len(texts), np.float32)
    correct = np.zeros(len(texts), bool)
    parts: dict[str, np.ndarray] = {}
    for k, (text, i, done) in enumerate(zip(texts, np.asarray(example_index), np.asarray(finished))):
        example = examples[int(i)]
        try:
            reward, row_parts = task.reward(text, example, truncated=not bool(done))  # once per completion
            correct[k] = task.correct(row_parts or {})
        except Exception as e:  # user-supplied reward code
            raise RewardError(f"task {getattr(task, 'name', task)!r}: reward function raised "
                              f"{type(e).__name__}: {e} (completion {text[:80]!r})") from e
        rewards[k] = reward if isinstance(reward, (int, float)) and math.isfinite(reward) else np.nan
        for name, value in (row_parts or {}).items():
            parts.setdefault(name, np.full(len(texts), np.nan, np.float32))[k] = value
    return Scores(rewards, correct, np.asarray(lengths, np.int32), texts, parts, ~np.asarray(finished, bool))

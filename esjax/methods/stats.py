"""The rollout statistics every method reports, under the same metric names: one record for ES and GRPO.

A step reduces its scored completions to per-group sums on the host (:func:`row_sums`: a group is an ES member's
B completions, or one GRPO row), all-gathers those (one small table instead of every reward), and builds
:class:`RolloutStats` from the gathered table. A method's own metrics go beside it under its name as a prefix
(``es/update_norm``, ``grpo/loss``), so the same quantity has the same name in both methods' ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# the columns of row_sums, in order
SUMS = ("completions", "finite", "reward_sum", "reward_sq_sum", "correct", "length_sum", "finished")


def row_sums(rewards: np.ndarray, correct: np.ndarray, lengths: np.ndarray, finished: np.ndarray) -> np.ndarray:
    """Per-group sums, float64 [G, len(SUMS)], of completions grouped [G, R] (R completions per group).

    rewards: float [G, R] (NaN or inf: a failed reward); correct, finished: bool [G, R]; lengths: int [G, R]
    (generated tokens, EOS included). A group of one finite reward keeps it exactly in ``reward_sum``.
    """
    rewards = np.asarray(rewards, np.float64)
    finite = np.isfinite(rewards)
    clean = np.where(finite, rewards, 0.0)
    columns = [np.full(rewards.shape[0], rewards.shape[1]), finite.sum(1), clean.sum(1), (clean ** 2).sum(1),
               np.asarray(correct, bool).sum(1), np.asarray(lengths).sum(1), np.asarray(finished, bool).sum(1)]
    return np.stack(columns, axis=1).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class RolloutStats:
    """What one rollout produced, as written to ``metrics.jsonl`` (:meth:`record`)."""

    reward_mean: float  # mean over the finite rewards (NaN if none)
    reward_std: float  # their standard deviation (ddof 0)
    accuracy: float  # fraction of completions the task counts as correct
    completion_length: float  # mean generated tokens per completion, EOS included
    truncated_fraction: float  # fraction of completions that hit max_new_tokens before EOS
    nonfinite_rewards: int  # completions whose reward failed (NaN / inf)
    completions: int

    @classmethod
    def from_sums(cls, sums: np.ndarray) -> RolloutStats:
        """From the [G, len(SUMS)] table of :func:`row_sums` (all groups of the step)."""
        total = dict(zip(SUMS, np.asarray(sums, np.float64).sum(axis=0)))
        count, rows = total["finite"], total["completions"]
        mean = total["reward_sum"] / count if count else float("nan")
        std = float(np.sqrt(max(total["reward_sq_sum"] / count - mean ** 2, 0.0))) if count else float("nan")
        return cls(float(mean), std, float(total["correct"] / rows), float(total["length_sum"] / rows),
                   float(1 - total["finished"] / rows), int(rows - count), int(rows))

    def record(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "completions"}

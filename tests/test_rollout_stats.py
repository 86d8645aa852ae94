"""The rollout statistics ES and GRPO share: one record, the same names, the same values however rows group."""

import numpy as np
import pytest

from esjax.methods.stats import SUMS, RolloutStats, row_sums


def completions(seed=0, n=12):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=n).astype(np.float32)
    rewards[[1, 7]] = [np.nan, np.inf]  # failed rewards
    return rewards, rng.random(n) < 0.5, rng.integers(1, 9, n), rng.random(n) < 0.7


def test_stats_are_the_plain_statistics_of_the_completions():
    rewards, correct, lengths, finished = completions()
    stats = RolloutStats.from_sums(row_sums(rewards[:, None], correct[:, None], lengths[:, None], finished[:, None]))
    finite = rewards[np.isfinite(rewards)].astype(np.float64)
    assert stats.reward_mean == pytest.approx(finite.mean(), rel=1e-12)
    assert stats.reward_std == pytest.approx(finite.std(), rel=1e-9)
    assert stats.accuracy == correct.mean() and stats.completion_length == lengths.mean()
    assert stats.truncated_fraction == pytest.approx(1 - finished.mean()) and stats.nonfinite_rewards == 2
    assert set(stats.record()) == {"reward_mean", "reward_std", "accuracy", "completion_length",
                                   "truncated_fraction", "nonfinite_rewards"}


def test_es_grouping_and_grpo_rows_give_the_same_record():
    """ES sums each member's B completions ([N, B]), GRPO keeps one row per completion ([K, 1]): same record."""
    rewards, correct, lengths, finished = completions(1)
    per_member = row_sums(*(x.reshape(4, 3) for x in (rewards, correct, lengths, finished)))
    per_row = row_sums(*(x.reshape(12, 1) for x in (rewards, correct, lengths, finished)))
    assert per_member.shape == (4, len(SUMS)) and per_row.shape == (12, len(SUMS))
    a, b = RolloutStats.from_sums(per_member).record(), RolloutStats.from_sums(per_row).record()
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-12) for k in a)
    one = row_sums(rewards[:1, None], correct[:1, None], lengths[:1, None], finished[:1, None])
    assert one[0, SUMS.index("reward_sum")].astype(np.float32) == rewards[0]  # a GRPO row keeps its reward exactly


def test_no_finite_reward_is_nan_not_an_error():
    nan = np.full((2, 2), np.nan, np.float32)
    stats = RolloutStats.from_sums(row_sums(nan, nan > 0, np.ones((2, 2), int), nan > 0))
    assert np.isnan(stats.reward_mean) and np.isnan(stats.reward_std) and stats.nonfinite_rewards == 4

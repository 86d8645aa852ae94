"""Group-relative advantages: the three scales, NaN rewards, groups of one."""

import jax
import numpy as np
import pytest

from esjax.grpo import group_advantages

REWARDS = np.array([1.0, 0.0, 0.5, 3.0, 2.0, 2.0, -1.0, 4.0], np.float32)


def test_group_scale():
    g = REWARDS.reshape(2, 4)
    expected = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(group_advantages(REWARDS, 4), expected.ravel(), rtol=1e-6)


def test_batch_scale_uses_group_mean_and_batch_std():
    g = REWARDS.reshape(2, 4)
    expected = (g - g.mean(1, keepdims=True)) / (REWARDS.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(group_advantages(REWARDS, 4, scale="batch"), expected.ravel(), rtol=1e-6)


def test_no_scale():
    g = REWARDS.reshape(4, 2)
    expected = g - g.mean(1, keepdims=True)
    np.testing.assert_allclose(jax.jit(group_advantages, static_argnums=(1, 2))(REWARDS, 2, "none"), expected.ravel())


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_nan_rewards_get_zero_and_do_not_poison(scale):
    with_nan = REWARDS.copy()
    with_nan[[1, 6]] = np.nan
    adv = group_advantages(with_nan, 4, scale)
    assert np.isfinite(adv).all()
    assert adv[1] == 0 and adv[6] == 0
    # the others equal the advantages of the batch with the NaN rows removed (groups of 3)
    kept = np.delete(REWARDS, [1, 6])
    np.testing.assert_allclose(np.delete(adv, [1, 6]), group_advantages(kept, 3, scale), rtol=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_degenerate_groups_are_zero_not_nan(scale):
    np.testing.assert_array_equal(group_advantages(REWARDS, 1, scale), np.zeros(8))
    np.testing.assert_array_equal(group_advantages([np.nan, 1.0, np.nan, np.nan], 2, scale), np.zeros(4))
    np.testing.assert_array_equal(group_advantages([2.0, 2.0], 2, scale), np.zeros(2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(REWARDS, 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(REWARDS, 4, scale="rank")

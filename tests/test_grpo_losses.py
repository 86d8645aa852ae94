"""GRPO policy loss and completion mask: a hand-checked test vector, a torch oracle of TRL 1.16, finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from esjax.grpo import completion_mask, group_advantages, policy_loss

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def test_fixed_test_vector():
    """Advantages and the four aggregations on a fixed 4 x 4 case, without TRL's KL bias correction."""
    adv = group_advantages(jnp.array([1.0, 0.0, 0.5, 0.5]), group_size=2)
    np.testing.assert_allclose(adv, [0.7070068, -0.7070068, 0.0, 0.0], atol=1e-6)
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    probs = np.array([[0.5, 0.4, 0.3, 0.9], [0.6, 0.2, 0.9, 0.9], [0.3, 0.3, 0.3, 0.3], [0.8, 0.9, 0.9, 0.9]])
    shift = np.array([[0.1, -0.3, 0, 0], [0, 0.25, 0, 0], [-0.1, 0, 0.1, 0], [0.05, 0, 0, 0]])
    logp = jnp.log(jnp.asarray(probs, jnp.float32))
    old, ref = logp + shift.astype(np.float32), logp + 0.2
    expected = {"grpo": -0.0229958, "bnpo": -0.0913968, "dapo": -0.0913968, "dr_grpo": -0.0571230}
    for loss_type, value in expected.items():
        loss, metrics = policy_loss(
            logp, old, ref, adv, mask, loss_type=loss_type, beta=0.04, epsilon=0.2, max_completion_length=4,
            use_bias_correction_kl=False,
        )
        assert loss.dtype == jnp.float32
        np.testing.assert_allclose(loss, value, atol=1e-6, err_msg=loss_type)
        np.testing.assert_allclose(metrics["kl"], 0.0214028, atol=1e-6)


def trl_reference(logps, old, ref, adv, mask, loss_type, beta, eps_low, eps_high, max_len, bias_correction=True):
    """TEST ORACLE, torch float64: TRL 1.16 GRPOTrainer._compute_loss (token-level importance sampling, one
    process, so dapo's num_items_in_batch = mask.sum()), its loss_type aggregations and logged metrics,
    transcribed from TRL's formulas. ``old=None``: on-policy, TRL's ``old = logps.detach()``."""
    old = logps.detach() if old is None else old
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    a = adv.unsqueeze(1)
    per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
    if bias_correction:  # use_bias_correction_kl (TRL's default): the KL times the importance ratio
        per_token_kl = per_token_kl * coef_1
    per_token_loss = -torch.min(coef_1 * a, coef_2 * a) + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_len)
    else:  # dapo
        loss = (per_token_loss * mask).sum() / mask.sum()
    low = (coef_1 < 1 - eps_low) & (a < 0)
    high = (coef_1 > 1 + eps_high) & (a > 0)

    def masked_mean(x):
        return (x * mask).sum() / mask.sum()

    metrics = {
        "kl": masked_mean(per_token_kl),
        "clip_ratio_low": masked_mean(low.double()),
        "clip_ratio_high": masked_mean(high.double()),
        "clip_ratio": masked_mean((low | high).double()),
        "ratio_mean": masked_mean(coef_1),
    }
    return loss, metrics


def random_case(seed, B=6, T=7):
    rng = np.random.default_rng(seed)
    logps = np.log(rng.uniform(0.05, 1.0, (B, T)))
    old = logps + rng.normal(0, 0.3, (B, T))  # ratios on both sides of both clip edges
    ref = logps + rng.normal(0, 0.3, (B, T))
    adv = rng.normal(size=B)
    mask = (rng.uniform(size=(B, T)) < 0.7).astype(np.float64)
    mask[0] = 0  # an empty completion: grpo's per-row guard
    return [x.astype(np.float32) for x in (logps, old, ref, adv, mask)]


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl_oracle(loss_type, bias_correction):
    logps, old, ref, adv, mask = random_case(0)
    kw = dict(loss_type=loss_type, beta=0.04, epsilon=0.2, epsilon_high=0.28, max_completion_length=9,
              use_bias_correction_kl=bias_correction)

    def jax_loss(lp):
        return policy_loss(lp, old, ref, adv, mask, **kw)

    (loss, metrics), grad = jax.value_and_grad(jax_loss, has_aux=True)(jnp.asarray(logps))

    t_logps = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    t_loss, t_metrics = trl_reference(
        t_logps, *(torch.tensor(x, dtype=torch.float64) for x in (old, ref, adv, mask)), loss_type, 0.04, 0.2, 0.28, 9,
        bias_correction,
    )
    t_loss.backward()
    assert 0 < float(t_metrics["clip_ratio_low"]) and 0 < float(t_metrics["clip_ratio_high"])  # both edges hit
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, t_logps.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert set(metrics) == set(t_metrics)
    for k, v in t_metrics.items():
        assert metrics[k].dtype == jnp.float32
        np.testing.assert_allclose(metrics[k], v.item(), rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_bias_correction_on_policy_matches_trl(loss_type):
    """On-policy (old = None) the ratio is 1 but its gradient is not: the corrected KL gradient is TRL's."""
    logps, _, ref, adv, mask = random_case(5)
    kw = dict(loss_type=loss_type, beta=0.1, max_completion_length=9)
    grads = {}
    for bias_correction in (True, False):
        kw["use_bias_correction_kl"] = bias_correction
        (loss, metrics), grad = jax.value_and_grad(lambda lp: policy_loss(lp, None, ref, adv, mask, **kw),
                                                   has_aux=True)(jnp.asarray(logps))
        t_logps = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
        t_ref, t_adv, t_mask = (torch.tensor(x, dtype=torch.float64) for x in (ref, adv, mask))
        t_loss, t_metrics = trl_reference(t_logps, None, t_ref, t_adv, t_mask, loss_type, 0.1, 0.2, 0.2, 9,
                                          bias_correction)
        t_loss.backward()
        np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(grad, t_logps.grad.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(metrics["kl"], t_metrics["kl"].item(), rtol=1e-5)
        grads[bias_correction] = np.asarray(grad)
    change = np.abs(grads[True] - grads[False]).max() / np.abs(grads[False]).max()
    assert change > 0.01  # the correction changes the gradient on-policy (here by ~5%)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grad_matches_finite_differences(loss_type):
    logps, old, ref, adv, mask = random_case(1, B=3, T=4)
    # keep every log-ratio >= 0.02 away from the clip kinks at log(0.8) and log(1.28)
    log_ratio = logps - old
    for edge in (np.log(0.8), np.log(1.28)):
        near = np.abs(log_ratio - edge) < 0.02
        old = np.where(near, old - 0.05, old)
    kw = dict(loss_type=loss_type, beta=0.1, epsilon=0.2, epsilon_high=0.28)

    def f(lp):
        return policy_loss(lp, old, ref, adv, mask, **kw)[0]

    x = jnp.asarray(logps)
    h = 1e-2
    steps = h * jnp.eye(x.size).reshape(-1, *x.shape)
    fd = jax.jit(jax.vmap(lambda e: (f(x + e) - f(x - e)) / (2 * h)))(steps)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x).ravel(), fd, atol=2e-4, err_msg=loss_type)


def test_single_update_case_keeps_the_ratio_gradient():
    logps, _, ref, adv, mask = random_case(2)
    kw = dict(loss_type="bnpo", beta=0.04)
    g_none = jax.grad(lambda lp: policy_loss(lp, None, ref, adv, mask, **kw)[0])(jnp.asarray(logps))
    g_const = jax.grad(lambda lp: policy_loss(lp, logps, ref, adv, mask, **kw)[0])(jnp.asarray(logps))
    np.testing.assert_allclose(g_none, g_const, rtol=1e-6, atol=1e-8)
    assert np.abs(g_none).max() > 0


def test_no_reference_needed_when_beta_is_zero():
    logps, old, ref, adv, mask = random_case(3)
    loss, metrics = jax.jit(lambda *a: policy_loss(*a, None, adv, mask))(logps, old)
    assert "kl" not in metrics
    np.testing.assert_allclose(loss, policy_loss(logps, old, ref, adv, mask)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(logps, old, None, adv, mask, beta=0.04)
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(logps, old, ref, adv, mask, loss_type="ppo")


def test_dapo_global_token_count():
    logps, old, ref, adv, mask = random_case(4)
    local, _ = policy_loss(logps, old, ref, adv, mask, loss_type="dapo")
    halved, _ = policy_loss(logps, old, ref, adv, mask, loss_type="dapo", num_items_in_batch=2 * mask.sum())
    np.testing.assert_allclose(halved, local / 2, rtol=1e-6)
    # two replicas, each normalised by the global count, sum to the loss of the whole batch
    parts = [
        policy_loss(*(x[s] for x in (logps, old, ref, adv, mask)), loss_type="dapo", num_items_in_batch=mask.sum())[0]
        for s in (slice(0, 3), slice(3, 6))
    ]
    np.testing.assert_allclose(sum(parts), local, rtol=1e-6)


def test_completion_mask():
    tokens = jnp.array(
        [
            [5, 6, 2, 7, 2],  # first EOS (2) kept, everything after dropped
            [5, 3, 6, 2, 8],  # another EOS id (3) ends the row first
            [5, 6, 7, 8, 9],  # no EOS: all ones
            [2, 5, 6, 7, 8],  # EOS first
        ]
    )
    expected = [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    mask = completion_mask(tokens, eos_ids=(2, 3))
    assert mask.dtype == jnp.int32
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(completion_mask(tokens, eos_ids=2)[1], [1, 1, 1, 1, 0])
    padded = jnp.array([[5, 0, 0, 0], [5, 6, 0, 0]])  # pad 0 is also the EOS id: the first one is kept
    np.testing.assert_array_equal(completion_mask(padded, (0,), pad_id=0), [[1, 1, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(completion_mask(padded, (9,), pad_id=0), [[1, 0, 0, 0], [1, 1, 0, 0]])

"""GRPO pieces as pure JAX functions: advantages, the policy loss, the completion mask, per-token log-probs,
and the trainer (jitted rollout + loss/update over a ``"data"`` mesh, host-side scoring in between)."""

from esjax.grpo.advantages import group_advantages
from esjax.grpo.logprobs import token_logps
from esjax.grpo.losses import completion_mask, policy_loss
from esjax.grpo.trainer import (DATA_AXIS, GRPOConfig, GRPOState, GRPOTrainer, RolloutBatch, build_batch,
                                completion_logps, data_mesh, grpo_loss, grpo_step, init_state, make_optimizer,
                                make_schedule, make_trainer, reward_metrics, rollout, train_on_rollout)

__all__ = [
    "completion_mask", "group_advantages", "policy_loss", "token_logps",
    "DATA_AXIS", "GRPOConfig", "GRPOState", "GRPOTrainer", "RolloutBatch", "build_batch", "completion_logps",
    "data_mesh", "grpo_loss", "grpo_step", "init_state", "make_optimizer", "make_schedule", "make_trainer",
    "reward_metrics", "rollout", "train_on_rollout",
]

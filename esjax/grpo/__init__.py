"""GRPO as pure JAX functions, laid out like :mod:`esjax.es`: ``config`` (GRPOConfig), ``advantages``, ``losses``
and ``logprobs`` (the formulas), ``update`` (state, loss and optax update on a rollout), ``step`` (jitted rollout,
host-side scoring, update: one step, and the :class:`GRPOMethod` the training loop drives)."""

from esjax.grpo.advantages import group_advantages
from esjax.grpo.config import GRPOConfig
from esjax.grpo.logprobs import token_logps
from esjax.grpo.losses import completion_mask, policy_loss
from esjax.grpo.step import (DATA_AXIS, GRPOMethod, GRPORunner, data_mesh, grpo_init, grpo_step, make_runner,
                             frac_reward_zero_std, rollout)
from esjax.grpo.update import (GRPOState, RolloutBatch, build_batch, completion_logps, grpo_loss, init_state,
                               make_optimizer, make_schedule, sample_key, train_on_rollout)

__all__ = [
    "completion_mask", "group_advantages", "policy_loss", "token_logps",
    "DATA_AXIS", "GRPOConfig", "GRPOMethod", "GRPOState", "GRPORunner", "RolloutBatch", "build_batch",
    "completion_logps", "data_mesh", "grpo_init", "grpo_loss", "grpo_step", "init_state", "make_optimizer", "make_schedule",
    "make_runner", "frac_reward_zero_std", "rollout", "sample_key", "train_on_rollout",
]

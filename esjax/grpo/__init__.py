"""GRPO pieces as pure JAX functions: advantages, the policy loss, the completion mask, per-token log-probs."""

from esjax.grpo.advantages import group_advantages
from esjax.grpo.logprobs import token_logps
from esjax.grpo.losses import completion_mask, policy_loss

__all__ = ["completion_mask", "group_advantages", "policy_loss", "token_logps"]

"""GRPO hyperparameters: one frozen, hashable dataclass (usable as a ``jax.jit`` static argument)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from esjax.common import schedules
from esjax.common.strict import strict_from_dict
from esjax.grpo.advantages import SCALES
from esjax.grpo.losses import LOSS_TYPES


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings with TRL's names; frozen and hashable.

    Defaults are TRL 1.16's ``GRPOConfig`` (with ``TrainingArguments``' AdamW and clipping) except two:
    ``loss_type`` is "grpo" (TRL: "dapo"), the per-completion mean of the GRPO paper and of the ES-vs-GRPO
    reference code; ``lr_schedule`` is "constant" (TRL: "linear"), because a decay needs the run's length, which
    a config built on its own does not know (``esjax train`` fills ``total_steps`` in for "linear"/"cosine").

    Attributes:
        num_generations: G, completions sampled per prompt (>= 2).
        learning_rate, adam_b1, adam_b2, adam_eps, weight_decay: AdamW (decoupled decay, scaled by the learning
            rate as in PyTorch; applied to matrices only, not to norms and biases, as HF's Trainer does).
        max_grad_norm: clip the global gradient norm to this (None or 0: no clipping).
        warmup_steps: linear warm-up from 0 over this many optimizer steps.
        lr_schedule: after warm-up, "constant", "cosine" (to 0) or "linear" (to 0) at ``total_steps``.
        total_steps: optimizer steps of the run (needed by "cosine" and "linear").
        loss_type: "grpo" | "bnpo" | "dr_grpo" | "dapo" (see :func:`esjax.grpo.policy_loss`).
        beta: KL coefficient. 0: no reference model is kept and no reference forward pass runs.
        epsilon, epsilon_high: clip range ``[1 - epsilon, 1 + epsilon_high]`` (None: ``epsilon``).
        use_bias_correction_kl: multiply the per-token KL by the importance ratio (TRL's default; matters only
            when ``beta > 0``, and then even on-policy, through the ratio's gradient).
        scale_rewards: "group" | "batch" | "none" (see :func:`esjax.grpo.group_advantages`).
        num_iterations: mu, optimizer steps per rollout; with mu > 1 the old log-probs are computed once, before
            the first of them.
        grad_accum_steps: micro-batches per optimizer step (``lax.scan``; bounds activation memory).
        logprob_chunk_size: sequence chunk of the log-prob pass (None: one piece); bounds logits memory.
        master_fp32: keep float32 master weights and float32 optimizer state when the params are narrower;
            the params used for rollouts are the master cast to the working dtype.
    """

    num_generations: int = 8
    learning_rate: float = 1e-6
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    total_steps: int | None = None
    loss_type: str = "grpo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    use_bias_correction_kl: bool = True
    scale_rewards: str = "group"
    num_iterations: int = 1
    grad_accum_steps: int = 1
    logprob_chunk_size: int | None = None
    master_fp32: bool = True

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GRPOConfig:
        """Builds a config from a mapping (e.g. a YAML section); unknown keys raise ValueError."""
        return strict_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> GRPOConfig:
        """Raises ValueError on an inconsistent config; returns self. Runs once, when the config is built; the
        split of a rollout over devices is :meth:`check_devices`'s."""
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")

        positive_int("num_generations", 2)
        positive_int("num_iterations")
        positive_int("grad_accum_steps")
        positive_int("warmup_steps", 0)
        for name, allowed in (("loss_type", LOSS_TYPES), ("scale_rewards", SCALES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in ("learning_rate", "weight_decay", "beta", "adam_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        for name in ("adam_b1", "adam_b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}.")
        for name in ("epsilon", "epsilon_high", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0 (or None), got {value!r}.")
        for name in ("use_bias_correction_kl",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.logprob_chunk_size is not None:
            positive_int("logprob_chunk_size")
        schedules.validate_schedule(self.lr_schedule, self.warmup_steps, self.total_steps, name="lr_schedule")
        return self

    def units(self, prompts: int) -> int:
        """What devices split evenly: the micro-batches' rows (``prompts * G / grad_accum_steps``)."""
        return prompts * self.num_generations // self.grad_accum_steps

    def check_devices(self, num_devices: int, rollout_batch: int | None = None) -> GRPOConfig:
        """Raises ValueError unless a rollout of ``rollout_batch`` rows (if known) splits over ``num_devices`` on
        the mesh's "data" axis; returns self.

        The batch must be num_prompts * G (a multiple of G), and a multiple of ``num_devices * grad_accum_steps``
        so that every micro-batch splits evenly over the devices.
        """
        if not isinstance(num_devices, int) or num_devices < 1:
            raise ValueError(f"num_devices must be a positive int, got {num_devices!r}.")
        if rollout_batch is not None:
            g, m = self.num_generations, self.grad_accum_steps
            if rollout_batch % g:
                raise ValueError(f"The rollout batch ({rollout_batch} rows) must be num_prompts * num_generations "
                                 f"(a multiple of {g}): repeat each prompt G times, consecutively.")
            if rollout_batch % (num_devices * m):
                raise ValueError(f"The rollout batch ({rollout_batch} rows = num_prompts * {g}) must be a multiple "
                                 f"of num_devices * grad_accum_steps = {num_devices} * {m} = {num_devices * m}, so "
                                 f"that each micro-batch splits evenly over the devices.")
        return self

"""ES hyperparameters: one frozen, hashable dataclass (usable as a ``jax.jit`` static argument)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import optax

from esjax.common import schedules
from esjax.common.strict import strict_from_dict

NOISE_KINDS = ("full", "lowrank")
NOISE_SCALES = ("uniform", "rms")
NON_MATRIX_MODES = ("full", "freeze")
SHAPINGS = ("zscore", "centered_rank", "none")


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """Evolution Strategies settings (defaults: Qiu et al. 2025).

    Attributes:
        population_size: N, members per iteration (global, over all devices).
        sigma: perturbation scale; member i evaluates ``theta + sigma * eps_i``.
        alpha: step size; ``theta <- theta + alpha / N * sum_i w_i eps_i`` (1/sigma folded in). With a schedule,
            the peak value.
        alpha_schedule: "constant" (the paper), or "cosine" / "linear" decay of alpha to 0 at ``total_steps``
            (see :func:`esjax.common.schedules.make_schedule`).
        warmup_steps: iterations of linear warm-up of alpha from 0 (0: none).
        total_steps: ES iterations of the run, needed by a decaying schedule (``esjax train`` fills it in with
            ``train.iterations`` when it is left out).
        antithetic: members 2k and 2k+1 use ``+eps_k`` and ``-eps_k``.
        noise: "full" (iid normal per element) or "lowrank" (``A B^T / sqrt(rank)`` for 2-D leaves).
        rank: r of the low-rank factors.
        noise_scale: "uniform" (the paper: every element's noise has scale sigma) or "rms": each leaf's noise,
            in the perturbation and in the update, is multiplied by ``rms(leaf) / rms(all trainable params)`` of
            the current params, so every leaf moves by the same fraction of its own size while the total noise
            norm stays that of "uniform" (see ``noise.leaf_scales``).
        non_matrix: in low-rank mode, leaves with ndim != 2 get "full" noise or are frozen ("freeze").
        freeze: regexes, ``re.search``-ed against leaf paths such as "layers_0/self_attn/q_proj/kernel";
            matching leaves get zero noise and are never updated.
        shaping: fitness shaping, "zscore" (paper), "centered_rank" or "none".
        group_baseline: fitness arrives as [N, G] per-prompt-group scores; each group is z-scored across
            members before averaging over groups (see ``shaping.shape_fitness``).
        top_pairs: with ``antithetic``, keep only the b pairs whose better member scored highest (ARS's elite
            directions, Mania et al. 2018), their weights scaled by (N / 2) / b; None: all pairs.
        optimizer: None for the plain ES update, or the name of an optax optimizer ("sgd", "adam", ...)
            built with ``learning_rate=alpha`` and applied to the negated ES gradient estimate.
        optimizer_kwargs: extra optimizer arguments as ``((name, value), ...)`` (a dict is accepted and
            converted, so the config stays hashable).
        master_fp32: keep fp32 master weights when params are in a lower precision.
        population_chunk: members evaluated at once per device (int), or "auto".
        prompt_chunk: prompts each member decodes at once (an int dividing the prompts of an iteration), or None
            for all of them; bounds the KV cache (members x prompt_chunk rows) for large models.
    """

    population_size: int = 30
    sigma: float = 1e-3
    alpha: float = 5e-4
    alpha_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    antithetic: bool = False
    noise: str = "full"
    rank: int = 1
    noise_scale: str = "uniform"
    non_matrix: str = "full"
    freeze: tuple[str, ...] = ()
    shaping: str = "zscore"
    group_baseline: bool = False
    top_pairs: int | None = None
    optimizer: str | None = None
    optimizer_kwargs: tuple[tuple[str, Any], ...] = ()
    master_fp32: bool = False
    population_chunk: int | str = "auto"
    prompt_chunk: int | None = None

    def __post_init__(self):
        # Normalise containers to tuples (hashable) so YAML/JSON lists and dicts are accepted.
        freeze = (self.freeze,) if isinstance(self.freeze, str) else tuple(self.freeze)
        kwargs = self.optimizer_kwargs
        kwargs = tuple(sorted(kwargs.items())) if isinstance(kwargs, Mapping) else tuple(map(tuple, kwargs))
        object.__setattr__(self, "freeze", freeze)
        object.__setattr__(self, "optimizer_kwargs", kwargs)
        self.validate()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ESConfig:
        """Builds a config from a mapping (e.g. a YAML section); unknown keys raise ValueError."""
        return strict_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (round-trips through ``from_dict``)."""
        d = dataclasses.asdict(self)
        d["freeze"], d["optimizer_kwargs"] = list(self.freeze), dict(self.optimizer_kwargs)
        return d

    def validate(self) -> ESConfig:
        """Raises ValueError on an inconsistent config; returns self. Runs once, when the config is built; the
        split over devices is :meth:`check_devices`'s."""
        n = self.population_size
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"population_size must be a positive int, got {n!r}.")
        if self.antithetic and n % 2:
            raise ValueError(f"With antithetic=True, population_size ({n}) must be even: members (2k, 2k+1) are "
                             f"the pairs +eps_k, -eps_k.")
        for name in ("sigma", "alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
        schedules.validate_schedule(self.alpha_schedule, self.warmup_steps, self.total_steps, name="alpha_schedule")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}.")
        for name, allowed in (("noise", NOISE_KINDS), ("noise_scale", NOISE_SCALES),
                              ("non_matrix", NON_MATRIX_MODES), ("shaping", SHAPINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for pattern in self.freeze:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"Invalid freeze regex {pattern!r}: {e}.") from None
        if self.top_pairs is not None and not (self.antithetic and isinstance(self.top_pairs, int)
                                                and 1 <= self.top_pairs <= n // 2):
            raise ValueError(f"top_pairs needs antithetic=True and an int in 1..{n // 2} (N / 2), "
                             f"got {self.top_pairs!r}.")
        if self.optimizer is not None and not callable(getattr(optax, str(self.optimizer), None)):
            raise ValueError(f"optimizer must be None or an optax optimizer name, got {self.optimizer!r}.")
        if self.optimizer is None and self.optimizer_kwargs:
            raise ValueError("optimizer_kwargs given but optimizer is None.")
        chunk = self.population_chunk
        if chunk != "auto" and not (isinstance(chunk, int) and chunk >= 1):
            raise ValueError(f"population_chunk must be 'auto' or an int >= 1, got {chunk!r}.")
        if self.prompt_chunk is not None and not (isinstance(self.prompt_chunk, int) and self.prompt_chunk >= 1):
            raise ValueError(f"prompt_chunk must be None or an int >= 1, got {self.prompt_chunk!r}.")
        return self

    def units(self) -> int:
        """What devices split evenly: the members, or the antithetic pairs (a pair never straddles two devices)."""
        return self.population_size // (2 if self.antithetic else 1)

    def check_devices(self, num_devices: int) -> ESConfig:
        """Raises ValueError unless the population splits evenly over ``num_devices`` (every device runs the same
        number of members; with ``antithetic``, whole pairs); returns self."""
        if not isinstance(num_devices, int) or num_devices < 1:
            raise ValueError(f"num_devices must be a positive int, got {num_devices!r}.")
        if self.units() % num_devices:
            what = "antithetic pairs" if self.antithetic else "members"
            raise ValueError(f"population_size ({self.population_size}) = {self.units()} {what} does not split "
                             f"evenly over {num_devices} devices.")
        return self

    def alpha_at(self) -> optax.Schedule:
        """The step size as a function of the (0-based) iteration."""
        return schedules.make_schedule(self.alpha, self.alpha_schedule, self.warmup_steps, self.total_steps)

    def is_frozen(self, path: str) -> bool:
        """Whether the leaf at ``path`` ("a/b/c") matches a ``freeze`` pattern."""
        return any(re.search(p, path) for p in self.freeze)

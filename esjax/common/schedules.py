"""Step-size schedules shared by ES (``alpha``) and GRPO (``learning_rate``): warm-up, then constant or decay."""

from __future__ import annotations

import optax

SCHEDULES = ("constant", "cosine", "linear")


def validate_schedule(kind: str, warmup_steps: int, total_steps: int | None, *, name: str) -> None:
    """Raises ValueError unless ``kind`` is known and a decaying schedule has ``total_steps > warmup_steps``.

    ``name`` is the config field of ``kind`` (used in the message).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"{name} must be one of {SCHEDULES}, got {kind!r}.")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}.")
    if total_steps is not None and (not isinstance(total_steps, int) or isinstance(total_steps, bool)):
        raise ValueError(f"total_steps must be an int or None, got {total_steps!r}.")
    if kind != "constant" and (total_steps is None or total_steps <= warmup_steps):
        raise ValueError(f"{name}={kind!r} needs total_steps > warmup_steps ({warmup_steps}), "
                         f"got total_steps={total_steps!r}.")


def make_schedule(peak: float, kind: str = "constant", warmup_steps: int = 0,
                  total_steps: int | None = None) -> optax.Schedule:
    """Value per step (0-based): linear warm-up from 0 to ``peak`` over ``warmup_steps``, then ``peak`` held
    ("constant") or decayed to 0 at ``total_steps`` ("cosine", "linear")."""
    decay_steps = max(1, (total_steps or 0) - warmup_steps)
    decay = {"constant": lambda: optax.constant_schedule(peak),
             "cosine": lambda: optax.cosine_decay_schedule(peak, decay_steps),
             "linear": lambda: optax.linear_schedule(peak, 0.0, decay_steps)}[kind]()
    if not warmup_steps:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), decay], [warmup_steps])

"""What the training loop drives: the :class:`Method` protocol (``init``, ``step``), ``Batch``, ``StepResult`` and
the score-function signature shared by ES and GRPO."""

from esjax.methods.protocol import Batch, Method, ScoreFn, StepResult

__all__ = ["Batch", "Method", "ScoreFn", "StepResult"]

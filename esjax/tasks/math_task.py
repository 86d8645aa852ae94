"""MATH (Hendrycks et al.) as the ES-vs-GRPO paper (Hoy et al.) ran it: chat prompt, binary reward.

Prompt: the reference's system turn, then the problem text as the user turn. Rows use the layout of
``nlile/hendrycks-MATH-benchmark`` (``problem``, ``solution``, ``answer``, ``subject``, ``level``); the gold
answer is ``answer``, else the last ``\\boxed{}`` of ``solution``. Reward: the last braced ``\\boxed{}`` compared
as :mod:`esjax.tasks.math_answers` describes (the reference's rules without its false positives); truncated
completions are scored like any other.

``lenient=True``: esjax's broader reading: ``\\fbox``, unbraced ``\\boxed 5``, units and thousands separators
(``boxed.math_equal``); an equation still never equals an answer in another variable or with another sign.
"""

from __future__ import annotations

from typing import Any

from esjax.tasks.base import Example, register
from esjax.tasks.boxed import last_boxed, math_equal
from esjax.tasks.esvsgrpo import ReferenceChatTask
from esjax.tasks.io import require_str
from esjax.tasks.math_answers import answers_equal, braced_boxed


def reference_answer(example: Example) -> str | None:
    """The gold answer: ``answer`` if present, else the last ``\\boxed{}`` of ``solution``."""
    answer = example.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer
    solution = example.get("solution")
    return last_boxed(solution) if isinstance(solution, str) else None


@register("math")
class MathTask(ReferenceChatTask):
    """MATH (module docstring); data options as ``FileTask``. ``parts["boxed"]``: a boxed answer was found."""

    name = "math"
    part_names = ("answer", "boxed")

    @staticmethod
    def validate_row(row: dict[str, Any]) -> dict[str, Any]:
        require_str(row, "problem")
        if reference_answer(row) is None:
            raise ValueError("needs an 'answer' field or a 'solution' with a \\boxed{} answer")
        return row

    def user_turn(self, example: Example) -> str:
        return example["problem"]

    def score_text(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        gold = reference_answer(example)
        if self.lenient:
            predicted = last_boxed(completion)
            ok = math_equal(predicted, gold)
        else:
            predicted = braced_boxed(completion)
            ok = bool(predicted) and gold is not None and answers_equal(predicted, gold)
        return float(ok), {"answer": float(ok), "boxed": float(predicted is not None)}

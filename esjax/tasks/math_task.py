"""MATH (Hendrycks et al.) as in Hoy et al.: chat prompt, answer in the last ``\\boxed{}``, binary reward.

Rows use the MATH layout: ``problem``, ``solution`` (the reference answer is its last ``\\boxed{}``), optional
``level``/``type``; an ``answer`` field (MATH-500 layout) takes precedence over the solution's box.
Correct = ``math_equal`` (normalised string match or numeric equality, see ``boxed.normalize_math``).
"""

from __future__ import annotations

from typing import Any

from esjax.tasks.base import Example, Messages, register
from esjax.tasks.boxed import last_boxed, math_equal
from esjax.tasks.io import FileTask, require_str

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def reference_answer(example: Example) -> str | None:
    """The gold answer: ``answer`` if present, else the last ``\\boxed{}`` of ``solution``."""
    answer = example.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer
    solution = example.get("solution")
    return last_boxed(solution) if isinstance(solution, str) else None


@register("math")
class MathTask(FileTask):
    """MATH with boxed answers; data options as ``FileTask`` (default: the shipped example files)."""

    name = "math"
    part_names = ("answer", "boxed")
    chat = True

    @staticmethod
    def validate_row(row: dict[str, Any]) -> dict[str, Any]:
        require_str(row, "problem")
        if reference_answer(row) is None:
            raise ValueError("needs an 'answer' field or a 'solution' with a \\boxed{} answer")
        return row

    def prompt(self, example: Example) -> Messages:
        return self.messages(f"{example['problem']}\n\n{INSTRUCTION}")

    def score(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        predicted = last_boxed(completion)
        ok = math_equal(predicted, reference_answer(example))
        return float(ok), {"answer": float(ok), "boxed": float(predicted is not None)}

"""MATH (Hendrycks et al.) as the ES-vs-GRPO paper (Hoy et al.) ran it: chat prompt, binary reward.

Prompt: the reference's system turn, then the problem text as the user turn. Rows use the layout of
``nlile/hendrycks-MATH-benchmark`` (``problem``, ``solution``, ``answer``, ``subject``, ``level``); the gold
answer is ``answer``, else the last ``\\boxed{}`` of ``solution``. Reward: the last braced ``\\boxed{}``
(:func:`~esjax.tasks.math_answers.braced_boxed`) compared with the gold answer by the task option ``grader``:

- ``"esjax"`` (default): equal after removing units, degrees, punctuation and spacing, numbers compared exactly
  (:mod:`esjax.tasks.math_equality`);
- ``"reference"``: the reference's comparison, false positives included (:mod:`esjax.tasks.math_answers`), to
  reproduce the paper's numbers;
- ``"math_verify"``: Hugging Face's Math-Verify (``pip install 'esjax[math]'``), symbolic, in a worker process
  with ``grader_timeout`` seconds per answer (:mod:`esjax.tasks.verifier`); a boxed answer of over ``MAX_ANSWER``
  (4,096) characters scores 0 without it.

Truncated completions are scored like any other. ``lenient=True``: ``\\fbox``, unbraced ``\\boxed 5``, and (with
the esjax grader) unit words without ``\\text`` after any answer (``2x cm``).
"""

from __future__ import annotations

from typing import Any

from esjax.tasks import verifier
from esjax.tasks.base import Example, TaskDataError, register
from esjax.tasks.boxed import MAX_ANSWER, last_boxed
from esjax.tasks.esvsgrpo import ReferenceChatTask
from esjax.tasks.io import require_str
from esjax.tasks.math_answers import braced_boxed, reference_equal
from esjax.tasks.math_equality import answers_equal

GRADERS = ("esjax", "reference", "math_verify")


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

    def __init__(self, path: Any = None, *, grader: str = "esjax", grader_timeout: float = 5.0, **options: Any):
        if grader not in GRADERS:
            raise TaskDataError(f"task 'math': grader must be one of {', '.join(GRADERS)}, got {grader!r}")
        if grader == "reference" and options.get("lenient"):
            raise TaskDataError("task 'math': grader: reference reproduces the reference's extraction; drop "
                                "lenient: true or choose grader: esjax")
        if grader == "math_verify" and not verifier.installed():
            raise TaskDataError("task 'math': grader: math_verify needs Math-Verify: pip install 'esjax[math]'")
        if isinstance(grader_timeout, bool) or not isinstance(grader_timeout, (int, float)) or not grader_timeout > 0:
            raise TaskDataError(f"task 'math': grader_timeout must be a positive number of seconds, "
                                f"got {grader_timeout!r}")
        self.grader, self.grader_timeout = grader, float(grader_timeout)
        super().__init__(path, **options)

    @staticmethod
    def validate_row(row: dict[str, Any]) -> dict[str, Any]:
        require_str(row, "problem")
        if reference_answer(row) is None:
            raise ValueError("needs an 'answer' field or a 'solution' with a \\boxed{} answer")
        return row

    def user_turn(self, example: Example) -> str:
        return example["problem"]

    def equal(self, predicted: str, gold: str) -> bool:
        """Whether the boxed answer ``predicted`` equals ``gold`` by this task's grader."""
        if self.grader == "reference":
            return reference_equal(predicted, gold)
        if self.grader == "math_verify":  # an answer longer than any real one never reaches sympy
            return len(predicted) <= MAX_ANSWER and verifier.verify_answer(predicted, gold, self.grader_timeout)
        return answers_equal(predicted, gold, lenient=self.lenient)

    def score_text(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        gold = reference_answer(example)
        predicted = last_boxed(completion) if self.lenient else braced_boxed(completion)
        ok = bool(predicted) and gold is not None and self.equal(predicted, gold)
        return float(ok), {"answer": float(ok), "boxed": float(predicted is not None)}

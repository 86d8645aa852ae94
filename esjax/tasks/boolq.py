"""BoolQ (yes/no questions about a passage) as in Hoy et al.: chat prompt, binary reward.

Rows: ``question``, ``passage``, ``answer`` (bool). The prediction is the first yes/no word (synonyms:
yes/true, no/false; any case; ``\\text{}`` and punctuation ignored) that ``boxed.answer_candidates`` yields:
the last ``\\boxed{}``, then ``answer: yes`` / ``The answer is no``, then a lone word on the last line.
"""

from __future__ import annotations

from typing import Any

from esjax.tasks.base import Example, Messages, register
from esjax.tasks.boxed import extract_final, leading_token
from esjax.tasks.io import FileTask, require_str

INSTRUCTION = "Answer the question with yes or no. Think step by step, then put your final answer within \\boxed{}."
YES, NO = frozenset({"yes", "true"}), frozenset({"no", "false"})


def parse_yes_no(snippet: str, strict: bool) -> bool | None:
    """True for yes/true, False for no/false, else None."""
    token = leading_token(snippet, strict).lower()
    return True if token in YES else False if token in NO else None


@register("boolq")
class BoolQTask(FileTask):
    """BoolQ; data options as ``FileTask`` (default: the shipped example files).
    ``parts["extracted"]``: whether a yes/no answer was found."""

    name = "boolq"
    part_names = ("answer", "extracted")
    chat = True

    @staticmethod
    def validate_row(row: dict[str, Any]) -> dict[str, Any]:
        require_str(row, "question")
        require_str(row, "passage")
        if not isinstance(row.get("answer"), bool):
            raise ValueError(f"field 'answer' must be true or false, got {row.get('answer')!r:.20}")
        return row

    def prompt(self, example: Example) -> Messages:
        question = example["question"].strip()
        question = question[:1].upper() + question[1:] + ("" if question.endswith("?") else "?")
        return self.messages(f"Passage: {example['passage']}\n\nQuestion: {question}\n\n{INSTRUCTION}")

    def score(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        predicted = extract_final(completion, parse_yes_no)
        ok = predicted is not None and predicted == example["answer"]
        return float(ok), {"answer": float(ok), "extracted": float(predicted is not None)}

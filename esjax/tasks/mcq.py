"""Multiple-choice questions (SciKnowEval chemistry layout) as in Hoy et al.: chat prompt, binary reward.

Rows: ``question``, ``choices`` = {"text": [...], "label": ["A", "B", "C", "D"]}, ``answerKey``.
The predicted letter is the first that ``boxed.answer_candidates`` yields: the last ``\\boxed{C}``, then
``"answer": "C"`` / ``answer: C`` / ``The answer is (C)``, then a lone letter on the last line. Letters must be
one of the row's labels (upper case, except inside ``\\boxed{}`` or on a lone line).
"""

from __future__ import annotations

from typing import Any

from esjax.tasks.base import Example, Messages, register
from esjax.tasks.boxed import extract_final, leading_token
from esjax.tasks.io import FileTask, require_str

INSTRUCTION = ("Think step by step, then give the letter of the correct option as your final answer "
               "within \\boxed{}.")


def parse_letter(snippet: str, labels: list[str], strict: bool) -> str | None:
    """The option label a snippet names, or None."""
    token = leading_token(snippet, strict)
    if token in labels:
        return token
    if strict and token.upper() in labels:
        return token.upper()
    return None


@register("chemistry_mcq")
class MCQTask(FileTask):
    """4-choice MCQ; data options as ``FileTask`` (default: the shipped chemistry example files).
    ``parts["extracted"]``: whether any option letter was found."""

    name = "chemistry_mcq"
    part_names = ("answer", "extracted")
    chat = True

    @staticmethod
    def validate_row(row: dict[str, Any]) -> dict[str, Any]:
        require_str(row, "question")
        choices = row.get("choices")
        if not isinstance(choices, dict):
            raise ValueError("field 'choices' must be an object {'text': [...], 'label': [...]}")
        text, label = choices.get("text"), choices.get("label")
        if (not isinstance(text, list) or not isinstance(label, list) or len(text) != len(label) or len(text) < 2
                or not all(isinstance(x, str) for x in text + label)):
            raise ValueError("'choices' needs lists 'text' and 'label' of equal length (>= 2) of strings")
        if row.get("answerKey") not in label:
            raise ValueError(f"'answerKey' {row.get('answerKey')!r:.20} is not one of the labels {label}")
        return row

    def prompt(self, example: Example) -> Messages:
        choices = example["choices"]
        options = "\n".join(f"{label}. {text}" for label, text in zip(choices["label"], choices["text"]))
        return self.messages(f"{example['question']}\n\n{options}\n\n{INSTRUCTION}")

    def score(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        labels = example["choices"]["label"]
        letter = extract_final(completion, lambda s, strict: parse_letter(s, labels, strict))
        ok = letter == example["answerKey"]
        return float(ok), {"answer": float(ok), "extracted": float(letter is not None)}

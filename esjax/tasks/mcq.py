"""SciKnowEval chemistry multiple choice as the ES-vs-GRPO paper (Hoy et al.) ran it: chat prompt, binary reward.

Rows: the layout of ``hicai-zju/SciKnowEval`` (``question``, ``choices`` = {"text": [...], "label": [...]},
``answerKey``, ``domain``, ``type``, ``details``). Prompt: the reference's system turn (answer as JSON), then
``"Question: {question}\\n\\nA) ...\\nB) ...\\n\\nPlease show your choice in the answer field with only the choice
letter, e.g., \\"answer\\": \\"C\\"."``. Reward, the reference's rule, each step case-insensitive and taking the
last match: a letter A-D after ``"answer":`` (optionally quoted, and not checked for a word boundary, so
``"answer": "Because"`` reads B); else after an unquoted ``answer:`` as a whole word; else the last standalone
letter A-D anywhere (``a`` as an article counts). Truncated completions are scored like any other.

``lenient=True``: esjax's broader reading (``boxed.answer_candidates``): the last ``\\boxed{C}``, then
``"answer": "C"`` / ``answer: C`` / ``The answer is (C)``, then a lone letter on the last line, never a letter
inside prose; letters are the row's labels.
"""

from __future__ import annotations

import re
from typing import Any

from esjax.tasks.base import Example, register
from esjax.tasks.boxed import extract_final, leading_token
from esjax.tasks.esvsgrpo import ReferenceChatTask
from esjax.tasks.io import require_str

REQUEST = 'Please show your choice in the answer field with only the choice letter, e.g., "answer": "C".'
_JSON_ANSWER = re.compile(r'"answer"\s*:\s*"?([A-Da-d])"?', re.IGNORECASE)  # the closing quote is consumed
_PLAIN_ANSWER = re.compile(r"answer\s*:\s*([A-Da-d])\b", re.IGNORECASE)
_LONE_LETTER = re.compile(r"\b([A-Da-d])\b")


def reference_letter(completion: str) -> str | None:
    """The option letter the reference reads from a completion (module docstring), upper case, or None."""
    for pattern in (_JSON_ANSWER, _PLAIN_ANSWER, _LONE_LETTER):
        last = None
        for last in pattern.finditer(completion):
            pass
        if last is not None:
            return last[1].upper()
    return None


def parse_letter(snippet: str, labels: list[str], strict: bool) -> str | None:
    """``lenient=True``: the option label a snippet names, or None."""
    token = leading_token(snippet, strict)
    if token in labels:
        return token
    if strict and token.upper() in labels:
        return token.upper()
    return None


@register("chemistry_mcq")
class MCQTask(ReferenceChatTask):
    """Chemistry MCQ (module docstring); data options as ``FileTask``. ``parts["extracted"]``: an option letter
    was found."""

    name = "chemistry_mcq"
    part_names = ("answer", "extracted")

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

    def user_turn(self, example: Example) -> str:
        choices = example["choices"]
        options = "".join(f"{label}) {text}\n" for label, text in zip(choices["label"], choices["text"]))
        return f"Question: {example['question']}\n\n{options.strip()}\n\n{REQUEST}"

    def score_text(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        if self.lenient:
            letter = extract_final(completion, lambda s, strict: parse_letter(s, example["choices"]["label"], strict))
        else:
            letter = reference_letter(completion)
        ok = letter is not None and letter == example["answerKey"].upper()
        return float(ok), {"answer": float(ok), "extracted": float(letter is not None)}

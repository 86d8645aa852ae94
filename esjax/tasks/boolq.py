"""BoolQ (yes/no questions about a passage) as the ES-vs-GRPO paper (Hoy et al.) ran it: chat prompt, binary reward.

Prompt: the reference's system turn, then ``"Passage: {passage}\\n\\nQuestion: {question}"`` with the data set's
question as it is (lower case, no question mark). Rows: ``question``, ``passage``, ``answer`` (bool), the layout
of ``google/boolq``. Reward, the reference's rule: the last ``\\boxed{...}`` without ``}`` inside
(:func:`esjax.tasks.esvsgrpo.flat_boxed`; so ``\\boxed{\\text{yes}}`` reads ``\\text{yes`` and scores 0),
lower-cased and stripped, with every character that is neither a word character nor whitespace removed, must be
one of yes/true/1/correct/right (gold yes) or no/false/0/incorrect/wrong (gold no). Truncated completions are
scored like any other.

``lenient=True``: esjax's broader reading: the first yes/no/true/false answer that ``boxed.answer_candidates``
finds (a braced ``\\boxed{\\text{Yes}}``, ``Answer: no``, ``The answer is yes``, a lone word on the last line).
"""

from __future__ import annotations

import re
from typing import Any

from esjax.tasks.base import Example, register
from esjax.tasks.boxed import extract_final, leading_token
from esjax.tasks.esvsgrpo import ReferenceChatTask, flat_boxed
from esjax.tasks.io import require_str

REFERENCE_WORDS = {True: frozenset({"yes", "true", "1", "correct", "right"}),
                   False: frozenset({"no", "false", "0", "incorrect", "wrong"})}
LENIENT_WORDS = {True: frozenset({"yes", "true"}), False: frozenset({"no", "false"})}
_PUNCTUATION = re.compile(r"[^\w\s]")


def reference_word(content: str) -> str:
    """A boxed answer as the reference compares it: lower case, stripped, punctuation removed."""
    return _PUNCTUATION.sub("", content.strip().lower().strip())


def parse_yes_no(snippet: str, strict: bool) -> bool | None:
    """``lenient=True``: True for yes/true, False for no/false, else None."""
    token = leading_token(snippet, strict).lower()
    return next((value for value, words in LENIENT_WORDS.items() if token in words), None)


@register("boolq")
class BoolQTask(ReferenceChatTask):
    """BoolQ (module docstring); data options as ``FileTask``. ``parts["extracted"]``: an answer was found
    (a boxed one; with ``lenient``, a yes/no one)."""

    name = "boolq"
    part_names = ("answer", "extracted")

    @staticmethod
    def validate_row(row: dict[str, Any]) -> dict[str, Any]:
        require_str(row, "question")
        require_str(row, "passage")
        if not isinstance(row.get("answer"), bool):
            raise ValueError(f"field 'answer' must be true or false, got {row.get('answer')!r:.20}")
        return row

    def user_turn(self, example: Example) -> str:
        return f"Passage: {example['passage']}\n\nQuestion: {example['question']}"

    def score_text(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        if self.lenient:
            predicted = extract_final(completion, parse_yes_no)
            ok = predicted is not None and predicted == example["answer"]
            return float(ok), {"answer": float(ok), "extracted": float(predicted is not None)}
        content = flat_boxed(completion)
        ok = content is not None and reference_word(content) in REFERENCE_WORDS[example["answer"]]
        return float(ok), {"answer": float(ok), "extracted": float(content is not None)}

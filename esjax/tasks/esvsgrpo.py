"""What the four ES-vs-GRPO tasks (Hoy et al.) share: the reference code's system prompts, its ``\\boxed{}`` rule,
and a chat task base with the reference's defaults.

The reference code sends each task a system turn and a short user turn through the model's chat template
(generation prompt on), and scores every completion as it comes, truncated or not. Its Countdown and BoolQ rewards
read the last ``\\boxed{...}`` whose content holds no ``}`` (:func:`flat_boxed`); MATH matches braces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esjax.tasks.base import Messages
from esjax.tasks.io import FileTask

_BOXED_REQUEST = "Please reason step by step, and put your final answer within \\boxed{}."
SYSTEM_PROMPTS = {
    "countdown_boxed": ("You are a math assistant. Using the given numbers, create an arithmetic expression that "
                        "equals the target.\n\nRules:\n- Use each number exactly once\n- Use +, -, *, / operations"
                        "\n\n" + _BOXED_REQUEST),
    "math": "You are a math expert. Solve the following competition math problem.\n\n" + _BOXED_REQUEST,
    "boolq": "You are a reading assistant. Answer yes or no based on the passage.\n\n" + _BOXED_REQUEST,
    "chemistry_mcq": ('You are a chemistry expert. Reason step by step, then provide your final answer as JSON, '
                      'e.g., "answer": "C".'),
}
_OPEN = "\\boxed{"
MAX_CHARS = 1 << 16  # longer completions are read from their end (the reference generated ~5,000 characters)


def flat_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose content has no ``}``, as the last match of
    ``re.findall(r"\\\\boxed\\{([^}]*)\\}", text)``; ``None`` when there is none. Linear time.

    Matches do not overlap: after one ends at its ``}``, the search resumes past it, so in
    ``\\boxed{\\boxed{5}}`` the one match is ``\\boxed{5`` and in ``\\boxed{\\text{yes}}`` it is ``\\text{yes``.
    """
    last, pos = None, 0
    while (i := text.find(_OPEN, pos)) >= 0:
        j = text.find("}", i + len(_OPEN))
        if j < 0:
            break
        last, pos = text[i + len(_OPEN):j], j + 1
    return last


class ReferenceChatTask(FileTask):
    """A chat task of the ES-vs-GRPO reference: its system prompt, a user turn from :meth:`user_turn`.

    Options (besides ``FileTask``'s data options): ``system_prompt`` (default: the reference's; "" sends no
    system turn), ``lenient`` (False: the reference's answer extraction and comparison; True: esjax's broader
    extraction, documented per task), ``truncated_reward`` (default None: truncated completions are scored like
    any other, as in the reference). A completion longer than ``MAX_CHARS`` characters is read from its last
    ``MAX_CHARS`` (bounded time on hostile input; the reference's 1024 new tokens are ~5,000 characters).
    """

    chat = True

    def __init__(self, path: str | Path | None = None, *, system_prompt: str | None = None, lenient: bool = False,
                 truncated_reward: float | None = None, **options: Any):
        if not isinstance(lenient, bool):
            raise ValueError(f"task {self.name!r}: lenient must be true or false, got {lenient!r}")
        self.lenient = lenient
        system_prompt = SYSTEM_PROMPTS[self.name] if system_prompt is None else system_prompt
        super().__init__(path, system_prompt=system_prompt, truncated_reward=truncated_reward, **options)

    def user_turn(self, example: dict[str, Any]) -> str:
        raise NotImplementedError

    def prompt(self, example: dict[str, Any]) -> Messages:
        return self.messages(self.user_turn(example))

    def score(self, completion: str, example: dict[str, Any]) -> tuple[float, dict[str, float]]:
        return self.score_text(completion[-MAX_CHARS:], example)

    def score_text(self, completion: str, example: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """``(reward, parts)`` of a completion of at most ``MAX_CHARS`` characters."""
        raise NotImplementedError

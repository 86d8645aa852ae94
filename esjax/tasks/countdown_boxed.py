"""Countdown as the ES-vs-GRPO paper (Hoy et al.) ran it: chat prompt, the expression in ``\\boxed{}``, binary reward.

Prompt: the reference's system turn, then ``"Numbers: [79, 88, 33]\\nTarget: 42"`` (the row's ``nums`` and
``target`` as Python prints them). Reward, the reference's rule: the last ``\\boxed{...}`` without ``}`` inside
(:func:`esjax.tasks.esvsgrpo.flat_boxed`), stripped, must be only digits, ``+ - * / ( )`` and spaces, its digit
runs must be the row's numbers (each once), and its value as Python evaluates it (``**`` and ``//`` included;
:func:`esjax.tasks.arithmetic.python_value`, never ``eval``) must be within 1e-5 of the target. Truncated
completions are scored like any other. Bounds the reference did not have (it called ``eval``): an expression of
over 4,096 characters, nested deeper than 200 parentheses, or with a power of over 2**22 bits scores 0.

``lenient=True``: esjax's broader reading instead: braces matched (``\\boxed{(7 \\times 2) + 3}``), ``\\fbox`` and
unbraced ``\\boxed 5``, LaTeX operators (``\\times \\cdot \\div``, brackets) mapped, a trailing ``= 17`` dropped;
``**`` and ``//`` rejected.
"""

from __future__ import annotations

from typing import Any

from esjax.tasks.arithmetic import MAX_LENGTH, PY_CHARS, digit_runs, python_value
from esjax.tasks.base import Example, register
from esjax.tasks.boxed import last_boxed
from esjax.tasks.countdown import expression_matches, target_value, validate_countdown_row
from esjax.tasks.esvsgrpo import ReferenceChatTask, flat_boxed

_LATEX_OPS = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("\\left", ""),
              ("\\right", ""), ("[", "("), ("]", ")"), ("{", "("), ("}", ")"))


def numbers_of(example: Example) -> list[int]:
    """A row's numbers: ``numbers``, or ``nums`` (the layout of the public data set)."""
    return example["numbers"] if "numbers" in example else example["nums"]


def user_turn(numbers: Any, target: Any) -> str:
    """The reference's user turn: ``Numbers: [79, 88, 33]\\nTarget: 42``."""
    return f"Numbers: {numbers}\nTarget: {target}"


def reference_correct(content: str, numbers: list[int], target: Any) -> bool:
    """The reference's check of a boxed Countdown answer (see the module docstring)."""
    expression = content.strip()
    if not expression or not PY_CHARS.issuperset(expression):
        return False
    runs = digit_runs(expression)
    if runs is None or sorted(runs) != sorted(numbers):
        return False
    value, goal = python_value(expression), target_value(target)
    try:
        return value is not None and goal is not None and abs(float(value) - goal) < 1e-5
    except OverflowError:  # an integer too large for a float
        return False


def lenient_expression(completion: str) -> str | None:
    """``lenient=True``: the last braced / unbraced ``\\boxed`` (or ``\\fbox``) expression, LaTeX operators
    mapped, a trailing ``= T`` dropped."""
    content = last_boxed(completion)
    if content is None or len(content) > 4 * MAX_LENGTH:
        return None
    for old, new in _LATEX_OPS:
        content = content.replace(old, new)
    return content.split("=", 1)[0]


@register("countdown_boxed")
class CountdownBoxedTask(ReferenceChatTask):
    """Countdown of the ES-vs-GRPO paper (module docstring). Rows: ``nums`` (or ``numbers``) and ``target``,
    as ``esjax data prepare countdown_boxed`` writes them. ``parts["boxed"]``: a boxed answer was found."""

    name = "countdown_boxed"
    part_names = ("answer", "boxed")
    validate_row = staticmethod(validate_countdown_row)

    def user_turn(self, example: Example) -> str:
        return user_turn(numbers_of(example), example["target"])

    def score_text(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        numbers = numbers_of(example)
        if self.lenient:
            expression = lenient_expression(completion)
            ok = expression is not None and expression_matches(expression, numbers,
                                                                target_value(example["target"]))
        else:
            expression = flat_boxed(completion)
            ok = expression is not None and reference_correct(expression, numbers, example["target"])
        return float(ok), {"answer": float(ok), "boxed": float(expression is not None)}

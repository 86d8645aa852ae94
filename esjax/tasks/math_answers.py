"""MATH answers exactly as the ES-vs-GRPO reference reads and compares them (the task option ``grader: reference``).

Extraction (:func:`braced_boxed`, used by every grader unless ``lenient``): the content of the last ``\\boxed{``
with braces matched; no ``\\fbox``, no unbraced ``\\boxed 5``, nothing when the braces never close.

Comparison (:func:`reference_equal`): both answers normalised (:func:`normalize`: ``\\text{..}`` unwrapped,
spaces dropped, ``5.0`` -> ``5``, dollar / percent / degree signs dropped, ``\\dfrac``/``\\tfrac`` ->
``\\frac``); equal strings match. Otherwise numbers are compared within 1e-6: ``\\frac{a}{b}`` (a prefix match),
plain numbers with commas dropped, and ``a/b`` against a number. This keeps the reference's false positives
(``\\frac{1}{2}x`` read as 0.5, ``1/2/3`` as 1/2, ``1,2`` as 12, ``0.3333333`` for ``\\frac{1}{3}``) and its
false negatives (``\\frac{1}{3}\\text{ inches}``, ``\\frac{1}{2}.``); esjax's default grader
(:mod:`esjax.tasks.math_equality`) has neither.
"""

from __future__ import annotations

import re

_OPEN = "\\boxed{"
_TEXT = re.compile(r"\\text\{([^}]*)\}")
_FRAC = re.compile(r"\\frac\{([^}]+)\}\{([^}]+)\}")
_DROPPED = ("\\$", "$", "\\%", "%", "^{\\circ}", "^\\circ", "\\circ")


def braced_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with nested braces matched, or ``None`` (none, or never closed)."""
    start = text.rfind(_OPEN)
    if start < 0:
        return None
    depth = 0
    for k in range(start + len(_OPEN) - 1, len(text)):
        c = text[k]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(_OPEN):k]
    return None


def normalize(answer: str) -> str:
    """The reference's normal form of an answer (see the module docstring)."""
    s = _TEXT.sub(r"\1", answer.strip()).replace(" ", "")
    if "." in s and not any(c.isalpha() for c in s):
        try:
            value = float(s)
            if value == int(value):
                s = str(int(value))
        except (ValueError, OverflowError):
            pass
    for old in _DROPPED:
        s = s.replace(old, "")
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def reference_numbers_close(pred: str, gold: str) -> bool:
    """The reference's numeric comparison of two normalised answers (fractions, commas, ``a/b``; 1e-6)."""
    def number(s: str) -> float | None:
        m = _FRAC.match(s)  # a prefix match, as in the reference
        if m is not None:
            num, den = _float(m[1]), _float(m[2])
            if num is not None and den is not None and den != 0:
                return num / den
        return _float(s.replace(",", ""))

    a, b = number(pred), number(gold)
    if a is not None and b is not None and abs(a - b) < 1e-6:
        return True
    if ("/" in pred) == ("/" in gold):
        return False
    ratio, plain = (pred, gold) if "/" in pred else (gold, pred)
    parts = ratio.split("/")
    num, den, value = _float(parts[0]), _float(parts[1]), _float(plain)
    if num is None or den is None or value is None or den == 0:
        return False
    return abs(num / den - value) < 1e-6


def reference_equal(pred: str, gold: str) -> bool:
    """The reference's ``_answers_equal``: equal normal forms, or :func:`reference_numbers_close`."""
    a, b = normalize(pred), normalize(gold)
    return a == b or reference_numbers_close(a, b)

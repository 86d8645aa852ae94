"""MATH answers as the ES-vs-GRPO reference reads and compares them, without its false positives.

Extraction (:func:`braced_boxed`): the content of the last ``\\boxed{`` with braces matched; no ``\\fbox``, no
unbraced ``\\boxed 5``, nothing when the braces never close.

Comparison (:func:`answers_equal`): both answers normalised (:func:`normalize`: ``\\text{..}`` unwrapped, spaces
dropped, ``5.0`` -> ``5``, dollar / percent / degree signs dropped, ``\\dfrac``/``\\tfrac`` -> ``\\frac``); equal
strings match. Otherwise the reference compared numbers: ``\\frac{a}{b}``, plain numbers with commas dropped, and
``a/b`` against a number, within 1e-6. esjax accepts such a numeric match only when both answers are exactly the
same rational number (:func:`exact_value`), which removes the reference's false positives: ``\\frac{1}{2}x``
(whose leading fraction the reference read as 0.5), ``1/2/3`` (read as 1/2), ``1,2`` (read as 12) and
approximations such as ``0.3333333`` for ``\\frac{1}{3}`` or ``1e-9`` for 0. An equation never equals a number
or an equation in another variable (``x=5`` vs ``y=5``, ``-x=11`` vs ``11``), as in the reference.
"""

from __future__ import annotations

import re
from fractions import Fraction

_OPEN = "\\boxed{"
_TEXT = re.compile(r"\\text\{([^}]*)\}")
_FRAC = re.compile(r"\\frac\{([^}]+)\}\{([^}]+)\}")
_THOUSANDS = re.compile(r"[-+]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]*)?")
_EXPONENT = re.compile(r"[eE]([-+]?[0-9_]+)$")
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


def _rational(s: str) -> Fraction | None:
    """A decimal / integer / exponent literal as an exact rational (bounded exponent), else None."""
    if not s or len(s) > 512:
        return None
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    m = _EXPONENT.search(s)
    if m is not None:
        try:
            if abs(int(m[1])) > 400:
                return None
        except ValueError:
            return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def exact_value(normalized: str) -> Fraction | None:
    """A normalised answer that is exactly a number: a literal, ``\\frac{a}{b}`` or ``a/b`` of literals."""
    m = _FRAC.fullmatch(normalized)
    parts = (m[1], m[2]) if m is not None else tuple(normalized.split("/")) if "/" in normalized else None
    if parts is None:
        return _rational(normalized)
    if len(parts) != 2:
        return None
    num, den = _rational(parts[0]), _rational(parts[1])
    return None if num is None or den is None or den == 0 else num / den


def answers_equal(pred: str, gold: str) -> bool:
    """Whether a predicted MATH answer equals the gold one (module docstring)."""
    a, b = normalize(pred), normalize(gold)
    if a == b:
        return True
    if not reference_numbers_close(a, b):
        return False
    x, y = exact_value(a), exact_value(b)
    return x is not None and x == y

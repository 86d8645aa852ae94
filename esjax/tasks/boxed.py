"""Answer extraction (the last ``\\boxed{...}``, "answer:" markers, a lone final line) and MATH-answer equivalence.

Everything here reads untrusted model output: scans are linear, bounded by ``MAX_ANSWER`` characters after the
point where an answer starts, and nothing raises.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Iterator, TypeVar

MAX_ANSWER = 4096  # longest \boxed{...} content we scan / normalise
_T = TypeVar("_T")


def last_boxed(text: str, max_len: int = MAX_ANSWER) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with brace matching; ``\\boxed 5`` gives "5".

    ``None`` when there is none, or when the last one is unbalanced within ``max_len`` characters.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    window = text[i:i + max_len + 1]
    body = window.lstrip(" ")
    if not body:
        return None
    if body[0] != "{":
        if window[:1] != " ":
            return None  # e.g. "\boxedx"
        end = len(body)
        for stop in (" ", "$", "\n"):
            k = body.find(stop)
            if 0 <= k < end:
                end = k
        return body[:end] or None
    depth = 0
    for k, c in enumerate(body):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return body[1:k]
    return None


def answer_candidates(text: str, markers: int = 4) -> Iterator[tuple[str, bool]]:
    """Where a final answer may be, most trusted first, as ``(snippet, strict)``.

    1. the last ``\\boxed{}`` content (strict: the whole snippet must be the answer);
    2. the 40 characters after each of the last ``markers`` occurrences of "answer"/"Answer"/"ANSWER"
       (``"answer": "C"``, ``answer: C``, ``The answer is C``; not strict: the answer leads the snippet);
    3. the last non-empty line, if short (strict: a lone answer such as ``C`` or ``Yes.``).
    """
    boxed = last_boxed(text)
    if boxed is not None:
        yield boxed, True
    found: list[int] = []
    for word in ("answer", "Answer", "ANSWER"):
        end = len(text)
        for _ in range(markers):
            k = text.rfind(word, 0, end)
            if k < 0:
                break
            found.append(k)
            end = k
    for k in sorted(found, reverse=True)[:markers]:
        yield text[k + 6:k + 46], False
    tail = text[-4096:].rstrip()
    line = tail[tail.rfind("\n") + 1:].strip()
    if 0 < len(line) <= 40:
        yield line, True


def extract_final(text: str, parse: Callable[[str, bool], _T | None]) -> _T | None:
    """First candidate (see ``answer_candidates``) that ``parse(snippet, strict)`` accepts, else ``None``."""
    for snippet, strict in answer_candidates(text):
        value = parse(snippet, strict)
        if value is not None:
            return value
    return None


_WRAPPERS = ("\\text{", "\\textbf{", "\\mathrm{", "\\mathbf{", "\\mbox{")
_STRIP = " \t\n\"'*:=.,;!()[]{}$`"
_FILLER = frozenset({"is", "option", "choice", "letter", "the", "would", "be"})


def leading_token(snippet: str, strict: bool) -> str:
    """The answer token of a snippet: surrounding punctuation, ``is``, and ``\\text{}`` wrappers removed.

    strict: the whole snippet (``"(C)"``, ``"**Yes.**"``); otherwise its first word after up to two filler words
    such as "is"/"option" (``": C, because"`` -> ``C``, ``" is option (B)."`` -> ``B``).
    """
    s = snippet
    for w in _WRAPPERS:
        s = s.replace(w, " ")
    s = s.strip(_STRIP)
    if not strict:
        words = s.split(None, 3)
        while len(words) > 1 and words[0].lower().strip(_STRIP) in _FILLER:
            words = words[1:]
        s = words[0].split(None, 1)[0] if words else ""
    return s.strip(_STRIP)


# -- MATH normalisation ------------------------------------------------------------------------------------
_UNITS = frozenset(
    "unit units cm centimeter centimeters m meter meters km kilometer kilometers mm inch inches in ft foot feet "
    "yd yard yards mile miles mph sq square cubic degree degrees deg radians second seconds sec minute minutes "
    "min hour hours hr day days week weeks year years cent cents dollar dollars pound pounds lb lbs kg g gram "
    "grams ounce ounces oz liter liters ml people ways".split())
_SPACES = ("\\!", "\\,", "\\;", "\\:", "\\quad", "\\qquad", "\\displaystyle", "\\ ")
_NUM = r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # no nested quantifiers: linear even on 4096 digits
_NUMBER = re.compile(_NUM)
_FRAC = re.compile(r"(-?)\\frac\{(" + _NUM + r")\}\{(" + _NUM + r")\}")
_SLASH = re.compile(r"(-?)([0-9]+)/([0-9]+)")
_THOUSANDS = re.compile(r"-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_VARIABLE = re.compile(r"[A-Za-z]")
_BRACES = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{|[{}]")


def _unwrap(s: str) -> str:
    """``\\text{abc}`` -> ``abc`` (also \\textbf, \\mathrm, \\mathbf, \\mbox), braces matched; one linear pass."""
    if "\\" not in s:
        return s
    out, stack, last = [], [], 0
    for m in _BRACES.finditer(s):
        out.append(s[last:m.start()])
        last = m.end()
        tok = m.group()
        if tok == "}":
            if not stack or stack.pop():
                out.append(tok)
        else:
            keep = tok == "{"
            stack.append(keep)
            if keep:
                out.append(tok)
    out.append(s[last:])
    return "".join(out)


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part or part[0] == "{":
            out += part
            continue
        a, rest = part[0], part[1:]
        if rest[:1] == "{":
            out += "{" + a + "}" + rest
        elif rest:
            out += "{" + a + "}{" + rest[0] + "}" + rest[1:]
        else:
            out += a
    return out


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``."""
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += "\\sqrt" + (part if not part or part[0] in "{[" else "{" + part[0] + "}" + part[1:])
    return out


def normalize_math(answer: str, drop_variable: bool = True) -> str:
    """Canonical string form of a MATH answer (Hendrycks et al.'s rules, plus units, ``\\text`` and ``.0``).

    Removes spaces, ``\\left``/``\\right``, ``\\!`` and other spacing, degrees (``^\\circ``), dollars, percent
    signs, ``\\text{...}`` wrappers, trailing unit words (``5 cm``), thousands separators and, with
    ``drop_variable``, the ``x =`` of an equation whose left side is one letter;
    ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\frac12`` -> ``\\frac{1}{2}``; ``a/b`` -> ``\\frac{a}{b}``;
    ``5.0`` -> ``5``; ``.5`` -> ``0.5``.
    """
    s = answer[:MAX_ANSWER].strip()
    s = s.replace("\n", " ").replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    for sp in _SPACES:
        s = s.replace(sp, " ")
    for deg in ("^{\\circ}", "^\\circ", "\\circ", "°", "\\degree"):
        s = s.replace(deg, "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    if "\\text{ " in s and s.index("\\text{ ") > 0:  # units: "5\text{ cm}"
        s = s[:s.index("\\text{ ")]
    s = _unwrap(s).strip()
    words = s.rsplit(None, 1)  # trailing unit words: "5 cm", "12 square feet", "3 cm^2"
    while len(words) == 2 and words[1].split("^")[0].strip(".").lower() in _UNITS:
        s = words[0].strip()
        words = s.rsplit(None, 1)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if drop_variable and s.count("=") == 1 and _VARIABLE.fullmatch(s.split("=")[0].strip()):
        s = s.split("=")[1]
    s = _fix_sqrt(s.replace(" ", ""))
    s = _fix_fracs(s)
    if s.startswith(".") or s.startswith("-."):
        s = s.replace(".", "0.", 1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if (m := _SLASH.fullmatch(s)) is not None:
        s = f"{m[1]}\\frac{{{m[2]}}}{{{m[3]}}}"
    if _NUMBER.fullmatch(s) and "." in s:
        s = s.rstrip("0").rstrip(".") or "0"
    if s == "-0":
        s = "0"
    return s


def math_number(normalized: str) -> float | None:
    """Value of a normalised answer that is a plain number or a simple fraction (``\\frac{a}{b}``), else None."""
    s = normalized
    if len(s) > 64:
        return None
    try:
        if _NUMBER.fullmatch(s):
            return float(s)
        if (m := _FRAC.fullmatch(s)) is not None:
            num, den = float(m[2]), float(m[3])
            if den == 0:
                return None
            return (-1 if m[1] else 1) * num / den
    except (ValueError, OverflowError):
        return None
    return None


def math_equal(prediction: str | None, reference: str | None) -> bool:
    """Whether two MATH answers are equivalent: equal after ``normalize_math``, or numerically equal.

    ``x = 5`` equals ``5``; two equations are compared whole, so ``x = 5`` never equals ``y = 5``.
    """
    if prediction is None or reference is None:
        return False
    drop = ("=" in prediction) != ("=" in reference)
    a, b = normalize_math(prediction, drop), normalize_math(reference, drop)
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = math_number(a), math_number(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)

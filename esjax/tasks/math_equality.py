"""MATH answers compared as a grader would: equal after removing what does not change the answer.

:func:`canonical` removes, on both sides, what is notation rather than answer:

- LaTeX spacing and sizing (``\\!``, ``\\,``, ``\\;``, ``\\:``, ``\\ ``, ``~``, ``\\quad``, ``\\hspace{..}``,
  ``\\displaystyle``, ``\\left``/``\\right``, ``\\big``) and spaces: ``\\frac{35}{17}\\!`` -> ``\\frac{35}{17}``;
- units: a trailing ``\\text{..}`` / ``\\mbox{..}`` (also ``\\textrm``, ``\\mathrm``, ...) of words
  (``\\text{ inches}``, ``\\mbox{cm}^2``, ``\\text{ of an inch}``), but not words that change the answer
  ("or more", "and", "is even"; :data:`NOT_UNITS`); unit words without ``\\text`` after a plain number (``5 cm``,
  ``\\text{12 square feet}``, ``25 percent``): ``\\frac{1}{3}\\text{ inches}`` -> ``\\frac{1}{3}``;
- degrees (``^\\circ``, ``^{\\circ}``, ``°``, ``\\degree``, with a ``C``/``F`` after them), dollar and percent
  signs (``10\\%`` -> ``10``, as the reference);
- trailing punctuation ``. , ; :`` (not ``!``, a factorial): ``\\frac{1}{2}.`` -> ``\\frac{1}{2}``;
- an approximation after the answer: ``\\frac{1}{3} \\approx 0.333`` -> ``\\frac{1}{3}``;
- a one-letter variable when only one side names it: ``x = 5`` -> ``5``, ``x \\in [0, 1)`` -> ``[0, 1)`` (but
  ``x = 5`` never equals ``y = 5``, nor ``-x = 11`` 11);
- spellings of the same LaTeX: ``\\dfrac``/``\\tfrac``/``\\cfrac`` -> ``\\frac``, ``\\frac12`` ->
  ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``, ``x^{2}`` -> ``x^2``, ``\\text{(B)}`` -> ``(B)`` -> ``B``
  (parentheses around one item).

:func:`answers_equal`: the canonical strings are equal; or both are exactly the same rational number
(:func:`exact_value`: integers, decimals, ``1,000`` (groups of three digits; a comma followed by a space
separates items), ``\\frac{a}{b}``, ``a/b``, ``0.\\overline{3}``, mixed numbers ``2\\frac{1}{4}``, powers
``2^{10}`` and ``1.5\\times10^{3}``, signed); or both are tuples / intervals with the same brackets whose items
are equal this way, or sets ``\\{..\\}`` / bare lists of solutions with the same items in any order. Nothing is
approximate: ``0.333`` is not ``\\frac{1}{3}``, ``1,2`` is not 12, ``10,00,000`` is not a number,
``\\frac{28}{17}x`` is not ``\\frac{28}{17}``, ``1/2/3`` is not a number. Symbolic equality
(``\\frac{\\pi}{2}`` vs ``\\frac{1}{2}\\pi``) is Math-Verify's job (``grader: math_verify``).

``lenient=True`` (the task option) also drops unit words after any answer (``2x cm``). Everything is linear in
the answer's length (at most ``MAX_ANSWER`` characters are read) and nothing raises.
"""

from __future__ import annotations

import re
from fractions import Fraction

from esjax.tasks.boxed import MAX_ANSWER

_SPACING = re.compile(r"(?<!\\)\\(?:[!,;:> ]|q?quad(?![A-Za-z])|(?:en|thin|med|thick|negthin|negmed|negthick)space"
                      r"|displaystyle|textstyle|hspace\*?\{[^{}]*\}|(?:left|right|[bB]igg?[lr]?)(?![A-Za-z]))"
                      r"|~|\\(?:text|mbox)\{\s*\}")
_DEGREES = re.compile(r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\textdegree|\\degree)"
                      r"(?:\s*(?:\\(?:text|mathrm)\s*\{\s*[CF]\s*\}|[CF](?![A-Za-z])))?")
_WRAPPER = r"\\(?:text|textrm|textnormal|textup|textit|textsf|mbox|mathrm|operatorname)\s*\{([^{}]*)\}"
_TRAILING_UNIT = re.compile(_WRAPPER + r"\s*(?:\^\s*(?:\{\s*[23]\s*\}|[23]))?\s*$")
_UNIT_TEXT = re.compile(r"[A-Za-z][A-Za-z .\-/]*")
NOT_UNITS = frozenset("and or not no is are if only than more less least most at none undefined all except for "
                      "when where but with without both neither nor either any each every some yes true false "
                      "even odd".split())
_SINGLE_LETTER_UNITS = frozenset("mgshlLKCFNJWVA")  # after \mathrm: one letter is a unit only if it is one of these
_UNWRAP = re.compile(r"\\(?:text|textrm|textnormal|textup|textit|textsf|textbf|mbox|mathrm|mathbf)\s*\{|[{}]")
_MARK = "\u2063"  # invisible separator: marks a comma followed by white space
_PUNCTUATION = ".,;:" + _MARK
_FRAC_SHORT = re.compile(r"\\frac([0-9A-Za-z])([0-9A-Za-z])")
_FRAC_HALF = re.compile(r"\\frac([0-9A-Za-z])\{")
_SQRT_SHORT = re.compile(r"\\sqrt([0-9A-Za-z])")
_ONE_CHAR_POWER = re.compile(r"([\^_])\{(.)\}")
_LITERAL = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_NUMBER = re.compile(r"([-+]?)(" + _LITERAL + r"|[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]*)?)")
_REPEATING = re.compile(r"([-+]?)([0-9]*)\.([0-9]*)\\overline\{([0-9]+)\}")
_FRAC = re.compile(r"([-+]?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_SLASH = re.compile(r"([-+]?)([^/]+)/([^/]+)")
_MIXED = re.compile(r"([-+]?)([0-9]{1,12})\\frac\{([0-9]{1,12})\}\{([0-9]{1,12})\}")
_EXPONENT = r"\^(?:\{([-+]?[0-9]{1,3})\}|([0-9]))"  # ^7 or ^{-12}
_POWER = re.compile(r"([-+]?)([0-9]{1,12}(?:\.[0-9]{0,12})?)" + _EXPONENT)  # 2^{10}
_SCIENTIFIC = re.compile(r"([-+]?)(" + _LITERAL + r")(?:\\times|\\cdot)10" + _EXPONENT)  # 1.5\times10^{3}
_UNIT_WORDS = frozenset(
    "unit units cm centimeter centimeters m meter meters km kilometer kilometers mm inch inches in ft foot feet "
    "yd yard yards mile miles mph sq square cubic degree degrees deg radians second seconds sec minute minutes "
    "min hour hours hr day days week weeks year years cent cents dollar dollars pound pounds lb lbs kg g gram "
    "grams ounce ounces oz liter liters ml people ways percent".split())
_SYNONYMS = (("\u2212", "-"), ("π", "\\pi "), ("√", "\\sqrt"), ("∞", "\\infty "), ("×", "\\times "),
             ("·", "\\cdot "), ("≤", "\\le "), ("≥", "\\ge "), ("≠", "\\ne "), ("\\dfrac", "\\frac"),
             ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"), ("\\nicefrac", "\\frac"), ("\\sfrac", "\\frac"))
_RELATIONS = re.compile(r"(\\le|\\ge|\\ne)q(?![A-Za-z])")  # \leq -> \le
_OR = re.compile(r"\s*(?:\\(?:text|mbox|textrm)\s*\{\s*(?:or|and)\s*\}|\s(?:or|and)\s)\s*")  # 2 or 3: a list
_WORDS = re.compile(r"\\(?:text|mbox|textrm|textbf|mathrm)\s*\{")
_ASSIGNMENT = re.compile(r"\s*[A-Za-z]\s*(?:=|\\in(?![A-Za-z]))")  # x = 5, x \in [0, 1]
_RELATION = re.compile(r"=|\\in(?![A-Za-z])")
LIST_COMMA = "," + _MARK
_LIST_COMMA = re.compile(r"(?<!\\),(?=\s)")
_SIGNED = r"[-+]?[0-9.,]+"
_PLAIN_NUMBER = re.compile(rf"[-+]?(?:{_SIGNED}|\\frac\{{{_SIGNED}\}}\{{{_SIGNED}\}}|{_SIGNED}/{_SIGNED})")


def _is_unit(wrapper: str, content: str) -> bool:
    """Whether ``\\text{content}`` after an answer is a unit (words, none of :data:`NOT_UNITS`)."""
    text = content.strip().rstrip(_PUNCTUATION + " ")
    if not _UNIT_TEXT.fullmatch(text):
        return False
    if any(w.lower().strip(".-/") in NOT_UNITS for w in re.split(r"[ /\-]+", text)):
        return False
    return not (wrapper.startswith("\\mathrm") or wrapper.startswith("\\operatorname")) or len(text) > 1 \
        or text in _SINGLE_LETTER_UNITS


def _strip_trailing(s: str) -> str:
    """Remove trailing punctuation and units (``5\\text{ cm}.`` -> ``5``; up to 8 rounds); the answer stays non-empty."""
    for _ in range(8):
        before = s
        s = s.rstrip(" " + _PUNCTUATION) if s.rstrip(" " + _PUNCTUATION) else s
        m = _TRAILING_UNIT.search(s)
        if m is not None and s[:m.start()].strip() and _is_unit(m.group(0), m[1]):
            s = s[:m.start()].rstrip()
        if s == before:
            break
    return s


def _unwrap(s: str) -> str:
    """``\\text{abc}`` -> ``abc`` (also ``\\mbox``, ``\\mathrm``, ``\\textbf``, ...), braces matched; linear."""
    if "\\" not in s:
        return s
    out, stack, last = [], [], 0
    for m in _UNWRAP.finditer(s):
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


def _drop_unit_words(s: str) -> str:
    """``5 cm`` -> ``5``, ``12 square feet`` -> ``12`` (lenient: unit words without ``\\text``)."""
    words = s.rsplit(None, 1)
    while len(words) == 2 and words[1].split("^")[0].strip(_PUNCTUATION).lower() in _UNIT_WORDS:
        s = words[0].strip()
        words = s.rsplit(None, 1)
    return s


def canonical(answer: str, lenient: bool = False, drop_variable: bool = False) -> str:
    """The canonical string of a MATH answer (module docstring); ``drop_variable``: ``x=5`` -> ``5``.

    A comma followed by white space (``1, 100``) separates items, never thousands: it keeps a mark
    (``LIST_COMMA``) that only :func:`exact_value` sees."""
    s = _LIST_COMMA.sub(LIST_COMMA, answer[:MAX_ANSWER].replace("\n", " "))
    for old, new in _SYNONYMS:
        s = s.replace(old, new)
    s = _RELATIONS.sub(r"\1", s)
    s = _SPACING.sub(" ", s)
    s = _OR.sub(LIST_COMMA + " ", s)
    s = _DEGREES.sub(" ", s)
    s = s.replace("\\$", " ").replace("$", " ").replace("\\%", " ").replace("%", " ")
    for approx in ("\\approx", "≈"):
        if approx in s and s.split(approx, 1)[0].strip():
            s = s.split(approx, 1)[0]
    s = _strip_trailing(s)
    s = _unwrap(s)
    if drop_variable:  # x = 5 -> 5; x = 2, x = 3 -> 2, 3
        items = _split(s) or [s]
        matches = [_ASSIGNMENT.match(item) for item in items]
        if all(m is not None and not _RELATION.search(item[m.end():]) for m, item in zip(matches, items)):
            s = LIST_COMMA.join(item[m.end():] for m, item in zip(matches, items))
        elif (m := _ASSIGNMENT.match(s)) is not None and not _RELATION.search(s[m.end():]):
            s = s[m.end():]
    without_units = _drop_unit_words(s)
    if lenient or _PLAIN_NUMBER.fullmatch("".join(without_units.split()).replace("{,}", ",")):  # "5 cm", \text{12 square feet}
        s = without_units
    s = "".join(s.split()).replace("{,}", ",")
    s = s.rstrip(_PUNCTUATION) or s
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF.sub(r"\\frac{\1}{", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _ONE_CHAR_POWER.sub(r"\1\2", s)
    for _ in range(3):  # parentheses around one item group, nothing more: (C) is C, (5) is 5
        group = _group(s) if s[:1] == "(" and s[-1:] == ")" else None
        if group is None or len(_split(group[2]) or ()) != 1:
            break
        s = group[2]
    return s


def _literal(s: str) -> Fraction | None:
    """A signed decimal literal (``-1,000.5``, ``.5``, ``0.\\overline{3}``) as an exact rational, else None."""
    if len(s) > 512:
        return None
    m = _NUMBER.fullmatch(s)
    if m is not None:
        value = Fraction(m[2].replace(",", ""))
        return -value if m[1] == "-" else value
    m = _REPEATING.fullmatch(s)
    if m is None:
        return None
    whole, fixed, period = m[2] or "0", m[3], m[4]
    value = Fraction(int(whole + fixed + period) - int(whole + fixed), 10 ** len(fixed) * (10 ** len(period) - 1))
    return -value if m[1] == "-" else value


def exact_value(s: str) -> Fraction | None:
    """A canonical answer that is exactly a number: a literal, ``\\frac{a}{b}`` or ``a/b`` of literals, a power
    ``2^{10}`` or ``1.5\\times10^{3}``, signed; None otherwise."""
    for pattern in (_FRAC, _SLASH):
        m = pattern.fullmatch(s)
        if m is not None:
            num, den = _literal(m[2]), _literal(m[3])
            if num is None or den is None or den == 0:
                return None
            return -num / den if m[1] == "-" else num / den
    m = _MIXED.fullmatch(s)
    if m is not None and int(m[3]) < int(m[4]):  # a mixed number: 2\frac{1}{4} is 9/4
        value = int(m[2]) + Fraction(int(m[3]), int(m[4]))
        return -value if m[1] == "-" else value
    for pattern in (_POWER, _SCIENTIFIC):
        m = pattern.fullmatch(s)
        if m is not None:
            base, exponent = _literal(m[2]), int(m[3] or m[4])
            if base is None or (base == 0 and exponent < 0):
                return None
            value = base ** exponent if pattern is _POWER else base * Fraction(10) ** exponent
            return -value if m[1] == "-" else value
    return _literal(s)


def _split(s: str) -> list[str] | None:
    """``s`` split at its top-level commas; None when its brackets do not balance."""
    items, depth, start = [], 0, 0
    for k, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif c == "," and depth == 0:
            items.append(s[start:k].lstrip(_MARK))
            start = k + 1
    items.append(s[start:].lstrip(_MARK))
    return items if depth == 0 else None


def _group(s: str) -> tuple[str, str, str] | None:
    """``(open, close, inside)`` when ``s`` is one bracketed group (``(1,2]``, ``\\{1,2\\}``), else None."""
    opener = "\\{" if s.startswith("\\{") else s[:1] if s[:1] in ("(", "[") else ""
    closer = "\\}" if s.endswith("\\}") else s[-1:] if s[-1:] in (")", "]") else ""
    if not opener or not closer or (opener == "\\{") != (closer == "\\}") or len(s) < len(opener) + len(closer):
        return None
    depth = 0
    for k, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and c in ")]}" and k < len(s) - 1:
            return None  # ``(1,2),(3,4)``: a list of groups
    return opener, closer, s[len(opener):len(s) - len(closer)]


def _key(item: str) -> tuple[str, object]:
    value = exact_value(item)
    return ("number", value) if value is not None else ("text", item)


def _canonical_equal(a: str, b: str, depth: int = 0) -> bool:
    """Equality of canonical answers: strings, exact numbers, then tuples item by item and sets in any order."""
    if not a or not b or depth > 8:
        return False
    if a.replace(LIST_COMMA, ",") == b.replace(LIST_COMMA, ","):
        return True
    x, y = exact_value(a), exact_value(b)
    if x is not None or y is not None:
        return x is not None and x == y
    g, h = _group(a), _group(b)
    if g is not None and h is not None and g[:2] != h[:2]:
        return False
    unordered = [x is None or x[0] == "\\{" for x in (g, h)]  # a set, or a bare list of solutions
    if unordered[0] != unordered[1]:
        return False
    p, q = (_split(a) if g is None else _split(g[2])), (_split(b) if h is None else _split(h[2]))
    if p is None or q is None or len(p) != len(q) or len(p) < 2:
        return False
    if unordered[0]:
        return sorted(map(_key, p), key=repr) == sorted(map(_key, q), key=repr)
    return all(_canonical_equal(u, v, depth + 1) for u, v in zip(p, q))


def answers_equal(pred: str | None, gold: str | None, lenient: bool = False) -> bool:
    """Whether a predicted MATH answer equals the gold one (module docstring); never raises."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    drop = bool(_RELATION.search(pred)) != bool(_RELATION.search(gold))
    a, b = canonical(pred, lenient, drop), canonical(gold, lenient, drop)
    if len(a) > 1 and a.isalpha() and b.isalpha() and _WORDS.search(pred + gold):  # \text{Even} is even
        return a.casefold() == b.casefold()
    return _canonical_equal(a, b)


def math_equal(prediction: str | None, reference: str | None) -> bool:
    """The lenient comparison (``answers_equal(.., lenient=True)``): ``x = 5`` equals ``5``, ``5 cm`` equals ``5``;
    two equations are compared whole, so ``x = 5`` never equals ``y = 5``."""
    return answers_equal(prediction, reference, lenient=True)


def normalize_math(answer: str, drop_variable: bool = True) -> str:
    """The lenient canonical form of an answer (``canonical(answer, lenient=True)``)."""
    return canonical(answer, lenient=True, drop_variable=drop_variable).replace(LIST_COMMA, ",")

"""Answer extraction: the last ``\\boxed{...}``, "answer:" markers, a lone final line (MATH answers are compared in
:mod:`esjax.tasks.math_equality`).

Everything here reads untrusted model output: scans are linear, bounded by ``MAX_ANSWER`` characters after the
point where an answer starts, and nothing raises.
"""

from __future__ import annotations

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

"""Safe arithmetic for untrusted text: ``+ - * /`` and parentheses over integer and decimal literals.

A hand-written tokenizer and recursive-descent parser; nothing is ever passed to ``eval``. The grammar is

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := ("+" | "-") factor | NUMBER | "(" expr ")"

- Unary ``+``/``-`` are allowed (as in Python, which the reference Countdown reward used: ``-(3 - 5)``, ``2*-3``).
- ``**`` and ``//`` are syntax errors (the reference's ``eval`` accepted them; ``9**9**9`` hung it).
- NUMBER: ASCII digits with an optional decimal point (``3``, ``3.5``, ``.5``, ``3.``); an integer literal with a
  leading zero (``07``) is rejected, as Python rejects it. Whitespace is ignored; any other character fails.
- Limits: at most ``max_length`` characters (256), ``max_depth`` nested parentheses/unary signs (32), and every
  literal and intermediate value within ``max_abs`` (1e12) in magnitude. Division by zero fails.
- Integer ``+ - *`` is exact (Python ints); ``/`` is true division (floats), like Python.

Failures return ``None``; nothing raises, for any limits (an integer literal longer than Python's int-conversion
digit limit is a failure too).
"""

from __future__ import annotations

MAX_LENGTH = 256
MAX_DEPTH = 32
MAX_ABS = 1e12
_DIGITS = frozenset("0123456789")
_OPS = frozenset("+-*/()")
_SPACE = frozenset(" \t\r\n")


class _Reject(Exception):
    pass


def tokenize(expression: str, max_length: int = MAX_LENGTH) -> list | None:
    """Tokens (numbers as int/float, operators as one-character strings), or ``None`` if not tokenisable."""
    if not isinstance(expression, str) or len(expression) > max_length:
        return None
    tokens: list = []
    i, n = 0, len(expression)
    while i < n:
        c = expression[i]
        if c in _SPACE:
            i += 1
        elif c in _OPS:
            tokens.append(c)
            i += 1
        elif c in _DIGITS or c == ".":
            j = i
            while j < n and expression[j] in _DIGITS:
                j += 1
            is_float = j < n and expression[j] == "."
            if is_float:
                j += 1
                while j < n and expression[j] in _DIGITS:
                    j += 1
            literal = expression[i:j]
            if literal == ".":
                return None
            if is_float:
                tokens.append(float(literal))
            elif literal[0] == "0" and literal.strip("0"):
                return None  # leading zero, e.g. "07"
            else:
                try:
                    tokens.append(int(literal))
                except ValueError:  # past Python's int-conversion digit limit (sys.set_int_max_str_digits)
                    return None
            i = j
        else:
            return None
    return tokens


def number_literals(expression: str, max_length: int = MAX_LENGTH) -> list | None:
    """The number literals of ``expression`` in order (unsigned: ``-3`` gives ``[3]``), or ``None``."""
    tokens = tokenize(expression, max_length)
    return None if tokens is None else [t for t in tokens if not isinstance(t, str)]


class _Parser:
    __slots__ = ("tokens", "i", "max_depth", "max_abs")

    def __init__(self, tokens: list, max_depth: int, max_abs: float):
        self.tokens, self.i, self.max_depth, self.max_abs = tokens, 0, max_depth, max_abs

    def _peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _check(self, value):
        if not -self.max_abs <= value <= self.max_abs:  # also rejects NaN
            raise _Reject
        return value

    def expr(self, depth: int):
        value = self.term(depth)
        while (op := self._peek()) in ("+", "-"):
            self.i += 1
            rhs = self.term(depth)
            value = self._check(value + rhs if op == "+" else value - rhs)
        return value

    def term(self, depth: int):
        value = self.factor(depth)
        while (op := self._peek()) in ("*", "/"):
            self.i += 1
            rhs = self.factor(depth)
            if op == "*":
                value = self._check(value * rhs)
            elif rhs == 0:
                raise _Reject
            else:
                value = self._check(value / rhs)
        return value

    def factor(self, depth: int):
        if depth > self.max_depth:
            raise _Reject
        tok = self._peek()
        self.i += 1
        if tok == "-":
            return -self.factor(depth + 1)
        if tok == "+":
            return self.factor(depth + 1)
        if tok == "(":
            value = self.expr(depth + 1)
            if self._peek() != ")":
                raise _Reject
            self.i += 1
            return value
        if tok is None or isinstance(tok, str):
            raise _Reject
        return self._check(tok)


def safe_eval(expression: str, *, max_length: int = MAX_LENGTH, max_depth: int = MAX_DEPTH,
              max_abs: float = MAX_ABS) -> float | None:
    """Value of an arithmetic expression as a float, or ``None`` (syntax error, limits, division by zero).

    Never raises, whatever the expression and the limits (a limit that is not a number rejects everything or
    nothing, as the comparison with it goes; values past the float range are rejected)."""
    try:
        tokens = tokenize(expression, max_length)
        if not tokens:
            return None
        parser = _Parser(tokens, max_depth, max_abs)
        value = parser.expr(0)
        return float(value) if parser.i == len(tokens) else None
    except (_Reject, ArithmeticError, RecursionError, MemoryError, TypeError, ValueError):
        return None

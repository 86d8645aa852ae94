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

import re

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


# -- Python's own semantics, for rewards that must agree with a reference that called ``eval`` ---------------
PY_CHARS = frozenset("0123456789+-*/() ")  # the alphabet the references let through to eval
PY_MAX_LENGTH = 4096
PY_MAX_NESTING = 200  # CPython's parser refuses deeper parentheses
PY_MAX_BITS = 1 << 22  # bounds time and memory; such a power has no float value (the reference hung on 9**9**9)
_DIGIT_RUN = re.compile(r"[0-9]+")
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "u+": 3, "u-": 3, "**": 4}


def digit_runs(text: str) -> list[int] | None:
    """The integers of the digit runs in ``text`` (``re.findall(r"[0-9]+")``); None if one has over 20 digits."""
    runs = _DIGIT_RUN.findall(text)
    return None if any(len(r) > 20 for r in runs) else [int(r) for r in runs]


def python_tokens(expression: str) -> list | None:
    """Tokens of an expression over ``PY_CHARS`` as CPython reads them (``**`` and ``//`` are one token; an
    integer with a leading zero such as ``07`` is a syntax error, ``00`` is 0), or ``None``."""
    if not isinstance(expression, str) or len(expression) > PY_MAX_LENGTH or not PY_CHARS.issuperset(expression):
        return None
    tokens: list = []
    i, n = 0, len(expression)
    while i < n:
        c = expression[i]
        if c == " ":
            i += 1
        elif c in _DIGITS:
            j = i
            while j < n and expression[j] in _DIGITS:
                j += 1
            literal = expression[i:j]
            if literal[0] == "0" and literal.strip("0"):
                return None
            tokens.append(int(literal))
            i = j
        elif c in "*/" and expression.startswith(c + c, i):
            tokens.append(c + c)
            i += 2
        else:
            tokens.append(c)
            i += 1
    return tokens


def _apply(op: str, values: list) -> None:
    b = values.pop()
    if op == "u-":
        values.append(-b)
        return
    if op == "u+":
        values.append(+b)
        return
    a = values.pop()
    if op == "**" and isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 \
            and b * a.bit_length() > PY_MAX_BITS:
        raise OverflowError
    result = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
              "//": lambda: a // b, "**": lambda: a ** b}[op]()
    if isinstance(result, complex):  # (-8) ** (1/3): the reference's float() would have raised
        raise TypeError
    values.append(result)


def python_value(expression: str) -> int | float | None:
    """What ``eval(expression)`` returns for an expression over digits, ``+ - * / ( )`` and spaces (``**``, ``//``
    and unary signs included, with Python's precedence and associativity), or ``None`` where eval would raise
    or return a non-number (``()``, ``2(3)``). Never calls eval; linear in the length; an integer power of more
    than ``PY_MAX_BITS`` bits gives ``None`` (its float() would overflow).
    """
    tokens = python_tokens(expression)
    if not tokens:
        return None
    ops: list[str] = []
    values: list = []
    expect_operand, depth = True, 0
    try:
        for tok in tokens:
            if isinstance(tok, int):
                if not expect_operand:
                    return None
                values.append(tok)
                expect_operand = False
            elif tok == "(":
                depth += 1
                if not expect_operand or depth > PY_MAX_NESTING:
                    return None
                ops.append(tok)
            elif tok == ")":
                if expect_operand or depth == 0:
                    return None
                while ops[-1] != "(":
                    _apply(ops.pop(), values)
                ops.pop()
                depth -= 1
            elif expect_operand:
                if tok not in "+-":
                    return None
                ops.append("u" + tok)
            else:
                prec = _PREC[tok]
                while ops and ops[-1] != "(" and (_PREC[ops[-1]] > prec or (_PREC[ops[-1]] == prec and tok != "**")):
                    _apply(ops.pop(), values)
                ops.append(tok)
                expect_operand = True
        if expect_operand or depth:
            return None
        while ops:
            _apply(ops.pop(), values)
    except (ArithmeticError, TypeError, ValueError, MemoryError):
        return None
    return values[0] if len(values) == 1 else None

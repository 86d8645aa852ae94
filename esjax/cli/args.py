"""Argument parsing for the ``esjax`` command line: a parser whose errors are one line, and checked flag types.

A flag's type rejects a bad value while parsing (``--num-samples 0``, ``--limit -1``), so a subcommand never starts
work it cannot finish; the error names the flag.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``esjax train: error: ...``) and exit code 2; the
    usage is in ``--help``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _number(kind: type, low: float | None, high: float | None = None, low_open: bool = False,
            what: str = "") -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` within ``[low, high]`` (``(low, high]`` when ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in "invalid <name> value" messages
    return parse


positive_int = _number(int, 1, what="an integer >= 1")
nonnegative_int = _number(int, 0, what="an integer >= 0")
nonnegative_float = _number(float, 0.0, float("inf"), what="a number >= 0")
probability = _number(float, 0.0, 1.0, low_open=True, what="a number in (0, 1]")
seed = _number(int, 0, 2 ** 63 - 1, what="an integer in [0, 2**63 - 1] (the range jax.random.key takes)")

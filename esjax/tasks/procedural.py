"""Procedural Countdown: a seeded generator of unlimited solvable problems, so training needs no download.

Each problem draws 3 or 4 numbers (options ``counts``, ``number_range``, with repeats as in the paper's data),
combines them with a random expression tree over the allowed ``operations`` and takes its value as the target;
the expression, printed like the paper's solutions (``((44 + 19) + 35)``), is the known solution. With
``integer_only`` (default) subtraction takes the larger operand first and an expression with a non-integer
intermediate or final value is rejected. Values are exact (ints, or ``Fraction`` when not integer-only).
The count of numbers is drawn per problem and kept until a problem is found, so the counts stay evenly mixed.

Train and test are disjoint by construction: a problem (its sorted numbers and target) belongs to the split
given by the parity of its CRC-32, the two splits draw from different random streams, and each split is
deduplicated. Same options and seed -> same problems. Rows have the paper's fields
{id, context, numbers, target (a string), solution} and are scored by the paper's reward.

Deduplication skews a long split: the common problems come first, so once a narrow option space is largely drawn,
later problems are rarer and harder. With 3 numbers in 1..30 the embedded model solves 26% of train problems
0-999, 25% of 5,000-5,999, 16% of 10,000-10,999 and 4% of 19,000-19,999; keep ``train_size`` near what a run
consumes so training matches the test split's distribution (its first problems).
"""

from __future__ import annotations

import random
import zlib
from fractions import Fraction
from itertools import count as _count
from typing import Any, Iterator, Sequence

from esjax.tasks.base import Example, Task, TaskDataError, register
from esjax.tasks.countdown import CountdownTask, check_partial_credit, paper_prompt

OPERATIONS = ("+", "-", "*", "/")
PROMPT_STYLES = ("paper", "short")


def short_prompt(numbers: Sequence[int], target: Any) -> str:
    """The compact prompt for tiny models: ``"Numbers: 3 7 2\\nTarget: 17\\n<think>"``."""
    return f"Numbers: {' '.join(str(n) for n in numbers)}\nTarget: {target}\n<think>"


def problem_key(numbers: Sequence[int], target: str) -> str:
    """Identity of a problem: its numbers as a multiset and its target."""
    return f"{sorted(numbers)}->{target}"


def split_of(key: str) -> str:
    """The split a problem belongs to ("train" or "test"), a pure function of its key."""
    return "test" if zlib.crc32(key.encode()) & 1 else "train"


def _apply(op: str, a, b, integer_only: bool):
    """``a op b``, or ``None`` for a division by zero or, with integer_only, an inexact division."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or (integer_only and a % b):
        return None
    return a // b if integer_only else a / b


def draw_problem(rng: random.Random, n: int = 3, number_range: tuple[int, int] = (1, 99),
                 operations: Sequence[str] = OPERATIONS, integer_only: bool = True,
                 target_range: tuple[float, float] | None = (1, 100), tries: int = 20) -> dict[str, Any] | None:
    """A random problem over ``n`` numbers ``{numbers, target, solution}``, or ``None`` if ``tries`` random
    expressions over the drawn numbers all failed.

    Exact arithmetic: ints when ``integer_only``, else ``Fraction``.
    """
    numbers = [rng.randint(*number_range) for _ in range(n)]
    for _ in range(tries):
        items = [(x if integer_only else Fraction(x), str(x)) for x in numbers]
        while len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            op = rng.choice(operations)
            if integer_only and op == "-" and items[i][0] < items[j][0]:
                i, j = j, i  # larger minus smaller
            value = _apply(op, items[i][0], items[j][0], integer_only)
            if value is None:
                break
            expr = f"({items[i][1]} {op} {items[j][1]})"
            items = [x for k, x in enumerate(items) if k != i and k != j] + [(value, expr)]
        else:
            value, solution = items[0]
            if target_range is None or target_range[0] <= value <= target_range[1]:
                exact = integer_only or value.denominator == 1
                target = str(int(value)) if exact else repr(float(value))
                return {"numbers": numbers, "target": target, "solution": solution}
    return None


@register("countdown_procedural")
class ProceduralCountdownTask(CountdownTask):
    """Generated Countdown problems (see the module docstring), scored like ``countdown``.

    Options: ``seed``; ``counts`` (how many numbers, an int or a sequence, default (3, 4)); ``number_range``
    (inclusive, default (1, 99)); ``operations`` (subset of "+-*/"); ``integer_only``; ``target_range``
    (inclusive bounds, default (1, 100) like most of the paper's targets; None: any); ``train_size`` (200) and
    ``test_size`` (2000); ``prompt_style``: "paper" (the paper's prompt) or "short" (``short_prompt``); plus
    ``paper_compat``, ``end_token``, ``truncated_reward``, ``partial_credit`` as in ``countdown``. Splits are
    generated on first use; ``task.problems(split)`` streams a split's problems without end (the split is its first
    rows).
    """

    name = "countdown_procedural"

    def __init__(self, *, seed: int = 0, counts: int | Sequence[int] = (3, 4),
                 number_range: tuple[int, int] = (1, 99), operations: Sequence[str] = OPERATIONS,
                 integer_only: bool = True, target_range: tuple[float, float] | None = (1, 100),
                 train_size: int = 200, test_size: int = 2000, prompt_style: str = "paper",
                 paper_compat: bool = False, end_token: str | None = None, truncated_reward: float | None = None,
                 partial_credit: float = 0.0):
        counts = (counts,) if isinstance(counts, int) else tuple(counts)
        lo, hi = number_range
        if not counts or any(not isinstance(c, int) or not 2 <= c <= 6 for c in counts):
            raise TaskDataError(f"counts must be integers in 2..6, got {counts!r}")
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
            raise TaskDataError(f"number_range must be integers 0 <= lo <= hi, got {number_range!r}")
        if not operations or not set(operations) <= set(OPERATIONS):
            raise TaskDataError(f"operations must be a non-empty subset of {OPERATIONS}, got {operations!r}")
        if prompt_style not in PROMPT_STYLES:
            raise TaskDataError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        for size in (train_size, test_size):
            if not isinstance(size, int) or size < 1:
                raise TaskDataError(f"split sizes must be positive integers, got {size!r}")
        self.seed, self.prompt_style = seed, prompt_style
        self.counts = counts
        self.options = dict(number_range=(lo, hi), operations=tuple(operations), integer_only=integer_only,
                            target_range=target_range)
        self.paper_compat, self.end_token, self.truncated_reward = paper_compat, end_token, truncated_reward
        self.partial_credit = check_partial_credit(partial_credit)
        sizes = {"train": train_size, "test": test_size}
        Task.__init__(self, {s: (lambda s=s: self.generate(sizes[s], s)) for s in sizes})  # built on first use

    def problems(self, split: str = "train", max_misses: int = 20000) -> Iterator[Example]:
        """Unlimited distinct problems of ``split`` ("train" or "test"), deterministic in the seed and options.

        Raises ``TaskDataError`` after ``max_misses`` draws in a row gave no new problem (the options allow
        too few distinct problems).
        """
        if split not in ("train", "test"):
            raise TaskDataError(f"procedural splits are 'train' and 'test', got {split!r}")
        rng = random.Random(f"esjax.countdown_procedural/{self.seed}/{split}")
        prompt = paper_prompt if self.prompt_style == "paper" else short_prompt
        seen: set[str] = set()
        misses = 0
        for i in _count():
            n = rng.choice(self.counts)  # fixed per problem, so the counts stay evenly mixed
            while True:
                p = draw_problem(rng, n, **self.options)
                key = None if p is None else problem_key(p["numbers"], p["target"])
                if key is not None and key not in seen and split_of(key) == split:
                    break
                misses += 1
                if misses >= max_misses:
                    raise TaskDataError(f"found only {len(seen)} distinct {split} problems with {self.options}; "
                                        "widen number_range/operations or lower the split size")
            misses = 0
            seen.add(key)
            yield {"id": i, "context": prompt(p["numbers"], p["target"]), **p}

    def generate(self, n: int, split: str = "train") -> list[Example]:
        """The first ``n`` problems of ``split``."""
        it = self.problems(split)
        return [next(it) for _ in range(n)]

"""The three MATH graders (``grader: esjax``, ``reference``, ``math_verify``) on one generated set of model-style
completions whose truth is known by construction: how often they agree, and each one's false positives / false
negatives by category.

The generator is deterministic (``--seed``): a gold answer (integer, fraction, decimal, surd, tuple, set of
solutions, with or without a unit on the gold side), then one of 24 rewrites, half of them still correct (another
spelling of the same number, a unit, punctuation, spacing, an equation ``x = ...``, an approximation after the
exact answer, another order of a set, a power, symbolic forms) and half wrong (another number, decorated the same
ways; the reference's false positives: a rounded decimal, a leading fraction times ``x`` or ``\\pi``, ``1,2`` for
12, ``a/b/c``, a tiny offset; a sign; a swapped tuple), inside a few sentences of reasoning that end in
``\\boxed{...}``. Each completion goes through ``task.reward`` (extraction included).

    python benchmarks/math_graders.py [--n 4000] [--seed 0] [--out benchmarks/math_graders.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import esjax.tasks as tasks  # noqa: E402
from esjax.tasks import verifier  # noqa: E402

UNITS = ["\\text{ cm}", "\\text{ inches}", "\\mbox{ hours}", "\\text{ square feet}", "\\,\\mathrm{km}",
         "\\text{ dollars}", "\\text{ units}", "\\text{ cm}^2", "\\ \\text{m}"]
SPACING = ["\\!", "\\,", "\\;", "\\:", "~", "\\quad ", "\\ "]
PUNCTUATION = [".", ",", ";", ":"]
LEADS = ["Let me compute this step by step.", "First, simplify the expression.", "We set up the equation.",
         "Combining the two cases gives the result.", "Checking the arithmetic once more."]


def frac(v: Fraction, cmd: str = "\\frac") -> str:
    sign = "-" if v < 0 else ""
    return f"{sign}{cmd}{{{abs(v.numerator)}}}{{{v.denominator}}}" if v.denominator != 1 else str(v)


def decimal(v: Fraction) -> str | None:
    """The exact decimal of ``v`` if it terminates within 6 places."""
    if 10 ** 6 % v.denominator:
        return None
    return f"{float(v):.6f}".rstrip("0").rstrip(".")


def spelling(rng: random.Random, v: Fraction) -> str:
    forms = [frac(v, rng.choice(["\\frac", "\\dfrac", "\\tfrac"])), f"{v.numerator}/{v.denominator}"]
    if decimal(v) is not None:
        forms.append(decimal(v))
    if v.denominator == 1:
        forms += [f"{v}.0", str(v)]
    return rng.choice(forms)


def gold_value(rng: random.Random) -> Fraction:
    kind = rng.random()
    if kind < 0.4:
        return Fraction(rng.randint(-50, 2000))
    if kind < 0.8:
        return Fraction(rng.randint(-30, 60), rng.choice([2, 3, 4, 5, 6, 7, 8, 12, 17]))
    return Fraction(rng.randint(1, 999), 100)


def gold_text(rng: random.Random, v: Fraction) -> str:
    if v.denominator == 1:
        return str(v)
    return frac(v, rng.choice(["\\frac", "\\dfrac"])) if rng.random() < 0.8 or decimal(v) is None else decimal(v)


def other_value(rng: random.Random, v: Fraction) -> Fraction:
    w = v + rng.choice([1, -1, 2, Fraction(1, 2), Fraction(1, 3), 10])
    return w if w != v else v + 1


def case(rng: random.Random, category: str) -> tuple[str, str, bool]:
    """``(gold, boxed answer, truly equal)`` for one category."""
    v = gold_value(rng)
    gold = gold_text(rng, v)
    unit, space, stop = rng.choice(UNITS), rng.choice(SPACING), rng.choice(PUNCTUATION)
    if category == "same string":
        return gold, gold, True
    if category == "other spelling":
        return gold, spelling(rng, v), True
    if category == "unit on the answer":
        return gold, spelling(rng, v) + unit, True
    if category == "unit on the gold":
        return gold + unit, spelling(rng, v), True
    if category == "trailing punctuation":
        return gold, spelling(rng, v) + stop, True
    if category == "LaTeX spacing":
        return gold, rng.choice(["", space]) + spelling(rng, v) + space, True
    if category == "unit, spacing and punctuation":
        return gold, spelling(rng, v) + space + unit + stop, True
    if category == "equation x = answer":
        return gold, f"{rng.choice('xyna')} = {spelling(rng, v)}", True
    if category == "exact \\approx decimal":
        return frac(v) if v.denominator != 1 else gold, f"{frac(v)} \\approx {float(v):.3f}", True
    if category == "thousands separator":
        n = rng.randint(1000, 999999)
        return str(n), f"{n:,}", True
    if category == "power":
        b, e = rng.choice([(2, rng.randint(5, 20)), (3, rng.randint(3, 9)), (10, rng.randint(2, 6))])
        return str(b ** e), f"{b}^{{{e}}}", True
    if category == "set of solutions, other order":
        xs = rng.sample(range(-9, 20), rng.randint(2, 4))
        ys = xs[::-1]
        listed = ", ".join(map(str, ys))
        return ", ".join(map(str, xs)), rng.choice([listed, "\\{" + listed + "\\}"]), True
    if category == "symbolic":
        k = rng.randint(2, 9)
        return rng.choice([(f"\\frac{{\\pi}}{{{k}}}", f"\\frac{{1}}{{{k}}}\\pi", True),
                           (str(k), f"\\sqrt{{{k * k}}}", True), (f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}", True)])
    # wrong answers
    w = other_value(rng, v)
    if category == "another number":
        return gold, spelling(rng, w), False
    if category == "another number with unit, spacing, punctuation":
        return gold, rng.choice(["", space]) + spelling(rng, w) + rng.choice([unit, space, ""]) + stop, False
    if category == "rounded decimal":
        d = rng.choice([3, 7, 9, 11])
        v = Fraction(rng.randint(1, 40), d)
        v = v if v.denominator > 1 else v + Fraction(1, d)  # a repeating decimal: 7 places are never exact
        return frac(v), f"{float(v):.7f}", False
    if category == "fraction times a variable":
        v, gold = (v, gold) if v != 0 else (Fraction(1, 2), "\\frac{1}{2}")  # 0x is 0: not wrong
        return frac(v) if v.denominator != 1 else gold, frac(v) + rng.choice(["x", "\\pi", "\\sqrt{2}", "n"]), False
    if category == "digits split by a comma":
        n = rng.randint(10, 99)
        return str(n), f"{n // 10},{n % 10}", False
    if category == "a/b/c":
        return decimal(v) or gold, f"{v.numerator}/{v.denominator}/{rng.randint(2, 9)}", False
    if category == "tiny offset":
        return gold, f"{float(v) + rng.choice([1e-7, -3e-7]):.9f}", False
    if category == "sign":
        return (gold, spelling(rng, -v), False) if v != 0 else (gold, "1", False)
    if category == "tuple in the other order":
        a, b = rng.sample(range(-9, 20), 2)
        return f"({a}, {b})", f"({b}, {a})", False
    if category == "an equation in another variable":
        return f"y = {gold}", f"x = {gold}", False
    raise ValueError(category)


CORRECT = ["same string", "other spelling", "unit on the answer", "unit on the gold", "trailing punctuation",
           "LaTeX spacing", "unit, spacing and punctuation", "equation x = answer", "exact \\approx decimal",
           "thousands separator", "power", "set of solutions, other order", "symbolic"]
WRONG = ["another number", "another number with unit, spacing, punctuation", "rounded decimal",
         "fraction times a variable", "digits split by a comma", "a/b/c", "tiny offset", "sign",
         "tuple in the other order", "an equation in another variable"]


def completion(rng: random.Random, answer: str) -> str:
    lead = " ".join(rng.sample(LEADS, 2))
    return rng.choice([f"{lead}\nTherefore, the answer is $\\boxed{{{answer}}}$.",
                       f"{lead}\n\n$$\\boxed{{{answer}}}$$", f"{lead} So the final answer is \\boxed{{{answer}}}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    categories = CORRECT + WRONG
    rows = [(c, *case(rng, c)) for c in (categories[i % len(categories)] for i in range(args.n))]
    modes = ["esjax", "reference"] + (["math_verify"] if verifier.installed() else [])
    graders = {m: tasks.get("math", grader=m) for m in modes}
    verdicts, seconds = {}, {}
    for m, task in graders.items():
        start = time.perf_counter()
        verdicts[m] = [task.reward(completion(random.Random(i), a), {"problem": "p", "answer": g})[0] == 1.0
                       for i, (_, g, a, _) in enumerate(rows)]
        seconds[m] = round(time.perf_counter() - start, 2)
    by_category = {}
    for c in categories:
        idx = [i for i, r in enumerate(rows) if r[0] == c]
        truth = rows[idx[0]][3]
        by_category[c] = {"truth": "correct" if truth else "wrong", "n": len(idx),
                          **{m: sum(verdicts[m][i] != truth for i in idx) for m in modes},
                          "example": {"gold": rows[idx[0]][1], "answer": rows[idx[0]][2]}}
    agreement = {f"{a} vs {b}": round(sum(x == y for x, y in zip(verdicts[a], verdicts[b])) / len(rows), 4)
                 for k, a in enumerate(modes) for b in modes[k + 1:]}
    totals = {m: {"false_negatives": sum(not v and r[3] for v, r in zip(verdicts[m], rows)),
                  "false_positives": sum(v and not r[3] for v, r in zip(verdicts[m], rows)),
                  "accuracy_vs_truth": round(sum(v == r[3] for v, r in zip(verdicts[m], rows)) / len(rows), 4)}
              for m in modes}
    try:
        from importlib.metadata import version
        mv = version("math-verify") if "math_verify" in modes else None
    except Exception:
        mv = None
    result = {"n": len(rows), "seed": args.seed, "math_verify_version": mv, "modes": modes, "seconds": seconds,
              "totals": totals, "agreement": agreement, "errors_by_category": by_category}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("| category (truth) | n | " + " | ".join(modes) + " |")
    for c, r in by_category.items():
        print(f"| {c} ({r['truth']}) | {r['n']} | " + " | ".join(str(r[m]) for m in modes) + " |")
    print(json.dumps({"totals": totals, "agreement": agreement, "seconds": seconds}))


if __name__ == "__main__":
    main()

"""Reward functions read untrusted model output: on adversarial completions (huge numbers, ``9**9**9``, deep
nesting, 1 MB of text, unicode, unbalanced braces, NUL bytes) they never raise, never hang and stay in the
documented range. How fast they are is measured in ``benchmarks/score_countdown.py``, not asserted here."""

import contextlib
import math
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import esjax.tasks as tasks
from esjax.tasks.boxed import last_boxed
from esjax.tasks.math_equality import math_equal, normalize_math

MB = 2 ** 20
# A hang guard, not a speed test: a call that has not returned after this long is stuck (exponential regex
# backtracking, an unbounded loop, a huge power); a normal call takes well under a millisecond.
HANG_S = 10.0
HUGE = [
    "a" * MB, "9" * MB, "\x00" * MB, "\n" * MB, " " * MB + "C", "é😀\u202e" * (MB // 3), "\ud800\udfff" * 1000,
    "<answer>" + "(" * MB + "</answer>", "</think>\n<answer>" * (MB // 17), "<answer>9**9**9</answer>" * (MB // 24),
    "</think>\n<answer>" + "1+" * (MB // 2) + "1</answer>", "<think>" * (MB // 7), "</answer>" * (MB // 9),
    "\\boxed{" * (MB // 7), "\\boxed{" + "{" * MB, "{" * MB + "}", "}" * MB, "\\boxed{" + "1" * MB + "}",
    "\\boxed{" + "\\text{" * 600 + "}" * 600 + "}", "\\boxed{" + "\\frac" * 800 + "}", "\\boxed{" + "(" * 4000 + "}",
    "answer" * (MB // 6), "answer: " + "9" * MB, "\\boxed{" + "1/" * 2000 + "1}", "\\boxed{" + "-" * 4000 + "1}",
    "\\boxed{" + "9" * 4000 + "}", "\\boxed{9**9**9}", "\\boxed{" + "\\text{ cm}" * 400 + "}",
]
FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "\n", " ", "\t", "\x00", "(", ")", "{", "}", "\\boxed{",
    "\\boxed", "\\fbox{", "\\text{", "\\frac", "\\sqrt", "\\left(", "answer: ", '"answer": "', "Answer is ",
    "9**9**9", "**", "//", "1e308", "-", "+", "*", "/", ".", "=", "$", "%", "^\\circ", "yes", "No", "C", "(B)",
    "44", "19", "35", "98", "0", "9" * 40, "é", "😀", "\u202e", "\ud800", "inf", "nan", "Infinity",
]
text_strategy = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
    st.text(max_size=200),
    st.tuples(st.sampled_from(HUGE), st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join),
              st.booleans()).map(lambda t: t[0] + t[1] if t[2] else t[1] + t[0]),
)


class Hung(Exception):
    pass


@contextlib.contextmanager
def hang_guard():
    """Raise :class:`Hung` inside the block if it runs longer than ``HANG_S`` (SIGALRM; main thread)."""
    def alarm(signum, frame):
        raise Hung(f"no result after {HANG_S:.0f} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _tasks():
    out = {}
    for name in tasks.names():
        if name == "countdown":
            out[name] = tasks.get(name, path=tasks.data_path("countdown_example.json"), train_size=8, test_size=4)
        elif name == "countdown_procedural":
            out[name] = tasks.get(name, train_size=4, test_size=4, integer_only=False, target_range=None)
            out[name + "+partial_credit"] = tasks.get(name, train_size=4, test_size=4, partial_credit=0.5)
        elif not name.startswith("test_user"):
            out[name] = tasks.get(name)
    out["math+reference"] = tasks.get("math", grader="reference")
    out["math+lenient"] = tasks.get("math", lenient=True)
    return out


TASKS = _tasks()


def check(task, completion, example):
    lo, hi = task.reward_range
    for truncated in (False, True):
        with hang_guard():
            reward, parts = task.reward(completion, example, truncated=truncated)
            correct = task.is_correct(completion, example, truncated=truncated)
        assert isinstance(reward, float) and lo <= reward <= hi and not math.isnan(reward)
        assert isinstance(parts, dict) and all(isinstance(v, float) for v in parts.values())
        assert isinstance(correct, bool)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_huge_completions(name):
    task = TASKS[name]
    examples = task.split("test")[:2]
    task.reward("warm-up", examples[0])
    for completion in HUGE:
        for example in examples:
            check(task, completion, example)


@pytest.mark.parametrize("name", sorted(TASKS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(completion=text_strategy, index=st.integers(0, 3))
def test_reward_never_raises_and_is_fast(name, completion, index):
    task = TASKS[name]
    examples = task.split("test")
    check(task, completion, examples[index % len(examples)])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text_strategy)
def test_helpers_never_raise(text):
    with hang_guard():
        value = tasks.safe_eval(text)
        boxed, norm, eq = last_boxed(text), normalize_math(text), math_equal(text, "5")
    assert value is None or (isinstance(value, float) and abs(value) <= 1e12)
    assert boxed is None or isinstance(boxed, str)
    assert isinstance(norm, str) and isinstance(eq, bool)


def test_non_string_completions_do_not_raise():
    for task in TASKS.values():
        example = task.split("test")[0]
        for completion in (None, b"\xff\xfe<answer>", 12345, ["\\boxed{1}"]):
            reward, _ = task.reward(completion, example)
            assert task.reward_range[0] <= reward <= task.reward_range[1]


ARITHMETIC = st.one_of(
    st.text(alphabet="0123456789.+-*/() ", max_size=300),
    st.tuples(st.sampled_from(["9", "1", "0.", "7.5"]), st.integers(1, 20000), st.sampled_from("+-*/"),
              st.integers(1, 50)).map(lambda t: f"{t[2]}".join([t[0] * t[1]] * t[3])),  # huge literals, products
    st.integers(1, 20000).map(lambda n: "(" * n + "1" + ")" * n),  # deep nesting
    st.integers(1, 20000).map(lambda n: "-" * n + "1"),
    st.integers(1, 400).map(lambda n: "*".join(["9" * 300] * n)),  # past the float range
    st.integers(1, 400).map(lambda n: "/".join(["9" * 300] * n)),
)
LIMIT = st.one_of(st.integers(-5, 10 ** 7), st.integers(10 ** 300, 10 ** 400),
                  st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text(max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(expression=ARITHMETIC, max_length=LIMIT, max_depth=LIMIT, max_abs=LIMIT)
def test_safe_eval_never_raises_for_any_limits(expression, max_length, max_depth, max_abs):
    """Raised limits reach Python's int-digit limit, float overflow, huge exponents and the recursion limit;
    safe_eval returns a float or None all the same."""
    value = tasks.safe_eval(expression, max_length=max_length, max_depth=max_depth, max_abs=max_abs)
    assert value is None or isinstance(value, float)
    literals = tasks.number_literals(expression, max_length=10 ** 6)  # must not raise either
    assert literals is None or all(isinstance(x, (int, float)) for x in literals)


def test_safe_eval_at_the_edges_of_python_numbers():
    unlimited = dict(max_length=10 ** 6, max_depth=10 ** 6, max_abs=math.inf)
    assert tasks.safe_eval("9" * 5000, **unlimited) is None  # past the int-digit limit
    assert tasks.safe_eval("*".join(["9" * 300] * 2), **unlimited) is None  # an int past the float range
    assert tasks.safe_eval("1" + "0" * 400 + "/3", **unlimited) is None  # int / int overflows
    assert tasks.safe_eval("(" * 50000 + "1" + ")" * 50000, **unlimited) is None  # the recursion limit
    assert tasks.safe_eval("9" * 400 + ".0 - " + "9" * 400 + ".0", **unlimited) is None  # inf - inf
    assert tasks.safe_eval("12*12", **unlimited) == 144.0
    assert tasks.safe_eval("1+1", max_abs=float("nan")) is None and tasks.safe_eval("1+1", max_abs=-1) is None

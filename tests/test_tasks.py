"""Tasks: the Countdown reward against the paper's definition, safe arithmetic, the generator, MATH answers,
answer extraction, loading errors, the registry and the real paper file (skipped when absent)."""

import json
import math
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import esjax.tasks as tasks
from esjax.tasks import TaskDataError, UnknownTaskError, safe_eval
from esjax.tasks.arithmetic import MAX_ABS, number_literals
from esjax.tasks.boxed import last_boxed
from esjax.tasks.math_equality import math_equal, normalize_math
from esjax.tasks.countdown import format_score, last_answer_block, paper_prompt
from esjax.tasks.procedural import problem_key

N3, T3 = [44, 19, 35], "98"


def countdown(**options):
    return tasks.get("countdown", path=tasks.data_path("countdown_example.json"), train_size=8, test_size=4,
                     **options)


# -- Countdown reward: a table computed by hand from the ES paper's reward code ---------------------------
# (completion, format, answer); numbers [44, 19, 35], target 98; reward = 0.1 * format + answer.
CASES = [
    ("Add them.</think>\n<answer>44 + 19 + 35</answer>", 1.0, 1.0),          # full format, correct: 1.1
    ("</think>\n<answer>(44 + 19) + 35</answer>\n", 1.0, 1.0),               # `$` also matches before one final \n
    ("</think>\n<answer>44 + 19 + 35</answer>\n\n", 0.6, 1.0),               # two newlines: partial format
    ("Add them.</think> <answer>44+19+35</answer>", 0.6, 1.0),               # space, not newline, between blocks
    ("thinking only</think>", 0.1, 0.0),                                     # think-only partial: 0.01
    ("<answer>44 + 19 + 35</answer>", 0.5, 1.0),                             # answer block, no </think>: 1.05
    ("I do not know", 0.0, 0.0),
    ("", 0.0, 0.0),
    ("</think>\n<answer>44 + 19 + 36</answer>", 1.0, 0.0),                   # wrong number
    ("</think>\n<answer>44 + 44 + 10</answer>", 1.0, 0.0),                   # reused number (= 98 anyway)
    ("</think>\n<answer>63 + 35</answer>", 1.0, 0.0),                        # missing numbers (= 98 anyway)
    ("</think>\n<answer>44 + 19 - 35</answer>", 1.0, 0.0),                   # wrong value
    ("</think>\n<answer>1 + 2</answer>\n<answer>(44 + 19) + 35</answer>", 1.0, 1.0),  # several blocks: last counts
    ("</think>\n<answer>44 + 19 + 35</answer>\n<answer>1 + 2</answer>", 1.0, 0.0),
    ("</think>\n<answer>44+19+35</answer> done", 0.6, 1.0),                  # text after the answer
    ("</think>\n<answer> 44 +  19+35 </answer>", 1.0, 1.0),                  # spaces are fine
    ("</think>\n<answer>44+19+35\n</answer>", 1.0, 1.0),                     # one trailing newline is fine (ref. `$`)
    ("</think>\n<answer>\n44+19+35</answer>", 1.0, 0.0),                     # a leading newline is not
    ("</think>\n<answer>44\t+19+35</answer>", 1.0, 0.0),                     # nor a tab
    ("</think>\n<answer>44 + 19 + 35 = 98</answer>", 1.0, 0.0),              # '=' is not allowed
    ("</think>\n<answer>44 + 19 + 35.0</answer>", 1.0, 0.0),                 # '.' is not allowed
    ("</think>\n<answer></answer>", 1.0, 0.0),                               # empty answer
    ("</think>\n<answer>9**9**9</answer>", 1.0, 0.0),                        # passes the char check, never eval'd
    ("</think>\n<answer>(44 + 19) // 35 * 0 + 98</answer>", 1.0, 0.0),       # '//' rejected
    ("</think>\n<answer>1<answer>44+19+35</answer>", 1.0, 0.0),              # findall: content "1<answer>44+19+35"
    ("<think>again</think>\n<answer>44+19+35</answer>", 1.0, 1.0),           # "<think><think>..." still matches
    ("</think><answer>44+19+35</answer></think>", 0.6, 1.0),
    ("</answer><answer>44+19+35</answer>", 0.5, 1.0),
    ("<answer>44+19+35", 0.0, 0.0),                                          # unclosed
]


@pytest.mark.parametrize("completion, fmt, ans", CASES)
def test_countdown_reward_table(completion, fmt, ans):
    task = countdown()
    example = {"numbers": N3, "target": T3}
    reward, parts = task.reward(completion, example)
    assert parts == {"format": fmt, "answer": ans}
    assert reward == pytest.approx(0.1 * fmt + ans, abs=1e-12)
    assert task.is_correct(completion, example) == (ans == 1.0)
    assert task.reward(completion, {"numbers": N3, "target": 98}, truncated=True)[0] == reward  # paper: ignored


def test_countdown_reward_values_by_hand():
    task, ex = countdown(), {"numbers": N3, "target": T3}
    assert task.reward("x</think>\n<answer>44+19+35</answer>", ex)[0] == pytest.approx(1.1)
    assert task.reward("only thinking</think>", ex)[0] == pytest.approx(0.01)
    assert task.reward("<answer>44+19+35</answer>", ex)[0] == pytest.approx(1.05)
    assert task.reward("x</think> <answer>1</answer>", ex)[0] == pytest.approx(0.06)


def test_countdown_partial_credit():
    """A wrong answer over exactly the given numbers earns w * (1 - |value - target| / target); anything else keeps
    the paper's reward, and accuracy is unchanged."""
    task, ex = countdown(partial_credit=0.5), {"numbers": N3, "target": T3}
    right, near, far = "44+19+35", "44+35-19", "44*19*35"  # 98, 60 (closeness 1 - 38/98), 29260 (0)
    assert task.reward(f"</think>\n<answer>{right}</answer>", ex) == (pytest.approx(1.1), {
        "format": 1.0, "answer": 1.0, "closeness": 1.0})
    reward, parts = task.reward(f"</think>\n<answer>{near}</answer>", ex)
    assert parts == {"format": 1.0, "answer": 0.0, "closeness": pytest.approx(60 / 98)}
    assert reward == pytest.approx(0.1 + 0.5 * 60 / 98)
    for wrong in (far, "44+19", "44+19+35+1", "98", "x"):  # too far, numbers missing or extra, not an expression
        assert task.reward(f"</think>\n<answer>{wrong}</answer>", ex) == (pytest.approx(0.1), {
            "format": 1.0, "answer": 0.0, "closeness": 0.0})
    assert not task.is_correct(f"</think>\n<answer>{near}</answer>", ex)
    assert task.part_names == ("format", "answer", "closeness") and countdown().part_names == ("format", "answer")
    procedural = tasks.get("countdown_procedural", counts=3, partial_credit=0.25, train_size=4, test_size=4)
    assert procedural.reward(f"</think>\n<answer>{near}</answer>", ex)[0] == pytest.approx(0.1 + 0.25 * 60 / 98)
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(TaskDataError, match="partial_credit"):
            countdown(partial_credit=bad)


def test_countdown_unary_minus_and_targets():
    task = countdown()
    ex = {"numbers": N3, "target": "60"}
    assert task.reward("</think>\n<answer>-(19 - 44) + 35</answer>", ex)[1]["answer"] == 1.0  # as Python's eval
    frac = {"numbers": [19, 12, 35], "target": "35.63157894736842"}
    neg = {"numbers": [69, 55, 25], "target": "-11"}
    for ex, answer in ((frac, "(12 / 19) + 35"), (neg, "69 - (55 + 25)")):
        completion = f"</think>\n<answer>{answer}</answer>"
        assert task.reward(completion, ex) == (pytest.approx(1.1), {"format": 1.0, "answer": 1.0})
        assert countdown(paper_compat=True).reward(completion, ex) == (pytest.approx(0.1), {"format": 1.0,
                                                                                          "answer": 0.0})
    ok = {"numbers": N3, "target": "98"}
    assert countdown(paper_compat=True).reward("</think>\n<answer>44+19+35</answer>", ok)[1]["answer"] == 1.0


def test_countdown_end_token_and_prompt():
    ex = countdown().split("train")[0]
    done = f"ok</think>\n<answer>{ex['solution']}</answer><|im_end|>"
    assert countdown().reward(done, ex)[1]["format"] == 0.6
    assert countdown(end_token="<|im_end|>").reward(done, ex)[1]["format"] == 1.0
    assert countdown().prompt(ex) == ex["context"] == paper_prompt(ex["numbers"], ex["target"])
    assert ex["context"].endswith("<think>")
    assert countdown(truncated_reward=0.0).reward(done, ex, truncated=True)[0] == 0.0


def _ref_format(text):  # the reference's regexes (countdown_task.py), for a differential test
    if re.match(r"^<think>.*?<\/think>\n<answer>.*?<\/answer>$", text, re.DOTALL):
        return 1.0
    return (0.1 if re.search(r"<think>.*?<\/think>", text, re.DOTALL) else 0.0) + \
        (0.5 if re.search(r"<answer>.*?<\/answer>", text, re.DOTALL) else 0.0)


FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "\n", " ", "1", "+", "x", "<", ">", "/", "answer"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join))
def test_countdown_extraction_matches_reference_regexes(completion):
    assert format_score(completion) == _ref_format("<think>" + completion)
    matches = re.findall(r"<answer>(.*?)<\/answer>", completion, re.DOTALL)
    assert last_answer_block(completion) == (matches[-1] if matches else None)


def test_rewards_never_call_eval(monkeypatch):
    import builtins

    def boom(*args, **kwargs):
        raise AssertionError("eval called")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    for name in tasks.names():
        if name == "countdown":
            continue
        task = tasks.get(name)
        if not type(task).__module__.startswith("esjax."):  # a user task another test registered in this process
            continue
        ex = task.split("test")[0]
        for text in ("</think>\n<answer>9**9**9</answer>", "\\boxed{9**9**9}", "answer: __import__('os')"):
            task.reward(text, ex)


# -- safe arithmetic ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("expr, value", [
    ("1+2*3", 7), ("(1+2)*3", 9), ("7/2", 3.5), ("-3+5", 2), ("2*-3", -6), ("--3", 3), ("+4", 4), (".5+.5", 1),
    ("3.", 3), ("0", 0), ("00", 0), (" ( 44 + 19 ) - 35 ", 28), ("10 / 4 * 2", 5), ("2 - 3 - 4", -5),
    ("8 / 2 / 2", 2), ("(((((1)))))", 1), ("1.25 * 4", 5), ("999999999999", 999999999999),
    ("(" * 30 + "1" + ")" * 30, 1),
])
def test_safe_eval_values(expr, value):
    assert safe_eval(expr) == value


@pytest.mark.parametrize("expr", [
    "1/0", "1/(2-2)", "2**3", "3//2", "9**9**9", "()", "", "   ", "1 2", "(1", "1)", "1+", "*1", "1e5", "0x10",
    "07", "1..2", "1.2.3", ".", "1,000", "abs(1)", "__import__('os')", "1 % 2", "١+١", "1+1\x00", "2^3",
    "1" * 13, "999999*999999*999999", "(" * 40 + "1" + ")" * 40, "-" * 40 + "1", "1+" * 200 + "1",
])
def test_safe_eval_rejects(expr):
    assert safe_eval(expr) is None


def test_number_literals():
    assert number_literals("(44 + 19) - 3.5") == [44, 19, 3.5]
    assert number_literals("-3 * -(4)") == [3, 4]
    assert number_literals("1 a") is None


def _expressions():
    leaf = st.integers(0, 99).map(str)
    return st.recursive(leaf, lambda e: st.one_of(
        st.tuples(e, st.sampled_from("+-*/"), e).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        e.map(lambda x: f"-{x}")), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(_expressions())
def test_safe_eval_agrees_with_python_on_generated_expressions(expr):
    try:  # a trusted expression generated by the test itself
        expected = eval(expr, {"__builtins__": {}}, {})  # noqa: S307
    except ZeroDivisionError:
        expected = None
    got = safe_eval(expr)
    if expected is None or abs(expected) > MAX_ABS:  # division by zero, or a result past the bound: no value
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


# -- the procedural generator -------------------------------------------------------------------------------
def _exact_steps(solution):
    """Values of every parenthesised step of a generated solution, innermost first, computed exactly."""
    steps, pat = [], re.compile(r"\((-?[\d/]+) ([-+*/]) (-?[\d/]+)\)")
    while (m := pat.search(solution)) is not None:
        a, b = Fraction(m[1]), Fraction(m[3])
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[m[2]]
        steps.append(v)
        solution = solution[:m.start()] + str(v) + solution[m.end():]
    return steps, solution


def test_procedural_problems_are_solvable_and_integer():
    task = tasks.get("countdown_procedural", seed=3, train_size=300, test_size=300)
    for split in ("train", "test"):
        rows = task.split(split)
        assert len(rows) == 300 and {len(r["numbers"]) for r in rows} == {3, 4}
        for r in rows:
            assert set(r) == {"id", "context", "numbers", "target", "solution"}
            assert sorted(number_literals(r["solution"])) == sorted(r["numbers"])
            assert safe_eval(r["solution"]) == float(r["target"])
            assert all(1 <= n <= 99 for n in r["numbers"]) and 1 <= int(r["target"]) <= 100
            steps, final = _exact_steps(r["solution"])
            assert all(s is not None and s >= 0 and s.denominator == 1 for s in steps)
            assert final == r["target"]
            assert task.reward(f"ok</think>\n<answer>{r['solution']}</answer>", r)[0] == pytest.approx(1.1)


def test_procedural_is_deterministic_and_disjoint():
    a = tasks.get("countdown_procedural", seed=5, train_size=400, test_size=400)
    b = tasks.get("countdown_procedural", seed=5, train_size=400, test_size=400)
    c = tasks.get("countdown_procedural", seed=6, train_size=400, test_size=400)
    assert a.split("train") == b.split("train") and a.split("test") == b.split("test")
    assert a.split("train") != c.split("train")
    keys = {s: [problem_key(r["numbers"], r["target"]) for r in a.split(s)] for s in ("train", "test")}
    assert len(set(keys["train"])) == 400 and len(set(keys["test"])) == 400
    assert not set(keys["train"]) & set(keys["test"])
    # a longer train split starts with the shorter one: the stream is unlimited and stable
    assert tasks.get("countdown_procedural", seed=5, train_size=450).split("train")[:400] == a.split("train")


def test_procedural_options():
    short = tasks.get("countdown_procedural", seed=0, prompt_style="short", counts=3, number_range=(1, 9),
                      operations="+-", train_size=50, test_size=10)
    for r in short.split("train"):
        assert r["context"] == f"Numbers: {' '.join(map(str, r['numbers']))}\nTarget: {r['target']}\n<think>"
        assert set(re.sub(r"[\d() ]", "", r["solution"])) <= {"+", "-"} and len(r["numbers"]) == 3
        assert short.reward(f"</think>\n<answer>{r['solution']}</answer>", r)[1]["answer"] == 1.0
    loose = tasks.get("countdown_procedural", seed=0, integer_only=False, target_range=None, train_size=300)
    rows = loose.split("train")
    assert any(not re.fullmatch(r"\d+", r["target"]) for r in rows)  # fractions or negatives appear
    assert all(abs(safe_eval(r["solution"]) - float(r["target"])) < 1e-5 for r in rows)
    tiny = tasks.get("countdown_procedural", counts=3, number_range=(1, 1), operations="+", train_size=5)
    with pytest.raises(TaskDataError, match="distinct"):
        tiny.split("train")
    for bad in ({"counts": 1}, {"number_range": (5, 1)}, {"operations": "^"}, {"prompt_style": "long"},
                {"train_size": 0}):
        with pytest.raises(TaskDataError):
            tasks.get("countdown_procedural", **bad)


# -- \boxed and MATH answers --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, content", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"), ("\\boxed{a} then \\boxed{b}", "b"), ("\\boxed{{x}^{2}}", "{x}^{2}"),
    ("$\\boxed 5$", "5"), ("\\boxed {7}", "7"), ("\\fbox{3}", "3"), ("\\boxed{1", None), ("no box", None),
    ("\\boxed{}", ""), ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"), ("\\boxedx", None),
])
def test_last_boxed(text, content):
    assert last_boxed(text) == content


EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{1}{2}", "\\frac12"), ("1/2", "\\frac{1}{2}"), ("\\tfrac{3}{4}", "0.75"),
    ("5", "5.0"), ("5", "5.00"), ("2.50", "2.5"), ("10", "10\\%"), ("10", "10%"), ("\\$15", "15"),
    ("15", "15 dollars"), ("120^\\circ", "120"), ("120", "120^{\\circ}"), ("90", "90°"), ("x = 5", "5"),
    ("\\left( 1, 2 \\right)", "(1,2)"), ("\\text{(C)}", "(C)"), ("21", "21\\text{ square centimeters}"),
    ("5 cm", "5"), ("12 square feet", "12"), ("1,000", "1000"), ("\\sqrt3", "\\sqrt{3}"),
    ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}"), (".5", "0.5"), ("-\\frac{1}{2}", "-0.5"),
    ("\\frac{-1}{2}", "-0.5"), ("\\frac{6}{4}", "1.5"), (" 3 ", "3"), ("\\text{yes}", "yes"), ("\\!10", "10"),
    ("y = 2x + 3", "2x+3"), ("\\$1,250.00", "1250"), ("0.333", "\\frac{333}{1000}"),
]
NOT_EQUIVALENT = [
    ("1/2", "0.51"), ("\\frac{1}{3}", "0.333"), ("5", "6"), ("\\sqrt{2}", "2"), ("(1,2)", "(2,1)"),
    ("x+1", "x-1"), ("", "0"), ("12", "1,2"), ("10", "100"), ("\\frac{1}{0}", "0"), ("-5", "5"), ("A", "B"),
]


@pytest.mark.parametrize("a, b", EQUIVALENT)
def test_math_equivalent(a, b):
    assert math_equal(a, b) and math_equal(b, a), (normalize_math(a), normalize_math(b))


@pytest.mark.parametrize("a, b", NOT_EQUIVALENT)
def test_math_not_equivalent(a, b):
    assert not math_equal(a, b) and not math_equal(b, a), (normalize_math(a), normalize_math(b))


def test_math_task():
    task = tasks.get("math")
    ex = task.split("test")[0]  # 1/2 + 1/3 = 5/6
    assert task.reward("... so the sum is \\boxed{\\dfrac{5}{6}}", ex) == (1.0, {"answer": 1.0, "boxed": 1.0})
    assert task.reward("\\boxed{5/6}", ex)[0] == 1.0
    assert tasks.get("math", grader="reference").reward("\\boxed{5/6}", ex)[0] == 0.0  # a/b only vs a plain number
    assert tasks.get("math", lenient=True).reward("\\boxed{5/6}", ex)[0] == 1.0
    assert task.reward("\\boxed{0.8}", ex) == (0.0, {"answer": 0.0, "boxed": 1.0})
    assert task.reward("5/6", ex) == (0.0, {"answer": 0.0, "boxed": 0.0})
    assert task.reward("\\boxed{\\frac{5}{6}}", ex, truncated=True)[0] == 1.0  # the reference scores truncation
    assert tasks.get("math", truncated_reward=0.0).reward("\\boxed{\\frac{5}{6}}", ex, truncated=True)[0] == 0.0
    assert task.reward("\\boxed{17}", {"problem": "p", "answer": "17", "solution": "\\boxed{3}"})[0] == 1.0
    assert task.reward("\\boxed{3}", {"problem": "p", "solution": "so \\boxed{3}"})[0] == 1.0
    prompt = task.prompt(ex)
    assert [m["role"] for m in prompt] == ["system", "user"] and prompt[-1]["content"] == ex["problem"]
    sys = tasks.get("math", system_prompt="Be brief.").prompt(ex)
    assert sys[0] == {"role": "system", "content": "Be brief."}


# -- MCQ and BoolQ: the lenient extraction (option lenient=True) ---------------------------------------------
@pytest.mark.parametrize("completion, letter", [
    ('{"answer": "C"}', "C"), ("answer: C", "C"), ("Answer: (C)", "C"), ("So the answer is C.", "C"),
    ("\\boxed{C}", "C"), ("\\boxed{\\text{C}}", "C"), ("\\boxed{c}", "C"), ("C", "C"), ("(C)", "C"), ("**C**", "C"),
    ("Let me think.\nOxygen is wrong.\nC", "C"), ("The answer is option C, hydrogen.", "C"),
    ("answer: A. Hmm, no: \\boxed{C}", "C"), ("The final answer: **C**", "C"), ("ANSWER: C", "C"),
    ("answer: B", "B"), ("I think it is the third one", None), ("\\boxed{E}", None),
    ("The answer choices are hard", None), ("", None), ("answer is a bit unclear", None),
])
def test_mcq_extraction(completion, letter):
    task = tasks.get("chemistry_mcq", lenient=True)
    ex = dict(task.split("train")[2], answerKey="C")
    reward, parts = task.reward(completion, ex)
    assert reward == float(letter == "C") and parts["extracted"] == float(letter is not None)


@pytest.mark.parametrize("completion, value", [
    ("\\boxed{Yes}", True), ("\\boxed{\\text{no}}", False), ("Answer: true", True), ("The answer is no.", False),
    ("yes", True), ("No.", False), ("TRUE", True), ("Reasoning...\nFinal answer: **Yes**", True),
    ("Maybe", None), ("\\boxed{perhaps}", None), ("yes at first, then \\boxed{no}", False), ("", None),
])
def test_boolq_extraction(completion, value):
    task = tasks.get("boolq", lenient=True, truncated_reward=0.0)
    for answer in (True, False):
        ex = dict(task.split("train")[0], answer=answer)
        assert task.reward(completion, ex)[0] == float(value is not None and value == answer)
    assert task.reward("\\boxed{yes}", dict(ex, answer=True), truncated=True) == (
        0.0, {"answer": 0.0, "extracted": 0.0, "truncated": 1.0})


def test_countdown_boxed_lenient():
    task = tasks.get("countdown_boxed", lenient=True)
    ex = {"numbers": [3, 7, 2], "target": 17}
    assert task.prompt(ex)[-1]["content"] == "Numbers: [3, 7, 2]\nTarget: 17"
    for completion, ok in [("\\boxed{3 \\times 7 - 2 - 2}", False), ("\\boxed{3 \\times 7 - 2 * 2}", False),
                           ("\\boxed{(3 \\times 7) - 2}", False), ("\\boxed{7 \\cdot 2 + 3}", True),
                           ("\\boxed{7*2+3 = 17}", True), ("\\boxed{[7 \\times 2] + 3}", True), ("7*2+3", False),
                           ("\\boxed{7*2+3+0}", False), ("\\boxed{7**2}", False)]:
        assert task.reward(completion, ex)[0] == float(ok), completion
    rows = tasks.get("countdown_boxed").split("train")
    assert rows and all("numbers" in r and "nums" in r for r in rows)  # the HF layout's "nums" is accepted


# -- conciseness ---------------------------------------------------------------------------------------------
def test_conciseness():
    task = tasks.get("conciseness")
    assert [(r["prompt"], r["target"]) for r in task.split("train")] == [
        ("Solve: 3 + 5 =", "8"), ("If all birds can fly and penguins are birds, can penguins fly?", "No")]
    assert len(task.split("test")) == 20
    ex = {"prompt": "Solve: 3 + 5 =", "target": "8"}
    assert task.reward("8", ex) == (0.0, {"answer": 1.0, "length_diff": 0.0, "normalized": 1.0})
    assert task.reward(" 8", ex) == (-1.0, {"answer": 0.0, "length_diff": 1.0, "normalized": 0.9})
    assert task.reward("x" * 30, ex)[0] == -29.0 and task.reward("x" * 30, ex)[1]["normalized"] == 0.0
    assert task.reward("", {"prompt": "p", "target": "x" * 20})[1]["normalized"] == 0.0  # scale = len(target)
    assert task.reward("y" * 25, {"prompt": "p", "target": "x" * 20})[1]["normalized"] == 0.75
    assert tasks.get("conciseness", threshold=0.8).is_correct(" 8", ex)
    assert task.reward("x" * 150, ex, truncated=True)[0] == -149.0  # truncation is part of the signal
    assert task.prompt(ex) == "Solve: 3 + 5 =" and task.reward_range == (-math.inf, 0.0)


# -- interface, registry, loading errors ------------------------------------------------------------------
GOLD = {
    "countdown_procedural": lambda ex: f"t</think>\n<answer>{ex['solution']}</answer>",
    "countdown_boxed": None,  # the example rows carry no solution
    "math": lambda ex: "\\boxed{" + tasks.math_task.reference_answer(ex) + "}",
    "chemistry_mcq": lambda ex: f'{{"answer": "{ex["answerKey"]}"}}',
    "boolq": lambda ex: "\\boxed{" + ("yes" if ex["answer"] else "no") + "}",
    "conciseness": lambda ex: ex["target"],
}


@pytest.mark.parametrize("name", sorted(GOLD))
def test_every_task_interface(name):
    task = tasks.get(name)
    assert task.name == name and {"train", "test"} <= set(task.splits)
    lo, hi = task.reward_range
    for split in task.splits:
        for ex in task.split(split):
            prompt = task.prompt(ex)
            assert isinstance(prompt, str) == (not task.chat)
            if GOLD[name] is not None:
                reward, parts = task.reward(GOLD[name](ex), ex)
                assert lo <= reward <= hi and task.is_correct(GOLD[name](ex), ex), (name, ex)
                assert parts["answer"] == 1.0 and all(isinstance(v, float) for v in parts.values())
            reward, parts = task.reward("nonsense", ex)
            assert lo <= reward <= hi and not task.is_correct("nonsense", ex)


def test_render_prompt(tmp_path):
    from esjax.generation.tokenizer import build_byte_tokenizer

    tok = build_byte_tokenizer(tmp_path / "tok")
    chat = tasks.get("boolq")
    ex = chat.split("test")[0]
    text = chat.render_prompt(ex, tok)
    assert text.startswith("<|im_start|>system\nYou are a reading assistant.") and "<|im_start|>user\nPassage: " in text
    assert text.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="chat template"):
        chat.render_prompt(ex, None)
    raw = tasks.get("countdown_procedural", train_size=1, test_size=1)
    ex = raw.split("train")[0]
    assert raw.render_prompt(ex, tok) == raw.render_prompt(ex) == ex["context"]


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownTaskError) as e:
        tasks.get("countdwon")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert str(sorted(tasks.names())) in str(e.value) and "countdown_procedural" in str(e.value)
    with pytest.raises(KeyError, match=r"known splits: \['test', 'train'\]"):
        tasks.get("boolq").split("validation")


def test_user_task_from_file(tmp_path):
    file = tmp_path / "my_tasks.py"
    file.write_text(
        "import esjax.tasks as T\n\n"
        "@T.register('test_user_echo')\n"
        "class Echo(T.Task):\n"
        "    def __init__(self, word='hi'):\n"
        "        super().__init__({'train': [{'w': word}], 'test': [{'w': word}]})\n"
        "    def prompt(self, ex):\n"
        "        return 'Say ' + ex['w']\n"
        "    def score(self, completion, ex):\n"
        "        ok = float(completion.strip() == ex['w'])\n"
        "        return ok, {'answer': ok}\n"
    )
    assert tasks.load_task_file(file) == ["test_user_echo"]
    assert tasks.load_task_file(file) == ["test_user_echo"]  # imported once
    task = tasks.get("test_user_echo", word="yo")
    ex = task.split("train")[0]
    assert task.name == "test_user_echo" and task.prompt(ex) == "Say yo"
    assert task.reward(" yo ", ex) == (1.0, {"answer": 1.0}) and task.is_correct("yo", ex)
    assert task.reward("yo", ex, truncated=True)[0] == 0.0
    file2 = tmp_path / "more.py"
    file2.write_text("import esjax.tasks as T\nT.register('test_user_two')(lambda: T.get('test_user_echo'))\n")
    two = tasks.get(f"{file2}:test_user_two")
    assert two.prompt(two.split("test")[0]) == "Say hi"
    with pytest.raises(ValueError, match="already registered"):
        tasks.register("math")(lambda: None)
    with pytest.raises(FileNotFoundError):
        tasks.load_task_file(tmp_path / "missing.py")


def _write(path, text):
    path.write_text(text)
    return path


def test_loading_errors_name_file_and_line(tmp_path):
    good = '{"question": "q", "passage": "p", "answer": true}'
    bad_json = _write(tmp_path / "bad.jsonl", f"{good}\n{good}\n{{oops\n")
    with pytest.raises(TaskDataError, match=r"bad\.jsonl:3: invalid JSON"):
        tasks.get("boolq", train_path=bad_json, test_path=bad_json)
    missing = _write(tmp_path / "missing.jsonl", f'{good}\n\n{{"question": "q", "passage": "p"}}\n')
    with pytest.raises(TaskDataError, match=r"missing\.jsonl:3: field 'answer'"):
        tasks.get("boolq", path=missing, train_size=1)
    not_obj = _write(tmp_path / "list.jsonl", f"{good}\n[1, 2]\n")
    with pytest.raises(TaskDataError, match=r"list\.jsonl:2: expected a JSON object"):
        tasks.get("boolq", path=not_obj, train_size=1)
    rows = [{"id": 0, "numbers": [1, 2], "target": "3"}, {"id": 1, "numbers": [1, 2], "target": "3"},
            {"id": 2, "numbers": "1 2", "target": "3"}]
    array = _write(tmp_path / "cd.json", "[\n" + ",\n".join(json.dumps(r, indent=1) for r in rows) + "\n]")
    line = 2 + sum(len(json.dumps(r, indent=1).splitlines()) for r in rows[:2])  # "[" then two rows
    with pytest.raises(TaskDataError, match=rf"cd\.json:{line} \(row 2\): field 'numbers'"):
        tasks.get("countdown", path=array, train_size=1, test_size=1)
    target = _write(tmp_path / "t.jsonl", '{"numbers": [1, 2], "target": "3"}\n{"numbers": [1], "target": "x"}\n')
    with pytest.raises(TaskDataError, match=r"t\.jsonl:2: field 'target'"):
        tasks.get("countdown", path=target, train_size=1, test_size=1)
    with pytest.raises(TaskDataError, match=r"nothere\.jsonl: file not found"):
        tasks.get("math", path=tmp_path / "nothere.jsonl")
    mcq = _write(tmp_path / "mcq.jsonl", json.dumps({"question": "q", "choices": {"text": ["a", "b"],
                                                     "label": ["A", "B"]}, "answerKey": "C"}) + "\n")
    with pytest.raises(TaskDataError, match=r"mcq\.jsonl:1: 'answerKey'"):
        tasks.get("chemistry_mcq", path=mcq)
    with pytest.raises(TaskDataError, match=r"trailing\.json:2: unexpected data"):
        tasks.get("countdown", path=_write(tmp_path / "trailing.json", '[{"numbers": [1], "target": 1}]\n]'))


def test_empty_and_overlapping_splits(tmp_path):
    empty = _write(tmp_path / "empty.jsonl", "\n\n")
    one = _write(tmp_path / "one.jsonl", '{"question": "q", "passage": "p", "answer": true}\n')
    with pytest.raises(TaskDataError, match="split 'train' of task 'boolq' is empty"):
        tasks.get("boolq", train_path=empty, test_path=one)
    with pytest.raises(TaskDataError, match="empty"):
        tasks.get("boolq", path=_write(tmp_path / "empty.json", "[]"))
    with pytest.raises(TaskDataError, match="is empty"):
        tasks.get("boolq", path=one)  # 1 row: train takes it, test is empty
    with pytest.raises(TaskDataError, match="overlap"):
        tasks.get("countdown", path=tasks.data_path("countdown_example.json"))  # 12 rows < 200 + 2000
    with pytest.raises(TaskDataError, match="empty"):
        tasks.get("conciseness", splits={"train": [], "test": [{"prompt": "p", "target": "t"}]})
    assert len(tasks.get("boolq", train_path=one, test_path=one).split("test")) == 1


def test_countdown_needs_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ESJAX_COUNTDOWN_PATH", raising=False)
    with pytest.raises(TaskDataError, match="countdown_paper.json"):
        tasks.get("countdown")
    monkeypatch.setenv("ESJAX_COUNTDOWN_PATH", str(tasks.data_path("countdown_example.json")))
    assert len(tasks.get("countdown", train_size=8, test_size=4).split("test")) == 4


# -- the paper's file (skipped when absent) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def paper(countdown_paper_file):
    return (tasks.get("countdown", path=countdown_paper_file),
            tasks.get("countdown", path=countdown_paper_file, paper_compat=True))


def test_paper_file(paper):
    task, compat = paper
    train, test = task.split("train"), task.split("test")
    assert len(train) == 200 and len(test) == 2000
    assert [r["id"] for r in train] == list(range(200)) and [r["id"] for r in test] == list(range(200, 2200))
    rows = train + test
    assert all(task.prompt(r) == paper_prompt(r["numbers"], r["target"]) for r in rows)
    # 58 targets are non-integer or negative: the reference's `target.isdigit()` could never score them
    unscorable = [r for r in rows if not r["target"].isdigit()]
    assert len(unscorable) == 58 and all(r["id"] >= 200 for r in unscorable)
    assert all(tasks.countdown.target_value(r["target"], paper_compat=True) is None for r in unscorable)
    # the file's own solutions: 19 are null and 15 do not use the numbers exactly once; all others score
    null = [r for r in rows if r["solution"] is None]
    misuse = [r for r in rows if r["solution"] is not None
              and sorted(number_literals(r["solution"])) != sorted(r["numbers"])]
    assert len(null) == 19 and len(misuse) == 15
    valid = [r for r in rows if r["solution"] is not None and r not in misuse]
    fails_compat = 0
    for r in valid:
        completion = f"Let me think.</think>\n<answer>{r['solution']}</answer>"
        assert task.reward(completion, r) == (pytest.approx(1.1), {"format": 1.0, "answer": 1.0}), r
        ok = compat.reward(completion, r)[1]["answer"]
        assert ok == float(r["target"].isdigit())
        fails_compat += ok == 0.0
    assert fails_compat == 58 - sum(1 for r in misuse if not r["target"].isdigit()) == 56
    assert sum(1 for r in rows if compat.reward(f"<answer>{r['solution']}</answer>", r)[1]["answer"] == 0) == \
        19 + 15 + 56

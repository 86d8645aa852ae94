"""The four ES-vs-GRPO tasks (countdown_boxed, math, boolq, chemistry_mcq) against the reference code's facts:
the message lists it sends for fixed rows, and tables of (completion, gold, reward) that its extraction and
comparison rules decide (worked out by hand from those rules), plus esjax's documented deviations and options."""

import pytest

import esjax.tasks as tasks
from esjax.tasks.arithmetic import python_value
from esjax.tasks.esvsgrpo import flat_boxed
from esjax.tasks.math_answers import braced_boxed

COUNTDOWN_SYSTEM = (
    "You are a math assistant. Using the given numbers, create an arithmetic expression that equals the target.\n"
    "\nRules:\n- Use each number exactly once\n- Use +, -, *, / operations\n\n"
    "Please reason step by step, and put your final answer within \\boxed{}.")
MATH_SYSTEM = ("You are a math expert. Solve the following competition math problem.\n\n"
               "Please reason step by step, and put your final answer within \\boxed{}.")
BOOLQ_SYSTEM = ("You are a reading assistant. Answer yes or no based on the passage.\n\n"
                "Please reason step by step, and put your final answer within \\boxed{}.")
CHEMISTRY_SYSTEM = ('You are a chemistry expert. Reason step by step, then provide your final answer as JSON, '
                    'e.g., "answer": "C".')


def conversation(system, user):
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# -- message lists ---------------------------------------------------------------------------------------------
MESSAGES = [
    ("countdown_boxed", {"target": 42, "nums": [79, 88, 33]},
     conversation(COUNTDOWN_SYSTEM, "Numbers: [79, 88, 33]\nTarget: 42")),
    ("countdown_boxed", {"target": 28, "nums": [5, 50, 3, 20]},
     conversation(COUNTDOWN_SYSTEM, "Numbers: [5, 50, 3, 20]\nTarget: 28")),
    ("math", {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$.", "answer": "2", "subject": "Algebra",
              "level": 1, "unique_id": "test/algebra/1.json"},
     conversation(MATH_SYSTEM, "What is $1+1$?")),
    ("math", {"problem": "Compute $\\dbinom{8}{4}$.\n\nGive a number.", "solution": "\\boxed{70}", "answer": "70"},
     conversation(MATH_SYSTEM, "Compute $\\dbinom{8}{4}$.\n\nGive a number.")),
    ("boolq", {"question": "is a tomato botanically a fruit", "passage": "Tomatoes develop from the ovary.",
               "answer": True},
     conversation(BOOLQ_SYSTEM, "Passage: Tomatoes develop from the ovary.\n\nQuestion: is a tomato botanically a fruit")),
    ("boolq", {"question": "do iran and afghanistan speak the same language", "passage": "Persian, also known "
               "by its endonym Farsi, is one of the Western Iranian languages.", "answer": True},
     conversation(BOOLQ_SYSTEM, "Passage: Persian, also known by its endonym Farsi, is one of the Western Iranian "
                  "languages.\n\nQuestion: do iran and afghanistan speak the same language")),
    ("chemistry_mcq", {"question": "Which element has the symbol Na?", "answerKey": "B", "domain": "Chemistry",
                       "type": "mcq-4-choices", "details": {"level": "L1"},
                       "choices": {"text": ["Nitrogen", "Sodium", "Neon", "Nickel"], "label": ["A", "B", "C", "D"]}},
     conversation(CHEMISTRY_SYSTEM, 'Question: Which element has the symbol Na?\n\nA) Nitrogen\nB) Sodium\nC) Neon\n'
                  'D) Nickel\n\nPlease show your choice in the answer field with only the choice letter, e.g., '
                  '"answer": "C".')),
    ("chemistry_mcq", {"question": "Pick one.", "answerKey": "A",
                       "choices": {"text": ["  x ", "y", "z", "w  "], "label": ["A", "B", "C", "D"]}},
     conversation(CHEMISTRY_SYSTEM, 'Question: Pick one.\n\nA)   x \nB) y\nC) z\nD) w\n\nPlease show your choice in '
                  'the answer field with only the choice letter, e.g., "answer": "C".')),
]


@pytest.mark.parametrize("name, row, expected", MESSAGES)
def test_message_lists_are_the_references(name, row, expected):
    task = tasks.get(name, splits={"train": [row], "test": [row]})
    assert task.prompt(task.split("train")[0]) == expected


def test_system_prompt_option():
    row = {"target": 42, "nums": [79, 88, 33]}
    user = {"role": "user", "content": "Numbers: [79, 88, 33]\nTarget: 42"}
    assert tasks.get("countdown_boxed", splits={"train": [row]}, system_prompt="").prompt(row) == [user]
    assert tasks.get("countdown_boxed", splits={"train": [row]}, system_prompt="Be brief.").prompt(row) == [
        {"role": "system", "content": "Be brief."}, user]


def test_chat_template_applied_as_the_reference(tmp_path):
    """``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``, as the reference calls it."""
    from esjax.generation.tokenizer import build_byte_tokenizer

    tok = build_byte_tokenizer(tmp_path)
    task = tasks.get("boolq")
    row = task.split("test")[0]
    expected = tok.apply_chat_template(task.prompt(row), tokenize=False, add_generation_prompt=True)
    assert task.render_prompt(row, tok) == expected
    assert expected.startswith("<|im_start|>system\nYou are a reading assistant.")


# -- rewards: tables the reference's rules decide ----------------------------------------------------------------
N3 = {"nums": [44, 19, 35], "target": 98}
COUNTDOWN = [
    (N3, "so \\boxed{44 + 19 + 35}", 1.0),
    (N3, "\\boxed{ 44+19+35 }", 1.0),                      # stripped
    (N3, "\\boxed{\n(44 + 19) + 35\n}", 1.0),              # outer newlines stripped
    (N3, "\\boxed{44\n+ 19 + 35}", 0.0),                   # an inner newline is not an allowed character
    (N3, "\\boxed{44 + 19 + 35}}", 1.0),                   # the first } closes
    (N3, "\\boxed{44 + 19 + 35 = 98}", 0.0),               # '=' not allowed
    (N3, "\\boxed{44 + 19 + 35.0}", 0.0),                  # '.' not allowed
    (N3, "\\boxed{44 \\times 1 + 19 + 35}", 0.0),          # LaTeX operators not mapped
    (N3, "\\boxed{{44 + 19 + 35}}", 0.0),                  # content "{44 + 19 + 35"
    (N3, "\\fbox{44 + 19 + 35}", 0.0),
    (N3, "\\boxed 44+19+35", 0.0),
    (N3, "\\boxed{44+19+35", 0.0),                         # never closed
    (N3, "44+19+35", 0.0),
    (N3, "\\boxed{1+2} no: \\boxed{44+19+35}", 1.0),       # the last box counts
    (N3, "\\boxed{44+19+35} no: \\boxed{1+2}", 0.0),
    (N3, "\\boxed{44+19+36}", 0.0),                        # other numbers
    (N3, "\\boxed{44+44+10}", 0.0),                        # a number reused
    (N3, "\\boxed{63+35}", 0.0),                           # numbers missing
    (N3, "\\boxed{44+019+35}", 0.0),                       # a leading zero is a syntax error in Python
    (N3, "\\boxed{(44)(19)+35}", 0.0),                     # a call, not a product
    (N3, "\\boxed{}", 0.0),
    ({"nums": [2, 3, 1], "target": 8}, "\\boxed{2**3*1}", 1.0),       # Python's power
    ({"nums": [10, 3, 1], "target": 3}, "\\boxed{10 // 3 * 1}", 1.0),  # Python's floor division
    ({"nums": [2, 3, 2], "target": -4}, "\\boxed{-2**2*(3-2)}", 0.0),  # -(2**2) = -4, but 3-2 uses 3 and 2 once:
    ({"nums": [2, 2, 3, 2], "target": -4}, "\\boxed{-2**2*(3-2)}", 1.0),  # ... four numbers are needed
    ({"nums": [4, 2, 1], "target": 2}, "\\boxed{4/2*1}", 1.0),
    ({"nums": [4, 0, 1], "target": 4}, "\\boxed{4/0+1}", 0.0),        # division by zero
    ({"nums": [5, 3, 2], "target": 0}, "\\boxed{-5+3+2}", 1.0),       # unary minus
    ({"nums": [9, 9, 9], "target": 1}, "\\boxed{9**9**9}", 0.0),      # never hangs
]
MATH = [
    ("5", "\\boxed{5}", 1.0), ("5", "\\boxed{5.0}", 1.0), ("5", "\\boxed{5.00}", 1.0), ("5", "\\boxed{ 5 }", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", 1.0), ("\\frac{1}{2}", "\\boxed{\\tfrac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0), ("0.5", "\\boxed{1/2}", 1.0), ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\frac12}", 1.0),             # the same LaTeX
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt{3}}{2}}", 1.0),   # nested braces
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\dfrac{\\sqrt{3}}{2}}", 1.0),
    ("y=5", "\\boxed{x=5}", 0.0), ("11", "\\boxed{-x = 11}", 0.0), ("5", "\\boxed{x = 5}", 1.0),
    ("-3", "\\boxed{3}", 0.0), ("3", "\\boxed{-3}", 0.0), ("2", "\\boxed{\\sqrt{4}}", 0.0),
    ("5", "\\fbox{5}", 0.0), ("5", "\\boxed 5", 0.0), ("5", "\\boxed{5", 0.0), ("5", "The answer is 5.", 0.0),
    ("5", "\\boxed{}", 0.0), ("5", "\\boxed{3} no, \\boxed{5}", 1.0), ("5", "\\boxed{5} no, \\boxed{3}", 0.0),
    ("5", "\\boxed{5 \\text{ cm}}", 1.0),                   # units go (tests/test_tasks_math.py)
    ("10\\%", "\\boxed{10}", 1.0), ("90^\\circ", "\\boxed{90}", 1.0), ("\\$15", "\\boxed{15}", 1.0),
    ("1000", "\\boxed{1,000}", 1.0), ("1000", "\\boxed{1000.0}", 1.0),
    ("\\text{(B)}", "\\boxed{\\text{(B)}}", 1.0), ("(B)", "\\boxed{\\text{(B)}}", 1.0),
    ("(1,2)", "\\boxed{(1, 2)}", 1.0), ("(1,2)", "\\boxed{(2,1)}", 0.0),
]
# the reference scores these 1.0 (grader: reference); each is a different number, so esjax's grader scores 0
MATH_REFERENCE_FALSE_POSITIVES = [
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}x}"),   # a prefix read as 1/2
    ("0.5", "\\boxed{1/2/3}"),                    # read as 1/2
    ("12", "\\boxed{1,2}"),                       # read as 12
    ("\\frac{1}{3}", "\\boxed{0.3333333}"),       # within 1e-6, not equal
    ("0", "\\boxed{0.0000001}"),
]
BOOLQ = [
    (True, "\\boxed{yes}", 1.0), (True, "\\boxed{Yes}", 1.0), (True, "\\boxed{YES.}", 1.0), (True, "\\boxed{ yes }", 1.0),
    (True, "\\boxed{**Yes**}", 1.0), (True, "\\boxed{true}", 1.0), (True, "\\boxed{1}", 1.0),
    (True, "\\boxed{correct}", 1.0), (True, "\\boxed{right}", 1.0),
    (False, "\\boxed{no}", 1.0), (False, "\\boxed{No!}", 1.0), (False, "\\boxed{0}", 1.0),
    (False, "\\boxed{wrong}", 1.0), (False, "\\boxed{incorrect}", 1.0), (False, "\\boxed{False}", 1.0),
    (True, "\\boxed{no}", 0.0), (False, "\\boxed{yes}", 0.0),
    (True, "\\boxed{\\text{yes}}", 0.0),          # the content is "\text{yes", read as "textyes"
    (True, "Answer: yes", 0.0), (True, "yes", 0.0), (False, "The answer is no.", 0.0),
    (True, "\\fbox{yes}", 0.0), (True, "\\boxed yes", 0.0), (True, "\\boxed{yes", 0.0),
    (True, "\\boxed{no}, I mean \\boxed{yes}", 1.0), (True, "\\boxed{yes}, I mean \\boxed{no}", 0.0),
    (True, "\\boxed{yes it is}", 0.0), (True, "\\boxed{Yes, it is}", 0.0),
    (True, "\\boxed{yes .}", 0.0),                # "yes " after the punctuation goes: not "yes"
]
CHEMISTRY = [
    ("C", '{"answer": "C"}', 1.0), ("C", '"answer": "c"', 1.0), ("C", '"ANSWER" : C', 1.0), ("C", '"answer":"C"', 1.0),
    ("C", '"answer"\n:\n"C"', 1.0),
    ("B", '"answer": "Because it is C"', 1.0),    # no word boundary after the JSON letter
    ("C", '"answer": "Because it is C"', 0.0),
    ("C", '"answer": "C"\nOn reflection, D', 1.0),  # the JSON form wins over later letters
    ("D", 'answer: C, then {"answer": "D"}', 1.0),
    ("A", '"answer": A"answer": "B"', 1.0),       # the first match eats the quote that opens the second
    ("C", '"answer": "E"', 0.0),
    ("C", "answer: C", 1.0), ("C", "Answer: C.", 1.0), ("C", "ANSWER:c", 1.0),
    ("C", "Answer: Carbon", 0.0),                 # no whole-word letter anywhere
    ("C", "The answer is C", 1.0), ("C", "\\boxed{C}", 1.0), ("C", "(C)", 1.0), ("C", "c", 1.0),
    ("A", "I think this is a tricky one", 1.0),   # the article "a" is a standalone letter
    ("C", "I think this is a tricky one", 0.0),
    ("C", "C or D? D", 0.0), ("D", "C or D? D", 1.0),
    ("C", "éc", 0.0),                              # no word boundary between é and c
    ("C", "", 0.0), ("C", "E", 0.0),
]


def countdown_row(row):
    return dict(row, numbers=row["nums"])


@pytest.mark.parametrize("row, completion, expected", COUNTDOWN)
def test_countdown_boxed_reward(row, completion, expected):
    task = tasks.get("countdown_boxed")
    assert task.reward(completion, countdown_row(row))[0] == expected
    assert task.reward(completion, countdown_row(row), truncated=True)[0] == expected  # scored like any other


@pytest.mark.parametrize("gold, completion, expected", MATH)
def test_math_reward(gold, completion, expected):
    task = tasks.get("math")
    row = {"problem": "p", "answer": gold}
    assert task.reward(completion, row)[0] == expected
    assert task.reward(completion, row, truncated=True)[0] == expected


@pytest.mark.parametrize("gold, completion", MATH_REFERENCE_FALSE_POSITIVES)
def test_math_rejects_the_references_false_positives(gold, completion):
    assert tasks.get("math").reward(completion, {"problem": "p", "answer": gold})[0] == 0.0
    assert tasks.get("math", grader="reference").reward(completion, {"problem": "p", "answer": gold})[0] == 1.0


@pytest.mark.parametrize("answer, completion, expected", BOOLQ)
def test_boolq_reward(answer, completion, expected):
    task = tasks.get("boolq")
    row = {"question": "q", "passage": "p", "answer": answer}
    assert task.reward(completion, row)[0] == expected
    assert task.reward(completion, row, truncated=True)[0] == expected


@pytest.mark.parametrize("key, completion, expected", CHEMISTRY)
def test_chemistry_reward(key, completion, expected):
    task = tasks.get("chemistry_mcq")
    row = {"question": "q", "answerKey": key, "choices": {"text": ["w", "x", "y", "z"], "label": list("ABCD")}}
    assert task.reward(completion, row)[0] == expected
    assert task.reward(completion, row, truncated=True)[0] == expected


def test_truncated_reward_option():
    row = {"question": "q", "passage": "p", "answer": True}
    task = tasks.get("boolq", truncated_reward=0.0)
    assert task.reward("\\boxed{yes}", row, truncated=True) == (0.0, {"answer": 0.0, "extracted": 0.0,
                                                                        "truncated": 1.0})


# -- the lenient option: esjax's broader extraction ----------------------------------------------------------
LENIENT = [
    ("countdown_boxed", countdown_row(N3), "\\boxed{(44 \\times 1) + 19 + 35}", 0.0, 0.0),  # 4 numbers: no
    ("countdown_boxed", countdown_row(N3), "\\boxed{44 + 19 + 35 = 98}", 0.0, 1.0),
    ("countdown_boxed", countdown_row(N3), "\\boxed{[44 + 19] + 35}", 0.0, 1.0),
    ("countdown_boxed", {"numbers": [2, 3, 1], "target": 8}, "\\boxed{2**3*1}", 1.0, 0.0),
    ("math", {"problem": "p", "answer": "5"}, "\\fbox{5}", 0.0, 1.0),
    ("math", {"problem": "p", "answer": "2x"}, "\\boxed{2x cm}", 0.0, 1.0),
    ("math", {"problem": "p", "answer": "y=5"}, "\\boxed{x=5}", 0.0, 0.0),
    ("math", {"problem": "p", "answer": "11"}, "\\boxed{-x = 11}", 0.0, 0.0),
    ("boolq", {"question": "q", "passage": "p", "answer": False}, "Answer: no", 0.0, 1.0),
    ("boolq", {"question": "q", "passage": "p", "answer": True}, "\\boxed{\\text{Yes}}", 0.0, 1.0),
    ("boolq", {"question": "q", "passage": "p", "answer": True}, "\\boxed{1}", 1.0, 0.0),
    ("chemistry_mcq", {"question": "q", "answerKey": "A", "choices": {"text": list("wxyz"), "label": list("ABCD")}},
     "I think this is a tricky one", 1.0, 0.0),
    ("chemistry_mcq", {"question": "q", "answerKey": "C", "choices": {"text": list("wxyz"), "label": list("ABCD")}},
     "Thinking...\nC", 1.0, 1.0),
]


@pytest.mark.parametrize("name, row, completion, default, lenient", LENIENT)
def test_lenient_option(name, row, completion, default, lenient):
    assert tasks.get(name).reward(completion, row)[0] == default
    assert tasks.get(name, lenient=True).reward(completion, row)[0] == lenient


# -- the extraction helpers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, flat, braced", [
    ("\\boxed{5}", "5", "5"), ("\\boxed{\\frac{1}{2}}", "\\frac{1", "\\frac{1}{2}"),
    ("\\boxed{\\boxed{5}}", "\\boxed{5", "5"), ("\\boxed{a} \\boxed{b", "a", None),
    ("\\boxed{a}}{", "a", "a"), ("no box", None, None), ("\\boxed{}", "", ""), ("\\boxed{x\ny}", "x\ny", "x\ny"),
])
def test_boxed_extraction(text, flat, braced):
    assert flat_boxed(text) == flat and braced_boxed(text) == braced


@pytest.mark.parametrize("expression, value", [
    ("2**3", 8), ("-2**2", -4), ("2**-1", 0.5), ("2**-2**2", 0.0625), ("2**3**2", 512), ("7//2", 3), ("-7//2", -4),
    ("7/2", 3.5), ("1+2*3", 7), ("(1+2)*3", 9), ("--3", 3), ("2*-3", -6), ("00", 0), ("((((1))))", 1),
    ("07", None), ("2 3", None), ("()", None), ("2(3)", None), ("1/0", None), ("0**-1", None), ("*3", None),
    ("2***3", None), ("2**", None), ("(1", None), ("1)", None), ("9**9**9", None), ("1.5", None), ("", None),
])
def test_python_value(expression, value):
    assert python_value(expression) == value

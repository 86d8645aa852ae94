"""The ES paper's options that score as its training scripts did: Countdown on the decoded prompt + completion
(digit-only targets, numbers read from the prompt, Python's arithmetic) and conciseness on len(prompt +
completion). Expected values worked out by hand from the scripts' logic."""

import json

import pytest

import esjax.tasks as tasks
from esjax.tasks.countdown import paper_prompt, prompt_numbers


def row(numbers, target):
    return {"context": paper_prompt(numbers, target), "numbers": numbers, "target": target}


R = row([44, 19, 35], "98")
CASES = [
    # (row, completion, default reward, paper_script reward)
    (R, "", 0.0, 0.06),  # the prompt's own <think> </think> and <answer> </answer>: format 0.6; its example
    # answer "(1 + 2) / 3" is the last block, with other numbers
    (R, "I add them.</think>\n<answer>44 + 19 + 35</answer>", 1.1, 1.1),
    (R, "</think>\n<answer>44 + 19 + 35</answer> done", 1.06, 1.06),
    (R, "<answer>44 + 19 + 35</answer>", 1.05, 1.06),      # the prompt supplies </think>: 0.1 more format
    (R, "</think>\n<answer>44+19+35\n</answer>", 1.1, 1.1),  # one trailing newline in the block is allowed
    (R, "</think>\n<answer>44 + 19 + 36</answer>", 0.1, 0.1),
    (R, "x assistant: <answer>44 + 19 + 35</answer>", 1.05, 1.05),  # after "assistant:" the prompt is gone
    (R, "assistant: hi", 0.0, 0.0),
    (row([2, 3, 1], "8"), "</think>\n<answer>2**3*1</answer>", 0.1, 1.1),  # Python's power in the script
    (row([10, 3, 1], "3"), "</think>\n<answer>10 // 3 * 1</answer>", 0.1, 1.1),
    (row([1, 2, 8], "-5"), "</think>\n<answer>1 + 2 - 8</answer>", 1.1, 0.1),  # a non-digit target never scores
    (row([7, 2, 4], "3.5"), "</think>\n<answer>7 / 2 * 4 / 4</answer>", 0.1, 0.1),  # 4 used twice
    (row([7, 2, 1], "3.5"), "</think>\n<answer>7 / 2 * 1</answer>", 1.1, 0.1),
]


@pytest.mark.parametrize("example, completion, default, script", CASES)
def test_countdown_paper_script(example, completion, default, script):
    path = tasks.data_path("countdown_example.json")
    plain = tasks.get("countdown", path=path, train_size=8, test_size=4)
    paper = tasks.get("countdown", path=path, train_size=8, test_size=4, paper_script=True)
    assert plain.reward(completion, example)[0] == pytest.approx(default, abs=1e-12)
    assert paper.reward(completion, example)[0] == pytest.approx(script, abs=1e-12)


def test_prompt_numbers():
    assert prompt_numbers(paper_prompt([4, 50, 92, 11], "98")) == [4, 50, 92, 11]  # "[ 4 50 92 11]"
    assert prompt_numbers("no brackets") == [] and prompt_numbers("[a 1 -2 3]") == [1, 3]
    with pytest.raises(tasks.TaskDataError, match="paper_script"):
        tasks.get("countdown", path=tasks.data_path("countdown_example.json"), paper_script="yes")


def test_paper_file_gold_solutions_under_both_scorings(countdown_paper_file):
    rows = json.loads(countdown_paper_file.read_text())
    plain = tasks.get("countdown", path=countdown_paper_file)
    paper = tasks.get("countdown", path=countdown_paper_file, paper_script=True)
    solved = digit_targets = 0
    for ex in paper.split("test"):
        completion = f"ok</think>\n<answer>{ex['solution']}</answer>"
        assert paper.reward("", ex)[0] == pytest.approx(0.06)
        if plain.reward(completion, ex)[0] != pytest.approx(1.1):
            continue  # a few rows have no solution, or one that reuses a number
        digit = str(ex["target"]).isdigit()
        solved, digit_targets = solved + 1, digit_targets + digit
        assert paper.reward(completion, ex)[0] == pytest.approx(1.1 if digit else 0.1)
    assert paper.split("test") == rows[200:2200] and solved > 1900 and solved - digit_targets > 40


def test_conciseness_paper_script():
    ex = {"prompt": "Solve: 3 + 5 =", "target": "8"}  # 14 characters of prompt
    plain, paper = tasks.get("conciseness"), tasks.get("conciseness", paper_script=True)
    assert plain.reward(" 8", ex)[0] == -1.0 and paper.reward(" 8", ex)[0] == -15.0  # |14 + 2 - 1|
    assert paper.reward("", ex)[0] == -13.0 and paper.reward("8", ex)[1]["length_diff"] == 14.0
    penguins = {"prompt": "If all birds can fly and penguins are birds, can penguins fly?", "target": "No"}
    assert paper.reward(" No", penguins)[0] == -(62 + 3 - 2)
    with pytest.raises(ValueError, match="paper_script"):
        tasks.get("conciseness", paper_script=1)

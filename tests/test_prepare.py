"""``esjax data prepare``: the reference code's row selection, from local files in the public data sets' layout and
from a stand-in for the Hugging Face Hub; bad input gives one line, exit 2 and no files."""

import json
import sys
import types

import pytest

import esjax.tasks as tasks
from esjax.cli.commands import main
from esjax.tasks.prepare import prepare


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def countdown_rows(n):
    return [{"target": 10 + i % 90, "nums": [i % 100, (3 * i) % 100, 7]} for i in range(n)]


def math_rows(n, prefix):
    levels = [1, 2, 3, 4, 5, 3, 3, 1]
    return [{"problem": f"{prefix}{i}", "solution": f"\\boxed{{{i}}}", "answer": str(i), "subject": "Algebra",
             "level": levels[i % len(levels)], "unique_id": f"{prefix}/{i}.json"} for i in range(n)]


def boolq_rows(n, prefix):
    return [{"question": f"{prefix} question {i}", "answer": i % 3 == 0, "passage": f"passage {i}"} for i in range(n)]


def chemistry_rows(n):
    rows = []
    for i in range(n):
        domain = "Chemistry" if i % 4 else "Biology"
        kind = "mcq-4-choices" if i % 5 else "true_or_false"
        rows.append({"question": f"q{i}", "choices": {"text": ["w", "x", "y", "z"], "label": ["A", "B", "C", "D"]},
                     "answerKey": "ABCD"[i % 4], "domain": domain, "type": kind, "details": {"level": "L1"}})
    return rows


def test_countdown_boxed_rows_0_to_2199(tmp_path):
    rows = countdown_rows(2500)
    source = write_jsonl(tmp_path / "train.jsonl", rows)
    assert main(["data", "prepare", "countdown_boxed", "--out", str(tmp_path / "data"), "--from", str(source)]) == 0
    train, test = (read_jsonl(tmp_path / "data" / f"countdown_boxed_{s}.jsonl") for s in ("train", "test"))
    assert train == rows[:200] and test == rows[200:2200]
    task = tasks.get("countdown_boxed", data_dir=tmp_path / "data")
    assert len(task.split("train")) == 200 and len(task.split("test")) == 2000
    assert task.prompt(task.split("test")[0])[-1]["content"] == "Numbers: [0, 0, 7]\nTarget: 30"  # row 200


def test_math_level_stratified(tmp_path):
    train_rows, test_rows = math_rows(400, "train"), math_rows(600, "test")
    train_rows[5]["level"] = "Level 3"  # the original MATH spelling counts as level 3
    args = ["--from", f"train={write_jsonl(tmp_path / 'tr.jsonl', train_rows)}",
            "--from", f"test={write_jsonl(tmp_path / 'te.jsonl', test_rows)}"]
    assert main(["data", "prepare", "math", "--out", str(tmp_path), *args]) == 0
    train, test = read_jsonl(tmp_path / "math_train.jsonl"), read_jsonl(tmp_path / "math_test.jsonl")
    assert test == test_rows[:500]
    expected = []
    for level in range(1, 6):  # the first 40 of each level, levels in order
        expected += [r for r in train_rows if str(r["level"]).endswith(str(level))][:40]
    assert train == expected and [r["problem"] for r in train[:3]] == ["train0", "train7", "train8"]
    assert [r["problem"] for r in train[80:83]] == ["train2", "train5", "train6"] and train[81]["level"] == "Level 3"
    # 203 rows: one more for each of the three lowest levels
    prepare("math", tmp_path / "b", [f"train={tmp_path / 'tr.jsonl'}", f"test={tmp_path / 'te.jsonl'}"],
            train_size=203)
    counts = [sum(1 for r in read_jsonl(tmp_path / "b" / "math_train.jsonl") if str(r["level"]).endswith(str(lv)))
              for lv in range(1, 6)]
    assert counts == [41, 41, 41, 40, 40]


def test_boolq_train_and_validation(tmp_path):
    train_rows, validation = boolq_rows(300, "train"), boolq_rows(2100, "val")
    prepare("boolq", tmp_path, [f"train={write_jsonl(tmp_path / 'a.jsonl', train_rows)}",
                                f"validation={write_jsonl(tmp_path / 'b.jsonl', validation)}"])
    assert read_jsonl(tmp_path / "boolq_train.jsonl") == train_rows[:200]
    assert read_jsonl(tmp_path / "boolq_test.jsonl") == validation[:2000]


def test_chemistry_filter_and_seeded_shuffle(tmp_path):
    rows = chemistry_rows(3000)
    for i in range(0, 3000, 5):  # the other types have other layouts (no choices): filtered out, never checked
        del rows[i]["choices"], rows[i]["answerKey"]
    prepare("chemistry_mcq", tmp_path, [str(write_jsonl(tmp_path / "test.jsonl", rows))])
    train, test = read_jsonl(tmp_path / "chemistry_mcq_train.jsonl"), read_jsonl(tmp_path / "chemistry_mcq_test.jsonl")
    kept = [r for r in rows if r["domain"] == "Chemistry" and r["type"] == "mcq-4-choices"]
    assert len(kept) == 1800 and len(train) == 200 and len(test) == 1600
    state = __import__("random").getstate()
    try:  # the reference's own calls: seed the global generator, shuffle in place
        __import__("random").seed(42)
        __import__("random").shuffle(kept)
    finally:
        __import__("random").setstate(state)
    assert train + test == kept


def test_seeded_shuffle_is_pythons():
    from esjax.tasks.prepare import chemistry_mcq_rows
    rows = [{"domain": "Chemistry", "type": "mcq-4-choices", "i": i} for i in range(10)]
    assert [r["i"] for r in chemistry_mcq_rows(rows)] == [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]  # random.seed(42) in 3.11


class FakeHub:
    """A stand-in for ``datasets``: records the calls and serves rows per (name, config, split)."""

    def __init__(self, data):
        self.data, self.calls = data, []

    def load_dataset(self, name, config=None, split=None):
        self.calls.append((name, config, split))
        base, _, sl = split.partition("[")
        rows = self.data[(name, config, base)]
        return rows[:int(sl[1:-1])] if sl else rows


def test_hub_sources(tmp_path, monkeypatch):
    chem, cd = chemistry_rows(1000), countdown_rows(3000)
    hub = FakeHub({("hicai-zju/SciKnowEval", "v2", "test"): chem,
                   ("Jiayi-Pan/Countdown-Tasks-3to4", None, "train"): cd,
                   ("google/boolq", None, "train"): boolq_rows(250, "t"),
                   ("google/boolq", None, "validation"): boolq_rows(90, "v"),
                   ("nlile/hendrycks-MATH-benchmark", None, "train"): math_rows(300, "tr"),
                   ("nlile/hendrycks-MATH-benchmark", None, "test"): math_rows(20, "te")})
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=hub.load_dataset))
    for task in ("chemistry_mcq", "countdown_boxed", "boolq", "math"):
        assert main(["data", "prepare", task, "--out", str(tmp_path)]) == 0
    assert hub.calls == [("hicai-zju/SciKnowEval", "v2", "test"), ("Jiayi-Pan/Countdown-Tasks-3to4", None, "train[:2200]"),
                         ("google/boolq", None, "train"), ("google/boolq", None, "validation"),
                         ("nlile/hendrycks-MATH-benchmark", None, "train"), ("nlile/hendrycks-MATH-benchmark", None, "test")]
    assert read_jsonl(tmp_path / "countdown_boxed_test.jsonl") == cd[200:2200]
    assert len(read_jsonl(tmp_path / "boolq_test.jsonl")) == 90  # fewer rows than asked: all of them, as the reference
    for task in ("chemistry_mcq", "countdown_boxed", "boolq", "math"):
        assert tasks.get(task, data_dir=tmp_path).split("test")


def _fails(capsys, argv, needle, out_dir):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ["data", "prepare"]
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    _fails(capsys, [*base, "boolq", "--out", str(out)], "pip install datasets", out)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'google/boolq' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    _fails(capsys, [*base, "boolq", "--out", str(out)], "cannot load google/boolq", out)
    good = write_jsonl(tmp_path / "m.jsonl", math_rows(10, "m"))
    _fails(capsys, [*base, "math", "--out", str(out), "--from", str(good)], "--from SPLIT=FILE", out)
    _fails(capsys, [*base, "math", "--out", str(out), "--from", f"train={good}"], "test", out)
    _fails(capsys, [*base, "math", "--out", str(out), "--from", f"dev={good}", "--from", f"test={good}"], "'dev'", out)
    _fails(capsys, [*base, "boolq", "--out", str(out), "--from", f"train={tmp_path / 'no.jsonl'}",
                    "--from", f"validation={good}"], "no.jsonl", out)
    bad = boolq_rows(8, "b")
    bad[6]["answer"] = "yes"
    _fails(capsys, [*base, "boolq", "--out", str(out), "--from", f"train={write_jsonl(tmp_path / 'c.jsonl', bad)}",
                    "--from", f"validation={tmp_path / 'c.jsonl'}"], "c.jsonl: train, row 6", out)
    _fails(capsys, [*base, "chemistry_mcq", "--out", str(out), "--from",
                    str(write_jsonl(tmp_path / "d.jsonl", chemistry_rows(4)[:1]))], "empty", out)
    _fails(capsys, [*base, "countdown", "--out", str(out)], "--from countdown.json", out)
    _fails(capsys, [*base, "countdown_boxed", "--out", str(out), "--from", str(good), "--train-size", "0"],
           "--train-size", out)
    source = write_jsonl(tmp_path / "cd.jsonl", countdown_rows(300))
    assert main([*base, "countdown_boxed", "--out", str(out), "--from", str(source)]) == 0
    before = (out / "countdown_boxed_test.jsonl").read_text()
    assert main([*base, "countdown_boxed", "--out", str(out), "--from", str(source), "--test-size", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "countdown_boxed_test.jsonl").read_text() == before
    assert main([*base, "countdown_boxed", "--out", str(out), "--from", str(source), "--test-size", "5",
                 "--overwrite"]) == 0
    assert len(read_jsonl(out / "countdown_boxed_test.jsonl")) == 5
    assert sorted(p.name for p in out.iterdir()) == ["countdown_boxed_test.jsonl", "countdown_boxed_train.jsonl"]


def test_paper_countdown_copy(tmp_path):
    rows = [{"context": "c", "numbers": [1, 2, 3], "target": 6, "solution": "1+2+3"}] * 3
    source = tmp_path / "countdown.json"
    source.write_text(json.dumps(rows))
    assert main(["data", "prepare", "countdown", "--out", str(tmp_path / "data"), "--from", str(source)]) == 0
    assert (tmp_path / "data" / "countdown_paper.json").read_text() == source.read_text()


def test_parquet_source(tmp_path):
    import pyarrow as pa  # a test dependency (the public data sets' own format): CI runs this test
    import pyarrow.parquet as pq

    rows = boolq_rows(5, "p")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    prepare("boolq", tmp_path, [f"train={tmp_path / 'train.parquet'}", f"validation={tmp_path / 'validation.parquet'}"])
    assert read_jsonl(tmp_path / "boolq_train.jsonl") == rows
    math_train = [dict(r, level=f"Level {r['level']}") for r in math_rows(60, "t")]  # the original MATH's strings
    pq.write_table(pa.Table.from_pylist(math_train), tmp_path / "mt.parquet")
    pq.write_table(pa.Table.from_pylist(math_rows(7, "e")), tmp_path / "me.parquet")
    prepare("math", tmp_path / "m", [f"train={tmp_path / 'mt.parquet'}", f"test={tmp_path / 'me.parquet'}"],
            train_size=10)
    assert [r["level"] for r in read_jsonl(tmp_path / "m" / "math_train.jsonl")] == [f"Level {lv}" for lv in
                                                                                    (1, 1, 2, 2, 3, 3, 4, 4, 5, 5)]


def test_errors_name_the_files_own_field(tmp_path, capsys):
    out = tmp_path / "out"
    bad = countdown_rows(300)
    bad[7]["nums"] = "1 2 3"
    _fails(capsys, ["data", "prepare", "countdown_boxed", "--out", str(out), "--from",
                    str(write_jsonl(tmp_path / "c.jsonl", bad))], "row 7: field 'nums' must be", out)
    no_level = [{k: v for k, v in r.items() if k != "level"} for r in math_rows(20, "n")]
    _fails(capsys, ["data", "prepare", "math", "--out", str(out), "--from",
                    f"train={write_jsonl(tmp_path / 'n.jsonl', no_level)}", "--from", f"test={tmp_path / 'n.jsonl'}"],
           "train row 0 has no field 'level'", out)


def test_missing_prepared_files_name_the_command(tmp_path):
    with pytest.raises(tasks.TaskDataError, match="esjax data prepare math --out"):
        tasks.get("math", data_dir=tmp_path)

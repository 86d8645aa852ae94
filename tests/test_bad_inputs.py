"""Bad input to every subcommand: exit code 2, one line on stderr naming the key / flag / file, no traceback, and
nothing written (the test directory is unchanged, no --out appears).

Each case is ``(id, argv builder, needle)``; the builder gets a :class:`Ctx` that makes bad model directories,
config and task files inside the test's directory. Cases run in-process through ``esjax.cli.commands.main`` (the same code
path as the ``esjax`` script; a few run as subprocesses at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esjax.cli.commands import main
from esjax.models.safetensors_io import iter_tensors

TINY_TASK = "task.options={prompt_style: short, counts: [3], train_size: 8, test_size: 4}"


class Ctx:
    """Paths for one case: ``tmp`` (the case's directory, snapshotted), ``out`` (an --out that must not appear),
    ``model`` (a good tiny model outside ``tmp``)."""

    def __init__(self, tmp: Path, model: Path):
        self.tmp, self.model, self.out = tmp, model, tmp / "out"

    def bad_model(self, edit: Callable[[Path], None]) -> str:
        target = self.tmp / "model"
        shutil.copytree(self.model, target)
        edit(target)
        return str(target)

    def file(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return str(path)

    def run_dir(self, *sets: str, done: int = 2, config: str | None = None) -> str:
        """A run directory as a started run leaves it: config.yaml and a finished checkpoint at ``done``."""
        from esjax.run.settings import load_settings, save_settings
        run = self.tmp / "run"
        (run / "checkpoints" / str(done)).mkdir(parents=True)
        if config is None:
            save_settings(load_settings(None, [f"model.path={self.model}", "train.devices=1", *sets]), run / "config.yaml")
        else:
            (run / "config.yaml").write_text(config)
        return str(run)

    def resume(self, *sets: str, **run) -> list[str]:
        return ["train", "--out", self.run_dir(**run), "--resume", "--no-progress",
                *(a for s in sets for a in ("--set", s))]

    def train(self, *sets: str, model: str | None = None) -> list[str]:
        base = [f"model.path={model or self.model}", "train.devices=1", TINY_TASK, "task.eval_limit=2",
                "train.iterations=2", "train.prompts_per_iteration=2", "sampling.max_new_tokens=4",
                "es.population_size=2"]
        return ["train", "--out", str(self.out), "--no-progress", *(a for s in (*base, *sets) for a in ("--set", s))]


# -- bad model directories: (id, edit of a copy of a good model directory, needle) ---------------------------------
def _config(file: str = "config.json", **changes):
    def edit(d: Path):
        cfg = json.loads((d / file).read_text())
        for key, value in changes.items():
            if value is _DELETE:
                del cfg[key]
            else:
                cfg[key] = value
        (d / file).write_text(json.dumps(cfg))
    return edit


_DELETE = object()


def _write(name: str, text: str | bytes):
    def edit(d: Path):
        (d / name).write_bytes(text) if isinstance(text, bytes) else (d / name).write_text(text)
    return edit


def _truncate(d: Path):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _int32_weight(d: Path):
    from safetensors.numpy import save_file
    tensors = {name: np.array(t) for name, t in iter_tensors(d / "model.safetensors")}
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int32)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def _index(shard: str):
    def edit(d: Path):
        # the traversal target exists and is a valid checkpoint: it must not be read
        shutil.copy(d / "model.safetensors", d.parent / "x.safetensors")
        names = [name for name, _ in iter_tensors(d / "model.safetensors")]
        (d / "model.safetensors").unlink()
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))
    return edit


def _index_map(weight_map):
    def edit(d: Path):
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return edit


def _link_outside(name: str):
    """``name`` replaced by a symlink to a copy of it outside the model folder (a file the link must not reach)."""
    def edit(d: Path):
        outside = d.parent / f"outside-{name}"
        shutil.copy(d / name, outside)
        (d / name).unlink()
        (d / name).symlink_to(outside)
    return edit


def _config_dir(d: Path):
    (d / "config.json").unlink()
    (d / "config.json").mkdir()


def _no_weights(d: Path):
    (d / "model.safetensors").unlink()


def _weights_dir(d: Path):
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").mkdir()


MODEL_DEFECTS = [
    ("config-json-list", _write("config.json", "[1, 2]"), "config.json"),
    ("config-not-json", _write("config.json", "{oops"), "config.json"),
    ("config-binary", _write("config.json", b"\xff\xfe\x00garbage"), "config.json"),
    ("config-dir", _config_dir, "config.json"),
    ("missing-hidden-size", _config(hidden_size=_DELETE), "hidden_size"),
    ("missing-model-type", _config(model_type=_DELETE), "model_type"),
    ("heads-0", _config(num_attention_heads=0), "num_attention_heads"),
    ("heads-negative", _config(num_attention_heads=-4), "num_attention_heads"),
    ("hidden-0", _config(hidden_size=0), "hidden_size"),
    ("hidden-negative", _config(hidden_size=-64), "hidden_size"),
    ("hidden-string", _config(hidden_size="64"), "hidden_size"),
    ("hidden-float", _config(hidden_size=64.5), "hidden_size"),
    ("vocab-0", _config(vocab_size=0), "vocab_size"),
    ("intermediate-negative", _config(intermediate_size=-1), "intermediate_size"),
    ("layers-string", _config(num_hidden_layers="2"), "num_hidden_layers"),
    ("layers-null", _config(num_hidden_layers=None), "num_hidden_layers"),
    ("kv-heads-0", _config(num_key_value_heads=0), "num_key_value_heads"),
    ("kv-heads-not-divisor", _config(num_key_value_heads=3), "num_key_value_heads"),
    ("head-dim-negative", _config(head_dim=-16), "head_dim"),
    ("head-dim-odd", _config(head_dim=15), "head_dim"),
    ("max-positions-0", _config(max_position_embeddings=0), "max_position_embeddings"),
    ("max-positions-string", _config(max_position_embeddings="512"), "max_position_embeddings"),
    ("rms-eps-negative", _config(rms_norm_eps=-1e-6), "rms_norm_eps"),
    ("rope-theta-0", _config(rope_parameters={"rope_type": "default", "rope_theta": 0}), "rope_theta"),
    ("rope-parameters-list", _config(rope_parameters=[1, 2]), "rope_parameters"),
    ("rope-scaling-list", _config(rope_scaling=[1, 2]), "rope_scaling"),
    ("rope-type-unknown", _config(rope_parameters={"rope_type": "yarn", "factor": 2.0}), "rope_type"),
    ("rope-factor-string", _config(rope_parameters={"rope_type": "linear", "factor": "x"}), "factor"),
    ("eos-string", _config("generation_config.json", eos_token_id="x"), "eos_token_id"),
    ("eos-list-of-lists", _config("generation_config.json", eos_token_id=[[0]]), "eos_token_id"),
    ("bos-negative", _config("generation_config.json", bos_token_id=-1), "bos_token_id"),
    ("pad-float", _config("generation_config.json", pad_token_id=1.5), "pad_token_id"),
    ("unsupported-arch", _config(model_type="gpt2"), "model_type"),
    ("activation", _config(hidden_act="gelu"), "hidden_act"),
    ("generation-config-not-json", _write("generation_config.json", "{"), "generation_config.json"),
    ("generation-config-list", _write("generation_config.json", "[]"), "generation_config.json"),
    ("truncated-weights", _truncate, "model.safetensors"),
    ("weights-header-garbage", _write("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"),
     "model.safetensors"),
    ("weights-header-huge", _write("model.safetensors", b"\xff" * 16), "model.safetensors"),
    ("weights-empty-file", _write("model.safetensors", b""), "model.safetensors"),
    ("weights-dir", _weights_dir, "model.safetensors"),
    ("no-weights", _no_weights, "safetensors"),
    ("int32-weight", _int32_weight, "model.norm.weight"),
    ("index-traversal", _index("../x.safetensors"), "'../x.safetensors'"),
    ("index-absolute", _index("/tmp/esjax-absent/x.safetensors"), "not a plain file name"),
    ("index-not-json", lambda d: (_no_weights(d), _write("model.safetensors.index.json", "{")(d)),
     "model.safetensors.index.json"),
    ("index-list", lambda d: (_no_weights(d), _write("model.safetensors.index.json", "[]")(d)),
     "model.safetensors.index.json"),
    ("index-missing-shard", _index("model-00001-of-00002.safetensors"), "model-00001-of-00002.safetensors"),
    ("index-int-shards", _index_map({"model.norm.weight": 3}), "weight_map"),
    ("index-empty-map", _index_map({}), "weight_map"),
    ("index-deep", _write("model.safetensors.index.json", "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    ("config-deep", _write("config.json", '{"a":' * 100_000 + "1" + "}" * 100_000), "config.json"),
    ("vocab-huge", _config(vocab_size=10**12), "vocab_size"),
    ("layers-huge", _config(num_hidden_layers=2**40), "num_hidden_layers"),
    ("rms-eps-huge-int", _config(rms_norm_eps=10**400), "rms_norm_eps"),
    ("architectures-bert", _config(architectures=["BertModel"]), "architectures"),
    ("architectures-string", _config(architectures="Qwen2ForCausalLM"), "architectures"),
    ("config-link-outside", _link_outside("config.json"), "config.json"),
    ("weights-link-outside", _link_outside("model.safetensors"), "model.safetensors"),
    ("special-tokens-link-outside", _link_outside("tokenizer_config.json"), "tokenizer_config.json"),
]

TOKENIZER_DEFECTS = [
    ("tokenizer-not-json", _write("tokenizer.json", "{broken"), "tokenizer"),
    ("tokenizer-missing", lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
     "tokenizer"),
]


def _model_cases(defects, commands):
    cases = []
    for defect_id, edit, needle in defects:
        for command, argv in commands.items():
            cases.append((f"{command}:{defect_id}", lambda c, edit=edit, argv=argv: argv(c, c.bad_model(edit)), needle))
    return cases


MODEL_COMMANDS = {
    "convert": lambda c, m: ["convert", "--from-hf", m, "--out", str(c.out)],
    "export": lambda c, m: ["export", m, "--to-hf", str(c.out)],
    "generate": lambda c, m: ["generate", "--model", m, "--prompt", "x", "--max-new-tokens", "2"],
    "eval": lambda c, m: ["eval", "--model", m, "--task", "conciseness", "--limit", "2", "--max-new-tokens", "2"],
    "train": lambda c, m: c.train(model=m),
    "analyze": lambda c, m: ["analyze", "--base", m, "--model", f"a={c.model}", "--tasks", "conciseness",
                             "--out", str(c.out), "--limit", "2", "--max-new-tokens", "2", "--no-progress"],
}
TOKENIZER_COMMANDS = {k: MODEL_COMMANDS[k] for k in ("generate", "eval", "train")}


def _no_chat_template(d: Path):
    (d / "chat_template.jinja").unlink()


def _gen(*flags: str):
    return lambda c: ["generate", "--model", str(c.model), "--prompt", "x", "--max-new-tokens", "2", *flags]


def _eval(*flags: str):
    return lambda c: ["eval", "--model", str(c.model), "--task", "conciseness", "--limit", "2",
                      "--max-new-tokens", "2", *flags]


def _analyze(*flags: str):
    return lambda c: ["analyze", "--base", str(c.model), "--model", f"a={c.model}", "--tasks", "conciseness",
                      "--out", str(c.out), "--limit", "2", "--max-new-tokens", "2", "--no-progress", *flags]


DEEP_LIST = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000
SYNTAX_ERROR_TASK = "def broken(:\n    pass\n"
RAISING_TASK = "import esjax\nraise RuntimeError('task file refuses to load')\n"

COMMAND_CASES = [
    # convert / export
    ("convert:missing", lambda c: ["convert", "--from-hf", str(c.tmp / "nope"), "--out", str(c.out)], "nope"),
    ("convert:file-as-model", lambda c: ["convert", "--from-hf", c.file("f.txt", "x"), "--out", str(c.out)],
     "f.txt"),
    ("convert:dtype", lambda c: ["convert", "--from-hf", str(c.model), "--out", str(c.out), "--dtype", "float64"],
     "--dtype"),
    ("convert:no-out", lambda c: ["convert", "--from-hf", str(c.model)], "--out"),
    ("export:missing", lambda c: ["export", str(c.tmp / "nope"), "--to-hf", str(c.out)], "nope"),
    ("export:dtype", lambda c: ["export", str(c.model), "--to-hf", str(c.out), "--dtype", "int8"], "--dtype"),
    *[(f"export:max-shard-size={v}", lambda c, v=v: ["export", str(c.model), "--to-hf", str(c.out),
                                                       f"--max-shard-size={v}"], "--max-shard-size")
      for v in ("-5", "0", "abc", "1e400GB", "")],
    # generate
    ("generate:empty-prompt", _gen("--prompt", ""), "--prompt"),
    ("generate:num-samples-0", _gen("--num-samples", "0"), "--num-samples"),
    ("generate:num-samples-negative", _gen("--num-samples", "-2"), "--num-samples"),
    ("generate:max-new-tokens-0", _gen("--max-new-tokens", "0"), "--max-new-tokens"),
    ("generate:max-new-tokens-text", _gen("--max-new-tokens", "many"), "--max-new-tokens"),
    ("generate:temperature-negative", _gen("--temperature", "-1"), "--temperature"),
    ("generate:temperature-nan", _gen("--temperature", "nan"), "--temperature"),
    ("generate:top-p-0", _gen("--top-p", "0"), "--top-p"),
    ("generate:top-p-above-1", _gen("--top-p", "1.5"), "--top-p"),
    ("generate:top-k-negative", _gen("--top-k", "-1"), "--top-k"),
    ("generate:seed-text", _gen("--seed", "x"), "--seed"),
    ("generate:missing-model", lambda c: ["generate", "--model", str(c.tmp / "nope"), "--prompt", "x"], "nope"),
    ("generate:chat-without-template",
     lambda c: ["generate", "--model", c.bad_model(_no_chat_template), "--prompt", "x", "--chat"], "chat template"),
    ("generate:prompt-past-max-positions", _gen("--prompt", "x" * 600), "max_position_embeddings"),
    ("generate:new-tokens-past-max-positions", _gen("--max-new-tokens", "600"), "max_position_embeddings"),
    ("generate:unknown-flag", _gen("--frobnicate"), "--frobnicate"),
    # eval
    ("eval:limit-0", _eval("--limit", "0"), "--limit"),
    ("eval:limit-negative", _eval("--limit", "-1"), "--limit"),
    ("eval:batch-size-0", _eval("--batch-size", "0"), "--batch-size"),
    ("eval:max-new-tokens-0", _eval("--max-new-tokens", "0"), "--max-new-tokens"),
    ("eval:unknown-task", lambda c: ["eval", "--model", str(c.model), "--task", "countdwn"], "countdwn"),
    ("eval:unknown-task-option", _eval("--task-option", "colour=red"), "colour"),
    ("eval:task-option-no-equals", _eval("--task-option", "scale"), "--task-option"),
    ("eval:task-option-bad-yaml", _eval("--task-option", "scale=[1,"), "--task-option scale"),
    ("eval:task-option-bad-value", _eval("--task-option", "scale=abc"), "conciseness"),
    ("eval:unknown-split", _eval("--split", "validation"), "validation"),
    ("eval:task-file-missing", lambda c: _eval("--task-file", str(c.tmp / "nope.py"))(c), "nope.py"),
    ("eval:task-file-dir", lambda c: _eval("--task-file", str(c.tmp))(c), "task file"),
    ("eval:task-file-syntax", lambda c: _eval("--task-file", c.file("syn.py", SYNTAX_ERROR_TASK))(c), "syn.py:1"),
    ("eval:task-file-raises", lambda c: _eval("--task-file", c.file("boom.py", RAISING_TASK))(c), "boom.py:2"),
    ("eval:missing-model", lambda c: ["eval", "--model", str(c.tmp / "nope"), "--task", "conciseness"], "nope"),
    ("eval:prompt-past-max-positions", _eval("--max-new-tokens", "600"), "max_position_embeddings"),
    # train: the CONFIG file
    ("train:config-missing", lambda c: ["train", str(c.tmp / "nope.yaml"), "--out", str(c.out)], "nope.yaml"),
    ("train:config-is-dir", lambda c: ["train", str(c.tmp), "--out", str(c.out)], "not a file"),
    ("train:config-yaml-syntax", lambda c: ["train", c.file("c.yaml", "train:\n  iterations: [1, 2\n"),
                                            "--out", str(c.out)], "c.yaml:3:1"),
    ("train:config-yaml-tab", lambda c: ["train", c.file("c.yaml", "train:\n\titerations: 3\n"),
                                         "--out", str(c.out)], "c.yaml:2:1"),
    ("train:config-yaml-binary", lambda c: ["train", c.file("c.yaml", b"\xff\xfe\x00\x01"), "--out", str(c.out)],
     "c.yaml"),
    ("train:config-list", lambda c: ["train", c.file("c.yaml", "- 1\n- 2\n"), "--out", str(c.out)], "c.yaml"),
    ("train:config-unknown-key", lambda c: ["train", c.file("c.yaml", "trian:\n  iterations: 3\n"),
                                            "--out", str(c.out)], "trian"),
    ("train:config-section-not-mapping", lambda c: ["train", c.file("c.yaml", "train: 5\n"), "--out", str(c.out)],
     "'train'"),
    # train: settings (--set)
    *[(f"train:{key}={value}", lambda c, s=f"{key}={value}": c.train(s), key.removeprefix("es."))
      for key, value in [
        ("train.iterations", 0), ("train.iterations", -3), ("train.iterations", "ten"), ("train.iterations", 2.5),
        ("train.iterations", "true"), ("train.prompts_per_iteration", 0), ("train.checkpoint_every", -1),
        ("train.keep_checkpoints", 0), ("train.eval_every", -1), ("train.eval_batch_size", 0),
        ("train.seed", -1), ("train.devices", 0), ("train.model_parallel", 0),
        ("train.learning_rate", 3), ("sampling.max_new_tokens", 0), ("sampling.temperature", -1),
        ("sampling.temperature", ".nan"), ("sampling.top_p", 0), ("sampling.top_p", 2), ("sampling.top_k", -1),
        ("sampling.eval_max_new_tokens", 0), ("task.eval_limit", 0), ("task.train_limit", -1),
        ("task.iterations", 0), ("task.name", "''"), ("model.dtype", "float64"), ("model.compute_dtype", "x"),
        ("model.path", "''"), ("es.sigma", -1), ("es.population_size", 0), ("es.colour", 1), ("es.alpha", "big"),
        ("es.population_size", 10**12), ("train.iterations", 10**30), ("train.seed", 2**70),
        ("task.options", "{train_size: 99999999999}")]],
    ("train:method", lambda c: c.train("method=ppo"), "method"),
    ("train:grpo-greedy", lambda c: c.train("method=grpo"), "temperature"),
    ("train:more-devices-than-visible", lambda c: c.train("train.devices=16", "es.population_size=32"),
     "train.devices=16"),
    ("train:grpo-num-generations-0", lambda c: c.train("method=grpo", "grpo.num_generations=0",
                                                       "sampling.temperature=1"), "num_generations"),
    ("train:set-no-equals", lambda c: c.train("train.iterations"), "train.iterations"),
    ("train:set-bad-yaml", lambda c: c.train("task.options={a: [1"), "--set task.options"),
    ("train:set-through-scalar", lambda c: c.train("train=3", "train.iterations=2"), "train"),
    ("train:task-and-stages", lambda c: c.train("stages=[{name: conciseness}]"), "stages"),
    ("train:stage-bad-field", lambda c: c.train("task=null", "stages=[{name: conciseness, eval_limit: 0}]"),
     "stages[0].eval_limit"),
    ("train:unknown-task", lambda c: c.train("task.name=countdwn"), "countdwn"),
    ("train:unknown-task-option", lambda c: c.train("task.options={colour: red}"), "colour"),
    ("train:task-option-bad-value", lambda c: c.train("task.options={counts: [9]}"), "counts"),
    ("train:unknown-split", lambda c: c.train("task.eval_splits=[validation]"), "validation"),
    ("train:task-file-missing", lambda c: c.train(f"task.file={c.tmp / 'nope.py'}"), "nope.py"),
    ("train:task-file-syntax", lambda c: c.train(f"task.file={c.file('syn.py', SYNTAX_ERROR_TASK)}"), "syn.py:1"),
    ("train:task-file-raises", lambda c: c.train(f"task.file={c.file('boom.py', RAISING_TASK)}"), "boom.py:2"),
    ("train:missing-model", lambda c: c.train(model=str(c.tmp / "nope")), "nope"),
    ("train:prompt-past-max-positions", lambda c: c.train("sampling.max_new_tokens=600"), "max_position_embeddings"),
    ("train:resume-without-out", lambda c: ["train", "--resume"], "--out"),
    ("train:resume-nothing", lambda c: [*c.train(), "--resume"], "nothing to resume"),
    ("train:resume-changed-setting", lambda c: c.resume("es.sigma=0.5"), "es.sigma"),
    ("train:resume-changed-seed-and-limit", lambda c: c.resume("train.seed=4", "task.eval_limit=3"), "train.seed"),
    ("train:resume-budget-below-done", lambda c: c.resume("train.iterations=1", done=2), "train.iterations"),
    ("train:resume-other-config", lambda c: [*c.resume(), c.file("c.yaml", "method: grpo\n")], "method"),
    ("train:resume-broken-config", lambda c: c.resume(config="train: [1,\n"), "config.yaml:2:1"),
    ("train:resume-bad-saved-setting", lambda c: c.resume(config="train: {iterations: 0}\n"), "train.iterations"),
    ("train:resume-changed-task-file", lambda c: c.resume(f"task.file={c.tmp / 'evil.py'}"), "task.file"),
    ("train:resume-saved-task-file", lambda c: c.resume(done=2, config=f"task: {{name: x, file: {c.tmp}/e.py}}\n"
                                                                                   "train: {devices: 1}\n"),
     "--trust-task-file"),
    ("train:allow-changes-without-resume", lambda c: [*c.train(), "--allow-changes"], "--allow-changes"),
    ("demo:resume-changed-setting", lambda c: ["demo", "--out", c.run_dir(), "--resume", "--set", "es.sigma=0.5"],
     "es.sigma"),
    ("train:out-is-file", lambda c: ["train", "--out", c.file("f.txt", "x"), "--set", "train.iterations=1",
                                     "--set", "train.devices=1"], "f.txt"),
    # demo
    ("demo:iterations-0", lambda c: ["demo", "--out", str(c.out), "--set", "train.iterations=0"],
     "train.iterations"),
    ("demo:no-test-split", lambda c: ["demo", "--out", str(c.out), "--set", "task.eval_splits=[train]"],
     "task.eval_splits"),
    ("demo:unknown-key", lambda c: ["demo", "--out", str(c.out), "--set", "es.colour=1"], "colour"),
    ("demo:sigma-negative", lambda c: ["demo", "--out", str(c.out), "--set", "es.sigma=-1"], "sigma"),
    ("demo:resume-without-out", lambda c: ["demo", "--resume"], "--out"),
    ("demo:resume-nothing", lambda c: ["demo", "--out", str(c.out), "--resume"], "nothing to resume"),
    ("demo:unknown-task", lambda c: ["demo", "--out", str(c.out), "--set", "task.name=nope"], "nope"),
    # analyze
    ("analyze:limit-0", _analyze("--limit", "0"), "--limit"),
    ("analyze:batch-size-0", _analyze("--batch-size", "0"), "--batch-size"),
    ("analyze:kl-samples-0", _analyze("--kl-samples", "0"), "--kl-samples"),
    ("analyze:kl-batch-size-negative", _analyze("--kl-batch-size", "-1"), "--kl-batch-size"),
    ("analyze:kl-chunk-0", _analyze("--kl-chunk", "0"), "--kl-chunk"),
    ("analyze:topk-0", _analyze("--topk", "0"), "--topk"),
    ("analyze:grid", _analyze("--grid", "0:1:1"), "--grid"),
    ("analyze:probe-grid", _analyze("--probe-grid", "a,b"), "--probe-grid"),
    ("analyze:probe-grid-empty", _analyze("--probe-grid", " "), "--probe-grid"),
    ("analyze:grid-inf", _analyze("--grid", "0,inf"), "--grid"),
    ("analyze:grid-huge", _analyze("--grid", "0:1:99999999999"), "--grid"),
    ("analyze:skip", _analyze("--skip", "everything"), "--skip"),
    ("analyze:model-format", lambda c: ["analyze", "--base", str(c.model), "--model", "a", "--tasks",
                                        "conciseness", "--out", str(c.out)], "--model"),
    ("analyze:model-missing", lambda c: ["analyze", "--base", str(c.model), "--model", f"a={c.tmp / 'nope'}",
                                         "--tasks", "conciseness", "--out", str(c.out)], "nope"),
    ("analyze:model-name-base", lambda c: ["analyze", "--base", str(c.model), "--model", f"base={c.model}",
                                           "--tasks", "conciseness", "--out", str(c.out)], "base"),
    ("analyze:unknown-task", lambda c: ["analyze", "--base", str(c.model), "--model", f"a={c.model}",
                                        "--tasks", "countdwn", "--out", str(c.out)], "countdwn"),
    ("analyze:no-tasks", lambda c: ["analyze", "--base", str(c.model), "--model", f"a={c.model}",
                                    "--tasks", ",", "--out", str(c.out)], "--tasks"),
    ("analyze:task-option-format", _analyze("--task-option", "scale=3"), "--task-option"),
    ("analyze:unknown-task-option", _analyze("--task-option", "conciseness.colour=red"), "colour"),
    ("analyze:es-hparams", _analyze("--es-hparams", "a=x,y"), "--es-hparams"),
    ("analyze:es-hparams-unknown-model", _analyze("--es-hparams", "b=1e-3,4,2"), "--es-hparams"),
    ("analyze:out-is-file", lambda c: ["analyze", "--base", str(c.model), "--model", f"a={c.model}", "--tasks",
                                       "conciseness", "--out", c.file("f.txt", "x")], "f.txt"),
    ("analyze:unknown-section-flag", _analyze("--bogus"), "--bogus"),
    # data prepare
    ("data:unknown-task", lambda c: ["data", "prepare", "countdwn", "--out", str(c.out)], "countdwn"),
    ("data:train-size-0", lambda c: ["data", "prepare", "math", "--out", str(c.out), "--train-size", "0",
                                     "--from", c.file("m.jsonl", "{}\n")], "--train-size"),
    ("data:countdown-without-from", lambda c: ["data", "prepare", "countdown", "--out", str(c.out)], "--from"),
    ("data:from-missing", lambda c: ["data", "prepare", "countdown", "--out", str(c.out), "--from",
                                     str(c.tmp / "nope.json")], "nope.json"),
    ("data:from-not-json", lambda c: ["data", "prepare", "countdown", "--out", str(c.out), "--from",
                                      c.file("cd.json", "[{oops")], "cd.json"),
    ("data:from-unknown-split", lambda c: ["data", "prepare", "boolq", "--out", str(c.out), "--from",
                                           f"dev={c.file('b.jsonl', '{}')}"], "dev"),
    ("esjax:unknown-command", lambda c: ["frobnicate"], "frobnicate"),
    # nesting deep enough to overflow a recursive parser, seeds past the RNG's range
    ("train:settings-yaml-deep", lambda c: ["train", c.file("d.yaml", "a: " + DEEP_LIST + "\n"), "--out", str(c.out)],
     "d.yaml: nested deeper"),
    ("train:config-self-alias", lambda c: ["train", c.file("a.yaml", "a: &x [*x]\n"), "--out", str(c.out)],
     "a.yaml: nested deeper"),
    ("train:config-deep-but-parsable", lambda c: ["train", c.file("d.yaml", "a: " + "[" * 500 + "]" * 500 + "\n"),
                                                  "--out", str(c.out)], "d.yaml: nested deeper"),
    ("train:set-deep", lambda c: c.train(f"task.options={DEEP_LIST}"), "--set task.options: nested deeper"),
    ("eval:task-option-deep", _eval("--task-option", f"scale={DEEP_LIST}"), "--task-option scale: nested deeper"),
    ("data:from-deep-json", lambda c: ["data", "prepare", "countdown", "--out", str(c.out), "--from",
                                       c.file("cd.json", "[" + DEEP_OBJECT + "]")], "cd.json:1: row 0 is nested"),
    ("data:from-deep-jsonl", lambda c: ["data", "prepare", "boolq", "--out", str(c.out),
                                        "--from", f"train={c.file('t.jsonl', DEEP_OBJECT)}",
                                        "--from", f"validation={c.file('v.jsonl', DEEP_OBJECT)}"], "t.jsonl:1: nested"),
    ("generate:seed-huge", _gen("--seed", str(2**70)), "--seed"),
    ("generate:seed-negative", _gen("--seed", "-1"), "--seed"),
]

CASES = (_model_cases(MODEL_DEFECTS, MODEL_COMMANDS) + _model_cases(TOKENIZER_DEFECTS, TOKENIZER_COMMANDS)
         + COMMAND_CASES)


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` (but Python's bytecode caches) with (is_dir, size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            out[str(path.relative_to(root))] = (path.is_dir(), 0 if path.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def run_main(argv: list[str]) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return main(argv)
    except SystemExit as e:  # argparse
        return e.code


def test_cases_are_many_and_distinct():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 300


@pytest.mark.parametrize("build, needle", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(build, needle, qwen2_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output directory (runs/...) would appear here
    ctx = Ctx(tmp_path, qwen2_dir)
    argv = build(ctx)
    before = snapshot(tmp_path)
    rc = run_main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 2, (rc, captured.err[-3000:])
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-3000:]
    assert needle in lines[0], lines[0]
    assert snapshot(tmp_path) == before and not ctx.out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["train", "{cfg}", "--out", "{out}"], "bad.yaml:3:3"),
    (["eval", "--model", "embedded", "--task", "countdown_procedural", "--limit", "-1"], "--limit"),
], ids=["yaml-error", "argparse"])
def test_the_esjax_script_gives_the_same_one_line(tmp_path, argv, needle):
    (tmp_path / "bad.yaml").write_text("train:\n  iterations: 3\n  - oops\n")
    argv = [a.format(cfg=tmp_path / "bad.yaml", out=tmp_path / "out") for a in argv]
    proc = subprocess.run([sys.executable, "-m", "esjax.cli", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr[-3000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def _setting_keys() -> list[str]:
    from esjax.run.resume import flatten
    from esjax.run.settings import load_settings, to_dict
    keys = set(flatten(to_dict(load_settings(None, ["task.name=countdown_procedural", "train.devices=1"]))))
    return sorted(keys | {"es.sigma", "es.alpha", "es.population_size", "es.noise", "es.rank", "es.optimizer",
                          "grpo.num_generations", "grpo.learning_rate", "grpo.beta", "method", "stages",
                          "task.options", "es", "grpo", "train", "task"})


ODD_VALUES = ["0", "-1", "-3", "2.5", "1e309", "-.inf", ".nan", "x", "''", "null", "true", "[]", "[1, -2]", "{}",
              "{a: 1}", str(10 ** 30), "'1e-3'", "[[1]]", "{name: 3}"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_setting_keys()), st.sampled_from(ODD_VALUES)), min_size=1, max_size=3))
def test_any_setting_value_loads_or_is_one_settings_error(pairs):
    """Odd values for every settings key: the settings load, or a SettingsError names the problem on one line
    (never another exception, never a traceback)."""
    from esjax.run.settings import SettingsError, load_settings
    try:
        load_settings(None, [f"{k}={v}" for k, v in pairs])
    except SettingsError as e:
        assert "\n" not in str(e) and str(e)

"""CLI: convert / export / generate, and one-line errors with exit code 2."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from esjax import models
from esjax.cli.commands import main


def test_convert_export_generate(qwen2_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["convert", "--from-hf", str(qwen2_dir), "--out", str(ckpt)]) == 0
    assert models.is_esjax_checkpoint(ckpt)
    assert main(["export", str(ckpt), "--to-hf", str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    config, params = models.load_hf(tmp_path / "hf", dtype=None)
    assert str(params["norm"]["scale"].dtype) == "bfloat16"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "qwen2"
    capsys.readouterr()
    assert main(["generate", "--model", str(ckpt), "--prompt", "Numbers: 3 4\n", "--max-new-tokens", "5"]) == 0
    from_ckpt = capsys.readouterr().out
    assert main(["generate", "--model", str(qwen2_dir), "--prompt", "Numbers: 3 4\n", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == from_ckpt and from_ckpt


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "esjax.cli", *args], capture_output=True, text=True, timeout=300)


def test_missing_path_is_one_line_exit_2(tmp_path):
    result = run_cli("generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("setup, needle", [
    ("empty_dir", "not a model"),
    ("unsupported_arch", "model_type"),
    ("corrupt_config", "not valid JSON"),
])
def test_bad_models(qwen2_dir, tmp_path, capsys, setup, needle):
    target = tmp_path / "m"
    target.mkdir()
    if setup != "empty_dir":
        shutil.copy(qwen2_dir / "model.safetensors", target)
        cfg = json.loads((qwen2_dir / "config.json").read_text())
        cfg["model_type"] = "gpt2"
        (target / "config.json").write_text(json.dumps(cfg) if setup == "unsupported_arch" else "{oops")
    for argv in (["generate", "--model", str(target), "--prompt", "x"],
                 ["export", str(target), "--to-hf", str(tmp_path / "o")],
                 ["convert", "--from-hf", str(target), "--out", str(tmp_path / "c")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def test_export_refuses_existing_target(qwen2_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main(["export", str(qwen2_dir), "--to-hf", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "x").read_text() == "keep"
    assert main(["export", str(qwen2_dir), "--to-hf", str(out), "--overwrite"]) == 0
    _, a = models.load_hf(qwen2_dir)
    _, b = models.load_hf(out)
    np.testing.assert_array_equal(a["embed_tokens"]["embedding"], b["embed_tokens"]["embedding"])


def test_export_says_what_it_wrote(qwen2_dir, tmp_path, capsys):
    assert main(["export", str(qwen2_dir), "--to-hf", str(tmp_path / "a"), "--dtype", "bfloat16"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "1 weight file model.safetensors (" in line and "bfloat16" in line
    assert "the source's shard layout" in line
    assert main(["export", str(qwen2_dir), "--to-hf", str(tmp_path / "b"), "--max-shard-size", "20KB"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "model-00001-of-" in line and "float32" in line and "at most 20KB" in line


@pytest.mark.parametrize("size", ["0", "-1GB", "lots", "5XB"])
def test_bad_max_shard_size_is_one_line_exit_2(qwen2_dir, tmp_path, capsys, size):
    assert main(["export", str(qwen2_dir), "--to-hf", str(tmp_path / "o"), f"--max-shard-size={size}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-shard-size" in err and repr(size) in err
    assert list(tmp_path.iterdir()) == []


def test_prompt_that_encodes_to_nothing_is_one_line_exit_2(tmp_path, capsys):
    from esjax.testing import build_word_tokenizer, make_tiny_hf_model
    source = make_tiny_hf_model("qwen2", tmp_path / "m", with_tokenizer=False)
    build_word_tokenizer(source, ["<eos>", "<pad>", "hello"])
    # transformers rebuilds a qwen2 model's tokenizer from the model type: this word-level one then encodes to []
    assert main(["convert", "--from-hf", str(source), "--out", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()
    for model in (source, tmp_path / "ckpt"):
        assert main(["generate", "--model", str(model), "--prompt", "hello", "--max-new-tokens", "2"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert "--prompt 'hello' encodes to no tokens" in captured.err and "Qwen2Tokenizer" in captured.err
    assert main(["eval", "--model", str(source), "--task", "countdown_procedural", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'countdown_procedural': prompt 0 encodes to no tokens" in err, err


NOISY = """
import logging, sys
from esjax.cli.quiet import quiet_libraries
quiet_libraries(verbose=len(sys.argv) > 1)
logging.getLogger("absl").warning("absl-noise")
class Leaky:
    def __del__(self):
        raise RuntimeError("unraisable-noise")
Leaky()
import transformers.utils.logging as tl
tl.get_logger("transformers").warning_advice("transformers-advice")
print("esjax-output")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_noise_stays_off_the_terminal_unless_verbose(verbose):
    """absl warnings, transformers' advice ("PyTorch was not found" is one) and "Exception ignored" reports are
    dropped; --verbose (here: an argument) keeps them; esjax's own output is untouched either way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_", "ESJAX_VERBOSE"))}
    proc = subprocess.run([sys.executable, "-c", NOISY, *(["-v"] if verbose else [])], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout == "esjax-output\n", proc.stderr
    for noise in ("absl-noise", "unraisable-noise", "transformers-advice"):
        assert (noise in proc.stderr) == verbose, (noise, proc.stderr)

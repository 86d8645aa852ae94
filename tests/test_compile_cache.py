"""XLA's persistent compilation cache: where it goes, how to switch it off, and a second process reusing it."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from esjax.common.compile_cache import ENV_VAR, cache_dir, default_cache_dir, enable_compilation_cache

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("jax_compilation_cache_dir", "jax_enable_compilation_cache")


@pytest.fixture
def jax_cache_config():
    """No cache folder set in JAX's own config during the test; restored afterwards."""
    saved = {name: getattr(jax.config, name) for name in CONFIGS}
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_cache_dir_resolution_order(monkeypatch, tmp_path, jax_cache_config):
    """The setting beats the environment variable, which beats the XDG default; "off" in either disables."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "esjax" / "xla" == cache_dir()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "setting") == tmp_path / "setting"
    assert cache_dir("off") is None and cache_dir("0") is None
    monkeypatch.setenv(ENV_VAR, "OFF")
    assert cache_dir() is None and cache_dir(tmp_path / "setting") == tmp_path / "setting"


def test_a_folder_that_cannot_be_made_is_a_user_error_but_a_default_one_is_skipped(monkeypatch, tmp_path,
                                                                                    jax_cache_config):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        enable_compilation_cache(blocker / "xla")
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert enable_compilation_cache() is None and not jax.config.jax_enable_compilation_cache


def _generate(model_dir: Path, cache: str) -> subprocess.CompletedProcess:
    env = {**os.environ, ENV_VAR: cache, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "esjax.cli", "generate", "--model", str(model_dir), "--prompt",
                           "hello", "--max-new-tokens", "4", "--greedy"], env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_second_process_compiles_nothing_new(qwen2_dir, tmp_path):
    """`esjax generate` twice: the first process writes every program it compiles, the second finds them all (it
    adds no entry) and prints the same text."""
    cache = tmp_path / "xla"
    first = _generate(qwen2_dir, str(cache))
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in cache.glob("*-cache"))
    assert any(name.startswith("jit_generate") for name in entries), entries
    second = _generate(qwen2_dir, str(cache))
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in cache.glob("*-cache")) == entries
    assert second.stdout == first.stdout


def test_the_cli_refuses_a_cache_folder_it_cannot_create(qwen2_dir, tmp_path):
    (tmp_path / "file").write_text("")
    result = _generate(qwen2_dir, str(tmp_path / "file" / "xla"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "xla" in result.stderr

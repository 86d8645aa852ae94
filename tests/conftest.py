"""Shared fixtures: tiny random HF models built locally with transformers (no downloads)."""

import os
import textwrap
from pathlib import Path

# 8 simulated CPU devices; less LLVM optimisation: tiny test programs compile ~3x faster, same semantics
TEST_XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the CLI turns on XLA's persistent cache in ~/.cache: tests never write there (tests/test_compile_cache.py sets tmp dirs)
os.environ["ESJAX_COMPILATION_CACHE"] = "off"

import jax  # noqa: E402

import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def countdown_paper_file():
    """The ES paper's countdown.json (2,200 rows) where this machine has it beside the repo; else the test skips."""
    path = SHARED_DATA / "countdown_paper.json"
    if not path.is_file():
        pytest.skip(f"the ES paper's countdown.json is not at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """{family: path} of tiny random fp32 HF models (qwen2, llama, qwen3) with a byte-level tokenizer."""
    from esjax.testing import TINY_FAMILIES, make_tiny_hf_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {f: make_tiny_hf_model(f, root / f, seed=i) for i, f in enumerate(TINY_FAMILIES)}


@pytest.fixture(scope="session")
def qwen2_dir(tiny_model_dirs):
    return tiny_model_dirs["qwen2"]


@pytest.fixture
def exploding_task(tmp_path):
    """``make(name) -> path``: a task file registering ``name``, a task whose reward raises ZeroDivisionError."""
    def make(name):
        path = tmp_path / f"{name}_task.py"
        path.write_text(textwrap.dedent(f"""
            from esjax.tasks import register
            from esjax.tasks.conciseness import ConcisenessTask

            @register("{name}", replace=True)
            class Exploding(ConcisenessTask):
                def reward(self, completion, example, truncated=False):
                    raise ZeroDivisionError("boom")
        """))
        return path
    return make

"""The embedded default model: a tiny Qwen2 trained from scratch on procedural Countdown, shipped in the package.

Built by ``scripts/make_tiny_base.py``; ``esjax_base.json`` beside the weights records how (training options,
the task options, time) and its greedy base accuracy on a fixed held-out set (``embedded_eval_settings()``)::

    model = load_embedded()
    task = embedded_task()                      # the generator options the model was trained on (seed 0)
    settings = embedded_eval_settings()         # {"split": "test", "size": 200, "max_new_tokens": 24, ...}
    result = evaluate_greedy(model.config, model.params, tokenizer, task, eval_examples(task, settings),
                             settings["max_new_tokens"], settings["batch_size"])
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_countdown"
BASE_FILE = "esjax_base.json"


@lru_cache(maxsize=1)
def _info(model_dir: Path = EMBEDDED_MODEL_DIR) -> dict[str, Any]:
    return json.loads((Path(model_dir) / BASE_FILE).read_text())


def embedded_info() -> dict[str, Any]:
    """The contents of ``esjax_base.json`` (a copy)."""
    return json.loads(json.dumps(_info()))


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def embedded_task(**overrides: Any):
    """The task the embedded model was trained on: same generator options and prompt style; ``seed`` 0 (its
    training data came from another seed of the same generator, see ``esjax_base.json``); ``overrides`` win."""
    from esjax import tasks

    spec = _info()["task"]
    return tasks.get(spec["name"], **{**_tuples(spec["options"]), **overrides})


def embedded_eval_settings() -> dict[str, Any]:
    """How the recorded base accuracy was measured: ``split``, ``size`` (the first ``size`` problems of that split of
    ``embedded_task()``), ``max_new_tokens``, ``temperature`` (0: greedy), ``batch_size``."""
    return dict(_info()["eval"]["settings"])


def load_embedded(dtype: Any = None):
    """The embedded model as a :class:`esjax.models.LoadedModel` (float32 as stored unless ``dtype``)."""
    from esjax.models import load_model

    return load_model(EMBEDDED_MODEL_DIR, dtype=dtype)


def eval_examples(task: Any = None, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The fixed held-out set: the first ``settings["size"]`` problems of split ``settings["split"]``."""
    settings = settings or embedded_eval_settings()
    task = task if task is not None else embedded_task()
    return task.generate(settings["size"], settings["split"])


def evaluate_greedy(config: Any, params: Any, tokenizer: Any, task: Any, examples: Sequence[dict[str, Any]],
                    max_new_tokens: int, batch_size: int = 200) -> dict[str, Any]:
    """Greedy accuracy and mean reward of ``params`` on ``examples`` (:func:`esjax.run.evaluate.evaluate`) as a dict:
    {"accuracy", "mean_reward", "mean_format", "truncated", "n", "completions"}."""
    from esjax.run.evaluate import PromptSet, evaluate
    from esjax.generation.inference import sampling_for

    sampling = sampling_for(config, tokenizer, max_new_tokens=max_new_tokens)
    result = evaluate(config, params, tokenizer, task, PromptSet(task, tokenizer, examples, sampling.pad_token_id),
                      sampling, batch_size)
    return {"accuracy": result.accuracy, "mean_reward": result.mean_reward,
            "mean_format": result.mean_parts.get("format", 0.0), "truncated": result.truncated,
            "n": result.num_examples, "completions": result.texts}

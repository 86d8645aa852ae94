"""Conciseness (the ES paper): reward = -|len(completion) - len(target)| in characters.

Raw-text prompts (no chat template), as in the paper. The paper's script measured the decoded prompt +
completion; esjax measures the completion, or, with ``paper_script=True``, ``len(prompt + completion)`` as the
script did (to reproduce its numbers exactly). Train: the paper's two prompts ("Solve: 3 + 5 =" -> "8",
"If all birds can fly and penguins are birds, can penguins fly?" -> "No"); test: 20 short factual prompts
with short targets written for esjax. Rows: ``prompt``, ``target``.

For reports, ``parts["normalized"] = max(0, 1 - |dl| / max(len(target), scale))`` with ``scale = 10``
characters: 1 for an exact length match, 0 once the length is off by ``max(len(target), 10)`` or more.
Accuracy (``is_correct``, ``parts["answer"]``): ``normalized >= threshold`` with ``threshold = 1.0`` by default,
i.e. an exact length match. Truncation is ignored by default (``truncated_reward=None``): a truncated
completion is long, and its length is the signal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from esjax.tasks.base import Example, register
from esjax.tasks.io import FileTask, require_str


@register("conciseness")
class ConcisenessTask(FileTask):
    """Options: ``scale`` (10), ``threshold`` (1.0), ``paper_script`` (False: measure the completion; True: the
    prompt + completion, as the paper's script did), and the data options of ``FileTask``."""

    name = "conciseness"
    reward_range = (-math.inf, 0.0)
    part_names = ("answer", "length_diff", "normalized")

    def __init__(self, path: str | Path | None = None, *, scale: float = 10.0, threshold: float = 1.0,
                 truncated_reward: float | None = None, paper_script: bool = False, **options: Any):
        if not scale > 0 or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"need scale > 0 and 0 <= threshold <= 1, got {scale!r}, {threshold!r}")
        if not isinstance(paper_script, bool):
            raise ValueError(f"paper_script must be true or false, got {paper_script!r}")
        self.paper_script = paper_script
        self.scale, self.threshold = float(scale), float(threshold)
        super().__init__(path, truncated_reward=truncated_reward, **options)

    @staticmethod
    def validate_row(row: dict[str, Any]) -> dict[str, Any]:
        require_str(row, "prompt")
        require_str(row, "target")
        return row

    def prompt(self, example: Example) -> str:
        return example["prompt"]

    def score(self, completion: str, example: Example) -> tuple[float, dict[str, float]]:
        target = example["target"]
        scored = example["prompt"] + completion if self.paper_script else completion
        diff = abs(len(scored) - len(target))
        normalized = max(0.0, 1.0 - diff / max(len(target), self.scale))
        correct = float(normalized >= self.threshold)
        return -float(diff), {"answer": correct, "length_diff": float(diff), "normalized": normalized}

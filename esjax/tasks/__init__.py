"""Tasks: data splits, prompts and rewards shared by ES, GRPO and evaluation.

    task = esjax.tasks.get("countdown_procedural", seed=0, prompt_style="short")
    example = task.split("train")[0]
    text = task.render_prompt(example, tokenizer)           # raw text, or the chat template applied
    reward, parts = task.reward(completion, example, truncated=False)
    task.is_correct(completion, example)                    # the accuracy notion

Built-in tasks: countdown, countdown_procedural, countdown_boxed, math, chemistry_mcq, boolq, conciseness.
Your own: a .py file that subclasses ``Task`` and decorates it with ``@esjax.tasks.register("name")``, loaded
with ``load_task_file(path)`` or named as ``get("path/to/file.py:name")``.
"""

from esjax.tasks.arithmetic import number_literals, safe_eval
from esjax.tasks.base import (Example, Task, TaskDataError, UnknownTaskError, get, load_task_file, names,
                              register)
from esjax.tasks.boxed import last_boxed
from esjax.tasks.io import FileTask, data_path, load_records
from esjax.tasks.math_equality import math_equal, normalize_math

# importing the task modules registers the built-in tasks
from esjax.tasks import (boolq, conciseness, countdown, countdown_boxed,  # noqa: E402,F401  isort: skip
                         math_task, mcq, procedural)
from esjax.tasks.countdown import countdown_reward  # noqa: E402

__all__ = [
    "Example", "FileTask", "Task", "TaskDataError", "UnknownTaskError", "countdown_reward", "data_path", "get",
    "last_boxed", "load_records", "load_task_file", "math_equal", "names", "normalize_math", "number_literals",
    "register", "safe_eval",
]

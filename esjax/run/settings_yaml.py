"""Settings as text: the YAML loader (``1e-3`` is a float), ``--set a.b=value`` overrides, and the errors a bad
setting raises (one line naming the key and the file)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from esjax.common.errors import EsjaxError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; hyperparameters are written that way, so accept it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


class SettingsError(EsjaxError, ValueError):
    """A bad setting; the message names the key (and the file)."""


class FieldError(SettingsError):
    """A settings field out of its range; :func:`from_dict` adds the file and the key's full name."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"'{field}' {problem}")
        self.field, self.problem = field, problem


MAX_DEPTH = 64  # settings nest a few levels; deeper is not a config (and would recurse in every reader)


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """YAML text -> Python; a syntax error is a one-line SettingsError ``where:line:column: problem``, and so is
    nesting deeper than ``MAX_DEPTH`` levels (a value that contains itself through an alias included)."""
    try:
        value = yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise SettingsError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise SettingsError(f"{at}: invalid YAML: {' '.join(str(e.problem or e.context).split())}") from None
    except yaml.YAMLError as e:
        raise SettingsError(f"{where}: invalid YAML: {' '.join(str(e).split())}") from None
    _check_depth(value, where)
    return value


def _check_depth(value: Any, where: str) -> None:
    """SettingsError if lists/mappings nest deeper than MAX_DEPTH (iterative; shared aliases visited once per
    depth, so a self-referencing alias ends at the limit too)."""
    stack, deepest = [(value, 1)], {}
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)) or deepest.get(id(node), 0) >= depth:
            continue
        if depth > MAX_DEPTH:
            raise SettingsError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        deepest[id(node)] = depth
        stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML: numbers, booleans, lists) to a nested dict."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise SettingsError(f"--set {item!r}: expected KEY=VALUE, e.g. train.iterations=10")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:  # absent or null (e.g. a saved "task: null"): a new mapping
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise SettingsError(f"--set {key}: '{part}' is not a mapping")
        node[parts[-1]] = parse_yaml(raw, f"--set {key}") if raw.strip() else None
    return data


MAX_INT = 2 ** 31 - 1  # counts and sizes: JAX indexes with int32; a larger one is a typo, not a run
MAX_SEED = 2 ** 63 - 1  # seeds: the range jax.random.key takes


def check_integers(data: Any, where: str, key: str = "") -> None:
    """SettingsError naming the key of any integer in ``data`` (nested dicts and lists) beyond ``MAX_INT``
    (``MAX_SEED`` for keys ending in ``seed``), or below its negative; before the settings are built, so
    ``es.population_size=1000000000000`` or ``train.iterations=10**30`` never starts a run."""
    stack = [(key, data)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            bound = MAX_SEED if name.endswith("seed") else MAX_INT
            if abs(value) > bound:
                raise SettingsError(f"{where}: '{name}' = {value} is beyond {bound} (2**{bound.bit_length()} - 1)")

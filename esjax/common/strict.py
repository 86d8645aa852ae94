"""Helpers shared by the method configs (ESConfig, GRPOConfig)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def strict_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """``cls(**d)`` for a dataclass, rejecting unknown keys with a ValueError that lists the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} keys {unknown}; valid keys are {sorted(known)}.")
    return cls(**d)

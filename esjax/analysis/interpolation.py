"""Accuracy along lines in parameter space: linear paths between two models, and probes along directions.

    theta(a) = (1 - a) theta_A + a theta_B          a on a grid (extrapolation allowed: a < 0 or a > 1)
    theta(t) = theta_0 + t u                        u a unit update direction, or a random one

Points are built by jitted pytree functions (float32 arithmetic, cast back to theta_A's dtypes) and evaluated
greedily with :func:`esjax.run.evaluate.evaluate`; every point shares one compiled generation program.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from esjax.common.errors import InputError
from esjax.run.evaluate import EvalResult, PromptSet, evaluate
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params
from esjax.generation.sampling import SamplingConfig

Array = jax.Array


@jax.jit
def lerp(theta_a: Params, theta_b: Params, a: Array) -> Params:
    """``(1 - a) theta_a + a theta_b`` per leaf, in float32, in theta_a's dtypes (exactly theta_a at a = 0)."""
    a = jnp.asarray(a, jnp.float32)
    return jax.tree.map(lambda x, y: ((1 - a) * x.astype(jnp.float32) + a * y.astype(jnp.float32)).astype(x.dtype),
                        theta_a, theta_b)


@jax.jit
def along(theta0: Params, direction: Params, t: Array) -> Params:
    """``theta0 + t * direction`` per leaf, in float32, in theta0's dtypes."""
    t = jnp.asarray(t, jnp.float32)
    return jax.tree.map(lambda x, u: (x.astype(jnp.float32) + t * u).astype(x.dtype), theta0, direction)


@jax.jit
def unit_direction(base: Params, model: Params) -> Params:
    """``(model - base) / ||model - base||`` as a float32 pytree (zeros for a zero update)."""
    delta = jax.tree.map(lambda m, b: m.astype(jnp.float32) - b.astype(jnp.float32), model, base)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(d)) for d in jax.tree.leaves(delta)))
    return jax.tree.map(lambda d: d / jnp.where(norm > 0, norm, 1.0), delta)


@jax.jit
def random_unit_direction(key: Array, base: Params, model: Params) -> Params:
    """A random float32 unit direction with the update's per-leaf norm profile: leaf l is Gaussian noise scaled to
    ``||delta_l|| / ||delta||`` (so leaves the update leaves untouched stay untouched)."""
    u = unit_direction(base, model)
    leaves, tree = jax.tree.flatten(u)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, leaf in zip(keys, leaves):
        g = jax.random.normal(k, leaf.shape, jnp.float32)
        out.append(g * jnp.linalg.norm(leaf.ravel()) / jnp.maximum(jnp.linalg.norm(g.ravel()), 1e-30))
    return jax.tree.unflatten(tree, out)


def curve(config: ModelConfig, tokenizer: Any, task: Any, prompts: PromptSet, sampling: SamplingConfig,
          params_at: Callable[[float], Params], points: Iterable[float], batch_size: int = 256,
          known: dict[float, EvalResult] | None = None, progress: Any = None) -> list[dict[str, float]]:
    """Greedy accuracy and mean reward at each point ``x`` of ``params_at(x)``:
    ``[{"x", "accuracy", "mean_reward"}, ...]``. ``known`` maps points to results already computed (endpoints);
    ``progress`` (tqdm-like) is advanced by one per point."""
    out = []
    for x in points:
        x = float(x)
        result = (known or {}).get(x) or evaluate(config, params_at(x), tokenizer, task, prompts, sampling, batch_size)
        out.append({"x": x, "accuracy": result.accuracy, "mean_reward": result.mean_reward})
        if progress is not None:
            progress.update(1)
    return out


def barrier(points: Sequence[dict[str, float]], key: str = "accuracy") -> float | None:
    """Largest drop of ``key`` below the straight line between the endpoints a = 0 and a = 1, over interior grid
    points (0 when the path never dips below it; None when the grid lacks an endpoint)."""
    by_x = {p["x"]: p[key] for p in points}
    if 0.0 not in by_x or 1.0 not in by_x:
        return None
    inner = [(x, v) for x, v in by_x.items() if 0.0 < x < 1.0]
    return max([0.0] + [(1 - x) * by_x[0.0] + x * by_x[1.0] - v for x, v in inner])


MAX_GRID_POINTS = 1000  # every point is a full evaluation


def parse_grid(spec: str | Sequence[float] | None, default: Sequence[float], name: str = "grid") -> list[float]:
    """A grid from ``"start:stop:num"`` (inclusive linspace) or ``"x1,x2,..."``; None -> ``default``. ``name``
    (the flag) starts error messages."""
    if spec is None:
        return [float(x) for x in default]
    if not isinstance(spec, str):
        return [float(x) for x in spec]
    try:
        if ":" in spec:
            start, stop, num = spec.split(":")
            if not 2 <= int(num) <= MAX_GRID_POINTS:
                raise ValueError
            values = [round(float(x), 10) for x in np.linspace(float(start), float(stop), int(num))]
        else:
            values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{name} {spec!r}: expected START:STOP:NUM (2 <= NUM <= {MAX_GRID_POINTS}) or a "
                         f"comma-separated list") from None
    if not values or len(values) > MAX_GRID_POINTS or not all(math.isfinite(v) for v in values):
        raise InputError(f"{name} {spec!r}: expected 1 to {MAX_GRID_POINTS} finite points")
    return values

"""Population rollouts: every member's perturbed model generates for the same prompts, spread over a device mesh.

Each device evaluates its slice of the global member ids inside ``shard_map``: full-rank members are perturbed
copies of the weights, evaluated ``population_chunk`` at a time (``lax.map`` over chunks, ``vmap`` within), on
``prompt_chunk`` prompts at a time (``lax.map`` again: the KV cache of a large model over hundreds of prompts);
low-rank members share the weights and run as one batched forward with per-member factors (EGGROLL). Noise is
regenerated from (run key, iteration, member id, leaf path), so nothing but prompts goes in and only the
generated tokens of each device's own members come out; the update later needs just the N fitness values.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from esjax.common.errors import InputError
from esjax.distributed.mesh import MODEL_AXIS, POPULATION_AXIS
from esjax.es.config import ESConfig
from esjax.common.memory import kv_bytes_per_token
from esjax.es.noise import FROZEN, FULL, leaf_paths, leaf_plan, lowrank_perturb, perturb
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params
from esjax.common.layers import is_stacked_path, stack_layers
from esjax.generation.sampling import GenerateOutput, Population, SamplingConfig, generate

Array = jax.Array
# Members decoded at once on one device ("auto" population_chunk): on CPU, host memory has no XLA limit to read, so
# the perturbed copies are kept to about 1 GiB; on an accelerator they may use this share of the memory the device
# reports, the rest staying free for XLA's temporaries (activations, logits) and fragmentation.
CPU_MEMBER_BYTES = 1 << 30
ACCELERATOR_MEMORY_SHARE = 0.8


def _strip_none(tree: Any) -> Any:
    """Drop None entries from nested dicts (the decoder's "lowrank" collection holds only matrices)."""
    if isinstance(tree, dict):
        kept = {k: _strip_none(v) for k, v in tree.items() if v is not None}
        return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}
    return tree


def population_params(es: ESConfig, params: Params, run_key: Array, iteration: Array,
                      members: Array) -> tuple[Params, Params | None, Population]:
    """Perturbed params (and low-rank factors) of ``members`` (int32 [M]) with a member axis only on the leaves
    that differ between members: full rank copies every trained leaf; low rank shares every matrix and stacks just
    the factors and the perturbed non-matrix leaves. Frozen leaves are never copied.

    ``params`` may be the layer-stacked view (:mod:`esjax.common.layers`): its stacked leaves get the member axis
    second, [L, M, ...], so that the decoder's scan over layers slices them without moving the member axis.

    Members are built one at a time (a ``fori_loop`` writing each into the stacked buffers), each leaf's noise drawn
    once and added in the same loop: no noise temporaries beyond one member's, and nothing that XLA could fuse into
    the decoder's consumers and so regenerate per token (with ``vmap`` a profile showed each bias's noise redrawn
    for every prompt position of the prefill, and the embedding's for every gathered token)."""
    plan = leaf_plan(es, params)
    leaves, paths = jax.tree.leaves(params), leaf_paths(params)
    if es.noise == "full":
        trained = [k != FROZEN for k in plan.kinds]
        built = iter(_by_member(members, lambda m: [x for x, t in zip(jax.tree.leaves(
            perturb(es, params, run_key, iteration, m)), trained) if t], [_member_axis(p) for p, t in
                                                                          zip(paths, trained) if t]))
        stacked = jax.tree.unflatten(plan.treedef, [next(built) if t else p for p, t in zip(leaves, trained)])
        axes = jax.tree.unflatten(plan.treedef, [_member_axis(p) if t else None for p, t in zip(paths, trained)])
        return stacked, None, Population(members.shape[0], axes)
    full = [k == FULL for k in plan.kinds]

    def member(m):
        dense, lowrank = lowrank_perturb(es, params, run_key, iteration, m)
        return [x for x, f in zip(jax.tree.leaves(dense), full) if f], _strip_none(lowrank)
    factor_shapes = jax.eval_shape(member, members[0])[1]
    factor_axes = jax.tree.unflatten(jax.tree.structure(factor_shapes),
                                     [_member_axis(p) for p in leaf_paths(factor_shapes)])
    dense_built, factors = _by_member(members, member,
                                      ([_member_axis(p) for p, f in zip(paths, full) if f], factor_axes))
    dense_built = iter(dense_built)
    dense = jax.tree.unflatten(plan.treedef, [next(dense_built) if f else p for p, f in zip(leaves, full)])
    axes = jax.tree.unflatten(plan.treedef, [_member_axis(p) if f else None for p, f in zip(paths, full)])
    return dense, factors, Population(members.shape[0], axes, factor_axes)


def _member_axis(path: str) -> int:
    """Where a population buffer holds the member axis: second on a layer-stacked leaf, else first."""
    return 1 if is_stacked_path(path) else 0


def _by_member(members: Array, build: Callable[[Array], Any], axes: Any) -> Any:
    """``build(m)`` for each of ``members`` (int32 [M]), written into buffers with the member axis at ``axes`` (a
    tree of ints shaped like ``build``'s output), one member at a time."""
    shapes = jax.eval_shape(build, members[0])
    out = jax.tree.map(lambda s, a: jnp.zeros((*s.shape[:a], members.shape[0], *s.shape[a:]), s.dtype), shapes, axes)

    def body(j, out):
        return jax.tree.map(lambda buf, x, a: jax.lax.dynamic_update_index_in_dim(buf, x, j, a), out,
                            build(members[j]), axes)
    return jax.lax.fori_loop(0, members.shape[0], body, out)


def member_row_keys(sample_key: Array, members: Array, batch: int) -> Array:
    """One sampling key per (member, prompt) row, member-major [M * B]: independent of the device split."""
    keys = jax.vmap(lambda m: jax.vmap(lambda b: jax.random.fold_in(jax.random.fold_in(sample_key, m), b))(
        jnp.arange(batch)))(members)
    return keys.reshape(-1)


def rollout_members(es: ESConfig, model: ModelConfig, sampling: SamplingConfig, params: Params, run_key: Array,
                    iteration: Array, tokens: Array, mask: Array, sample_key: Array, members: Array) -> GenerateOutput:
    """Generations of ``members`` (int32 [M]) for the B prompts -> [M, B, ...] outputs.

    The members' weights are built once; the prompts are decoded ``es.prompt_chunk`` at a time (``lax.map``,
    M x chunk rows per batched decode, bounding the KV cache) or all at once (None). Row keys do not depend on
    the chunking, so outputs are the same either way.
    """
    m, b = members.shape[0], tokens.shape[0]
    view = stack_layers(params) if model.scan_layers else params  # fuses into the perturbed copies (full rank)
    stacked, lowrank, population = population_params(es, view, run_key, iteration, members)
    keys = member_row_keys(sample_key, members, b).reshape(m, b)

    def decode(tok, msk, row_keys):  # [c, P], [c, P], [M, c] -> outputs [M, c, ...]
        c = tok.shape[0]
        rows = lambda x: jnp.tile(x, (m, 1))  # noqa: E731
        out = generate(model, stacked, rows(tok), rows(msk), row_keys.reshape(-1), sampling, lowrank=lowrank,
                       compute_dtype=jax.tree.leaves(params)[0].dtype, population=population)
        return jax.tree.map(lambda x: x.reshape(m, c, *x.shape[1:]), out)

    c = es.prompt_chunk or b
    if c >= b:
        return decode(tokens, mask, keys)
    if b % c:
        raise InputError(f"prompt_chunk={c} must divide the {b} prompts of an iteration")
    split = lambda x: x.reshape(b // c, c, *x.shape[1:])  # noqa: E731
    chunk_keys = jnp.swapaxes(keys.reshape(m, b // c, c), 0, 1)  # [b / c, M, c]
    out = jax.lax.map(lambda a: decode(*a), (split(tokens), split(mask), chunk_keys))
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(m, b, *x.shape[3:]), out)


def local_chunk(es: ESConfig, local_members: int, param_bytes: int, member_bytes: int) -> int:
    """Members evaluated at once on one device: all of them for low rank; ``population_chunk`` or a memory fit."""
    if es.noise == "lowrank":
        return local_members
    if es.population_chunk != "auto":
        return max(1, min(int(es.population_chunk), local_members))
    divisors = [c for c in range(local_members, 0, -1) if local_members % c == 0]
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:  # CPU: host memory
        fits = CPU_MEMBER_BYTES // max(1, param_bytes)
    else:
        fits = int((ACCELERATOR_MEMORY_SHARE * limit - stats.get("bytes_in_use", 0))
                   // max(1, param_bytes + member_bytes))
    return next((c for c in divisors if c <= fits), 1)


def members_at_once(es: ESConfig, model: ModelConfig, max_new_tokens: int, mesh: Mesh, params: Params,
                    batch_shape: tuple[int, int]) -> int:
    """Members one device decodes at once (:func:`local_chunk`) for prompts of ``batch_shape`` = (B, P) on ``mesh``."""
    local = es.population_size // mesh.shape[POPULATION_AXIS]
    model_size = mesh.shape.get(MODEL_AXIS, 1)
    param_bytes = sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)) // model_size
    batch, prompt = batch_shape
    if es.prompt_chunk and batch % es.prompt_chunk:
        raise InputError(f"es.prompt_chunk={es.prompt_chunk} must divide the {batch} prompts of an iteration")
    batch = min(batch, es.prompt_chunk or batch)  # rows of one member in one decode
    itemsize = jnp.dtype(jax.tree.leaves(params)[0].dtype).itemsize
    kv_bytes = batch * (prompt + max_new_tokens) * kv_bytes_per_token(
        model.num_hidden_layers, model.num_key_value_heads, model.head_dim, itemsize)
    return local_chunk(es, local, param_bytes, kv_bytes)


def rollout_population(es: ESConfig, model: ModelConfig, sampling: SamplingConfig, params: Params, run_key: Array,
                       iteration: Array, tokens: Array, mask: Array, sample_key: Array, members: Array,
                       chunk: int) -> GenerateOutput:
    """Generations of ``members`` (int32 [M]), ``chunk`` members per batched decode -> outputs [M, B, ...]."""
    def run(ms):
        return rollout_members(es, model, sampling, params, run_key, iteration, tokens, mask, sample_key, ms)
    m = members.shape[0]
    if chunk >= m:
        return run(members)
    if m % chunk:
        raise InputError(f"population_chunk={chunk} must divide the {m} members of a device")
    out = jax.lax.map(run, members.reshape(m // chunk, chunk))
    return jax.tree.map(lambda x: x.reshape(m, *x.shape[2:]), out)


def population_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) with the population axis."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (POPULATION_AXIS,))


class Rollout(NamedTuple):
    """``fn(params, run_key, iteration, tokens, mask, sample_key) -> GenerateOutput [N, B, ...]`` (jitted), and
    how many members each device evaluates at once."""

    fn: Callable[..., GenerateOutput]
    chunk: int

    def __call__(self, *args) -> GenerateOutput:
        return self.fn(*args)


def make_rollout(es: ESConfig, model: ModelConfig, sampling: SamplingConfig, mesh: Mesh, params: Params,
                 batch_shape: tuple[int, int]) -> Rollout:
    """Build the population rollout for prompts of ``batch_shape`` = (B, P) on ``mesh``.

    Members are split evenly over the mesh's population axis (``es.check_devices`` checks divisibility); the output
    stays sharded along members, so each process reads back only the completions of its own devices' members.
    A ``model`` axis, if the mesh has one, is left to the compiler: ``shard_map`` is manual over the population
    axis only (``axis_names``), so inside a member group the params keep their model sharding (tensor parallel,
    see :mod:`esjax.models.sharding`) and each population shard's decode loop still stops on its own.
    """
    n_dev = mesh.shape[POPULATION_AXIS]
    es.check_devices(n_dev)
    local = es.population_size // n_dev
    chunk = members_at_once(es, model, sampling.max_new_tokens, mesh, params, batch_shape)

    def body(params, run_key, iteration, tokens, mask, sample_key):
        # this device's global member ids (no array is closed over: fine on a multi-process mesh)
        members = jax.lax.axis_index(POPULATION_AXIS) * local + jnp.arange(local, dtype=jnp.int32)
        return rollout_population(es, model, sampling, params, run_key, iteration, tokens, mask, sample_key,
                                  members, chunk)

    rollout = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=P(POPULATION_AXIS), check_vma=False,
                                    axis_names={POPULATION_AXIS}))

    return Rollout(rollout, chunk)

"""Population rollouts: every member's perturbed model generates for the same prompts, spread over a device mesh.

Each device evaluates its slice of the global member ids inside ``shard_map``: full-rank members are perturbed
copies of the weights, evaluated ``population_chunk`` at a time (``lax.map`` over chunks, ``vmap`` within);
low-rank members share the weights and run as one batched forward with per-member factors (EGGROLL). Noise is
regenerated from (run key, iteration, member id, leaf path), so nothing but prompts goes in and only the
generated tokens of each device's own members come out; the update later needs just the N fitness values.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from esjax.es.config import ESConfig
from esjax.es.noise import lowrank_perturb, perturb
from esjax.models.config import ModelConfig
from esjax.models.decoder import Params
from esjax.sampling import GenerateOutput, SamplingConfig, generate

Array = jax.Array
POPULATION_AXIS = "population"


def _strip_none(tree: Any) -> Any:
    """Drop None entries from nested dicts (the decoder's "lowrank" collection holds only matrices)."""
    if isinstance(tree, dict):
        kept = {k: _strip_none(v) for k, v in tree.items() if v is not None}
        return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}
    return tree


def member_rollout(es: ESConfig, model: ModelConfig, sampling: SamplingConfig, params: Params, run_key: Array,
                   iteration: Array, tokens: Array, mask: Array, sample_key: Array, member: Array) -> GenerateOutput:
    """One member's generation (vmap over ``member`` to run many): tokens [B, T] etc. for prompts [B, P]."""
    key = jax.random.fold_in(sample_key, member)
    if es.noise == "lowrank":
        dense, lowrank = lowrank_perturb(es, params, run_key, iteration, member)
        return generate(model, dense, tokens, mask, key, sampling, lowrank=_strip_none(lowrank),
                        compute_dtype=jax.tree.leaves(params)[0].dtype)
    return generate(model, perturb(es, params, run_key, iteration, member), tokens, mask, key, sampling)


def local_chunk(es: ESConfig, local_members: int, param_bytes: int, member_bytes: int) -> int:
    """Members evaluated at once on one device: all of them for low rank; ``population_chunk`` or a memory fit."""
    if es.noise == "lowrank":
        return local_members
    if es.population_chunk != "auto":
        return max(1, min(int(es.population_chunk), local_members))
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:  # CPU: host memory; keep perturbed copies to ~1 GiB
        return max(1, min(local_members, (1 << 30) // max(1, param_bytes)))
    free = 0.8 * limit - stats.get("bytes_in_use", 0)
    return max(1, min(local_members, int(free // max(1, param_bytes + member_bytes))))


def rollout_population(es: ESConfig, model: ModelConfig, sampling: SamplingConfig, params: Params, run_key: Array,
                       iteration: Array, tokens: Array, mask: Array, sample_key: Array, members: Array,
                       chunk: int) -> GenerateOutput:
    """Generations of ``members`` (int32 [M]) -> GenerateOutput with a leading member axis [M, B, ...]."""
    def one(member):
        return member_rollout(es, model, sampling, params, run_key, iteration, tokens, mask, sample_key, member)
    if chunk >= members.shape[0]:
        return jax.vmap(one)(members)
    return jax.lax.map(one, members, batch_size=chunk)


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

    Members are split evenly over the mesh's population axis (``es.validate`` checks divisibility); the output
    stays sharded along members, so each process reads back only the completions of its own devices' members.
    """
    n_dev = mesh.shape[POPULATION_AXIS]
    es.validate(n_dev)
    local = es.population_size // n_dev
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    batch, prompt = batch_shape
    kv_bytes = (2 * model.num_hidden_layers * model.num_key_value_heads * model.head_dim
                * jnp.dtype(jax.tree.leaves(params)[0].dtype).itemsize * batch * (prompt + sampling.max_new_tokens))
    chunk = local_chunk(es, local, param_bytes, kv_bytes)

    def body(params, run_key, iteration, tokens, mask, sample_key, members):
        return rollout_population(es, model, sampling, params, run_key, iteration, tokens, mask, sample_key,
                                  members, chunk)

    sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(), P(), P(), P(), P(POPULATION_AXIS)),
                            out_specs=P(POPULATION_AXIS), check_vma=False)
    members = jax.device_put(jnp.arange(es.population_size, dtype=jnp.int32),
                             NamedSharding(mesh, P(POPULATION_AXIS)))

    @jax.jit
    def rollout(params, run_key, iteration, tokens, mask, sample_key):
        return sharded(params, run_key, iteration, tokens, mask, sample_key, members)

    return Rollout(rollout, chunk)

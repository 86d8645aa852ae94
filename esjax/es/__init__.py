"""Evolution Strategies over arbitrary parameter pytrees: config, seed-replayed noise, fitness shaping, update."""

from esjax.es.config import ESConfig
from esjax.es.noise import leaf_paths, lowrank_factors, lowrank_perturb, member_noise, perturb, trainable_mask
from esjax.es.shaping import centered_ranks, shape_fitness, zscore
from esjax.es.update import ESState, apply_update, es_gradient, init_state, make_optimizer, update_state

__all__ = [
    "ESConfig",
    "ESState",
    "apply_update",
    "centered_ranks",
    "es_gradient",
    "init_state",
    "leaf_paths",
    "lowrank_factors",
    "lowrank_perturb",
    "make_optimizer",
    "member_noise",
    "perturb",
    "shape_fitness",
    "trainable_mask",
    "update_state",
    "zscore",
]

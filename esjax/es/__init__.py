"""Evolution Strategies over arbitrary parameter pytrees: ``config`` (ESConfig), ``noise`` (seed-replayed),
``shaping`` and ``update`` (the formulas and the state), ``population`` (the population rollout), ``step``
(rollout, host-side scoring, update: one step, and the :class:`ESMethod` the training loop drives)."""

from esjax.es.config import ESConfig
from esjax.es.noise import leaf_paths, lowrank_factors, lowrank_perturb, member_noise, perturb, trainable_mask
from esjax.es.shaping import centered_ranks, shape_fitness, zscore
from esjax.es.step import ESMethod, ESRunner, es_init, es_step, make_runner
from esjax.es.update import ESState, apply_update, es_gradient, init_state, make_optimizer, update_state

__all__ = [
    "ESConfig",
    "ESMethod",
    "ESRunner",
    "ESState",
    "apply_update",
    "centered_ranks",
    "es_gradient",
    "es_init",
    "es_step",
    "init_state",
    "leaf_paths",
    "lowrank_factors",
    "lowrank_perturb",
    "make_optimizer",
    "make_runner",
    "member_noise",
    "perturb",
    "shape_fitness",
    "trainable_mask",
    "update_state",
    "zscore",
]

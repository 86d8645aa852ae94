"""Models: config from HF ``config.json``, the Flax decoder, HF import/export, esjax checkpoints."""

from esjax.models.config import ModelConfig, ModelConfigError, config_from_hf, load_config
from esjax.models.decoder import (Decoder, forward, forward_jit, hidden_states, init_params, logits_from_hidden,
                                  make_model, param_shapes, positions_from_mask)
from esjax.models.export import describe_hf, save_hf
from esjax.models.hf import CheckpointError, hf_name_map, is_hf_dir, load_hf
from esjax.models.hub import ModelNotFoundError, parse_hub_id, resolve_model_path
from esjax.models.store import LoadedModel, is_esjax_checkpoint, load_model, open_model, save_model

__all__ = [
    "ModelConfig", "ModelConfigError", "config_from_hf", "load_config", "Decoder", "forward", "forward_jit",
    "hidden_states", "init_params", "logits_from_hidden", "make_model", "param_shapes", "positions_from_mask",
    "CheckpointError", "hf_name_map", "is_hf_dir", "load_hf", "save_hf", "describe_hf", "LoadedModel",
    "is_esjax_checkpoint", "load_model", "open_model", "save_model", "ModelNotFoundError", "parse_hub_id",
    "resolve_model_path",
]

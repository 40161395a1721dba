"""What peftkit knows about backbones: where the layers are, which ids are special."""

from peftkit.models.backbones import (
    LayerPreHooks,
    backbone_identity,
    check_backbone_identity,
    encoder_layers,
    head_module_names,
    hidden_dropout_prob,
    hidden_size,
    special_token_ids_from_config,
)

__all__ = [
    "LayerPreHooks",
    "backbone_identity",
    "check_backbone_identity",
    "encoder_layers",
    "head_module_names",
    "hidden_dropout_prob",
    "hidden_size",
    "special_token_ids_from_config",
]

"""What peftkit knows about backbones: where the layers are, which ids are special."""

from peftkit.models.backbones import (
    BackboneDropoutOff,
    LayerPreHooks,
    backbone_dropout_sites,
    backbone_identity,
    check_backbone_identity,
    encoder_layers,
    head_module_names,
    hidden_dropout_prob,
    hidden_size,
    special_token_ids_from_config,
)

__all__ = [
    "BackboneDropoutOff",
    "LayerPreHooks",
    "backbone_dropout_sites",
    "backbone_identity",
    "check_backbone_identity",
    "encoder_layers",
    "head_module_names",
    "hidden_dropout_prob",
    "hidden_size",
    "special_token_ids_from_config",
]

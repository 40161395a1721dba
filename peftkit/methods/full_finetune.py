"""Full fine-tuning: every weight trains, the baseline every other method is measured against.

``save_pretrained`` writes whatever requires grad, so here the "adapter" file is the whole
model; weights shared by tying (input/output embeddings) are saved once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from peftkit.errors import MethodConfigError
from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import register_method

BACKBONE_DROPOUT_NOT_FROZEN = (
    "backbone_dropout (the frozen-backbone fast path) does not apply to full fine-tuning: it trains "
    "the backbone, whose dropout then regularises trained weights. Drop the option for --method full, "
    "or use a method that freezes the backbone (pasta, lora, wegeft, bitfit, linear, lora-fusion)."
)


@dataclasses.dataclass
class FullFinetuneConfig(MethodConfig):
    method_name = "full"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FullFinetuneConfig":
        """As MethodConfig's, with a specific refusal of ``backbone_dropout`` (the fast path).

        Raises:
            MethodConfigError: ``backbone_dropout`` given: full fine-tuning trains the backbone."""
        if "backbone_dropout" in values:
            raise MethodConfigError(BACKBONE_DROPOUT_NOT_FROZEN)
        return super().from_dict(values)


class FullFinetuneAdapter(MethodAdapter):
    """Unfreezes the whole model; owns no parameters of its own."""

    mergeable = True  # the trained weights already are the model's
    rewrites_backbone_weights = True

    def __init__(self, model: nn.Module, config: FullFinetuneConfig, tokenizer=None):
        super().__init__(model, config, tokenizer)
        self._unfrozen = [param for param in model.parameters() if not param.requires_grad]
        model.requires_grad_(True)

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def detach(self, model: nn.Module) -> None:
        """Freeze again what was frozen before (the head stays trainable, as PeftModel left it)."""
        for param in self._unfrozen:
            param.requires_grad_(False)
        self._unfrozen = []


register_method(FullFinetuneConfig, FullFinetuneAdapter)

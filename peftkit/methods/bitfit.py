"""BitFit: train only the bias terms (Ben Zaken, Ravfogel, Goldberg, ACL 2022).

Every backbone parameter named ``*.bias`` trains — attention, feed-forward and LayerNorm
biases alike, the paper's "all bias terms" — plus the task head, which ``PeftModel`` already
unfroze. The biases are the backbone's own tensors, changed in place, so a task switch must
rewrite them (``rewrites_backbone_weights``); ``save_pretrained`` writes only them and the head.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from peftkit.errors import MethodConfigError
from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import register_method
from peftkit.models.backbones import backbone


@dataclasses.dataclass
class BitFitConfig(MethodConfig):
    method_name = "bitfit"

    backbone_dropout: bool = True
    """False = the frozen backbone runs without its own dropout (hidden, attention, embeddings): the fast path."""


class BitFitAdapter(MethodAdapter):
    """Unfreezes the backbone's biases; owns no parameters of its own."""

    mergeable = True  # the trained biases already are the backbone's weights
    rewrites_backbone_weights = True

    def __init__(self, model: nn.Module, config: BitFitConfig, tokenizer=None):
        super().__init__(model, config, tokenizer)
        self._biases = [param for name, param in backbone(model).named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
        if not self._biases:
            raise MethodConfigError(
                f"{type(model).__name__} has no bias parameters in its backbone (Llama-style models "
                "use bias-free Linear and RMSNorm layers), so BitFit has nothing to train. Use "
                "another method, e.g. peftkit.WeGeFTConfig() or peft.LoraConfig(...)."
            )
        for bias in self._biases:
            bias.requires_grad_(True)

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def detach(self, model: nn.Module) -> None:
        """Freeze the biases again (their trained values stay: they are the model's)."""
        for bias in self._biases:
            bias.requires_grad_(False)
        self._biases = []


register_method(BitFitConfig, BitFitAdapter)

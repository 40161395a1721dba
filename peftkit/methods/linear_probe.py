"""Linear probe: train the task head only, on the frozen backbone's features.

``PeftModel`` already freezes the backbone and unfreezes the head, so this method only checks
that there is a head to train.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from peftkit.errors import MethodConfigError
from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import register_method
from peftkit.models import head_module_names


@dataclasses.dataclass
class LinearProbeConfig(MethodConfig):
    method_name = "linear"

    backbone_dropout: bool = True
    """False = the frozen backbone runs without its own dropout (hidden, attention, embeddings): the fast path."""


class LinearProbeAdapter(MethodAdapter):
    """No parameters and no hooks: the head is all that trains."""

    mergeable = True  # nothing to fold: the backbone is untouched

    def __init__(self, model: nn.Module, config: LinearProbeConfig, tokenizer=None):
        super().__init__(model, config, tokenizer)
        if not head_module_names(model):
            raise MethodConfigError(
                f"{type(model).__name__} has no task head, so a linear probe has nothing to train. "
                "Load the model with a head, e.g. AutoModelForSequenceClassification (or "
                "AutoModelForTokenClassification / AutoModelForImageClassification)"
                ".from_pretrained(path, num_labels=N), not AutoModel."
            )

    def merge(self, model: nn.Module) -> nn.Module:
        return model


register_method(LinearProbeConfig, LinearProbeAdapter)

"""Activation checkpointing for training: keep only each layer's input, recompute the rest in backward.

It trades about one extra forward per step for the activation memory of every layer. The
model's own (transformers') checkpointing is used where the model supports it; otherwise each
Transformer layer is wrapped with torch's ``checkpoint_wrapper``, as Accelerate/FSDP do. Both
are non-reentrant, and every peftkit method gives the same gradients with and without it
(tests/methods/test_activation_checkpointing.py), so a run's results do not depend on it.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from peftkit.errors import TrainingError, UnsupportedModelError
from peftkit.models import encoder_layers


def enable_activation_checkpointing(model: nn.Module) -> str:
    """Turn activation checkpointing on for ``model`` (a PeftModel, PEFT model or plain
    transformers model); returns how: "transformers" or "checkpoint_wrapper".

    Raises:
        TrainingError: the model has neither transformers' checkpointing nor layers peftkit
            can find to wrap.
    """
    # The innermost transformers model: under PEFT's wrappers its submodules are the real layers.
    transformers_models = [module for module in model.modules() if isinstance(module, PreTrainedModel)]
    if transformers_models and transformers_models[0].supports_gradient_checkpointing:
        transformers_models[0].activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return "transformers"
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    try:
        layers = encoder_layers(transformers_models[0] if transformers_models else model)
    except UnsupportedModelError as error:
        raise TrainingError(
            f"activation checkpointing needs the model's Transformer layers, and {error} "
            "Train without --activation-checkpointing."
        ) from None
    for index, layer in enumerate(layers):
        if not hasattr(layer, "_checkpoint_wrapped_module"):
            layers[index] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return "checkpoint_wrapper"

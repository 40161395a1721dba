"""enable_activation_checkpointing: transformers' checkpointing where it exists, else checkpoint_wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit
from peftkit.errors import TrainingError
from peftkit.models import encoder_layers
from peftkit.training.activation_checkpointing import enable_activation_checkpointing
from tests.tiny_models import make_batch, make_tiny_model, special_ids


def pasta_gradient(model) -> torch.Tensor:
    model.train()
    torch.manual_seed(0)
    model(**make_batch("bert"), labels=torch.tensor([0, 2])).loss.backward()
    return model.adapter.special_token_embeddings.grad


def pasta_model():
    config = peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal")
    return peftkit.get_peft_model(make_tiny_model("bert"), config)


def test_transformers_checkpointing_where_the_model_supports_it():
    model = pasta_model()
    assert enable_activation_checkpointing(model) == "transformers"
    assert all(layer.gradient_checkpointing for layer in encoder_layers(model.base_model))
    torch.testing.assert_close(pasta_gradient(model), pasta_gradient(pasta_model()))


def test_checkpoint_wrapper_on_each_layer_otherwise():
    model = pasta_model()
    model.base_model.supports_gradient_checkpointing = False  # as a model without transformers' support
    assert enable_activation_checkpointing(model) == "checkpoint_wrapper"
    assert all(hasattr(layer, "_checkpoint_wrapped_module") for layer in encoder_layers(model.base_model))
    assert enable_activation_checkpointing(model) == "checkpoint_wrapper"  # twice wraps once
    assert not any(hasattr(layer._checkpoint_wrapped_module, "_checkpoint_wrapped_module")
                   for layer in encoder_layers(model.base_model))
    torch.testing.assert_close(pasta_gradient(model), pasta_gradient(pasta_model()))


def test_a_model_without_layers_is_refused():
    with pytest.raises(TrainingError, match="without --activation-checkpointing"):
        enable_activation_checkpointing(nn.Sequential(nn.Linear(4, 4)))

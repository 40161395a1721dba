"""Activation checkpointing of every kind gives every method the gradients of the run without it.

Kinds: transformers' ``gradient_checkpointing_enable()`` (non-reentrant, its default, and
reentrant) and torch's ``checkpoint_wrapper`` on each layer (what Accelerate/FSDP activation
checkpointing applies), reentrant and non-reentrant, wrapped after the method was attached and
before. Models run in training mode with dropout on: checkpointing replays the RNG, so the
recomputed layers must see the very same masks and modes as the forward.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from transformers import ViTConfig, ViTForImageClassification

import peftkit
from peftkit.models import encoder_layers
from tests.methods.test_lora_fusion import make_pool_lora
from tests.tiny_models import make_batch, make_tiny_model, special_ids

KINDS = ["hf", "hf-reentrant", "wrapper", "wrapper-reentrant", "wrapper-before-attach"]


def wrap_each_layer(model, reentrant: bool) -> None:
    impl = CheckpointImpl.REENTRANT if reentrant else CheckpointImpl.NO_REENTRANT
    layers = set(encoder_layers(model))
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=impl),
        check_fn=lambda module: module in layers,
    )
    assert all(type(layer).__name__ == "CheckpointWrapper" for layer in encoder_layers(model))


def enable(base, kind: str) -> None:
    if kind == "hf":
        base.gradient_checkpointing_enable()
    elif kind == "hf-reentrant":
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    elif kind in ("wrapper", "wrapper-reentrant"):
        wrap_each_layer(base, reentrant=kind == "wrapper-reentrant")


def tiny_vit():
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    return ViTForImageClassification(config)


def text_case(config_fn):
    def build():
        return make_tiny_model("bert"), config_fn()

    inputs = {**make_batch("bert"), "labels": torch.tensor([0, 2])}
    return build, inputs


def method_cases(tmp_path):
    pool = [make_pool_lora(tmp_path / f"lora{k}", seed=k, model=make_tiny_model("bert")) for k in range(2)]
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    vit_inputs = {"pixel_values": images, "labels": torch.tensor([0, 1, 2])}
    return {
        "pasta": text_case(lambda: peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal")),
        "wegeft": text_case(lambda: peftkit.WeGeFTConfig(rank=4)),
        "lora-fusion": text_case(lambda: peftkit.LoraFusionConfig(pool=pool)),
        "bitfit": text_case(lambda: peftkit.BitFitConfig()),
        "full": text_case(lambda: peftkit.FullFinetuneConfig()),
        "linear": text_case(lambda: peftkit.LinearProbeConfig()),
        "vpt-shallow": (lambda: (tiny_vit(), peftkit.VptConfig(num_prompt_tokens=3)), vit_inputs),
        "vpt-deep": (lambda: (tiny_vit(), peftkit.VptConfig(num_prompt_tokens=3, deep=True)), vit_inputs),
    }


def gradients(build, inputs, kind: str | None) -> dict[str, torch.Tensor]:
    base, config = build()
    if kind == "wrapper-before-attach":
        wrap_each_layer(base, reentrant=True)
    model = peftkit.get_peft_model(base, config)
    model.train()
    if kind is not None:
        enable(base, kind)
    torch.manual_seed(0)  # the same dropout masks in every run
    model(**inputs).loss.backward()
    # A layer wrapped before attaching puts the wrapper's attribute into parameter names.
    grads = {name.replace("_checkpoint_wrapped_module.", ""): param.grad
             for name, param in model.named_parameters() if param.requires_grad}
    assert all(grad is not None for grad in grads.values()), [name for name, grad in grads.items() if grad is None]
    return grads


@pytest.mark.parametrize("method", ["pasta", "vpt-shallow", "vpt-deep", "wegeft", "lora-fusion", "bitfit", "full", "linear"])
def test_gradients_equal_the_run_without_checkpointing(method, tmp_path, single_torch_thread):
    build, inputs = method_cases(tmp_path)[method]
    reference = gradients(build, inputs, None)
    assert any(grad.abs().sum() > 0 for grad in reference.values())
    for kind in KINDS:
        checkpointed = gradients(build, inputs, kind)
        assert checkpointed.keys() == reference.keys()
        for name, grad in reference.items():
            torch.testing.assert_close(checkpointed[name], grad, msg=lambda m: f"{kind}, {name}: {m}")


def test_pasta_hooks_follow_a_layer_wrapped_after_attaching():
    base = make_tiny_model("bert")
    model = peftkit.get_peft_model(base, peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal"))
    eager = model(**make_batch("bert")).logits
    wrap_each_layer(base, reentrant=False)
    hooked = [module for module, _ in model.adapter._hooks._handles.values()]
    assert torch.equal(model(**make_batch("bert")).logits, eager)
    # The hooks now sit on the wrappers, outside what a checkpoint recomputes.
    assert [module for module, _ in model.adapter._hooks._handles.values()] == list(encoder_layers(base))
    assert all(type(module).__name__ != "CheckpointWrapper" for module in hooked)


def test_pasta_refuses_clearly_a_checkpointed_region_of_several_layers():
    """Checkpointing the whole encoder recomputes PASTA's layers in backward, after the forward's
    special-token positions are gone: refused with the fix, never silently wrong."""
    base = make_tiny_model("bert")
    model = peftkit.get_peft_model(base, peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal"))
    base.bert.encoder = checkpoint_wrapper(base.bert.encoder, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    model.train()
    loss = model(**make_batch("bert"), labels=torch.tensor([0, 2])).loss
    with pytest.raises(peftkit.errors.SpecialTokenError, match="checkpoint each layer"):
        loss.backward()

"""Linear probe: the head trains, nothing else does."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

import peftkit
from peftkit.errors import MethodConfigError
from peftkit.peft_model import read_adapter_weights
from tests.tiny_models import FAMILY_CONFIGS, make_batch, make_tiny_model


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_only_the_head_trains(family):
    peft_model = peftkit.get_peft_model(make_tiny_model(family), peftkit.LinearProbeConfig())
    head = tuple(f"base_model.{h}." for h in peft_model.head_modules)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(head) for n in trainable)
    assert not list(peft_model.adapter.parameters())

    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        peft_model(**make_batch(family), labels=torch.tensor([0, 2])).loss.backward()
        for name, param in peft_model.named_parameters():
            assert (param.grad is not None) == (name in trainable), name
        optimizer.step()
        optimizer.zero_grad()
    for name, param in peft_model.named_parameters():
        assert torch.equal(param, before[name]) != (name in trainable), name


def test_save_load_gives_identical_logits(tmp_path):
    peft_model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.LinearProbeConfig())
    with torch.no_grad():
        peft_model.base_model.classifier.weight.normal_()
    batch = make_batch("bert")
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)
    assert set(read_adapter_weights(tmp_path)) == {"base_model.classifier.weight", "base_model.classifier.bias"}
    loaded = peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)
    assert isinstance(loaded.peft_config, peftkit.LinearProbeConfig)
    assert torch.equal(loaded(**batch).logits, expected)


def test_bare_backbone_is_rejected():
    bare = AutoModel.from_config(FAMILY_CONFIGS["bert"]())
    with pytest.raises(MethodConfigError, match="AutoModelForSequenceClassification"):
        peftkit.get_peft_model(bare, peftkit.LinearProbeConfig())


def test_registered():
    assert peftkit.get_method("linear").config_class is peftkit.LinearProbeConfig

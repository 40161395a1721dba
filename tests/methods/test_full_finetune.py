"""Full fine-tuning: every weight trains and is saved."""

from __future__ import annotations

import torch

import peftkit

from peftkit.peft_model import read_adapter_weights
from tests.tiny_models import make_batch, make_tiny_model


def train_steps(peft_model, steps: int = 2):
    peft_model.train()
    optimizer = torch.optim.AdamW(peft_model.parameters(), lr=1e-2)
    for _ in range(steps):
        peft_model(**make_batch("bert"), labels=torch.tensor([0, 2])).loss.backward()
        for name, param in peft_model.named_parameters():
            assert param.grad is not None, f"{name} got no gradient"
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


def test_every_weight_trains():
    model = make_tiny_model("bert")
    peft_model = peftkit.get_peft_model(model, peftkit.FullFinetuneConfig())
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert trainable == total == sum(p.numel() for p in model.parameters())
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    train_steps(peft_model)
    layer_weight = "base_model.bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(dict(peft_model.named_parameters())[layer_weight], before[layer_weight])


def test_saves_every_parameter(tmp_path):
    peft_model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.FullFinetuneConfig())
    peft_model.save_pretrained(tmp_path)
    assert set(read_adapter_weights(tmp_path)) == {n for n, _ in peft_model.named_parameters()}


def test_save_load_gives_identical_logits(tmp_path):
    peft_model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.FullFinetuneConfig())
    train_steps(peft_model)
    batch = make_batch("bert")
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)
    assert torch.equal(loaded(**batch).logits, expected)


def test_unload_refreezes_the_backbone():
    model = make_tiny_model("bert")
    peft_model = peftkit.get_peft_model(model, peftkit.FullFinetuneConfig())
    peft_model.unload()
    assert not any(p.requires_grad for p in model.bert.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_registered_and_rewrites_backbone_weights():
    spec = peftkit.get_method("full")
    assert spec.config_class is peftkit.FullFinetuneConfig
    assert spec.adapter_class.rewrites_backbone_weights

"""BitFit: only the backbone's biases (and the task head) train."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

import peftkit
from peftkit.errors import MethodConfigError
from peftkit.peft_model import read_adapter_weights
from tests.tiny_models import make_batch, make_tiny_model



def is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


def train_steps(peft_model, family: str, steps: int = 3):
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        peft_model(**make_batch(family), labels=torch.tensor([0, 2])).loss.backward()
        for name, param in peft_model.named_parameters():
            if name not in trainable:
                assert param.grad is None, f"{name} got a gradient"
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_only_biases_and_head_train(family):
    model = make_tiny_model(family)
    peft_model = peftkit.get_peft_model(model, peftkit.BitFitConfig())
    head = tuple(f"base_model.{h}." for h in peft_model.head_modules)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    backbone = {n for n in trainable if not n.startswith(head)}
    all_backbone_biases = {f"base_model.{model.base_model_prefix}.{n}" for n, _ in model.base_model.named_parameters() if is_bias(n)}
    assert backbone == all_backbone_biases
    assert any("LayerNorm.bias" in n or "layer_norm.bias" in n for n in backbone)  # the paper's "all bias terms"

    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    train_steps(peft_model, family)
    for name, param in peft_model.named_parameters():
        if name in trainable and "attention" in name and "output" not in name:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        if name not in trainable:
            assert torch.equal(param, before[name]), f"frozen weight {name} changed"


def test_parameter_count_is_biases_plus_head():
    model = make_tiny_model("bert")
    biases = sum(p.numel() for n, p in model.base_model.named_parameters() if is_bias(n))
    head = sum(p.numel() for p in model.classifier.parameters())
    peft_model = peftkit.get_peft_model(model, peftkit.BitFitConfig())
    assert peft_model.get_nb_trainable_parameters() == (biases + head, sum(p.numel() for p in model.parameters()))


def test_step_zero_equals_frozen_model():
    batch = make_batch("bert")
    peft_model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.BitFitConfig())
    assert torch.equal(peft_model(**batch).logits, make_tiny_model("bert")(**batch).logits)


def test_saves_only_biases_and_head(tmp_path):
    peft_model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.BitFitConfig())
    train_steps(peft_model, "bert", steps=1)
    peft_model.save_pretrained(tmp_path)
    saved = read_adapter_weights(tmp_path)
    assert saved and all(is_bias(n) or n.startswith("base_model.classifier.") for n in saved)
    assert set(saved) == set(peft_model.trainable_state_dict())


def test_save_load_gives_identical_logits(tmp_path):
    peft_model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.BitFitConfig())
    train_steps(peft_model, "bert")
    batch = make_batch("bert")
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)
    assert torch.equal(loaded(**batch).logits, expected)


def test_unload_freezes_the_biases_again():
    model = make_tiny_model("bert")
    peft_model = peftkit.get_peft_model(model, peftkit.BitFitConfig())
    assert peft_model.unload() is model
    assert not any(p.requires_grad for p in model.base_model.parameters())


def test_model_without_biases_is_rejected():
    torch.manual_seed(0)
    llama = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, num_labels=2,
    ))
    with pytest.raises(MethodConfigError, match="no bias parameters"):
        peftkit.get_peft_model(llama, peftkit.BitFitConfig())


def test_registered_and_rewrites_backbone_weights():
    spec = peftkit.get_method("bitfit")
    assert spec.config_class is peftkit.BitFitConfig
    assert spec.adapter_class.rewrites_backbone_weights

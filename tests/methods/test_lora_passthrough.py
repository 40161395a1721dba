"""LoRA is PEFT's own: peftkit passes peft.LoraConfig straight through and PEFT can read the result."""

from __future__ import annotations

import json

import peft
import pytest
import torch

import peftkit
from tests.tiny_models import make_batch, make_tiny_model


def lora_model():
    config = peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=4, lora_alpha=8)
    return peftkit.get_peft_model(make_tiny_model("bert"), config)


def test_get_peft_model_returns_a_peft_model_training_only_lora_and_head():
    peft_model = lora_model()
    assert isinstance(peft_model, peft.PeftModel)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert all("lora_" in n or ".classifier." in n for n in trainable), trainable

    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        peft_model(**make_batch("bert"), labels=torch.tensor([0, 2])).loss.backward()
        for name, param in peft_model.named_parameters():
            if name not in trainable:
                assert param.grad is None, f"{name} got a gradient"
        optimizer.step()
        optimizer.zero_grad()
    for name, param in peft_model.named_parameters():
        if name not in trainable:
            assert torch.equal(param, before[name]), f"frozen weight {name} changed"
    assert any(not torch.equal(p, before[n]) for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_saved_adapter_loads_in_plain_peft_and_through_peftkit(tmp_path):
    peft_model = lora_model()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                param.normal_()
    peft_model.eval()
    batch = make_batch("bert")
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()

    plain = peft.PeftModel.from_pretrained(make_tiny_model("bert"), str(tmp_path))
    assert torch.equal(plain(**batch).logits, expected)

    routed = peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)
    assert isinstance(routed, peft.PeftModel)
    assert torch.equal(routed(**batch).logits, expected)


def test_a_lora_adapter_for_another_backbone_is_refused_by_name(tmp_path):
    """Plain PEFT loads LoRA onto any backbone whose shapes fit; peftkit records the backbone's
    fingerprint beside PEFT's files (peftkit_options.json) and checks it, as for its own adapters."""
    from peftkit.errors import AdapterMismatchError

    lora_model().save_pretrained(tmp_path)
    assert "fingerprint" in json.loads((tmp_path / "peftkit_options.json").read_text())["base_model_identity"]
    with pytest.raises(AdapterMismatchError, match="made for another backbone: its fingerprint"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert", seed=1), tmp_path)
    peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)  # its own backbone still loads

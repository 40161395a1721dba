"""transformers.Trainer on a peftkit PeftModel, with default TrainingArguments, for every method."""

from __future__ import annotations

import math
import shutil

import peft
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

import peftkit
from peftkit.methods.lora_fusion import LoraFusionConfig
from tests.methods.test_lora_fusion import make_pool_lora
from tests.tiny_models import CLS_ID, SEP_ID, make_tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

VIT_ARCH = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXT_METHODS = ["pasta", "wegeft", "lora-fusion", "bitfit", "linear", "full", "lora"]


def tiny_vit():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**VIT_ARCH, num_labels=3)).eval()


def text_rows(count: int = 16) -> list[dict]:
    """Rows as a tokenized dataset holds them, plus a column the model does not take."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for index in range(count):
        length = 4 + index % 4
        words = torch.randint(5, 100, (length,), generator=generator).tolist()
        input_ids = [CLS_ID, *words, SEP_ID] + [0] * (7 - length)
        attention_mask = [1] * (length + 2) + [0] * (7 - length)
        rows.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": words[0] % 3, "text": "raw"})
    return rows


def image_rows(count: int = 16) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(count, 3, 16, 16, generator=generator)
    return [{"pixel_values": pixels[i].tolist(), "labels": i % 3, "path": f"{i}.png"} for i in range(count)]


def method_config(method: str, tmp_path):
    if method == "lora-fusion":
        pool = [make_pool_lora(tmp_path / f"pool{k}", seed=k, model=make_tiny_model("bert")) for k in range(2)]
        return LoraFusionConfig(pool=pool)
    if method == "lora":
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    options = {"pasta": {"special_token_ids": [CLS_ID, SEP_ID]}, "wegeft": {"rank": 4}}.get(method, {})
    return peftkit.get_method(method).config_class(**options)


def batch_of(rows: list[dict]) -> dict[str, torch.Tensor]:
    keys = [k for k in ("input_ids", "attention_mask", "pixel_values") if k in rows[0]]
    return {k: torch.tensor([row[k] for row in rows]) for k in keys}


@pytest.mark.parametrize("method", [*TEXT_METHODS, "vpt"])
def test_trainer_trains_evaluates_and_saves_a_loadable_adapter(method, tmp_path):
    make_base = tiny_vit if method == "vpt" else make_tiny_model
    rows = image_rows() if method == "vpt" else text_rows()
    config = peftkit.VptConfig(num_prompt_tokens=2) if method == "vpt" else method_config(method, tmp_path)
    model = peftkit.get_peft_model(make_base(), config)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}

    dataset = Dataset.from_list(rows)
    trainer = Trainer(model=model, args=TrainingArguments(str(tmp_path / "run")), train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    metrics = trainer.evaluate()

    assert math.isfinite(metrics["eval_loss"])
    changed = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    assert changed and changed <= trainable  # it trained, and only what the method trains

    trainer.save_model(str(tmp_path / "adapter"))
    saved = {path.name for path in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved and "model.safetensors" not in saved
    loaded = peftkit.PeftModel.from_pretrained(make_base(), tmp_path / "adapter")
    model.eval()
    batch = batch_of(rows[:4])
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("method", ["pasta", "vpt"])
def test_trainer_checkpoints_resume_to_the_uninterrupted_result(method, tmp_path):
    make_base = tiny_vit if method == "vpt" else make_tiny_model
    dataset = Dataset.from_list(image_rows() if method == "vpt" else text_rows())
    config = peftkit.VptConfig(num_prompt_tokens=2, deep=True) if method == "vpt" else method_config(method, tmp_path)

    def run(resume):
        args = TrainingArguments(
            str(tmp_path / "run"), max_steps=4, save_strategy="steps", save_steps=2,
            per_device_train_batch_size=4, learning_rate=1e-2,
        )
        model = peftkit.get_peft_model(make_base(), config)
        Trainer(model=model, args=args, train_dataset=dataset).train(resume_from_checkpoint=resume)
        return model

    uninterrupted = run(None)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt"} <= {p.name for p in checkpoint.iterdir()}
    shutil.rmtree(tmp_path / "run" / "checkpoint-4")  # as if killed after step 3
    resumed = run(True)  # the latest checkpoint left: checkpoint-2
    expected = uninterrupted.trainable_state_dict()
    assert expected and all(torch.equal(param, expected[name]) for name, param in resumed.trainable_state_dict().items())


def test_the_wrappers_forward_signature_is_the_base_models():
    """What tools that keep only the columns a model takes (Trainer, ...) read."""
    import inspect

    text = peftkit.get_peft_model(make_tiny_model("bert"), method_config("pasta", None))
    assert list(inspect.signature(text.forward).parameters) == list(inspect.signature(text.base_model.forward).parameters)
    assert {"input_ids", "attention_mask", "labels"} <= set(inspect.signature(text.forward).parameters)
    image = peftkit.get_peft_model(tiny_vit(), peftkit.VptConfig(num_prompt_tokens=2))
    assert {"pixel_values", "labels"} <= set(inspect.signature(image.forward).parameters)

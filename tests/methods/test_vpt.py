"""VPT on tiny random ViT/DeiT models: prompts in the right place, backbone frozen and in eval."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    BertConfig,
    BertForSequenceClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import peftkit
from peftkit.errors import DataError, MethodConfigError, UnsupportedModelError
from peftkit.methods.vpt import VptConfig
from peftkit.models import encoder_layers

NUM_PATCHES = (16 // 4) ** 2
ARCH = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def tiny_vit(seed: int = 0, **overrides) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**{**ARCH, "num_labels": 3, **overrides})).eval()


def tiny_deit(seed: int = 0) -> DeiTForImageClassificationWithTeacher:
    torch.manual_seed(seed)
    return DeiTForImageClassificationWithTeacher(DeiTConfig(**ARCH, num_labels=3)).eval()


def images(batch: int = 4, channels: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def capture_layer_inputs(model) -> tuple[list[torch.Tensor], list]:
    """Pre-hooks registered after VPT's, so they see each layer's input as VPT left it."""
    seen: list[torch.Tensor] = []

    def capture(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handles = [layer.register_forward_pre_hook(capture, with_kwargs=True) for layer in encoder_layers(model)]
    return seen, handles


def test_vpt_is_registered_and_exported():
    assert peftkit.get_method("vpt").config_class is VptConfig
    assert peftkit.VptConfig is VptConfig
    assert VptConfig().to_dict() == {"num_prompt_tokens": 10, "deep": False, "prompt_dropout": None, "init": "uniform",
                                    "backbone_dropout": False}


@pytest.mark.parametrize("deep", [False, True])
def test_only_prompts_and_head_train_and_backbone_stays_bit_identical(deep):
    model = peftkit.get_peft_model(tiny_vit(), VptConfig(num_prompt_tokens=4, deep=deep))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter.prompt_embeddings", "base_model.classifier.weight", "base_model.classifier.bias"}
    assert model.adapter.prompt_embeddings.shape == (2 if deep else 1, 4, 32)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    prompts_before = model.adapter.prompt_embeddings.detach().clone()

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    labels = torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        loss = model(pixel_values=images(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen[name]), name
    assert not torch.equal(model.adapter.prompt_embeddings, prompts_before)


def test_init_follows_the_official_uniform_bound():
    model = peftkit.get_peft_model(tiny_vit(), VptConfig(num_prompt_tokens=50, deep=True))
    bound = math.sqrt(6.0 / (3 * 4 * 4 + 32))
    prompts = model.adapter.prompt_embeddings
    assert prompts.abs().max() <= bound
    assert prompts.abs().max() > 0.9 * bound  # uniform over the whole interval, not a narrow normal
    assert abs(prompts.std().item() - bound / math.sqrt(3)) < 0.02


@pytest.mark.parametrize("deep", [False, True])
def test_sequence_grows_by_the_prompts_and_head_reads_cls(deep):
    vit = tiny_vit()
    model = peftkit.get_peft_model(vit, VptConfig(num_prompt_tokens=5, deep=deep))
    out = model(pixel_values=images(), output_hidden_states=True)
    assert all(h.shape == (4, 1 + 5 + NUM_PATCHES, 32) for h in out.hidden_states)
    # Head = classifier on the final layernormed [CLS] (position 0), prompts or not.
    with torch.no_grad():
        final = vit.vit(pixel_values=images()).last_hidden_state  # hooks are on: same prompted sequence
    torch.testing.assert_close(out.logits, vit.classifier(final[:, 0]))


def test_shallow_prompts_enter_once_and_later_layers_carry_them_on():
    model = peftkit.get_peft_model(tiny_vit(), VptConfig(num_prompt_tokens=3, deep=False))
    seen, handles = capture_layer_inputs(model.base_model)
    model(pixel_values=images())
    first, second = seen
    assert torch.equal(first[:, 1:4], model.adapter.prompt_embeddings[0].detach().expand(4, -1, -1))
    assert not torch.allclose(second[:, 1:4], first[:, 1:4])  # layer 1 transformed them
    for handle in handles:
        handle.remove()


def test_deep_prompts_replace_their_positions_at_every_layer():
    model = peftkit.get_peft_model(tiny_vit(), VptConfig(num_prompt_tokens=3, deep=True))
    assert not model.training  # deep prompt dropout (0.1) is off in eval, so prompts enter exactly
    seen, handles = capture_layer_inputs(model.base_model)
    out = model(pixel_values=images(), output_hidden_states=True)
    assert len(seen) == 2
    for layer, layer_input in enumerate(seen):
        assert layer_input.shape == (4, 1 + 3 + NUM_PATCHES, 32)  # replaced, not accumulated
        assert torch.equal(layer_input[:, 1:4], model.adapter.prompt_embeddings[layer].detach().expand(4, -1, -1))
    # Layer 1's own output at the prompt positions was discarded before layer 2 ...
    assert not torch.allclose(out.hidden_states[1][:, 1:4], seen[1][:, 1:4])
    # ... while [CLS] and the patches went on unchanged.
    torch.testing.assert_close(out.hidden_states[1][:, [0, *range(4, 4 + NUM_PATCHES)]], seen[1][:, [0, *range(4, 4 + NUM_PATCHES)]])
    for handle in handles:
        handle.remove()


def test_prompt_dropout_defaults_and_backbone_kept_in_eval_while_training():
    assert peftkit.get_peft_model(tiny_vit(), VptConfig(deep=True)).adapter.prompt_dropout.p == 0.1
    assert peftkit.get_peft_model(tiny_vit(), VptConfig(deep=False)).adapter.prompt_dropout.p == 0.0
    assert peftkit.get_peft_model(tiny_vit(), VptConfig(deep=False, prompt_dropout=0.3)).adapter.prompt_dropout.p == 0.3

    # High backbone dropout: if the backbone ran in train mode, two forwards would differ.
    vit = tiny_vit(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    model = peftkit.get_peft_model(vit, VptConfig(num_prompt_tokens=4, deep=False))
    model.train()
    modes_during_forward = []
    hook = vit.vit.layers[0].attention.register_forward_pre_hook(
        lambda module, args: modes_during_forward.append(module.training)
    )
    first, second = model(pixel_values=images()).logits, model(pixel_values=images()).logits
    assert torch.equal(first, second) and modes_during_forward == [False, False]
    # The modes stay put between forwards (a checkpointed layer recomputed in backward must see
    # them too); only the layers' own checkpointing switch follows train()/eval().
    assert not vit.vit.layers[0].dropout.training and not vit.vit.training
    assert vit.vit.layers[0].training and model.adapter.training
    vit.vit.train()  # even a backbone switched back by hand runs in eval
    assert torch.equal(model(pixel_values=images()).logits, first) and not vit.vit.layers[0].dropout.training
    hook.remove()
    assert model.unload() is vit and vit.vit.layers[0].dropout.training  # unloaded: the model's own mode again

    deep = peftkit.get_peft_model(tiny_vit(), VptConfig(num_prompt_tokens=4, deep=True, prompt_dropout=0.5))
    deep.train()
    assert not torch.equal(deep(pixel_values=images()).logits, deep(pixel_values=images()).logits)  # prompt dropout on
    deep.eval()
    assert torch.equal(deep(pixel_values=images()).logits, deep(pixel_values=images()).logits)


def test_deit_prompts_go_after_cls_and_distillation_tokens():
    deit = tiny_deit()
    with torch.no_grad():
        plain = deit.deit.embeddings(images())  # [CLS], distillation, patches (+ positions)
    model = peftkit.get_peft_model(deit, VptConfig(num_prompt_tokens=3, deep=True))
    assert set(model.head_modules) == {"cls_classifier", "distillation_classifier"}
    seen, handles = capture_layer_inputs(deit)
    out = model(pixel_values=images(), output_hidden_states=True)
    assert out.hidden_states[-1].shape == (4, 2 + 3 + NUM_PATCHES, 32)
    for layer, layer_input in enumerate(seen):
        assert torch.equal(layer_input[:, 2:5], model.adapter.prompt_embeddings[layer].detach().expand(4, -1, -1))
    # [CLS] and distillation token keep positions 0 and 1 (both heads read them); patches follow the prompts.
    assert torch.equal(seen[0][:, :2], plain[:, :2])
    assert torch.equal(seen[0][:, 5:], plain[:, 2:])
    for handle in handles:
        handle.remove()


def test_bare_vit_model_has_no_head_and_a_longer_output():
    torch.manual_seed(0)
    bare = ViTModel(ViTConfig(**ARCH)).eval()
    model = peftkit.get_peft_model(bare, VptConfig(num_prompt_tokens=6))
    assert model.head_modules == []
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["adapter.prompt_embeddings"]
    assert model(pixel_values=images()).last_hidden_state.shape == (4, 1 + 6 + NUM_PATCHES, 32)
    assert model(images()).last_hidden_state.shape == (4, 1 + 6 + NUM_PATCHES, 32)  # positional pixel_values


@pytest.mark.parametrize("deep", [False, True])
def test_save_load_gives_identical_logits(tmp_path, deep):
    model = peftkit.get_peft_model(tiny_vit(), VptConfig(num_prompt_tokens=4, deep=deep))
    with torch.no_grad():
        model.base_model.classifier.weight.add_(0.5)  # a trained head, not the fresh one
    model.eval()
    expected = model(pixel_values=images()).logits
    model.save_pretrained(tmp_path / "adapter")

    loaded = peftkit.PeftModel.from_pretrained(tiny_vit(), tmp_path / "adapter")
    assert loaded.peft_config == model.peft_config
    assert torch.equal(loaded(pixel_values=images()).logits, expected)
    # A differently seeded backbone is refused.
    with pytest.raises(peftkit.errors.AdapterMismatchError, match="another backbone"):
        peftkit.PeftModel.from_pretrained(tiny_vit(seed=5), tmp_path / "adapter")


def test_from_pretrained_on_a_vit_saved_to_disk(tmp_path):
    tiny_vit(seed=3).save_pretrained(tmp_path / "vit")
    base = AutoModelForImageClassification.from_pretrained(tmp_path / "vit")
    model = peftkit.get_peft_model(base, VptConfig(num_prompt_tokens=2, deep=True))
    model.eval()
    expected = model(pixel_values=images()).logits
    model.save_pretrained(tmp_path / "adapter")

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "vit")
    loaded = peftkit.PeftModel.from_pretrained(reloaded, tmp_path / "adapter")
    assert torch.equal(loaded(pixel_values=images()).logits, expected)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = peftkit.PeftModel.from_pretrained(
        AutoModelForImageClassification.from_pretrained(tmp_path / "vit"), tmp_path / "adapter", is_trainable=True
    )
    assert trainable.adapter.prompt_embeddings.requires_grad


def test_wrong_image_size_or_channels_is_a_clear_error():
    model = peftkit.get_peft_model(tiny_vit(), VptConfig())
    with pytest.raises(DataError, match=r"shape \(4, 3, 32, 32\).*\(batch, 3, 16, 16\).*image processor"):
        model(pixel_values=images(size=32))
    with pytest.raises(DataError, match=r"shape \(4, 1, 16, 16\).*3 channel.*grayscale to RGB"):
        model(pixel_values=images(channels=1))
    with pytest.raises(DataError, match="attention_mask"):
        model(pixel_values=images(), attention_mask=torch.ones(4, 1 + NUM_PATCHES))
    # Another image size is fine when the user asks ViT to interpolate its position embeddings.
    assert model(pixel_values=images(size=24), interpolate_pos_encoding=True).logits.shape == (4, 3)


def test_non_vit_models_and_bad_configs_are_refused():
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(UnsupportedModelError, match="ViT or DeiT"):
        peftkit.get_peft_model(bert, VptConfig())
    with pytest.raises(MethodConfigError, match="num_prompt_tokens"):
        peftkit.get_peft_model(tiny_vit(), VptConfig(num_prompt_tokens=0))
    with pytest.raises(MethodConfigError, match="init"):
        peftkit.get_peft_model(tiny_vit(), VptConfig(init="normal"))


def test_unload_restores_the_plain_model():
    vit = tiny_vit()
    plain = vit(pixel_values=images()).logits
    model = peftkit.get_peft_model(vit, VptConfig(num_prompt_tokens=3, deep=True))
    assert not torch.equal(model(pixel_values=images()).logits, plain)
    assert torch.equal(model.unload()(pixel_values=images()).logits, plain)

"""WeGeFT: ΔW = s·W φ ψ generated from the frozen weights, shared φ/ψ, mergeable, savable."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForSequenceClassification, ViTConfig, ViTForImageClassification

import peftkit
from peftkit.errors import MethodConfigError
from peftkit.methods.wegeft import WeGeFTLinear
from peftkit.peft_model import read_adapter_weights
from tests.tiny_models import FAMILIES, make_batch, make_tiny_model

RANK = 4


def wrap(family: str = "bert", **config):
    config.setdefault("rank", RANK)
    config.setdefault("alpha", 2 * config["rank"])
    model = make_tiny_model(family)
    return model, peftkit.get_peft_model(model, peftkit.WeGeFTConfig(**config))


def randomise_phi(peft_model, seed: int = 1):
    """φ starts at zero (ΔW = 0); give it values so ΔW is not trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for phi in peft_model.adapter.phi.values():
            phi.copy_(torch.randn(phi.shape, generator=generator) * 0.5)


def wrappers(model: nn.Module) -> dict[str, WeGeFTLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, WeGeFTLinear)}


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, num_labels=3,
    )
    return LlamaForSequenceClassification(config).eval()


def tiny_vit():
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=3,
    )
    return ViTForImageClassification(config).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_step_zero_logits_equal_frozen_model(family):
    batch = make_batch(family)
    frozen_logits = make_tiny_model(family)(**batch).logits
    _, peft_model = wrap(family)
    assert wrappers(peft_model.base_model), "no module was adapted"
    assert torch.equal(peft_model(**batch).logits, frozen_logits)


@pytest.mark.parametrize(
    "family, expected",
    [
        ("bert", ["query", "value"]),
        ("roberta", ["query", "value"]),
        ("electra", ["query", "value"]),
        ("distilbert", ["q_lin", "v_lin"]),
        ("deberta-v2", ["query_proj", "value_proj"]),
    ],
)
def test_default_targets_are_the_familys_query_and_value(family, expected):
    _, peft_model = wrap(family)
    assert peft_model.peft_config.target_modules == expected
    adapted = {name.rsplit(".", 1)[-1] for name in wrappers(peft_model.base_model)}
    assert adapted == set(expected)
    assert len(wrappers(peft_model.base_model)) == 2 * peft_model.config.num_hidden_layers


def test_default_targets_for_llama_and_vit():
    llama = peftkit.get_peft_model(tiny_llama(), peftkit.WeGeFTConfig(rank=RANK))
    assert {n.rsplit(".", 1)[-1] for n in wrappers(llama.base_model)} == {"q_proj", "v_proj"}
    input_ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(llama(input_ids=input_ids).logits, tiny_llama()(input_ids=input_ids).logits)

    vit = peftkit.get_peft_model(tiny_vit(), peftkit.WeGeFTConfig(rank=RANK))
    assert {n.rsplit(".", 1)[-1] for n in wrappers(vit.base_model)} == {"q_proj", "v_proj"}  # transformers 5 names
    pixels = torch.randn(2, 1, 8, 8)
    assert torch.equal(vit(pixel_values=pixels).logits, tiny_vit()(pixel_values=pixels).logits)


def test_forward_equals_explicit_formula():
    _, peft_model = wrap("bert", dropout=0.0)
    randomise_phi(peft_model)
    wrapper = peft_model.base_model.bert.encoder.layer[1].attention.self.value
    weight, bias = wrapper.weight, wrapper.bias
    phi = peft_model.adapter.phi["attention-self-value"]
    psi = peft_model.adapter.psi["attention-self-value"]
    x = torch.randn(3, 5, weight.shape[1])

    delta = (2 * RANK / RANK) * weight @ phi @ psi  # s·W φ ψ, s = alpha / rank
    expected = x @ (weight + delta).T + bias  # y = x (W + ΔW)ᵀ + b
    assert delta.abs().max() > 1e-3
    torch.testing.assert_close(wrapper(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wrapper.delta_weight(), delta)


def test_dropout_hits_only_w_in_the_delta_path():
    _, peft_model = wrap("bert", dropout=0.5)
    wrapper = peft_model.base_model.bert.encoder.layer[0].attention.self.query
    x = torch.randn(2, 4, 32)
    frozen = nn.functional.linear(x, wrapper.weight, wrapper.bias)
    peft_model.train()
    assert torch.equal(wrapper(x), frozen)  # φ = 0: the dropped-out W never reaches the output

    randomise_phi(peft_model)
    assert not torch.equal(wrapper(x), wrapper(x))  # fresh dropout mask on W each call
    peft_model.eval()
    torch.testing.assert_close(wrapper(x), frozen + nn.functional.linear(x, wrapper.delta_weight()))


def test_training_changes_only_phi_psi_and_head():
    _, peft_model = wrap("bert")
    backbone_before = {n: p.detach().clone() for n, p in peft_model.base_model.bert.named_parameters()}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    head = tuple(f"base_model.{h}." for h in peft_model.head_modules)
    assert {n for n in trainable if not n.startswith(head)} == {
        "adapter.phi.attention-self-query", "adapter.psi.attention-self-query",
        "adapter.phi.attention-self-value", "adapter.psi.attention-self-value",
    }

    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch("bert")
    for _ in range(3):
        peft_model(**batch, labels=torch.tensor([0, 2])).loss.backward()
        for name, param in peft_model.named_parameters():
            if name not in trainable:
                assert param.grad is None, f"{name} got a gradient"
        assert peft_model.adapter.phi["attention-self-query"].grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()

    for name, param in peft_model.base_model.bert.named_parameters():
        assert torch.equal(param, backbone_before[name]), f"backbone weight {name} changed"
    assert peft_model.adapter.phi["attention-self-query"].abs().sum() > 0


def test_one_pair_per_module_type_shared_by_all_layers():
    _, peft_model = wrap("bert")
    layers = peft_model.base_model.bert.encoder.layer
    first, second = layers[0].attention.self.query, layers[1].attention.self.query
    assert first.phi is second.phi and first.psi is second.psi
    randomise_phi(peft_model)
    # Same φ, ψ; different W, so a different ΔW in each layer.
    assert not torch.allclose(first.delta_weight(), second.delta_weight())

    # Both layers' uses of the shared pair add into its one gradient.
    x = torch.randn(2, 32)
    first(x).sum().backward()
    grad_from_first = first.phi.grad.clone()
    second(x).sum().backward()
    assert not torch.allclose(first.phi.grad, grad_from_first)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_parameter_counts_shared_and_per_layer(family):
    model = make_tiny_model(family)
    d_in = model.config.hidden_size
    num_layers = model.config.num_hidden_layers
    num_types = 2  # query and value
    head = sum(p.numel() for h in peftkit.models.head_module_names(model) for p in getattr(model, h).parameters())

    _, shared = wrap(family)
    _, per_layer = wrap(family, share_across_layers=False)
    pair = d_in * RANK + RANK * d_in  # φ: d_in × r, ψ: r × d_in
    assert shared.get_nb_trainable_parameters()[0] == num_types * pair + head
    assert per_layer.get_nb_trainable_parameters()[0] == num_layers * num_types * pair + head
    assert len(per_layer.adapter.phi) == num_layers * num_types
    # the backbone is counted once: wrappers register the original weight/bias, φ/ψ only live in the adapter
    total = sum(p.numel() for p in model.parameters())
    assert shared.get_nb_trainable_parameters()[1] == total + num_types * pair


def test_per_layer_pairs_are_distinct():
    _, peft_model = wrap("bert", share_across_layers=False)
    layers = peft_model.base_model.bert.encoder.layer
    assert layers[0].attention.self.query.phi is not layers[1].attention.self.query.phi
    assert "bert-encoder-layer-1-attention-self-value" in peft_model.adapter.psi


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2"])
def test_merge_and_unload_gives_identical_outputs_and_plain_linears(family):
    _, peft_model = wrap(family)
    randomise_phi(peft_model)
    peft_model.eval()
    batch = make_batch(family)
    with torch.no_grad():
        adapted = peft_model(**batch, output_hidden_states=True)
    frozen = make_tiny_model(family)(**batch, output_hidden_states=True)
    assert not torch.allclose(adapted.hidden_states[-1], frozen.hidden_states[-1], atol=1e-2)

    merged = peft_model.merge_and_unload()
    assert not wrappers(merged)
    linears = [m for m in merged.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)
    assert set(merged.state_dict()) == set(make_tiny_model(family).state_dict())
    with torch.no_grad():
        after = merged(**batch, output_hidden_states=True)
    torch.testing.assert_close(after.hidden_states[-1], adapted.hidden_states[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(after.logits, adapted.logits, atol=1e-5, rtol=0)


def test_unload_puts_the_original_modules_back():
    model = make_tiny_model("bert")
    original_query = model.bert.encoder.layer[0].attention.self.query
    peft_model = peftkit.get_peft_model(model, peftkit.WeGeFTConfig(rank=RANK))
    randomise_phi(peft_model)
    restored = peft_model.unload()
    assert restored.bert.encoder.layer[0].attention.self.query is original_query
    assert not wrappers(restored)
    batch = make_batch("bert")
    assert torch.equal(restored(**batch).logits, make_tiny_model("bert")(**batch).logits)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_save_load_gives_identical_logits(tmp_path, family, share):
    _, peft_model = wrap(family, share_across_layers=share)
    randomise_phi(peft_model)
    with torch.no_grad():
        peft_model.base_model.classifier.weight.mul_(3)
    peft_model.eval()
    batch = make_batch(family)
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)

    saved = read_adapter_weights(tmp_path)
    head = tuple(f"base_model.{h}." for h in peft_model.head_modules)
    assert {n for n in saved if not n.startswith(head)} == {
        n for n in peft_model.trainable_state_dict() if n.startswith("adapter.")
    }
    loaded = peftkit.PeftModel.from_pretrained(make_tiny_model(family), tmp_path)
    assert isinstance(loaded.peft_config, peftkit.WeGeFTConfig)
    assert loaded.peft_config.share_across_layers is share
    assert torch.equal(loaded(**batch).logits, expected)


def test_functional_call_can_swap_a_shared_pair():
    """The NTK code evaluates the model at other parameter values with torch.func."""
    _, peft_model = wrap("bert")
    batch = make_batch("bert")
    name = "adapter.phi.attention-self-query"
    replacement = torch.randn_like(dict(peft_model.named_parameters())[name])
    swapped = torch.func.functional_call(peft_model, {name: replacement}, args=(), kwargs=batch).logits
    assert not torch.allclose(swapped, peft_model(**batch).logits)
    assert torch.equal(dict(peft_model.named_parameters())[name], torch.zeros_like(replacement))


def test_missing_target_modules_lists_the_linears_the_model_has():
    with pytest.raises(MethodConfigError) as error:
        wrap("bert", target_modules=["q_proj"])
    message = str(error.value)
    assert "'q_proj'" in message and "query" in message and "dense" in message
    with pytest.raises(MethodConfigError, match="'nope'"):
        wrap("distilbert", target_modules=["q_lin", "nope"])


def test_task_head_is_not_a_target():
    with pytest.raises(MethodConfigError, match="classifier"):
        wrap("bert", target_modules=["classifier"])


@pytest.mark.parametrize("rank", [0, -3])
def test_rank_below_one_is_rejected(rank):
    with pytest.raises(MethodConfigError, match="rank"):
        wrap("bert", rank=rank, alpha=8)


def test_rank_above_input_size_is_rejected():
    with pytest.raises(MethodConfigError, match="rank 33 exceeds the input size 32"):
        wrap("bert", rank=33)


def test_pairs_are_keyed_by_path_inside_the_block():
    # "dense" names Linears with different inputs (32 and 64) inside each block: each path in
    # the block is its own type, shared across layers; the pooler (outside the blocks) gets its own.
    peft_model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.WeGeFTConfig(rank=RANK, target_modules=["dense"]))
    assert {k: tuple(v.shape) for k, v in peft_model.adapter.phi.items()} == {
        "attention-output-dense": (32, RANK), "intermediate-dense": (32, RANK), "output-dense": (64, RANK),
        "bert-pooler-dense": (32, RANK),
    }


def test_shared_pair_needs_equal_input_sizes():
    model = make_tiny_model("bert")
    model.bert.encoder.layer[1].attention.self.query = nn.Linear(16, 32)  # a heterogeneous stack
    with pytest.raises(MethodConfigError, match="share_across_layers=False"):
        peftkit.get_peft_model(model, peftkit.WeGeFTConfig(rank=RANK))
    model = make_tiny_model("bert")
    model.bert.encoder.layer[1].attention.self.query = nn.Linear(16, 32)
    peft_model = peftkit.get_peft_model(model, peftkit.WeGeFTConfig(rank=RANK, share_across_layers=False))
    assert peft_model.adapter.phi["bert-encoder-layer-1-attention-self-query"].shape == (16, RANK)


def test_unknown_family_without_targets_says_what_to_set():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(MethodConfigError, match="target_modules"):
        peftkit.get_peft_model(model, peftkit.WeGeFTConfig(rank=2))


def test_registered_and_exported():
    assert peftkit.get_method("wegeft").config_class is peftkit.WeGeFTConfig
    assert peftkit.WeGeFTConfig().peft_type == "WEGEFT"
    assert peftkit.methods.get_method("wegeft").adapter_class.mergeable

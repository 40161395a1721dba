"""The frozen-backbone fast path, ``backbone_dropout=False``, for every method that freezes the backbone.

What must hold (issue 15): the backbone's own dropout probabilities (hidden, attention, embeddings;
nn.Dropout modules and the float attributes ViT hands to SDPA) are 0 while the method's own dropout
and the head's stay; scaled-dot-product attention really gets dropout_p 0.0 in training; unload()
and switching adapters restore them; the choice is recorded in the adapter files and reapplied on
load; full fine-tuning refuses it; activation checkpointing still gives the unchecked gradients.
"""

from __future__ import annotations

import json

import peft
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

import peftkit
from peftkit import recipes
from peftkit.errors import MethodConfigError
from peftkit.loading import save_adapter_with_task
from peftkit.models import backbone_dropout_sites, encoder_layers
from tests.methods.test_lora_fusion import make_pool_lora
from tests.test_cli import model_dir, sentiment_dir  # noqa: F401  (fixtures)
from tests.tiny_models import make_batch, make_tiny_model, special_ids

LABELS = torch.tensor([0, 2])


def lora_config():
    return peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=4, lora_alpha=8, lora_dropout=0.3)


def method_configs(tmp_path):
    """Every method that freezes a BERT backbone, with its own dropout where it has one."""
    return {
        "pasta": lambda: peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal"),
        "wegeft": lambda: peftkit.WeGeFTConfig(rank=4, dropout=0.2),
        "bitfit": lambda: peftkit.BitFitConfig(),
        "linear": lambda: peftkit.LinearProbeConfig(),
        "lora-fusion": lambda: peftkit.LoraFusionConfig(
            pool=[make_pool_lora(tmp_path / f"pool{k}", seed=k, model=make_tiny_model("bert")) for k in range(2)]),
        "lora": lora_config,
    }


METHODS = ["pasta", "wegeft", "bitfit", "linear", "lora-fusion", "lora"]


def probabilities(sites) -> list[float]:
    return [getattr(module, name) for module, name in sites]


def own_dropouts(wrapped) -> dict[str, float]:
    """The method's own dropout and the head's, by name: what the fast path must leave alone."""
    found = {name: module.p for name, module in wrapped.named_modules()
             if isinstance(module, torch.nn.Dropout) and ("lora_dropout" in name or "weight_dropout" in name
                                                          or name in ("adapter.dropout", "base_model.dropout"))}
    if isinstance(wrapped, peft.PeftModel):  # the head's dropout sits beside the backbone
        found["head"] = wrapped.get_base_model().dropout.p
    return found


def last_hidden_state(wrapped, batch):
    return wrapped(**batch, output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("method", METHODS)
def test_backbone_dropout_is_zero_and_restored_by_unload_while_the_methods_own_stays(method, tmp_path):
    base = make_tiny_model("bert")
    sites = backbone_dropout_sites(base)
    assert sites and set(probabilities(sites)) == {0.1}  # BERT's hidden, attention and embedding dropout
    build = method_configs(tmp_path)[method]
    with_dropout = own_dropouts(peftkit.get_peft_model(make_tiny_model("bert"), build()))

    wrapped = peftkit.get_peft_model(base, build(), backbone_dropout=False)
    assert set(probabilities(sites)) == {0.0}
    assert own_dropouts(wrapped) == with_dropout  # the method's and the head's dropout unchanged
    if method == "pasta":
        assert wrapped.adapter.dropout.p == 0.1  # read from hidden_dropout_prob, not from the zeroed modules
    if method != "lora":
        assert wrapped.peft_config.backbone_dropout is False

    unloaded = wrapped.unload() if method != "lora" else None
    if unloaded is not None:
        assert set(probabilities(backbone_dropout_sites(unloaded))) == {0.1}


@pytest.mark.parametrize("method", METHODS)
def test_training_mode_backbone_is_deterministic_only_with_the_fast_path(method, tmp_path, single_torch_thread):
    build = method_configs(tmp_path)[method]
    batch = make_batch("bert")
    for backbone_dropout in (True, False):
        wrapped = peftkit.get_peft_model(make_tiny_model("bert"), build(), backbone_dropout=backbone_dropout)
        wrapped.train()
        if method == "pasta":
            wrapped.adapter.dropout.p = 0.0  # only the backbone may draw masks here
        if method == "wegeft":
            for module in wrapped.modules():
                if hasattr(module, "weight_dropout"):
                    module.weight_dropout.p = 0.0
        if method == "lora":
            for module in wrapped.modules():
                if isinstance(module, torch.nn.ModuleDict) and "default" in module and isinstance(module["default"], torch.nn.Dropout):
                    module["default"].p = 0.0
        with torch.no_grad():
            first, second = last_hidden_state(wrapped, batch), last_hidden_state(wrapped, batch)
        assert torch.equal(first, second) is (not backbone_dropout), f"backbone_dropout={backbone_dropout}"


def test_pastas_own_dropout_still_acts_on_a_deterministic_backbone(single_torch_thread):
    batch = make_batch("bert")
    for pasta_dropout, differs in ((None, True), (0.0, False)):
        config = peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal", dropout=pasta_dropout,
                                     backbone_dropout=False)
        wrapped = peftkit.get_peft_model(make_tiny_model("bert"), config).train()
        with torch.no_grad():
            first, second = last_hidden_state(wrapped, batch), last_hidden_state(wrapped, batch)
        assert (not torch.equal(first, second)) is differs


@pytest.mark.parametrize("backbone_dropout, expected", [(True, {0.1}), (False, {0.0})])
def test_scaled_dot_product_attention_gets_dropout_zero_in_training(backbone_dropout, expected, monkeypatch):
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    base = make_tiny_model("bert")
    assert base.config._attn_implementation == "sdpa"
    config = peftkit.PastaConfig(special_token_ids=special_ids("bert"), backbone_dropout=backbone_dropout)
    peftkit.get_peft_model(base, config).train()(**make_batch("bert"))
    assert len(seen) == base.config.num_hidden_layers and set(seen) == expected


def test_vit_attention_dropout_attribute_is_zeroed_and_restored():
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64, num_labels=3,
                                              hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3))
    attention = encoder_layers(vit)[0].attention
    assert attention.attention_dropout == 0.3  # a float ViT passes to SDPA as dropout_p, not an nn.Dropout
    sites = backbone_dropout_sites(vit)  # before WeGeFT adds its own dropout
    wrapped = peftkit.get_peft_model(vit, peftkit.WeGeFTConfig(rank=4, target_modules=["q_proj"]), backbone_dropout=False)
    assert attention.attention_dropout == 0.0 and set(probabilities(sites)) == {0.0}
    wrapped.unload()
    assert attention.attention_dropout == 0.3 and vit.vit.embeddings.dropout.p == 0.2


def test_choice_is_recorded_and_reapplied_on_load(tmp_path):
    config = peftkit.PastaConfig(special_token_ids=special_ids("bert"), backbone_dropout=False)
    peftkit.get_peft_model(make_tiny_model("bert"), config).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["backbone_dropout"] is False
    fresh = make_tiny_model("bert")
    loaded = peftkit.PeftModel.from_pretrained(fresh, tmp_path, is_trainable=True)
    assert set(probabilities(backbone_dropout_sites(fresh))) == {0.0}
    loaded.unload()
    assert set(probabilities(backbone_dropout_sites(fresh))) == {0.1}


def test_adapters_saved_before_the_option_keep_the_pretrained_dropout(tmp_path):
    peftkit.get_peft_model(make_tiny_model("bert"), peftkit.PastaConfig(special_token_ids=special_ids("bert"))).save_pretrained(tmp_path)
    record = json.loads((tmp_path / "adapter_config.json").read_text())
    del record["backbone_dropout"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(record))
    fresh = make_tiny_model("bert")
    peftkit.PeftModel.from_pretrained(fresh, tmp_path)
    assert set(probabilities(backbone_dropout_sites(fresh))) == {0.1}


def test_peft_lora_saved_from_python_reloads_with_the_fast_path(tmp_path):
    """get_peft_model(..., LoraConfig, backbone_dropout=False).save_pretrained() (PEFT's own save,
    not peftkit's training) used to drop the choice: the reload ran the backbone's dropout."""
    wrapped = peftkit.get_peft_model(make_tiny_model("bert"), lora_config(), backbone_dropout=False)
    wrapped.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "peftkit_options.json").read_text())["backbone_dropout"] is False
    fresh = make_tiny_model("bert")
    sites = backbone_dropout_sites(fresh)
    peftkit.PeftModel.from_pretrained(fresh, tmp_path)
    assert set(probabilities(sites)) == {0.0}


def test_peft_lora_records_the_choice_beside_its_adapter_and_plain_peft_still_loads_it(tmp_path):
    wrapped = peftkit.get_peft_model(make_tiny_model("bert"), lora_config(), backbone_dropout=False)
    save_adapter_with_task(wrapped, tmp_path, {"kind": "text-classification", "label_names": ["a", "b", "c"]})
    assert json.loads((tmp_path / "peftkit_options.json").read_text())["backbone_dropout"] is False
    assert "backbone_dropout" not in json.loads((tmp_path / "adapter_config.json").read_text())  # PEFT's file stays PEFT's

    fresh = make_tiny_model("bert")
    sites = backbone_dropout_sites(fresh)  # before PEFT adds lora_dropout
    loaded = peftkit.PeftModel.from_pretrained(fresh, tmp_path)
    assert isinstance(loaded, peft.PeftModel)
    assert set(probabilities(sites)) == {0.0}
    assert own_dropouts(loaded)["head"] == 0.1
    assert {m.p for n, m in loaded.named_modules() if n.endswith("lora_dropout.default")} == {0.3}

    plain = make_tiny_model("bert")
    sites = backbone_dropout_sites(plain)
    peft.PeftModel.from_pretrained(plain, str(tmp_path))  # PEFT ignores peftkit's file
    assert set(probabilities(sites)) == {0.1}

    default = peftkit.get_peft_model(make_tiny_model("bert"), lora_config())
    save_adapter_with_task(default, tmp_path / "default", {"kind": "text-classification", "label_names": ["a", "b", "c"]})
    fresh = make_tiny_model("bert")
    sites = backbone_dropout_sites(fresh)
    peftkit.PeftModel.from_pretrained(fresh, tmp_path / "default")
    assert set(probabilities(sites)) == {0.1}


def test_a_corrupt_options_file_is_a_clear_error(tmp_path):
    peftkit.get_peft_model(make_tiny_model("bert"), lora_config()).save_pretrained(str(tmp_path))
    (tmp_path / "peftkit_options.json").write_text('{"backbone_dropout": "no"}')
    with pytest.raises(peftkit.errors.AdapterFileError, match="backbone_dropout"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def test_switching_adapters_applies_each_adapters_own_choice():
    base = make_tiny_model("bert")
    sites = backbone_dropout_sites(base)
    wrapped = peftkit.get_peft_model(base, peftkit.PastaConfig(special_token_ids=special_ids("bert"), backbone_dropout=False))
    wrapped.add_adapter("as-pretrained", peftkit.PastaConfig(special_token_ids=special_ids("bert")))
    assert set(probabilities(sites)) == {0.0}
    wrapped.set_adapter("as-pretrained")
    assert set(probabilities(sites)) == {0.1}
    wrapped.set_adapter("default")
    assert set(probabilities(sites)) == {0.0}
    with wrapped.disable_adapter():  # the plain model as it was wrapped
        assert set(probabilities(sites)) == {0.1}
    assert set(probabilities(sites)) == {0.0}


def test_full_fine_tuning_refuses_the_option_clearly():
    with pytest.raises(MethodConfigError, match="does not apply to full fine-tuning"):
        peftkit.get_peft_model(make_tiny_model("bert"), peftkit.FullFinetuneConfig(), backbone_dropout=False)
    with pytest.raises(MethodConfigError, match="does not apply to full fine-tuning"):
        recipes.build_method_config("full", make_tiny_model("bert"), {}, {"backbone_dropout": False})


def test_vpt_always_runs_its_backbone_without_dropout():
    vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64, num_labels=3))
    assert peftkit.VptConfig().backbone_dropout is False
    with pytest.raises(MethodConfigError, match="eval mode"):
        peftkit.get_peft_model(vit, peftkit.VptConfig(backbone_dropout=True))


def test_recipe_passes_the_option_to_peftkit_methods_and_keeps_it_out_of_loras_config():
    model = make_tiny_model("bert")
    info = {"kind": "text-classification"}
    assert recipes.build_method_config("pasta", model, info, {"backbone_dropout": False}).backbone_dropout is False
    # PASTA's recipe takes the fast path (measured: results/fast_path_accuracy.md); an explicit choice wins
    assert recipes.build_method_config("pasta", model, info, {}).backbone_dropout is False
    assert recipes.build_method_config("pasta", model, info, {"backbone_dropout": True}).backbone_dropout is True
    assert recipes.build_method_config("wegeft", model, info, {}).backbone_dropout is True  # not measured: as pretrained
    lora = recipes.build_method_config("lora", model, info, {"backbone_dropout": False})
    assert isinstance(lora, peft.LoraConfig)
    assert recipes.backbone_dropout("lora", {"backbone_dropout": False}) is False
    assert recipes.backbone_dropout("full", {}) is recipes.BACKBONE_DROPOUT.get("full")
    with pytest.raises(MethodConfigError, match="true or false"):
        recipes.backbone_dropout("lora", {"backbone_dropout": "off"})


@pytest.mark.parametrize("kind", ["hf", "wrapper-reentrant"])
@pytest.mark.parametrize("method", ["pasta", "wegeft", "lora"])
def test_activation_checkpointing_gives_the_gradients_of_the_unchecked_run(method, kind, tmp_path, single_torch_thread):
    from tests.methods.test_activation_checkpointing import enable

    build = method_configs(tmp_path)[method]
    inputs = {**make_batch("bert"), "labels": LABELS}

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        base = make_tiny_model("bert")
        wrapped = peftkit.get_peft_model(base, build(), backbone_dropout=False).train()
        if checkpointing:
            if method == "lora":
                base.enable_input_require_grads()  # PEFT's own checkpointing recipe for a frozen embedding
            enable(base, kind)
        torch.manual_seed(0)  # the same masks for the method's own dropout
        wrapped(**inputs).loss.backward()
        return {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in wrapped.named_parameters() if p.requires_grad}

    reference = gradients(False)
    assert all(g is not None for g in reference.values()) and any(g.abs().sum() > 0 for g in reference.values())
    checkpointed = gradients(True)
    assert checkpointed.keys() == reference.keys()
    for name, grad in reference.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], grad, msg=lambda m: f"{name}: {m}")


def test_the_cli_records_the_option_for_peftkit_methods_and_lora_and_refuses_it_for_full(
        model_dir, sentiment_dir, tmp_path, capsys, single_torch_thread):
    from peftkit.cli import main
    from tests.test_cli import train_args

    fast = ["--method-options", '{"backbone_dropout": false}']
    assert main(train_args(model_dir, sentiment_dir, tmp_path / "pasta", "--method", "pasta", *fast)) == 0
    assert json.loads((tmp_path / "pasta" / "adapter_config.json").read_text())["backbone_dropout"] is False
    assert main(train_args(model_dir, sentiment_dir, tmp_path / "lora", "--method", "lora", *fast)) == 0
    assert json.loads((tmp_path / "lora" / "peftkit_options.json").read_text())["backbone_dropout"] is False
    assert main(["eval", str(tmp_path / "lora")]) == 0
    capsys.readouterr()
    assert main(train_args(model_dir, sentiment_dir, tmp_path / "full", "--method", "full", *fast)) == 2
    assert "does not apply to full fine-tuning" in capsys.readouterr().err

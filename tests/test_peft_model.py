"""save_pretrained / from_pretrained: PEFT's file layout, identity checks, clear errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import peftkit
from peftkit.errors import AdapterFileError, AdapterMismatchError, MethodConfigError
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
    with pytest.raises(AdapterFileError, match="not an adapter directory"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path / "nowhere")


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

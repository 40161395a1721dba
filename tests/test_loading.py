"""peftkit.loading: the right kind of model for the task, base models sized for a task, and checkpoints that already have a head."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, ViTConfig

from peftkit.errors import ModelKindError, PeftkitError
from peftkit.loading import check_model_kind, load_base_model, model_kind, resolve_model_path
from tests.tiny_models import save_tiny_bert_checkpoint, save_tiny_vit_checkpoint

DIGITS = {"kind": "image-classification", "name": "digits", "label_names": [str(d) for d in range(10)]}
REVIEWS = {"kind": "text-classification", "name": "reviews", "label_names": ["neg", "pos"]}


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    return save_tiny_vit_checkpoint(tmp_path_factory.mktemp("models") / "vit")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert_checkpoint(tmp_path_factory.mktemp("models") / "bert")


def test_model_kind_comes_from_the_config_type():
    assert model_kind(ViTConfig()) == "image"
    assert model_kind(BertConfig()) == "text"
    assert model_kind(object()) is None  # unknown: left to from_pretrained to judge


def test_a_text_model_for_an_image_task_names_a_vision_model(bert_dir):
    with pytest.raises(ModelKindError) as caught:
        load_base_model(str(bert_dir), DIGITS)
    message = str(caught.value)
    assert "'digits' is an image-classification task" in message and "text model (bert)" in message
    assert "vision model such as a ViT" in message and "peftkit pretrain" in message


def test_a_vision_model_for_a_text_task_names_a_text_model(vit_dir):
    with pytest.raises(ModelKindError) as caught:
        load_base_model(str(vit_dir), REVIEWS)
    message = str(caught.value)
    assert "'reviews' is a text-classification task" in message and "vision model (vit)" in message
    assert "text model such as BERT" in message
    with pytest.raises(ModelKindError, match="vision model"):
        check_model_kind(str(vit_dir), "token-classification")


def test_the_right_kind_loads_with_a_head_for_the_labels(vit_dir, bert_dir):
    vit = load_base_model(str(vit_dir), DIGITS)
    assert vit.config.model_type == "vit" and vit.classifier.out_features == 10
    bert = load_base_model(str(bert_dir), REVIEWS)
    assert bert.config.id2label == {0: "neg", 1: "pos"}


TASK = {"kind": "text-classification", "label_names": ["bad", "fine", "good"]}


def save_two_label_classifier(directory):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=2)
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    return model


def test_a_head_of_another_size_is_replaced_for_the_tasks_labels_with_a_notice(tmp_path, caplog):
    saved = save_two_label_classifier(tmp_path)
    with caplog.at_level(logging.WARNING, logger="peftkit.loading"):
        model = load_base_model(str(tmp_path), TASK)
    assert "holds a task head for 2 labels but the task has 3" in caplog.text
    assert "classifier.weight" in caplog.text
    assert model.classifier.weight.shape == (3, 32) and model.num_labels == 3
    assert model.config.id2label == {0: "bad", 1: "fine", 2: "good"}
    # everything but the head is the checkpoint's, as saved
    assert all(torch.equal(param, saved.bert.state_dict()[name]) for name, param in model.bert.state_dict().items())


def test_a_head_of_the_right_size_is_kept_without_a_notice(tmp_path, caplog):
    saved = save_two_label_classifier(tmp_path)
    with caplog.at_level(logging.WARNING, logger="peftkit.loading"):
        model = load_base_model(str(tmp_path), {"kind": "text-classification", "label_names": ["no", "yes"]})
    assert "task head" not in caplog.text
    assert torch.equal(model.classifier.weight, saved.classifier.weight)


def test_a_backbone_that_does_not_fit_its_config_is_refused(tmp_path):
    save_two_label_classifier(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 48  # config.json of another model beside these weights
    (tmp_path / "config.json").write_text(json.dumps(config))
    for head_restored in (False, True):  # an adapter restores the head, never the backbone
        with pytest.raises(PeftkitError, match="intermediate.*differ in shape.*config.json belongs to another model"):
            load_base_model(str(tmp_path), TASK, head_restored=head_restored)


def test_an_adapter_directory_given_as_the_model_is_refused_naming_its_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/bert", "peftkit_method": "PASTA"}))
    for load in (lambda: resolve_model_path(str(tmp_path)), lambda: load_base_model(str(tmp_path), TASK)):
        with pytest.raises(PeftkitError, match=r"is an adapter directory.*it records /models/bert.*peftkit eval"):
            load()

"""Model loading: a model of the wrong kind for the task (text vs vision) is refused by name."""

from __future__ import annotations

import pytest
from transformers import BertConfig, ViTConfig

from peftkit.errors import ModelKindError
from peftkit.loading import check_model_kind, load_base_model, model_kind
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

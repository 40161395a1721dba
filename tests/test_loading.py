"""peftkit.loading: base models sized for a task, including checkpoints that already have a head."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from peftkit.errors import PeftkitError
from peftkit.loading import load_base_model

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
    with pytest.raises(PeftkitError, match="intermediate.*differ in shape.*config.json belongs to another model"):
        load_base_model(str(tmp_path), TASK)

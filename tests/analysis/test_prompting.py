"""Prompt and [CLS] output functions: the numbers a kernel differentiates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from peftkit.analysis.prompting import (
    ClassifierOutput,
    PromptOutput,
    collate_examples,
    encode_classification,
    encode_prompt,
    label_word_ids,
    linear_probe_head,
    score_layer,
)
from peftkit.errors import DataError, PeftkitError
from tests.tiny_models import make_tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEMPLATE = "{sentence} It was [MASK]."


def tiny_mlm() -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return BertForMaskedLM(config).eval()


def test_template_is_filled_and_mask_found(bert_tokenizer):
    example = encode_prompt(bert_tokenizer, TEMPLATE, "the movie was great")
    tokens = bert_tokenizer.convert_ids_to_tokens(example["input_ids"][0])
    # the tiny vocabulary has no "it" nor "."
    assert tokens == ["[CLS]", "the", "movie", "was", "great", "[UNK]", "was", "[MASK]", "[UNK]", "[SEP]"]
    assert tokens[int(example["mask_position"])] == "[MASK]"
    assert example["attention_mask"].shape == example["input_ids"].shape == (1, 10)


def test_truncation_cuts_the_sentence_never_the_template(bert_tokenizer):
    sentence = " ".join(["good"] * 50)
    example = encode_prompt(bert_tokenizer, TEMPLATE, sentence, max_length=12)
    tokens = bert_tokenizer.convert_ids_to_tokens(example["input_ids"][0])
    assert len(tokens) == 12
    assert tokens[-5:] == ["[UNK]", "was", "[MASK]", "[UNK]", "[SEP]"] and tokens[1:7] == ["good"] * 6
    assert tokens[int(example["mask_position"])] == "[MASK]"


def test_pairs_are_truncated_longest_first(bert_tokenizer):
    template = "{sentence} ? [MASK] , {sentence2}"
    example = encode_prompt(bert_tokenizer, template, " ".join(["good"] * 20), "bad bad", max_length=12)
    tokens = bert_tokenizer.convert_ids_to_tokens(example["input_ids"][0])
    assert tokens == ["[CLS]"] + ["good"] * 5 + ["[UNK]", "[MASK]", "[UNK]", "bad", "bad", "[SEP]"]
    with pytest.raises(DataError, match="no second sentence"):
        encode_prompt(bert_tokenizer, template, "good")
    with pytest.raises(DataError, match="shorter than the template"):
        encode_prompt(bert_tokenizer, TEMPLATE, "good", max_length=3)
    with pytest.raises(PeftkitError, match="exactly one"):
        encode_prompt(bert_tokenizer, "{sentence}", "good")


def test_label_words_must_be_single_tokens(bert_tokenizer):
    assert label_word_ids(bert_tokenizer, ["terrible", "great"]) == [10, 9]
    with pytest.raises(PeftkitError, match="not one token"):
        label_word_ids(bert_tokenizer, ["great", "wonderful"])
    with pytest.raises(PeftkitError, match="distinct"):
        label_word_ids(bert_tokenizer, ["great", "great"])


def test_prompt_output_equals_the_full_mlm_logits_at_the_mask(bert_tokenizer):
    """Projecting only the [MASK] position changes nothing but the cost."""
    model = tiny_mlm()
    words = label_word_ids(bert_tokenizer, ["terrible", "great", "good"])
    examples = [encode_prompt(bert_tokenizer, TEMPLATE, s) for s in ("the movie was great", "bad")]
    batch = collate_examples(examples, bert_tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(**{k: v for k, v in batch.items() if k != "mask_position"}).logits
        expected = full[torch.arange(2), batch["mask_position"]][:, words]
        torch.testing.assert_close(PromptOutput(model, words)(**batch), expected)
        binary = PromptOutput(model, words[:2], binary=True)(**batch)
        torch.testing.assert_close(binary, (expected[:, 1] - expected[:, 0]).unsqueeze(-1))
    # the hook is gone afterwards: the model's own logits cover every position again
    assert model(**{k: v for k, v in batch.items() if k != "mask_position"}).logits.shape[:2] == batch["input_ids"].shape


def test_linear_probe_head_fits_and_binary_margin_matches(bert_tokenizer):
    model = make_tiny_model("bert", num_labels=2)
    sentences = ["great great good", "the movie was great", "good plot", "terrible bad", "bad bad actor", "the plot was terrible"]
    labels = np.array([1, 1, 1, 0, 0, 0])
    examples = [encode_classification(bert_tokenizer, s) for s in sentences]
    before = score_layer(model).weight.detach().clone()
    train_accuracy = linear_probe_head(model, examples, labels, bert_tokenizer.pad_token_id)
    assert not torch.equal(before, model.classifier.weight)
    torch.testing.assert_close(model.classifier.weight[0], -model.classifier.weight[1])  # [-w/2, w/2]
    output = ClassifierOutput(model, binary=True)
    with torch.no_grad():
        margins = torch.cat([output(**e) for e in examples])[:, 0]
    assert ((margins > 0).long().numpy() == labels).mean() == train_accuracy


def test_linear_probe_needs_every_class(bert_tokenizer):
    model = make_tiny_model("bert", num_labels=3)
    examples = [encode_classification(bert_tokenizer, s) for s in ("good", "bad", "great", "terrible")]
    with pytest.raises(DataError, match="every class"):
        linear_probe_head(model, examples, [0, 1, 0, 1], bert_tokenizer.pad_token_id)

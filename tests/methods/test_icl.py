"""In-context learning: verbalizer scoring, demonstrations, calibration, truncation (tiny causal LMs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peftkit.errors import MethodConfigError
from peftkit.methods.icl import (
    IclConfig,
    InContextClassifier,
    balanced_order,
    calibrated_log_probabilities,
    demonstrations_without,
    label_log_likelihoods,
    select_demonstrations,
    template_pieces,
    verbalizer_token_ids,
)
from tests.tiny_models import make_byte_level_tokenizer, make_tiny_causal_lm

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_level_tokenizer()


def hand_log_likelihood(model, tokens: list[int], continuation: list[int]) -> float:
    """log p(continuation | tokens), one full forward over tokens + continuation, summed by hand."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens + continuation])).logits[0].double()
    log_probs = logits.log_softmax(-1)
    return sum(float(log_probs[len(tokens) - 1 + j, token]) for j, token in enumerate(continuation))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_verbalizer_scores_equal_hand_computed_log_likelihoods(family, tokenizer):
    model = make_tiny_causal_lm(family, vocab_size=len(tokenizer))
    verbalizers = verbalizer_token_ids(tokenizer, ["positive", "negative", "great"])
    assert min(len(v) for v in verbalizers) > 1  # multi-token words: the sum over tokens is exercised
    prompts = [tokenizer("Text: the movie was good\nCategory:")["input_ids"], tokenizer("Text: a bad plot\nCategory:")["input_ids"]]
    prefix = tokenizer("Text: great\nCategory: positive\n\n")["input_ids"]
    without_prefix = label_log_likelihoods(model, prompts, verbalizers)
    with_prefix = label_log_likelihoods(model, prompts, verbalizers, prefix=prefix)  # the cached-prefix path
    for row, prompt in enumerate(prompts):
        for label, tokens in enumerate(verbalizers):
            assert without_prefix[row, label].item() == pytest.approx(hand_log_likelihood(model, prompt, tokens), abs=1e-4)
            assert with_prefix[row, label].item() == pytest.approx(hand_log_likelihood(model, prefix + prompt, tokens), abs=1e-4)
    assert not torch.allclose(with_prefix, without_prefix)  # the demonstrations do change the scores


def test_single_token_labels_read_the_last_position(tokenizer):
    model = make_tiny_causal_lm(vocab_size=len(tokenizer))
    prompt = tokenizer("Text: a plot\nCategory:")["input_ids"]
    verbalizers = [[5], [9], [40]]
    scores = label_log_likelihoods(model, [prompt], verbalizers)
    with torch.no_grad():
        last = model(input_ids=torch.tensor([prompt])).logits[0, -1].double().log_softmax(-1)
    assert torch.allclose(scores[0], last[[5, 9, 40]], atol=1e-5)


def test_verbalizer_rejects_words_with_the_same_tokens(tokenizer):
    with pytest.raises(MethodConfigError, match="same tokens"):
        verbalizer_token_ids(tokenizer, ["great", "great"])


def test_balanced_seeded_demonstrations():
    labels = [0] * 10 + [1] * 10 + [2] * 10
    chosen = select_demonstrations(labels, 6, seed=3)
    assert sorted(labels[i] for i in chosen) == [0, 0, 1, 1, 2, 2]
    assert chosen == select_demonstrations(labels, 6, seed=3)
    assert chosen != select_demonstrations(labels, 6, seed=4)
    assert sorted(balanced_order(labels, 0)) == list(range(30))  # every example, once


def test_demonstrations_never_include_the_query(tokenizer):
    texts = ["alpha one", "beta two", "gamma three", "alpha one", "delta four", "beta two", "eps five", "zeta six"]
    labels = [0, 1, 0, 0, 1, 1, 0, 1]
    demonstrations = select_demonstrations(labels, 4, seed=0)
    reserve = [i for i in balanced_order(labels, 0) if i not in demonstrations]
    for query in set(texts):
        chosen = demonstrations_without(query, demonstrations, texts, labels, reserve)
        assert all(texts[i] != query for i in chosen), query
        # replaced by another example of the same class, so k and the class balance hold
        assert sorted(labels[i] for i in chosen) == sorted(labels[i] for i in demonstrations)
    # through the classifier: a training text used as the query is not shown with itself
    model = make_tiny_causal_lm(vocab_size=len(tokenizer))
    classifier = InContextClassifier(model, tokenizer, IclConfig(num_demonstrations=4), ["positive", "negative"], texts, labels)
    for text in texts:
        assert all(texts[i] != text for i in classifier.demonstrations_for(text))
        assert len(classifier.demonstrations_for(text)) == 4


def test_contextual_calibration_divides_out_the_content_free_distribution():
    scores = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -1.0, -0.5]], dtype=torch.float64)
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    assert torch.allclose(calibrated_log_probabilities(scores, uniform), scores.log_softmax(-1))
    biased = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    expected = scores.softmax(-1) / biased
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(calibrated_log_probabilities(scores, biased).exp(), expected)
    assert calibrated_log_probabilities(scores, biased)[0].argmax() == 1  # the bias toward label 0 removed


def test_classifier_scores_match_the_prompt_it_builds(tokenizer):
    model = make_tiny_causal_lm(vocab_size=len(tokenizer))
    texts, labels = ["the movie was great", "a bad plot", "great actor", "terrible movie"], [0, 1, 0, 1]
    classifier = InContextClassifier(model, tokenizer, IclConfig(num_demonstrations=2, seed=1), ["positive", "negative"], texts, labels)
    query = "a good plot"
    scores, content_free = classifier.label_scores([query])
    prompt = tokenizer("Text: ", add_special_tokens=False)["input_ids"] + tokenizer(query, add_special_tokens=False)["input_ids"]
    prompt += tokenizer("\nCategory:", add_special_tokens=False)["input_ids"]
    prefix = classifier.prefix_ids(classifier.demonstrations)
    decoded = tokenizer.decode(prefix)
    assert decoded.count("Category: ") == 2 and decoded.endswith("\n\n")
    for label in range(2):
        expected = hand_log_likelihood(model, prefix + prompt, classifier.verbalizers[label])
        assert scores[0, label].item() == pytest.approx(expected, abs=1e-4)
    assert content_free.shape == (1, 2) and content_free.sum().item() == pytest.approx(1.0)
    calibrated = classifier.log_probabilities([query], calibrate=True)
    assert torch.allclose(calibrated, calibrated_log_probabilities(scores, content_free))


def test_long_texts_are_truncated_to_fit_the_context_and_counted(tokenizer):
    model = make_tiny_causal_lm(vocab_size=len(tokenizer), max_positions=120)
    long_text = "the movie was great " * 40
    config = IclConfig(num_demonstrations=2, max_text_tokens=500)
    classifier = InContextClassifier(model, tokenizer, config, ["positive", "negative"], [long_text, long_text + "x", "bad"], [0, 0, 1])
    classifier.label_scores([long_text + " again"])
    report = classifier.truncation.to_dict()
    assert classifier.text_token_budget < 40
    assert report["texts_truncated"] == 2 and report["texts"] == 3  # the long demonstration and the query; not "bad"
    assert report["fraction_tokens_kept"] < 0.5
    longest = max(len(v) for v in classifier.verbalizers)
    prompt = classifier.example_ids(long_text)
    assert len(classifier.prefix_ids(classifier.demonstrations)) + len(prompt) + longest <= 120


def test_bad_settings_name_the_fix(tokenizer):
    with pytest.raises(MethodConfigError, match="end with"):
        template_pieces("Category: {label} of {text}")
    with pytest.raises(MethodConfigError, match="must contain"):
        template_pieces("Category: {label}")
    model = make_tiny_causal_lm(vocab_size=len(tokenizer), max_positions=40)
    with pytest.raises(MethodConfigError, match="lower num_demonstrations"):
        InContextClassifier(model, tokenizer, IclConfig(num_demonstrations=8), ["positive", "negative"], ["a b"] * 10, [0, 1] * 5)
    with pytest.raises(MethodConfigError, match="num_demonstrations must be"):
        dataclasses.replace(IclConfig(), num_demonstrations=-1).check()

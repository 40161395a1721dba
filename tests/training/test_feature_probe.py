"""`peftkit train/eval/predict/compare --method feature-probe` on a tiny local BERT: C chosen on a
dev split carved from the training data, features cached, the same row fields as trained methods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from peftkit.cli import EVAL_METRICS_FILE, main, predict_command
from peftkit.data import TaskConfig
from peftkit.errors import AdapterFileError, DataError
from peftkit.loading import load_adapter
from peftkit.training import feature_probe
from peftkit.training.compare import TEXT_METHODS, compare_command
from peftkit.training.feature_probe import choose_c, fit_probe, is_feature_probe_directory, train_feature_probe
from tests.tiny_models import make_bert_tokenizer, save_tiny_bert_checkpoint

POSITIVE = ["the movie was great", "a good plot", "great actor", "the actor was good"]
NEGATIVE = ["the movie was terrible", "a bad plot", "bad actor", "the actor was bad"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # Wide weights, so that a random 2-layer model's features still separate the words.
    return save_tiny_bert_checkpoint(tmp_path_factory.mktemp("tiny-bert"), initializer_range=0.3)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    """One CSV, no validation file (held out per seed); every row a distinct text, so splits can be told apart."""
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    rows = ["text,label"] + [f"{text} {'the ' * i}{'a ' * j},{label}" for label, texts in (("pos", POSITIVE), ("neg", NEGATIVE))
                             for text in texts for i in range(3) for j in range(3)]
    path.write_text("\n".join(rows) + "\n")
    return path


def run(model_dir, task, output, cache, **overrides):
    config = TaskConfig(task=str(task), max_length=16, seed=overrides.pop("seed", 0))
    return train_feature_probe(config, str(model_dir), str(output), overrides.pop("method_options", None),
                               dev_fraction=overrides.pop("dev_fraction", 0.25), batch_size=8, overwrite=True, cache_directory=cache)


def test_c_is_chosen_on_dev_and_the_validation_split_is_scored_once(model_dir, reviews, tmp_path, monkeypatch, single_torch_thread):
    seen = {}
    extract = feature_probe.extract_features

    def spy(probe, dataset, collator, cache, *, batch_size, desc):  # which rows each split's features come from
        seen[desc.split()[0]] = {tuple(row) for row in dataset["input_ids"]}
        return extract(probe, dataset, collator, cache, batch_size=batch_size, desc=desc)

    monkeypatch.setattr(feature_probe, "extract_features", spy)
    metrics = run(model_dir, reviews, tmp_path / "probe", tmp_path / "cache", method_options={"c_values": [1e-4, 1e-2, 1.0, 100.0]})
    # The dev split comes out of the training data: it never shares a row with the reported split or the fitted rows.
    assert seen["dev"] and not seen["dev"] & seen["validation"] and not seen["dev"] & seen["train"]
    assert not seen["train"] & seen["validation"]
    assert (metrics["dev_examples"], metrics["num_train_examples"]) == (len(seen["dev"]), len(seen["train"]))
    # The chosen C is the grid point with the best dev score (ties: the smaller C).
    grid = metrics["c_grid"]
    best = max(grid, key=lambda entry: (entry["dev_metric"], -entry["C"]))
    assert [entry["C"] for entry in grid] == [1e-4, 1e-2, 1.0, 100.0]
    assert best["selected"] and sum(entry["selected"] for entry in grid) == 1
    assert metrics["chosen_settings"] == {"C": best["C"]} and metrics["best_metric"] == best["dev_metric"]
    assert len({entry["dev_loss"] for entry in grid}) == 4  # the grid really fitted four different models
    # Two labels: a binary logistic regression has one coefficient row and one intercept.
    assert metrics["trainable_parameters"] == 32 + 1 and metrics["median_step_seconds"] is None
    assert 0.0 <= metrics["reported_metrics"]["accuracy"] <= 1.0
    output = tmp_path / "probe"
    assert is_feature_probe_directory(output) and (output / "dev_score_vs_c.png").stat().st_size > 0
    assert json.loads((output / "adapter_config.json").read_text())["feature_probe"]["C"] == best["C"]


def test_choose_c_picks_the_best_dev_score_and_breaks_ties_towards_the_smaller_c():
    rng = np.random.default_rng(0)
    # Two informative dimensions and noise; few training rows, so C changes what is learned.
    train_x, dev_x = rng.normal(size=(40, 6)), rng.normal(size=(200, 6))
    train_y, dev_y = (train_x[:, 0] + 0.5 * train_x[:, 1] > 0).astype(int), (dev_x[:, 0] + 0.5 * dev_x[:, 1] > 0).astype(int)

    def accuracy(logits, labels):
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    config = feature_probe.FeatureProbeConfig(c_values=[1e-4, 1e-2, 1.0, 100.0])
    selection = choose_c((train_x, train_y), list(dev_x), list(dev_y), config, 2, "accuracy", accuracy, token_level=False)
    grid = selection["grid"]
    for entry in grid:  # each dev score is what an independent fit at that C scores
        weight, bias, _, _ = fit_probe(train_x, train_y, entry["C"], 2)
        assert entry["dev_metric"] == pytest.approx(float(((dev_x @ weight.T + bias).argmax(-1) == dev_y).mean()))
    scores = [entry["dev_metric"] for entry in grid]
    expected = scores.index(max(scores))  # the grid ascends: the first best is the smallest C
    assert selection["chosen"] == expected and grid[expected]["selected"]
    # At a tiny C every coefficient is near zero: all dev rows fall on one side.
    assert grid[0]["dev_metric"] < grid[expected]["dev_metric"]
    # A tie goes to the smaller C even where a larger one has the lower dev loss (it is merely more confident).
    tied = choose_c((train_x, train_y), list(dev_x), list(dev_y), feature_probe.FeatureProbeConfig(c_values=[10.0, 100.0]),
                    2, "accuracy", lambda logits, labels: {"accuracy": 1.0}, token_level=False)
    assert tied["chosen"] == 0 and tied["grid"][1]["dev_loss"] < tied["grid"][0]["dev_loss"]


def test_features_are_cached_and_the_second_run_computes_none(model_dir, reviews, tmp_path, single_torch_thread):
    first = run(model_dir, reviews, tmp_path / "a", tmp_path / "cache")
    assert first["feature_cache"]["misses"] > 0 and first["feature_cache"]["hits"] == 0
    second = run(model_dir, reviews, tmp_path / "b", tmp_path / "cache")
    total = first["feature_cache"]["misses"]
    assert second["feature_cache"] == {**first["feature_cache"], "hits": total, "misses": 0}
    assert second["reported_metrics"] == first["reported_metrics"] and second["c_grid"] == first["c_grid"]
    # Another seed carves other rows, but the same texts are already there: still nothing computed.
    assert run(model_dir, reviews, tmp_path / "c", tmp_path / "cache", seed=1)["feature_cache"]["misses"] == 0
    # Another pooling is another cache.
    other = run(model_dir, reviews, tmp_path / "d", tmp_path / "cache", method_options={"pooling": "mean"})
    assert other["feature_cache"]["hits"] == 0 and other["feature_cache"]["path"] != first["feature_cache"]["path"]


def test_eval_and_predict_run_the_saved_probe(model_dir, reviews, tmp_path, single_torch_thread):
    output = tmp_path / "probe"
    metrics = run(model_dir, reviews, output, tmp_path / "cache")
    assert main(["eval", str(output)]) == 0
    evaluated = json.loads((output / EVAL_METRICS_FILE).read_text())
    # The backbone run again, through the saved linear map: the score the run reported.
    assert evaluated["accuracy"] == pytest.approx(metrics["reported_metrics"]["accuracy"])
    assert evaluated["num_examples"] == metrics["num_eval_examples"]
    result = predict_command(str(output), text="a good plot")
    assert result["label"] in ("neg", "pos") and sum(result["probabilities"].values()) == pytest.approx(1.0)
    # Serving and batch prediction load adapters that sit in the backbone; this one is refused by name.
    with pytest.raises(AdapterFileError, match="frozen-feature probe.*peftkit eval"):
        load_adapter(output)
    # ... and so is every other way of loading it as an adapter (serve's, Python's, AutoPeftModel's)
    import peftkit
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    with pytest.raises(AdapterFileError, match="frozen-feature probe.*peftkit eval"):
        peftkit.PeftModel.from_pretrained(base, str(output))
    with pytest.raises(AdapterFileError, match="frozen-feature probe.*peftkit eval"):
        peftkit.AutoPeftModelForSequenceClassification.from_pretrained(str(output))


def test_token_classification_reads_the_first_sub_token_of_each_word(model_dir, tmp_path, single_torch_thread):
    conll = tmp_path / "ner.conll"
    sentences = [("john", "B-PER"), ("lives", "O"), ("in", "O"), ("london", "B-LOC")], [("paris", "B-LOC"), ("works", "O")]
    conll.write_text("".join("".join(f"{word}\t{tag}\n" for word, tag in sentence) + "\n" for sentence in sentences * 12))
    output = tmp_path / "ner"
    metrics = run(model_dir, conll, output, tmp_path / "cache")
    assert metrics["primary_metric"] == "f1" and metrics["pooling"]["modes"] == ["first_subtoken"]
    # One coefficient row and intercept per tag the training rows hold (B-LOC, B-PER, O).
    assert metrics["trainable_parameters"] == 3 * 32 + 3
    assert main(["eval", str(output)]) == 0
    assert json.loads((output / EVAL_METRICS_FILE).read_text())["f1"] == pytest.approx(metrics["reported_metrics"]["f1"])
    tagged = predict_command(str(output), text="john lives in paris")
    assert len(tagged["tags"]) == 4


def test_clear_errors_for_empty_data_one_class_and_no_usable_pooling(model_dir, reviews, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    code = main(["train", "--method", "feature-probe", "--model", str(model_dir), "--task", str(empty), "--output", str(tmp_path / "x")])
    assert code == 2 and "empty" in capsys.readouterr().err
    with pytest.raises(DataError, match="no examples to compute"):
        feature_probe.extract_features(None, [], None, None, desc="train features")
    with pytest.raises(DataError, match="only the class 0.*at least two"):
        fit_probe(np.zeros((4, 3)), np.zeros(4, dtype=int), 1.0, 2)
    # A tokenizer that puts no [CLS] first and no sentence-transformers pooling config: told to choose one.
    no_cls = save_tiny_bert_checkpoint(tmp_path / "no-cls")
    tokenizer = make_bert_tokenizer(no_cls)
    tokenizer.save_pretrained(no_cls)
    config = json.loads((no_cls / "tokenizer_config.json").read_text())
    (no_cls / "tokenizer_config.json").write_text(json.dumps({**config, "cls_token": None}))
    code = main(["train", "--method", "feature-probe", "--model", str(no_cls), "--task", str(reviews), "--output", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "no sentence-transformers pooling config" in err and '"pooling": "mean"' in err


def test_compare_runs_the_probe_beside_trained_methods_with_the_same_row_fields(model_dir, reviews, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    assert "feature-probe" in TEXT_METHODS.split(",") and "linear" not in TEXT_METHODS.split(",")
    result = compare_command(methods="feature-probe,linear", model=str(model_dir), task=str(reviews), output=str(tmp_path / "cmp"),
                             epochs=1, batch_size=8, max_train_examples=None, max_length=16, quick=True, seed=0)
    rows = {row["method"]: row for row in result["rows"]}
    probe, runs = rows["feature-probe"], result["runs"]["feature-probe"]
    assert [run["seed"] for run in runs] == [0, 1] and all(run["kept"] for run in runs)  # no grid outside: one run per seed
    assert probe["metric_per_seed"] == [run["reported_metric"] for run in runs]
    assert probe["chosen_text"].startswith("C per seed: ") and len(probe["chosen_text"].split(",")) == 2
    assert probe["trainable_parameters"] == 33 and probe["adapter_bytes"] > 0
    assert probe["median_step_seconds"] is None and probe["step_time_vs_full"] is None and probe["peak_memory_mb"] > 0
    assert probe["backbone_weights_rewritten_per_switch"] == 0
    assert "| feature-probe |" in (tmp_path / "cmp" / "compare.md").read_text()
    assert rows["linear"]["median_step_seconds"] > 0

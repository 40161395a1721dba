"""`peftkit train/eval/predict/compare` with in-context learning, on a tiny local causal LM directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkit.cli import EVAL_METRICS_FILE, main, predict_command
from peftkit.errors import MethodConfigError
from peftkit.training.compare import compare_command
from peftkit.training.in_context import is_icl_directory, parse_shots
from tests.tiny_models import save_tiny_bert_checkpoint, save_tiny_causal_lm

POSITIVE = ["the movie was great", "a good plot", "the actor was good", "great movie", "a great actor"]
NEGATIVE = ["the movie was terrible", "a bad plot", "the actor was bad", "terrible movie", "a bad actor"]

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def causal_lm_dir(tmp_path_factory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("sentiment")
    for split, repeat in (("train", 2), ("validation", 1)):
        rows = ["text,label"] + [f"{t},positive" for t in POSITIVE * repeat] + [f"{t},negative" for t in NEGATIVE * repeat]
        (directory / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return directory


def test_train_eval_predict_in_context(causal_lm_dir, sentiment_dir, tmp_path, capsys):
    output = tmp_path / "icl"
    code = main([
        "train", "--method", "icl", "--model", str(causal_lm_dir), "--task", str(sentiment_dir), "--output", str(output),
        "--icl-shots", "0,1,2,64", "--method-options", '{"num_demonstrations": 2, "calibrate": true}',
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "0 trainable parameters" in printed and "k = 1:" in printed
    assert "k = 64: skipped" in printed  # beyond the 256-token context (and the 20 training rows)
    assert is_icl_directory(output)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == 0 and metrics["num_eval_examples"] == 10
    assert [entry["k"] for entry in metrics["accuracy_by_k"]] == [0, 1, 2]
    assert metrics["best_metric"] == metrics["accuracy_by_k"][2]["calibrated_accuracy"]  # k = 2, calibrated
    assert (output / "accuracy_vs_k.png").stat().st_size > 0
    record = json.loads((output / "adapter_config.json").read_text())
    assert record["icl"]["label_words"] == ["negative", "positive"]  # the task's label names, sorted
    assert sorted(example["label"] for example in record["demonstrations"]) == [0, 1]  # class-balanced
    assert len(record["demonstrations"]) == 2

    assert main(["eval", str(output)]) == 0
    evaluated = json.loads((output / EVAL_METRICS_FILE).read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["best_metric"])  # the same prompts from the saved directory
    assert evaluated["num_examples"] == 10

    result = predict_command(str(output), text="a good plot")
    assert result["label"] in ("negative", "positive")
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)


def test_icl_on_a_task_that_is_not_text_classification_is_a_clear_error(causal_lm_dir, tmp_path, capsys):
    conll = tmp_path / "ner.conll"
    conll.write_text("john\tB-PER\nlives\tO\n\nparis\tB-LOC\n\n" * 5)
    code = main(["train", "--method", "icl", "--model", str(causal_lm_dir), "--task", str(conll), "--output", str(tmp_path / "x")])
    assert code == 2
    assert "classifies text" in capsys.readouterr().err


def test_a_k_that_does_not_fit_is_a_clear_error(causal_lm_dir, sentiment_dir, tmp_path, capsys):
    code = main([
        "train", "--method", "icl", "--model", str(causal_lm_dir), "--task", str(sentiment_dir), "--output", str(tmp_path / "x"),
        "--method-options", '{"num_demonstrations": 16, "max_prompt_tokens": 64}',
    ])
    assert code == 2
    assert "lower num_demonstrations" in capsys.readouterr().err


def test_label_words_must_match_the_labels(causal_lm_dir, sentiment_dir, tmp_path, capsys):
    code = main([
        "train", "--method", "icl", "--model", str(causal_lm_dir), "--task", str(sentiment_dir), "--output", str(tmp_path / "x"),
        "--method-options", '{"label_words": ["good"]}',
    ])
    assert code == 2
    assert "one word per label" in capsys.readouterr().err


def test_shots_parse_and_reject_negatives():
    assert parse_shots("8,0, 2,2") == [0, 2, 8]
    with pytest.raises(MethodConfigError, match="≥ 0"):
        parse_shots("-1,2")


def test_compare_puts_icl_beside_a_tuned_method(causal_lm_dir, sentiment_dir, tmp_path):
    bert = save_tiny_bert_checkpoint(tmp_path / "tiny-bert")
    output = tmp_path / "cmp"
    result = compare_command(
        methods="linear,icl", model=str(bert), task=str(sentiment_dir), output=str(output), epochs=1, batch_size=4,
        max_train_examples=None, max_length=16, icl_model=str(causal_lm_dir), icl_shots="0,2", quick=True, seeds=2,
    )
    rows = {row["method"]: row for row in result["rows"]}
    # one run per seed, each its own draw of demonstrations; the row is their mean ± std
    icl_runs = result["runs"]["icl"]
    assert [run["seed"] for run in icl_runs] == [0, 1] == rows["icl"]["seeds"]
    per_seed = [json.loads((Path(run["run_dir"]) / "metrics.json").read_text())["best_metric"] for run in icl_runs]
    assert rows["icl"]["metric_per_seed"] == per_seed and rows["icl"]["metric"] == pytest.approx(sum(per_seed) / 2)
    assert rows["icl"]["trainable_parameters"] == 0 and rows["icl"]["backbone_weights_rewritten_per_switch"] == 0
    assert [entry["k"] for entry in rows["icl"]["accuracy_by_k"]] == [0, 2, 4]  # and its own k (4 by default)
    assert rows["icl"]["step_time_vs_full"] is None
    assert (output / "compare-icl.png").stat().st_size > 0
    assert "| icl |" in (output / "compare.md").read_text()
    # the icl run used the causal LM, the linear probe the BERT
    assert json.loads((Path(icl_runs[0]["run_dir"]) / "metrics.json").read_text())["model"] == str(causal_lm_dir.resolve())

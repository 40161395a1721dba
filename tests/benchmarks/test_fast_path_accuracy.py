"""benchmarks/fast_path_accuracy.py: its decision rule, and a report built from compare directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

fast_path_accuracy = load_benchmark("fast_path_accuracy")


def arm(per_seed, seeds=(0, 1, 2)):
    import numpy as np

    return {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed, ddof=1)), "per_seed": list(per_seed), "seeds": list(seeds)}


def test_an_arm_costs_accuracy_only_when_it_falls_below_the_seed_noise():
    reference = arm([0.90, 0.92, 0.94])  # std 0.02
    within = fast_path_accuracy.verdict(reference, arm([0.89, 0.91, 0.93]))
    assert not within["costs_accuracy"] and within["difference"] == pytest.approx(-0.01)
    assert within["paired_differences"] == pytest.approx([-0.01, -0.01, -0.01])
    below = fast_path_accuracy.verdict(reference, arm([0.85, 0.86, 0.87]))
    assert below["costs_accuracy"] and below["noise"] == pytest.approx(0.02)
    # seeds that differ are not paired
    assert fast_path_accuracy.verdict(reference, arm([0.9, 0.9], seeds=(5, 6)))["paired_differences"] == []


def write_compare(directory: Path, method: str, per_seed: list[float]) -> None:
    import numpy as np

    directory.mkdir(parents=True)
    row = {"method": method, "primary_metric": "accuracy", "metric": float(np.mean(per_seed)),
           "metric_std": float(np.std(per_seed, ddof=1)), "metric_per_seed": per_seed, "seeds": list(range(len(per_seed))),
           "chosen": {"learning_rate": 0.03}, "epochs_run": [2] * len(per_seed), "median_step_seconds": 1.5, "peak_memory_mb": 900.0}
    compared = {"rows": [row], "quick": True, "grids": {method: {"learning_rate": [0.01, 0.03]}}, "train_args": ["--task", "x"]}
    (directory / "compare.json").write_text(json.dumps(compared))
    (directory / "load.json").write_text(json.dumps({"load_average_at_start": [3.0, 2.0, 1.0], "load_average_at_end": [4.0, 3.0, 2.0]}))


def test_report_reads_each_arms_compare_and_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_path_accuracy, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    runs = tmp_path / "runs"
    write_compare(fast_path_accuracy.arm_dir(runs, "pasta", "bbc-news", "pretrained-dropout"), "pasta", [0.90, 0.92, 0.94])
    write_compare(fast_path_accuracy.arm_dir(runs, "pasta", "bbc-news", "fast-path"), "pasta", [0.80, 0.81, 0.82])
    result = fast_path_accuracy.report(runs, ["pasta"], ["bbc-news", "twitter-ner"])  # twitter-ner not run: left out
    assert [a["arm"] for a in result["arms"]] == ["pretrained-dropout", "fast-path"]
    assert len(result["verdicts"]) == 1 and result["verdicts"][0]["costs_accuracy"]
    written = json.loads((tmp_path / "results" / "fast_path_accuracy.json").read_text())
    assert written["verdicts"][0]["difference"] == pytest.approx(-0.11)
    table = (tmp_path / "results" / "fast_path_accuracy.md").read_text()
    assert "accuracy 0.9200 ± 0.0200" in table and "| yes |" in table and "3.0 → 4.0" in table

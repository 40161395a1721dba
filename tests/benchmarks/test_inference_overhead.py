"""Smoke test of benchmarks/inference_overhead.py on a tiny BERT: plain and PASTA forwards are
timed in pairs, the ratio is computed from them, and the profile names what PASTA adds."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.benchmarks import load_benchmark

inference_overhead = load_benchmark("inference_overhead")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("inference_overhead")
    inference_overhead.run(["bert-tiny"], [1, 3], 16, budget_s=0.5, threads=1, output_dir=output, log=lambda *_: None)
    return output, json.loads((output / "inference_overhead.json").read_text())


def test_writes_json_and_markdown_with_one_row_per_batch(report):
    output, report_json = report
    assert [(r["model"], r["batch_size"], r["seq_len"]) for r in report_json["results"]] == [("bert-tiny", 1, 16), ("bert-tiny", 3, 16)]
    markdown = (output / "inference_overhead.md").read_text()
    assert "| bert-tiny | 1 |" in markdown and "| bert-tiny | 3 |" in markdown and "load average" in markdown
    assert report_json["target"] == 1.03


def test_ratio_and_verdict_follow_the_paired_times(report):
    for record in report[1]["results"]:
        assert record["pairs"] >= 5 and len(record["plain_ms"]) == len(record["pasta_ms"]) == record["pairs"]
        ratios = [p / q for p, q in zip(record["pasta_ms"], record["plain_ms"])]
        assert record["median_pair_ratio"] == pytest.approx(statistics.median(ratios))
        assert record["plain_median_ms"] == pytest.approx(statistics.median(record["plain_ms"]))
        assert record["met"] == (record["median_pair_ratio"] <= 1.03)


def test_profile_names_the_ops_pasta_adds(report):
    extra = {op["op"] for op in report[1]["results"][0]["profile"]["extra_ops"]}
    assert any("index_put" in op for op in extra)  # the per-layer addition
    assert "aten::isin" not in extra  # positions come from a comparison, once per forward


def test_extra_op_cost_is_the_extra_calls_at_pastas_mean_per_call(report):
    profile = report[1]["results"][0]["profile"]
    for op in profile["extra_ops"]:
        calls = op["extra_calls_per_forward"]
        assert calls > 0 and 0 <= op["extra_calls_ms"] <= op["pasta_self_ms"] + 1e-9
    assert profile["extra_ops_self_ms"] >= max(op["extra_calls_ms"] for op in profile["extra_ops"])

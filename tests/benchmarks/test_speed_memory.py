"""Smoke test of benchmarks/speed_memory.py on a tiny BERT: the harness runs, and what it
writes has the right fields with values that agree with the model and with each other."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speed_memory.py"
MB = 2**20


def load_harness():
    spec = importlib.util.spec_from_file_location("speed_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["speed_memory"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


speed_memory = load_harness()
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)
HIDDEN, LAYERS, LABELS = TINY["hidden_size"], TINY["num_hidden_layers"], speed_memory.NUM_LABELS
HEAD = HIDDEN * LABELS + LABELS


def tiny_model_params() -> int:
    return sum(p.numel() for p in AutoModelForSequenceClassification.from_config(BertConfig(num_labels=LABELS, **TINY)).parameters())


def in_process(model_name, method, settings, profile=False):
    return speed_memory.measure(
        model_name, method, batch_size=settings["batch_size"], seq_len=settings["seq_len"],
        warmup=settings["warmup"][model_name], steps=settings["steps"][model_name],
        threads=settings["threads"], profile=profile,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("speed_memory")
    speed_memory.run_benchmark(
        ["bert-tiny"], ["pasta", "lora", "linear", "full"], batch_size=4, seq_len=16, warmup=1, steps=3,
        threads=torch.get_num_threads(), quick=False, output_dir=output, log=lambda *_: None, measure_one=in_process,
    )
    return output, json.loads((output / "speed_memory.json").read_text())


def by_method(report_json):
    return {r["method"]: r for r in report_json["results"]}


def test_writes_json_markdown_and_plot(report):
    output, report_json = report
    assert (output / "speed_memory.png").stat().st_size > 10_000
    markdown = (output / "speed_memory.md").read_text()
    for method in ("pasta", "lora", "linear", "full"):
        assert f"| {method} |" in markdown
    assert "## PASTA targets" in markdown and "peak resident set size" in markdown
    assert set(report_json["what_is_measured"]) >= {"step_time_s", "peak_memory_mb", "adapter_file_bytes"}
    assert [t["threshold"] for t in report_json["targets"]] == [0.7, 0.6, 0.001]


def test_trainable_counts_equal_the_models(report):
    records = by_method(report[1])
    total = tiny_model_params()
    assert all(r["model_params"] == total for r in records.values())
    assert records["full"]["trainable_params"] == total
    # PASTA: one (slots=2 x hidden) table per layer + the new classifier
    assert records["pasta"]["trainable_params"] == LAYERS * 2 * HIDDEN + HEAD
    # LoRA r=8 on query and value: A (8 x hidden) + B (hidden x 8) per module, + the classifier
    assert records["lora"]["trainable_params"] == LAYERS * 2 * (2 * 8 * HIDDEN) + HEAD
    assert records["linear"]["trainable_params"] == HEAD
    assert records["pasta"]["trainable_percent"] == pytest.approx(100 * (LAYERS * 2 * HIDDEN + HEAD) / total)


def test_timings_memory_and_files_are_consistent(report):
    records = by_method(report[1])
    for record in records.values():
        assert len(record["step_times_s"]) == 3 and min(record["step_times_s"]) > 0
        assert record["step_time_s"] == pytest.approx(statistics.median(record["step_times_s"]))
        assert record["grads_mb"] == pytest.approx(record["trainable_params"] * 4 / MB)
        # AdamW keeps exp_avg and exp_avg_sq (each the size of the parameter) plus a scalar step
        assert 2 * record["grads_mb"] <= record["optimizer_state_mb"] <= 2 * record["grads_mb"] + 0.01
        assert record["peak_rss_mb"] >= record["rss_before_model_mb"] + record["peak_memory_mb"] - 1e-6
        assert record["threads"] == torch.get_num_threads()
    assert len({r["model_file_bytes"] for r in records.values()}) == 1
    model_file = records["full"]["model_file_bytes"]
    assert model_file > 4 * tiny_model_params()  # float32 weights + header
    assert records["full"]["adapter_file_bytes"] >= model_file  # every weight + the config
    assert records["linear"]["adapter_file_bytes"] < records["pasta"]["adapter_file_bytes"] < records["lora"]["adapter_file_bytes"]
    # a linear probe back-propagates into the head only; PASTA through every layer
    assert records["linear"]["saved_activations_mb"] < records["pasta"]["saved_activations_mb"]


def test_ratios_and_target_verdicts_follow_the_measurements(report):
    report_json = report[1]
    records = by_method(report_json)
    pasta, full, lora = records["pasta"], records["full"], records["lora"]
    assert full["step_time_vs_full"] == 1.0 and lora["step_time_vs_lora"] == 1.0
    assert pasta["step_time_vs_full"] == pytest.approx(pasta["step_time_s"] / full["step_time_s"])
    if lora["peak_memory_mb"] > 0:  # in-process runs may see no RSS growth for a tiny model
        assert pasta["peak_memory_vs_lora"] == pytest.approx(pasta["peak_memory_mb"] / lora["peak_memory_mb"])
    else:
        assert pasta["peak_memory_vs_lora"] is None
    checks = {c["target"]: c for c in report_json["target_checks"]}
    assert set(checks) == {"step_time", "peak_memory", "adapter_size"}
    assert checks["adapter_size"]["value"] == pytest.approx(pasta["adapter_file_bytes"] / pasta["model_file_bytes"])
    # a tiny model cannot amortise the head and config: the 1/1000 target is missed, and explained
    assert checks["adapter_size"]["met"] is False
    assert any("adapter is" in line for line in report_json["missed_target_analysis"])
    for check in checks.values():  # no RSS growth in-process (see above): no ratio, so "not measured"
        assert check["met"] == (None if check["value"] is None else check["value"] <= check["threshold"])


def test_one_measurement_runs_in_a_fresh_process():
    settings = {"batch_size": 2, "seq_len": 8, "threads": 1, "warmup": {"bert-tiny": 1}, "steps": {"bert-tiny": 1}}
    record = speed_memory.run_in_subprocess("bert-tiny", "pasta", settings)
    assert "error" not in record, record.get("error")
    assert record["threads"] == 1 and len(record["step_times_s"]) == 1
    assert record["trainable_params"] == LAYERS * 2 * HIDDEN + HEAD
    assert record["other_processes_cores"] >= 0.0


def test_unknown_method_is_refused():
    with pytest.raises(SystemExit):
        speed_memory.parse_args(["--methods", "pasta,prefix-tuning"])


def test_other_processes_cpu_is_measured_around_a_call():
    # long enough (0.3 s) that /proc/stat's 10 ms ticks cannot inflate the average past the cores
    result, other_cores = speed_memory.other_processes_cores(lambda: (time.sleep(0.3), 42)[1])
    assert result == 42
    assert other_cores is None or 0.0 <= other_cores <= speed_memory.core_count() + 0.5

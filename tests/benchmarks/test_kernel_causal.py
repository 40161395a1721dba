"""benchmarks/kernel_causal.py end to end on a tiny causal LM: per-seed runs, kernel reuse across
learning rates, and the merge of seeds measured in separate processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.benchmarks import BENCHMARKS, load_benchmark
from tests.tiny_models import save_tiny_causal_lm

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SCRIPT = BENCHMARKS / "kernel_causal.py"
# The tiny byte-level vocabulary starts these five words with five different tokens (bbc-news has five topics).
WORDS = "terrible,actor,movie,the,plot"


def run(*args: str) -> None:
    """The script in its own process, as it is run: loading bbc-news and a model here would raise this
    process's peak RSS, which the in-process speed_memory tests that follow measure growth against."""
    finished = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    if finished.returncode:
        raise SystemExit(finished.stderr.strip().splitlines()[-1])


def test_seeds_run_apart_and_merge_into_one_report(tmp_path):
    harness = load_benchmark("kernel_causal", "kernel_causal_benchmark")
    model_dir = str(save_tiny_causal_lm(tmp_path / "lm"))
    common = ["--model", model_dir, "--shots", "2", "--eval", "6", "--max-length", "24", "--finetune-steps", "2",
              "--learning-rates", "1e-3,1e-2", "--label-words", WORDS, "--cache", str(tmp_path / "cache")]
    run(*common, "--seeds", "0", "--output", str(tmp_path / "a"))
    run(*common, "--seeds", "1", "--output", str(tmp_path / "b"))
    first = json.loads((tmp_path / "a" / f"{harness.STEM}.json").read_text())
    (seed0,) = first["runs"]
    assert seed0["seed"] == 0 and (seed0["num_train"], seed0["num_eval"]) == (10, 6)
    assert set(seed0["finetune"]) == {"0.001", "0.01"}
    assert seed0["gradient_passes"] == 16  # one kernel for both learning rates: 10 + 6 examples, once
    for key in ("kernel_accuracy", "kernel_lstsq_accuracy", "f0_accuracy", "majority_baseline"):
        assert 0.0 <= seed0[key] <= 1.0

    merged = tmp_path / "merged"
    run("--render", str(tmp_path / "b" / f"{harness.STEM}.json"),
        str(tmp_path / "a" / f"{harness.STEM}.json"), "--output", str(merged))
    record = json.loads((merged / f"{harness.STEM}.json").read_text())
    assert [run["seed"] for run in record["runs"]] == [0, 1] and record["processes"] == 2
    report = (merged / f"{harness.STEM}.md").read_text()
    assert "| LoRA fine-tuning, Adam lr 0.01 |" in report and "Longest of 2 processes" in report
    assert "| kernel, SGD (least squares on y − f0, + f0) |" in report
    assert (merged / f"{harness.STEM}.png").read_bytes()[:4] == b"\x89PNG"

    other = json.loads((tmp_path / "a" / f"{harness.STEM}.json").read_text())
    other["settings"]["max_length"] = 99
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different settings"):
        run("--render", str(tmp_path / "other.json"), str(tmp_path / "b" / f"{harness.STEM}.json"),
            "--output", str(merged))

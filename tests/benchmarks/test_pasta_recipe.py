"""benchmarks/pasta_recipe.py: the variants' flags, resuming, and the report built from run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

pasta_recipe = load_benchmark("pasta_recipe")


@pytest.fixture(autouse=True)
def tiny_model_facts(monkeypatch):
    monkeypatch.setattr(pasta_recipe, "_model_facts", lambda: (7, 4))  # [CLS] id 7, 4 layers


def write_run(runs: Path, task: str, variant: str, seed: int, metric: float, dev: float = 0.9, primary: str = "accuracy") -> None:
    directory = pasta_recipe.run_dir(runs, task, variant, seed)
    directory.mkdir(parents=True)
    metrics = {"primary_metric": primary, "best_metric": dev, "best_epoch": 3, "epochs": [{}] * 5,
               "reported_metrics": {primary: metric}, "trainable_parameters": 6533, "train_seconds": 100.0,
               "median_step_seconds": 2.0}
    (directory / "metrics.json").write_text(json.dumps(metrics))
    (directory / "load.json").write_text(json.dumps({"load_average_at_start": [3.0, 0, 0], "load_average_at_end": [5.0, 0, 0]}))


def test_every_variant_is_one_change_from_the_baseline_and_taggers_get_no_pooler_variant():
    found = pasta_recipe.variants("bbc-news")
    base = found[pasta_recipe.BASELINE]
    for name, spec in found.items():
        if name in pasta_recipe.RATES:
            assert spec["options"] == {} and spec["flags"] == ["--learning-rate", str(pasta_recipe.RATES[name])]
            continue
        assert spec["flags"][:2] == base["flags"]
        changes = (len(spec["flags"]) > 2) + bool(spec["options"]) + (spec["epochs"] != base["epochs"])
        assert changes == 1, name
    assert found["cls-only"]["options"] == {"num_special_tokens": 1, "special_token_ids": [7]}
    assert found["upper-half"]["options"] == {"layers": [2, 3]}
    assert found["pooler-mean"]["options"] == {"pooler": "mean"}
    assert found["epochs2"]["epochs"] == 2 and base["epochs"] == pasta_recipe.EPOCHS
    assert not set(pasta_recipe.SEQUENCE_ONLY) & set(pasta_recipe.variants("twitter-ner"))
    for task, variant, seeds in pasta_recipe.PRIORITY:  # the queue names only variants that exist
        assert variant in pasta_recipe.variants(task) and set(seeds) <= set(pasta_recipe.SEEDS)


def test_a_run_with_metrics_is_not_run_again_and_others_get_compares_flags(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pasta_recipe.subprocess, "call", lambda argv, **kwargs: calls.append(argv) or 0)
    write_run(tmp_path, "bbc-news", "pooler-mean", 0, 0.95)
    spec = pasta_recipe.variants("bbc-news")["pooler-mean"]
    pasta_recipe.run_one(tmp_path, "bbc-news", "pooler-mean", spec, 0)
    assert calls == []
    pasta_recipe.run_one(tmp_path, "bbc-news", "pooler-mean", spec, 1)
    (argv,) = calls
    joined = " ".join(argv)
    assert " ".join(pasta_recipe.COMPARE_ARGS) in joined and "--seed 1" in joined and "--epochs 8" in joined
    assert json.loads(argv[argv.index("--method-options") + 1]) == {"pooler": "mean"}
    assert argv[argv.index("--output") + 1] == str(pasta_recipe.run_dir(tmp_path, "bbc-news", "pooler-mean", 1))
    assert "--overwrite" in argv and "--resume" not in argv
    cut_off = pasta_recipe.run_dir(tmp_path, "bbc-news", "pooler-mean", 2)
    (cut_off / "checkpoint").mkdir(parents=True)  # a run killed mid-way continues from its checkpoint
    (cut_off / "metrics.json").write_text(json.dumps({"primary_metric": "accuracy", "epochs": [{}]}))  # of its epochs so far
    assert pasta_recipe.read_metrics(tmp_path, "bbc-news", "pooler-mean", 2) is None
    pasta_recipe.run_one(tmp_path, "bbc-news", "pooler-mean", spec, 2)
    assert "--resume" in calls[-1] and "--overwrite" not in calls[-1]


def test_a_run_another_copy_is_making_is_skipped(tmp_path, monkeypatch):
    """Two copies of the script share the plan: the run one of them holds is not started twice."""
    import fcntl
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(pasta_recipe.subprocess, "call", lambda argv, **kwargs: calls.append(argv) or 0)
    spec = pasta_recipe.variants("twitter-ner")["cls-only"]
    lock_path = pasta_recipe.run_dir(tmp_path, "twitter-ner", "cls-only", 0).parent / "seed=0.lock"
    lock_path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(lock_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        pasta_recipe.run_one(tmp_path, "twitter-ner", "cls-only", spec, 0)
        assert calls == []
        pasta_recipe.run_one(tmp_path, "twitter-ner", "cls-only", spec, 1)  # another seed: not held
        assert len(calls) == 1 and "--seed 1" in " ".join(calls[0])
    finally:
        holder.kill()
        holder.wait()
    pasta_recipe.run_one(tmp_path, "twitter-ner", "cls-only", spec, 0)  # the holder died: its lock went with it
    assert len(calls) == 2 and "--seed 0" in " ".join(calls[1])
    with open(lock_path, "w") as lock:  # and nothing holds it now
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_report_gives_mean_std_over_the_seeds_run_and_a_clear_win_only_beyond_the_noise(tmp_path, monkeypatch):
    monkeypatch.setattr(pasta_recipe, "RESULTS", tmp_path / "results")
    runs = tmp_path / "runs"
    for seed, (base, mean, normal) in enumerate([(0.90, 0.95, 0.91), (0.92, 0.96, 0.90), (0.94, 0.97, 0.92)]):
        write_run(runs, "bbc-news", "lr3e-2", seed, base)
        write_run(runs, "bbc-news", "pooler-mean", seed, mean)
        write_run(runs, "bbc-news", "init-normal", seed, normal)
    write_run(runs, "twitter-ner", "lr1e-1", 0, 0.30, primary="f1")
    result = pasta_recipe.report(runs)
    rows = {(r["task"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {("bbc-news", "lr3e-2"), ("bbc-news", "pooler-mean"), ("bbc-news", "init-normal"), ("twitter-ner", "lr1e-1")}
    assert rows["bbc-news", "lr3e-2"]["mean"] == pytest.approx(0.92) and rows["bbc-news", "lr3e-2"]["std"] == pytest.approx(0.02)
    assert rows["bbc-news", "pooler-mean"]["wins_clearly"]  # +0.04 > max(0.02, 0.01)
    assert not rows["bbc-news", "init-normal"]["wins_clearly"]  # -0.01
    assert rows["twitter-ner", "lr1e-1"]["std"] is None and rows["twitter-ner", "lr1e-1"]["metric_name"] == "f1"
    markdown = (tmp_path / "results" / "pasta_recipe.md").read_text()
    assert "accuracy 0.9200 ± 0.0200" in markdown and "+0.0400 (clear)" in markdown and "f1 0.3000 (1 seed)" in markdown
    assert (tmp_path / "results" / "pasta_recipe.png").stat().st_size > 0
    # prose around the table survives a rebuild
    (tmp_path / "results" / "pasta_recipe.md").write_text(markdown.replace("<!-- table -->", "Why it trails.\n\n<!-- table -->"))
    pasta_recipe.report(runs)
    assert "Why it trails." in (tmp_path / "results" / "pasta_recipe.md").read_text()

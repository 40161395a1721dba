"""``peftkit train/eval/predict --method icl``: in-context learning, where training trains nothing.

ICL (``peftkit.methods.icl``) has no parameters, so the training loop has nothing to do with it
and never sees it. What ``train --method icl`` does instead: draw the demonstrations from the
training split, evaluate on the validation split (the same split, seed and subset as a tuned
method's run), optionally at several k (accuracy against k, with and without contextual
calibration, plotted), and save a small *ICL directory* that ``eval`` and ``predict`` use
like an adapter:

    adapter_config.json   peft_type "ICL": the IclConfig (template, k, seed, calibration), the
                          label words, the demonstrations and reserve examples (training-split
                          ids, labels and texts: predict needs no dataset), the causal LM, the task
    metrics.json          the validation metrics, the truncation report, accuracy by k
    accuracy_vs_k.png     when more than one k was measured

``peftkit compare`` reads metrics.json like any other run (0 trainable parameters, 0 bytes of
weights, no training steps).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from peftkit.errors import AdapterFileError, DataError, MethodConfigError
from peftkit.files import (
    atomic_write,
    atomic_write_json,
    ensure_output_dir,
    recorded_peft_type,
)
from peftkit.methods.icl import IclConfig, InContextClassifier, default_label_words

ICL_PEFT_TYPE = "ICL"
ACCURACY_PLOT = "accuracy_vs_k.png"


def is_icl_directory(directory: str | Path) -> bool:
    return recorded_peft_type(directory) == ICL_PEFT_TYPE


def parse_shots(shots: str | Sequence[int] | None) -> list[int]:
    """"0,1,2,4,8" → [0, 1, 2, 4, 8]."""
    if shots is None or shots == "":
        return []
    values = shots.split(",") if isinstance(shots, str) else list(shots)
    try:
        parsed = sorted({int(str(value).strip()) for value in values if str(value).strip()})
    except ValueError:
        raise MethodConfigError(f"--icl-shots takes comma-separated counts of demonstrations, e.g. 0,1,2,4,8; got {shots!r}.") from None
    if any(value < 0 for value in parsed):
        raise MethodConfigError(f"--icl-shots must be ≥ 0, got {shots!r}.")
    return parsed


def _split_columns(dataset) -> tuple[list[str], list[str] | None, list[int]]:
    pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
    return list(dataset["text"]), pairs, [int(label) for label in dataset["label"]]


def _icl_config(options: dict[str, Any] | None, seed: int, label_names: Sequence[str]) -> IclConfig:
    options = dict(options or {})
    options.setdefault("seed", seed)
    config = IclConfig.from_dict(options)
    if config.label_words is None:
        config.label_words = default_label_words(label_names)
    if len(config.label_words) != len(label_names):
        raise MethodConfigError(
            f"label_words has {len(config.label_words)} words but the task has {len(label_names)} labels "
            f"({', '.join(label_names)}); give one word per label, in that order."
        )
    config.check()
    return config


def _classify(classifier: InContextClassifier, texts, pairs, labels, label_names, progress: bool = True) -> dict[str, Any]:
    from peftkit import data

    started = time.perf_counter()
    scores, content_free = classifier.label_scores(texts, pairs, progress=progress)
    seconds = time.perf_counter() - started
    from peftkit.methods.icl import calibrated_log_probabilities

    plain = data.compute_metrics(data.TEXT_CLASSIFICATION, scores.log_softmax(-1).numpy(), np.asarray(labels), list(label_names))
    calibrated = data.compute_metrics(data.TEXT_CLASSIFICATION, calibrated_log_probabilities(scores, content_free).numpy(), np.asarray(labels), list(label_names))
    return {"uncalibrated": plain, "calibrated": calibrated, "seconds_per_query": seconds / max(1, len(texts))}


def train_in_context(
    task_config,
    model: str | None,
    output: str | None,
    method_options: dict[str, Any] | None = None,
    shots: str | Sequence[int] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Evaluate ICL on the task's validation split, at its k and at each of ``shots``, and save the ICL directory."""
    import resource

    from peftkit import data
    from peftkit.loading import load_causal_lm

    loaded_task = data.load_task(task_config)
    if loaded_task.kind != data.TEXT_CLASSIFICATION:
        raise DataError(f"in-context learning classifies text; {loaded_task.name} is {loaded_task.kind}. Pick a text-classification task.")
    output_dir = ensure_output_dir(Path(output or Path("runs") / f"icl-{loaded_task.name}"), overwrite=overwrite, resume=resume)
    config = _icl_config(method_options, task_config.seed, loaded_task.label_names)
    causal_lm, tokenizer, model_path = load_causal_lm(model)
    pool_texts, pool_pairs, pool_labels = _split_columns(loaded_task.train)
    texts, pairs, labels = _split_columns(loaded_task.validation)
    print(f"icl on {loaded_task.name} ({loaded_task.description})")
    print(f"model: {model_path}; {config.num_demonstrations} demonstrations; 0 trainable parameters")

    started = time.perf_counter()
    sweep = []
    for k in sorted(set(parse_shots(shots)) | {config.num_demonstrations}):
        try:
            classifier = InContextClassifier(causal_lm, tokenizer, dataclasses.replace(config, num_demonstrations=k),
                                             config.label_words, pool_texts, pool_labels, pool_pairs)
        except (MethodConfigError, DataError) as error:
            if k == config.num_demonstrations:  # the run's own k must fit
                raise
            print(f"k = {k}: skipped ({error})")  # a sweep point beyond the context or the training split
            continue
        result = _classify(classifier, texts, pairs, labels, loaded_task.label_names)
        entry = {"k": k, "accuracy": result["uncalibrated"]["accuracy"], "calibrated_accuracy": result["calibrated"]["accuracy"],
                 "macro_f1": result["uncalibrated"]["macro_f1"], "calibrated_macro_f1": result["calibrated"]["macro_f1"],
                 "seconds_per_query": result["seconds_per_query"], "truncation": classifier.truncation.to_dict()}
        sweep.append(entry)
        print(f"k = {k}: accuracy {entry['accuracy']:.4f}, calibrated {entry['calibrated_accuracy']:.4f}; "
              f"{classifier.truncation.summary()}")
        if k == config.num_demonstrations:
            chosen, chosen_result = classifier, result
    own = chosen_result["calibrated" if config.calibrate else "uncalibrated"]
    task_info = {
        **loaded_task.to_info(),
        "split": {"validation_fraction": task_config.validation_fraction, "seed": task_config.seed, "max_eval_examples": task_config.max_eval_examples},
    }
    save_icl_directory(output_dir, chosen, model_path, task_info)
    metrics = {
        "method": "icl",
        "primary_metric": data.primary_metric(loaded_task.kind),
        "best_metric": own["accuracy"],
        "final_metrics": own,
        "epochs": [],
        "calibrated": config.calibrate,
        "num_demonstrations": config.num_demonstrations,
        "accuracy_by_k": sweep,
        "truncation": chosen.truncation.to_dict(),
        "majority_baseline": data.majority_baseline(loaded_task),
        "trainable_parameters": 0,
        "total_parameters": sum(p.numel() for p in causal_lm.parameters()),
        "trainable_percent": 0.0,
        "median_step_seconds": None,
        "seconds_per_query": chosen_result["seconds_per_query"],
        "train_seconds": 0.0,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "num_train_examples": len(pool_texts),
        "num_eval_examples": len(texts),
        "model": model_path,
    }
    atomic_write_json(output_dir / "metrics.json", metrics)
    if len(sweep) > 1:
        plot_accuracy_vs_k(sweep, output_dir / ACCURACY_PLOT, title=f"in-context learning on {loaded_task.name}",
                           majority=metrics["majority_baseline"])
    print()
    print(f"  validation accuracy: {own['accuracy']:.4f} with k = {config.num_demonstrations}"
          f"{' (calibrated)' if config.calibrate else ''}; majority-class baseline {metrics['majority_baseline']:.4f}")
    print(f"  {chosen.truncation.summary()}")
    print(f"  written: {output_dir}/adapter_config.json, metrics.json" + (f", {ACCURACY_PLOT}" if len(sweep) > 1 else ""))
    return metrics


def save_icl_directory(directory: Path, classifier: InContextClassifier, model_path: str, task_info: dict[str, Any]) -> None:
    """The ICL run as an adapter-like directory (``adapter_config.json``), written atomically."""

    def examples(indices: Sequence[int]) -> list[dict[str, Any]]:
        return [
            {"id": index, "label": classifier.pool_labels[index], "text": classifier.pool_texts[index],
             **({"text_pair": classifier.pool_pairs[index]} if classifier.pool_pairs is not None else {})}
            for index in indices
        ]

    atomic_write_json(directory / "adapter_config.json", {
        "peft_type": ICL_PEFT_TYPE,
        "base_model_name_or_path": model_path,
        "icl": dataclasses.asdict(classifier.config),
        "demonstrations": examples(classifier.demonstrations),
        "reserve": examples(classifier.reserve),
        "task": task_info,
    })


def load_icl_directory(directory: str | Path, model: str | None = None) -> tuple[InContextClassifier, dict[str, Any]]:
    """(classifier, task info) from an ICL directory; the causal LM from ``model`` or the one recorded."""
    from peftkit.loading import load_causal_lm

    path = Path(directory) / "adapter_config.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        config = IclConfig.from_dict(record["icl"])
        examples = list(record["demonstrations"]) + list(record["reserve"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise AdapterFileError(f"{path} is not a readable ICL record ({error}); run `peftkit train --method icl` again.") from None
    causal_lm, tokenizer, _ = load_causal_lm(model or record["base_model_name_or_path"])
    count = len(record["demonstrations"])
    classifier = InContextClassifier(
        causal_lm, tokenizer, config, config.label_words,
        [example["text"] for example in examples], [example["label"] for example in examples],
        [example.get("text_pair", "") for example in examples] if record["task"].get("is_pair") else None,
        demonstrations=list(range(count)), reserve=list(range(count, len(examples))),
    )
    return classifier, record["task"]


def evaluate_in_context(directory: str | Path, task: str | None = None, model: str | None = None,
                        max_eval_examples: int | None = None) -> dict[str, Any]:
    """``peftkit eval`` of an ICL directory on its task's validation split (or another task with the same labels)."""
    from peftkit import data
    from peftkit.data.tasks import load_recorded_task

    classifier, stored = load_icl_directory(directory, model)
    loaded_task = load_recorded_task(stored, "the ICL run", task, max_eval_examples)
    texts, pairs, labels = _split_columns(loaded_task.validation)
    log_probabilities = classifier.log_probabilities(texts, pairs, progress=True)
    metrics = data.compute_metrics(loaded_task.kind, log_probabilities.numpy(), np.asarray(labels), loaded_task.label_names)
    return {
        "task": loaded_task.name,
        "num_examples": len(texts),
        "primary_metric": data.primary_metric(loaded_task.kind),
        "majority_baseline": data.majority_baseline(loaded_task),
        **metrics,
        "truncation": classifier.truncation.to_dict(),
    }


def plot_accuracy_vs_k(sweep: list[dict[str, Any]], path: Path, *, title: str, majority: float | None = None,
                       references: dict[str, float] | None = None) -> None:
    """Accuracy against k (uncalibrated and calibrated), with tuned methods as horizontal lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axes = figure.subplots()
    ks = [entry["k"] for entry in sweep]
    axes.plot(ks, [entry["accuracy"] for entry in sweep], marker="o", label="ICL")
    axes.plot(ks, [entry["calibrated_accuracy"] for entry in sweep], marker="s", label="ICL, calibrated")
    for index, (name, value) in enumerate((references or {}).items()):
        axes.axhline(value, color=f"C{index + 2}", linestyle="--", linewidth=1, label=name)
    if majority is not None:
        axes.axhline(majority, color="grey", linestyle=":", linewidth=1, label="majority class")
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xticks(ks, [str(k) for k in ks])
    axes.set_xlabel("demonstrations k")
    axes.set_ylabel("validation accuracy")
    axes.set_title(title)
    axes.legend(fontsize=8)
    atomic_write(path, lambda tmp: FigureCanvasAgg(figure).print_png(tmp))

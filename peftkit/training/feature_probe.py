"""``peftkit train/eval/predict --method feature-probe``: logistic regression on frozen features.

The promise: the strong baseline a practitioner would write (``peftkit.methods.feature_probe``),
measured under the same honest rules as every trained method in ``peftkit compare``. It rests on:

1. **C never sees the reported split.** A dev split is carved from the training data
   (``--dev-fraction``, 0.2 when not given, the same carve ``compare`` makes for every method:
   the seed changes it); every C of ``c_values`` is fitted on the rest and scored on dev with
   the task's metric (accuracy, or seqeval entity F1 for NER); the best (ties: the smaller C)
   is scored once on the validation split. Like the other methods,
   the probe is fitted on the training data minus dev, not refitted on all of it.
2. **Features are computed once.** The backbone runs once per distinct input: features are
   cached on disk per (backbone fingerprint, dtype, pooling), keyed by the SHA-256 of each
   example's token ids (and, for NER, of the positions read), in ``$PEFTKIT_CACHE/features``.
   Later seeds, grid points and runs read them back; a different model, pooling or
   max_length misses.
3. **What it saves is what it is.** The directory holds ``adapter_model.safetensors`` (the
   probe as one linear map, the standardisation folded in: ``classifier.weight`` [labels,
   features], ``classifier.bias`` [labels]), ``adapter_config.json`` (peft_type
   "FEATURE_PROBE", the pooling, the chosen C, the backbone's identity, the task) and
   ``metrics.json`` + ``dev_score_vs_c.png``. ``eval`` and ``predict --text`` run it through
   the backbone; serving and batch prediction do not load it (a clear error says so); `peftkit cost` reads it.

Trainable parameters are the logistic regression's coefficients and intercepts (a binary fit
has one row). There are no gradient steps, so compare's step time is not applicable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from peftkit.errors import AdapterFileError, AdapterMismatchError, DataError
from peftkit.files import (
    atomic_write,
    atomic_write_json,
    ensure_output_dir,
    recorded_peft_type,
)
from peftkit.methods.feature_probe import (
    FIRST_SUBTOKEN,
    FeatureProbeConfig,
    FeatureProbeModel,
    Pooling,
    linear_map,
    sentence_pooling,
)

FEATURE_PROBE_PEFT_TYPE = "FEATURE_PROBE"
DEFAULT_DEV_FRACTION = 0.2
WEIGHTS_FILE = "adapter_model.safetensors"
DEV_PLOT = "dev_score_vs_c.png"


def is_feature_probe_directory(directory: str | Path) -> bool:
    return recorded_peft_type(directory) == FEATURE_PROBE_PEFT_TYPE


# -- features, once ---------------------------------------------------------------------------------


class FeatureCache:
    """Per-example features of one (backbone, dtype, pooling), in one safetensors file.

    Keys are SHA-256 digests of what the backbone reads (token ids, token types, attention mask)
    plus, for NER, which positions are kept, so any change of text, tokenizer or max_length misses.
    Writes go through a file lock and an atomic rename: concurrent runs merge, a kill loses nothing.
    """

    def __init__(self, directory: Path, identity: dict[str, Any], spec: str):
        self.path = Path(directory) / f"{identity['fingerprint']}-{identity['dtype']}-{spec}.safetensors"
        self.hits = self.misses = 0

    def read(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if not self.path.is_file():
            return {}
        try:
            return load_file(str(self.path))
        except Exception as error:  # a damaged cache is recomputed, not fatal
            warnings.warn(f"ignoring the unreadable feature cache {self.path} ({error}); it will be rewritten.")
            return {}

    def add(self, new: dict[str, torch.Tensor]) -> None:
        from filelock import FileLock
        from safetensors.torch import save_file

        if not new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged = {**self.read(), **{key: value.contiguous() for key, value in new.items()}}
            atomic_write(self.path, lambda tmp: save_file(merged, tmp))


def default_cache_directory() -> Path:
    from peftkit.training.pretrain import cache_dir

    return cache_dir() / "features"


def _example_key(example: dict[str, Any], token_level: bool) -> str:
    digest = hashlib.sha256()
    for name in ("input_ids", "token_type_ids", "attention_mask"):
        if name in example:
            digest.update(name.encode())
            digest.update(np.asarray(example[name], dtype=np.int64).tobytes())
    if token_level:
        digest.update(b"kept")
        digest.update((np.asarray(example["labels"]) != -100).tobytes())
    return digest.hexdigest()


def extract_features(probe: FeatureProbeModel, dataset, collator, cache: FeatureCache | None, *,
                     batch_size: int = 64, desc: str = "features") -> list[np.ndarray]:
    """Features of every row of an encoded dataset, computed only where ``cache`` lacks them.

    Returns one float32 array per row: [features] pooled, or [words kept, hidden] for token
    classification (the first sub-token of each word, ``labels`` ≠ -100).

    Raises:
        DataError: the dataset has no rows.
    """
    if len(dataset) == 0:
        raise DataError(f"no examples to compute {desc} of; the split is empty: give data with rows in it.")
    token_level = probe.pooling is None
    rows = [dataset[index] for index in range(len(dataset))]
    keys = [_example_key(row, token_level) for row in rows]
    stored = cache.read() if cache is not None else {}
    missing = [index for index, key in enumerate(keys) if key not in stored]
    computed: dict[str, torch.Tensor] = {}
    reference = next(probe.backbone.parameters())
    # Longest first: similar lengths share a batch, so little compute goes to padding.
    missing.sort(key=lambda index: -len(rows[index]["input_ids"]))
    with torch.no_grad():
        for start in tqdm(range(0, len(missing), batch_size), desc=desc, unit="batch", disable=not missing):
            chunk = missing[start:start + batch_size]
            batch = collator([rows[index] for index in chunk])
            labels = batch.pop("labels")
            inputs = {name: value.to(reference.device) for name, value in batch.items()}
            features = probe.features(**inputs).float().cpu()
            if token_level:
                per_row = [row[row_labels != -100] for row, row_labels in zip(features, labels)]
            else:
                per_row = list(features)
            for index, value in zip(chunk, per_row):
                computed[keys[index]] = value.clone()
    if cache is not None:
        cache.hits += len(rows) - len(missing)
        cache.misses += len(missing)
        cache.add(computed)
    found = {**stored, **computed}
    return [found[key].numpy() for key in keys]


def _labels_of(dataset, token_level: bool) -> list[np.ndarray]:
    labels = [np.asarray(row) for row in dataset["labels"]]
    return [row[row != -100] for row in labels] if token_level else labels


# -- choosing C ------------------------------------------------------------------------------------


def _task_logits(per_row: list[np.ndarray], labels: list[np.ndarray], token_level: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels shaped as the task's metrics take them: [N, K] / [N], or [N, T, K] / [N, T] with -100 padding."""
    if not token_level:
        return np.stack(per_row), np.asarray(labels)
    width = max(len(row) for row in labels)
    num_labels = per_row[0].shape[-1]
    logits = np.zeros((len(per_row), width, num_labels), dtype=np.float32)
    padded = np.full((len(per_row), width), -100, dtype=np.int64)
    for index, (row_logits, row_labels) in enumerate(zip(per_row, labels)):
        logits[index, :len(row_labels)] = row_logits
        padded[index, :len(row_labels)] = row_labels
    return logits, padded


def fit_probe(features: np.ndarray, labels: np.ndarray, c: float, num_labels: int, max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """StandardScaler + LogisticRegression(C=c) (scikit-learn, lbfgs, L2) as (W, b, parameters, converged).

    Args:
        features: [examples, features]; labels: [examples] class ids in [0, num_labels).
    Raises:
        DataError: fewer than two classes among ``labels`` (nothing to tell apart).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(labels)) < 2:
        raise DataError(
            f"the feature probe's training rows hold only the class {int(labels[0])}; a classifier needs at least two. "
            "Give more training data (--max-train-examples) or lower --dev-fraction."
        )
    scaler = StandardScaler().fit(features)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier = LogisticRegression(C=c, max_iter=max_iter).fit(scaler.transform(features), labels)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    weight, bias = linear_map(classifier, scaler, num_labels)
    return weight, bias, int(classifier.coef_.size + classifier.intercept_.size), converged


def _scores(weight: np.ndarray, bias: np.ndarray, per_row: list[np.ndarray], labels: list[np.ndarray], token_level: bool,
            metrics_fn) -> dict[str, float]:
    logits = [row @ weight.T + bias for row in per_row]
    task_logits, task_labels = _task_logits(logits, labels, token_level)
    metrics = dict(metrics_fn(task_logits, task_labels))
    flat = torch.from_numpy(np.concatenate([np.atleast_2d(row) for row in logits]))
    flat_labels = torch.from_numpy(np.concatenate([np.atleast_1d(row) for row in labels])).long()
    metrics["loss"] = float(torch.nn.functional.cross_entropy(flat, flat_labels))
    return metrics


def choose_c(train: tuple[np.ndarray, np.ndarray], dev_rows: list[np.ndarray], dev_labels: list[np.ndarray],
             config: FeatureProbeConfig, num_labels: int, primary: str, metrics_fn, token_level: bool) -> dict[str, Any]:
    """Fit every C of ``config.c_values`` on ``train`` (features, labels) and score it on dev.

    The winner has the best dev ``primary`` metric; ties go to the smaller C, the stronger
    regularisation, as scikit-learn's GridSearchCV does over an ascending grid. Not to the lower
    dev log-loss, which other methods' selection uses between epochs: across C the loss mostly
    measures confidence, and it falls as regularisation weakens even where accuracy does not move.
    Returns {"chosen": index, "grid": [...], "weight", "bias", "parameters"}.
    """
    grid, fits = [], []
    for c in tqdm(config.c_values, desc="C on dev", unit="fit"):
        weight, bias, parameters, converged = fit_probe(*train, c, num_labels, config.max_iter)
        scores = _scores(weight, bias, dev_rows, dev_labels, token_level, metrics_fn)
        grid.append({"C": float(c), "dev_metric": scores[primary], "dev_loss": scores["loss"], "converged": converged})
        fits.append((weight, bias, parameters))
        print(f"C = {c:g}: dev {primary} {scores[primary]:.4f}, dev loss {scores['loss']:.4f}{'' if converged else ' (not converged)'}")
    best = max(range(len(grid)), key=lambda index: (grid[index]["dev_metric"], -grid[index]["C"]))
    for index, entry in enumerate(grid):
        entry["selected"] = index == best
    weight, bias, parameters = fits[best]
    return {"chosen": best, "grid": grid, "weight": weight, "bias": bias, "parameters": parameters}


# -- the command -----------------------------------------------------------------------------------


def _load_backbone(model_path: str, task_info: dict[str, Any]):
    from peftkit.loading import load_base_model, load_processor
    from peftkit.models.backbones import backbone

    base = load_base_model(model_path, task_info, head_restored=True)  # the probe is the head: the new one is never used
    tokenizer = load_processor(model_path, task_info["kind"], base.config)
    return backbone(base).eval(), tokenizer


def _pooling_record(pooling: Pooling | None) -> dict[str, Any]:
    if pooling is None:
        return {"modes": [FIRST_SUBTOKEN], "normalize": False, "source": "token classification: first sub-token of each word"}
    return {"modes": list(pooling.modes), "normalize": pooling.normalize, "source": pooling.source}


def _pooling_from_record(record: dict[str, Any]) -> Pooling | None:
    modes = tuple(record["modes"])
    return None if modes == (FIRST_SUBTOKEN,) else Pooling(modes, bool(record["normalize"]), record.get("source", ""))


def train_feature_probe(
    task_config,
    model: str | None,
    output: str | None,
    method_options: dict[str, Any] | None = None,
    dev_fraction: float | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    resume: bool = False,
    cache_directory: str | Path | None = None,
) -> dict[str, Any]:
    """Fit the probe (C chosen on a dev split of the training data), score the validation split once, save it.

    Returns the metrics.json dict: ``best_metric`` is the dev score of the chosen C,
    ``reported_metrics`` the validation metrics, ``c_grid`` every C tried.

    Raises:
        DataError: an image task, an empty split, or a training split with one class.
        UnsupportedModelError: the model has no usable pooling (``sentence_pooling``).
    """
    from peftkit import data
    from peftkit.loading import resolve_model_path
    from peftkit.models import hidden_size
    from peftkit.models.backbones import backbone_identity

    started = time.perf_counter()
    config = FeatureProbeConfig.from_dict(dict(method_options or {}))
    config.check()
    loaded_task = data.load_task(task_config)
    if loaded_task.kind not in (data.TEXT_CLASSIFICATION, data.TOKEN_CLASSIFICATION):
        raise DataError(
            f"the feature probe reads text (classification or NER); {loaded_task.name} is {loaded_task.kind}. "
            "For images use --method linear (a head on the frozen ViT)."
        )
    token_level = loaded_task.kind == data.TOKEN_CLASSIFICATION
    loaded_task, dev_split = data.carve_dev_split(loaded_task, DEFAULT_DEV_FRACTION if dev_fraction is None else dev_fraction, task_config.seed)
    output_dir = ensure_output_dir(Path(output or Path("runs") / f"feature-probe-{loaded_task.name}"), overwrite=overwrite, resume=resume)
    task_info = {
        **loaded_task.to_info(),
        "split": {"validation_fraction": task_config.validation_fraction, "seed": task_config.seed,
                  "max_eval_examples": task_config.max_eval_examples},
    }
    model_path = resolve_model_path(model, loaded_task.kind)
    backbone_model, tokenizer = _load_backbone(model_path, task_info)
    pooling = None if token_level else sentence_pooling(model_path, tokenizer, config)
    num_labels = loaded_task.num_labels
    hidden = hidden_size(backbone_model)
    width = hidden * (1 if pooling is None else len(pooling.modes))
    placeholder = torch.zeros(num_labels, width)
    probe = FeatureProbeModel(backbone_model, pooling, placeholder, torch.zeros(num_labels))
    identity = backbone_identity(backbone_model)
    spec = FIRST_SUBTOKEN if pooling is None else "+".join(pooling.modes) + ("-normalized" if pooling.normalize else "")
    cache = FeatureCache(Path(cache_directory) if cache_directory else default_cache_directory(), identity, spec)
    print(f"feature-probe on {loaded_task.name} ({loaded_task.description})")
    print(f"model: {model_path}; features: {_pooling_record(pooling)['source'] if pooling is None else pooling.describe()}")

    train_set, validation_set = data.encode_task(loaded_task, tokenizer, task_config.max_length)
    _, dev_set = data.encode_task(dataclasses.replace(loaded_task, train=dev_split.select(range(1)), validation=dev_split),
                                  tokenizer, task_config.max_length)
    collator = data.make_collator(loaded_task.kind, tokenizer)
    extract_started = time.perf_counter()
    features = {
        name: extract_features(probe, split, collator, cache, batch_size=batch_size, desc=f"{name} features")
        for name, split in (("train", train_set), ("dev", dev_set), ("validation", validation_set))
    }
    extract_seconds = time.perf_counter() - extract_started
    labels = {name: _labels_of(split, token_level) for name, split in (("train", train_set), ("dev", dev_set), ("validation", validation_set))}
    train_matrix = (np.concatenate(features["train"]) if token_level else np.stack(features["train"]),
                    np.concatenate(labels["train"]) if token_level else np.asarray(labels["train"]))
    if len(train_matrix[0]) == 0:
        raise DataError(f"the training split of {loaded_task.name} has no tagged words left after truncation; raise --max-length.")
    primary = data.primary_metric(loaded_task.kind)

    def metrics_fn(logits, gold):
        return data.compute_metrics(loaded_task.kind, logits, gold, loaded_task.label_names)

    fit_started = time.perf_counter()
    selection = choose_c(train_matrix, features["dev"], labels["dev"], config, num_labels, primary, metrics_fn, token_level)
    fit_seconds = time.perf_counter() - fit_started
    chosen = selection["grid"][selection["chosen"]]
    reported = _scores(selection["weight"], selection["bias"], features["validation"], labels["validation"], token_level, metrics_fn)
    reported_loss = reported.pop("loss")

    _save(output_dir, selection["weight"], selection["bias"], {
        "peft_type": FEATURE_PROBE_PEFT_TYPE,
        "base_model_name_or_path": model_path,
        "feature_probe": {**config.to_dict(), "C": chosen["C"]},
        "pooling": _pooling_record(pooling),
        "backbone": identity,
        "task": task_info,
    })
    total = identity["num_parameters"]
    metrics = {
        "method": "feature-probe",
        "primary_metric": primary,
        "best_metric": chosen["dev_metric"],
        "dev_loss": chosen["dev_loss"],
        "reported_metrics": reported,
        "reported_loss": reported_loss,
        "chosen_settings": {"C": chosen["C"]},
        "c_grid": selection["grid"],
        "pooling": _pooling_record(pooling),
        "epochs": [],
        "best_epoch": 0,
        "stopped_early": False,
        "majority_baseline": data.majority_baseline(loaded_task),
        "trainable_parameters": selection["parameters"],
        "total_parameters": total + selection["parameters"],
        "trainable_percent": 100.0 * selection["parameters"] / (total + selection["parameters"]),
        "median_step_seconds": None,  # no gradient steps
        "feature_seconds": extract_seconds,
        "fit_seconds": fit_seconds,
        "feature_cache": {"path": str(cache.path), "hits": cache.hits, "misses": cache.misses},
        "train_seconds": extract_seconds + fit_seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "num_train_examples": len(train_set),
        "dev_examples": len(dev_set),
        "num_eval_examples": len(validation_set),
        "reported_examples": len(validation_set),  # the name compare reads, as for a trained run with a dev split
        "model": model_path,
    }
    atomic_write_json(output_dir / "metrics.json", metrics)
    plot_dev_scores(selection["grid"], output_dir / DEV_PLOT, primary=primary, title=f"feature probe on {loaded_task.name}")
    print()
    print(f"  dev {primary}: {chosen['dev_metric']:.4f} at C = {chosen['C']:g} ({len(dev_set)} dev examples)")
    print(f"  validation {primary}: {reported[primary]:.4f}; majority-class baseline {metrics['majority_baseline']:.4f}")
    print(f"  {selection['parameters']:,d} trainable parameters (logistic regression); features {extract_seconds:.0f} s "
          f"({cache.hits} cached, {cache.misses} computed), fits {fit_seconds:.1f} s")
    print(f"  written: {output_dir}/{WEIGHTS_FILE}, adapter_config.json, metrics.json, {DEV_PLOT}")
    return metrics


def _save(directory: Path, weight: np.ndarray, bias: np.ndarray, record: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {"classifier.weight": torch.from_numpy(weight), "classifier.bias": torch.from_numpy(bias)}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_json(directory / "adapter_config.json", record)


def plot_dev_scores(grid: list[dict[str, Any]], path: Path, *, primary: str, title: str) -> None:
    """The dev score against C (log axis), the chosen C marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    axes = figure.subplots()
    axes.plot([entry["C"] for entry in grid], [entry["dev_metric"] for entry in grid], marker="o")
    chosen = next(entry for entry in grid if entry["selected"])
    axes.plot([chosen["C"]], [chosen["dev_metric"]], marker="*", markersize=14, linestyle="none", label=f"chosen C = {chosen['C']:g}")
    axes.set_xscale("log")
    axes.set_xlabel("C (inverse L2 strength)")
    axes.set_ylabel(f"dev {primary}")
    axes.set_title(title)
    axes.legend()
    atomic_write(path, lambda tmp: FigureCanvasAgg(figure).print_png(tmp))


# -- eval / predict --------------------------------------------------------------------------------


def load_feature_probe(directory: str | Path, model: str | None = None) -> tuple[FeatureProbeModel, Any, dict[str, Any]]:
    """(probe module in eval mode, tokenizer, task info) from a feature-probe directory.

    Raises:
        AdapterFileError: the record or the weights are missing or unreadable.
        AdapterMismatchError: ``model`` is not the backbone the probe was fitted on.
    """
    from safetensors.torch import load_file

    from peftkit.loading import resolve_model_path
    from peftkit.models.backbones import check_backbone_identity

    directory = Path(directory)
    try:
        record = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        pooling = _pooling_from_record(record["pooling"])
        task_info = record["task"]
        tensors = load_file(str(directory / WEIGHTS_FILE))
        weight, bias = tensors["classifier.weight"], tensors["classifier.bias"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AdapterFileError(f"{directory} is not a readable feature probe ({error}); run `peftkit train --method feature-probe` again.") from None
    backbone_model, tokenizer = _load_backbone(resolve_model_path(model or record["base_model_name_or_path"]), task_info)
    check_backbone_identity(record.get("backbone", {}), backbone_model, where=str(directory))
    if weight.shape[0] != len(task_info["label_names"]):
        raise AdapterMismatchError(f"{directory}: the probe has {weight.shape[0]} rows but the task {len(task_info['label_names'])} labels; retrain it.")
    return FeatureProbeModel(backbone_model, pooling, weight, bias).eval(), tokenizer, task_info


def evaluate_feature_probe(directory: str | Path, task: str | None = None, model: str | None = None,
                           max_eval_examples: int | None = None, batch_size: int = 64) -> dict[str, Any]:
    """``peftkit eval`` of a feature-probe directory on its task's validation split (or another task with the same labels)."""
    from peftkit import data
    from peftkit.data.tasks import load_recorded_task
    from peftkit.training.loop import evaluate

    probe, tokenizer, stored = load_feature_probe(directory, model)
    loaded_task = load_recorded_task(stored, "the feature probe", task, max_eval_examples)
    loaded_task.train = loaded_task.train.select(range(1))  # only the validation split is scored
    _, validation_set = data.encode_task(loaded_task, tokenizer, loaded_task.max_length)

    def metrics_fn(logits, labels):
        return data.compute_metrics(loaded_task.kind, logits, labels, loaded_task.label_names)

    metrics = evaluate(probe, validation_set, data.make_collator(loaded_task.kind, tokenizer), metrics_fn, batch_size=batch_size)
    return {
        "task": loaded_task.name,
        "num_examples": len(validation_set),
        "primary_metric": data.primary_metric(loaded_task.kind),
        "majority_baseline": data.majority_baseline(loaded_task),
        **metrics,
    }

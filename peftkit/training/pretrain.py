"""Supervised pretraining of a small ViT from a transformers config: peftkit's default image backbone.

No pretrained ViT ships anywhere reachable offline, so peftkit makes one the way the VPT
transfer benchmark does: a ``ViTForImageClassification`` of 6 layers × 96 (4 heads, MLP 192,
7×7 patches of 28×28 grayscale images, 0.46M parameters), initialised from its config with a
seeded generator and trained on 20,000 Fashion-MNIST images for 3 epochs by the project's own
loop (``peftkit.training.train``: AdamW at 1e-3, linear decay, 10% warm-up, batch 64). It is
saved with ``save_pretrained`` beside its image processor, so ``AutoModelForImageClassification``
and ``AutoImageProcessor`` load it from the directory like any hub checkpoint.

Two promises rest on this module:

* The recipe is one dataclass (``PretrainConfig``) shared by ``peftkit pretrain``, the default
  backbone and ``benchmarks/vpt_transfer.py``, so their backbones are the same backbone.
* A backbone directory is complete or absent. It is built in a temporary directory beside its
  destination and renamed into place, and the default backbone in the user's cache is built
  under a file lock, so two processes asking for it at once build it once: the second waits and
  then reuses it. A build killed half-way leaves only a temporary that the next build removes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peftkit.errors import DataError, PeftkitError, TrainingError

PRETRAIN_REPORT_FILE = "pretrain.json"
# Set to a JSON object of PretrainConfig fields to change the default backbone's recipe (the
# tests use a tiny ViT on `digits`); each recipe gets its own cache directory.
PRETRAIN_OPTIONS_ENV = "PEFTKIT_PRETRAIN_OPTIONS"
CACHE_ENV = "PEFTKIT_CACHE"
# Said to the user when the default backbone is built, so they know what they wait for. Measured
# on this project's 2-core machine, one torch thread: 3.1 min idle (benchmarks/results/vpt_transfer.md,
# 2026-11-28); 8.3 min (496 s through default_image_backbone) at nice 19 while other jobs kept the
# load average between 3.4 and 8.5 (2026-11-30).
DEFAULT_BUILD_TIME = "about 3 minutes on an idle 2-core CPU, up to 8 on a busy one"


@dataclasses.dataclass
class PretrainConfig:
    """How to pretrain the backbone; the defaults are the default image backbone's recipe."""

    task: str = "fashion-mnist"
    """Image task to pretrain on (builtin name or image folder)."""
    image_size: int = 28
    """Height and width the image processor resizes to, in pixels."""
    patch_size: int = 7
    """Side of a square patch, in pixels (28 / 7 = 16 patches + [CLS])."""
    num_channels: int = 1
    """1 = grayscale, 3 = RGB."""
    hidden_size: int = 96
    """Width of every layer."""
    num_hidden_layers: int = 6
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Heads per attention layer (must divide hidden_size)."""
    intermediate_size: int = 192
    """Width of each block's MLP."""
    max_train_examples: int | None = 20_000
    """Seeded random subset of the training split (None = all)."""
    max_eval_examples: int | None = 2_000
    """Seeded random subset of the validation split (None = all)."""
    epochs: int = 3
    """Passes over the training subset."""
    batch_size: int = 64
    """Images per step."""
    eval_batch_size: int = 256
    """Images per validation batch."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (linear decay after a 10% warm-up)."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming the learning rate up."""
    seed: int = 0
    """Seeds the data subset, the initial weights and the data order."""

    def architecture(self) -> dict[str, int]:
        names = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size")
        return {name: getattr(self, name) for name in names}

    def key(self) -> str:
        """A short digest of the recipe: another recipe never reuses this one's cache directory."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def summary(self) -> str:
        examples = f"{self.max_train_examples:,}" if self.max_train_examples else "all"
        return (f"a ViT of {self.num_hidden_layers} layers × {self.hidden_size} ({self.patch_size}×{self.patch_size} "
                f"patches of {self.image_size}×{self.image_size} images) trained on {examples} {self.task} "
                f"images for {self.epochs} epoch{'s' if self.epochs != 1 else ''}")


def pretrain_vit(config: PretrainConfig, output_dir: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Pretrain a fresh ViT on ``config.task`` and save it, with its image processor, in ``output_dir``.

    The directory gets ``config.json`` + ``model.safetensors`` (``save_pretrained``),
    ``preprocessor_config.json``, the loop's ``metrics.json`` and ``learning_curve.png``, and
    ``pretrain.json`` (the report returned here: accuracy on the validation subset, seconds,
    parameters, the recipe). The model saved is the one after the last epoch, as in the VPT
    transfer benchmark. Built beside ``output_dir`` and renamed into place: a kill leaves no
    half-written backbone.

    Raises:
        TrainingError: ``output_dir`` is not empty and ``overwrite`` is False; or the recipe is invalid.
        DataError: the task's data is missing (e.g. Fashion-MNIST not installed).
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from peftkit import data
    from peftkit.data.images import image_processor_for
    from peftkit.files import replace_directory
    from peftkit.training.checkpoint import remove_checkpoints
    from peftkit.training.loop import TrainingConfig, train

    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise TrainingError(f"{output_dir} is not empty; pass --overwrite to replace it, or choose another --output.")
    if config.hidden_size % config.num_attention_heads or config.image_size % config.patch_size:
        raise TrainingError(
            f"bad ViT shape: hidden_size {config.hidden_size} must be a multiple of num_attention_heads "
            f"{config.num_attention_heads}, and image_size {config.image_size} a multiple of patch_size {config.patch_size}."
        )
    task = data.load_task(data.TaskConfig(task=config.task, max_train_examples=config.max_train_examples,
                                          max_eval_examples=config.max_eval_examples, seed=config.seed))
    if task.kind != data.IMAGE_CLASSIFICATION:
        raise TrainingError(f"{config.task} is a {task.kind} task; a ViT pretrains on images (e.g. --task fashion-mnist).")
    label_names = list(task.label_names)
    vit_config = ViTConfig(**config.architecture(), num_labels=len(label_names),
                           id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    processor = image_processor_for(vit_config)
    train_set, eval_set = data.encode_task(task, processor, 0)
    torch.manual_seed(config.seed)  # the initial weights
    model = ViTForImageClassification(vit_config)
    training_config = TrainingConfig(
        epochs=config.epochs, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        learning_rate=config.learning_rate, warmup_ratio=config.warmup_ratio, lr_scheduler="linear",
        checkpoint_every=10_000, seed=config.seed,
    )

    def metrics_fn(logits, labels):
        return data.compute_metrics(task.kind, logits, labels, label_names)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    started = time.perf_counter()
    try:
        result = train(model, train_set, eval_set, data.make_collator(task.kind, processor), metrics_fn,
                       training_config, staging, primary_metric="accuracy", overwrite=True,
                       save_adapter=lambda _: None)
        remove_checkpoints(staging)  # a finished backbone needs no resume state
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        report = {
            "task": task.description,
            "train_examples": len(train_set),
            "eval_examples": len(eval_set),
            "epochs": config.epochs,
            "learning_rate": config.learning_rate,
            "parameters": sum(p.numel() for p in model.parameters()),
            "accuracy": result["final_metrics"]["accuracy"],
            "seconds": time.perf_counter() - started,
            "vit": config.architecture(),
            "label_names": label_names,
            "config": dataclasses.asdict(config),
        }
        (staging / PRETRAIN_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        replace_directory(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


# -- the default backbone, in the user's cache ------------------------------------------------------


def cache_dir() -> Path:
    """$PEFTKIT_CACHE, else $XDG_CACHE_HOME/peftkit, else ~/.cache/peftkit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "peftkit"


def default_pretrain_config() -> PretrainConfig:
    """The default backbone's recipe, with the fields in $PEFTKIT_PRETRAIN_OPTIONS (JSON) changed."""
    text = os.environ.get(PRETRAIN_OPTIONS_ENV, "").strip()
    if not text:
        return PretrainConfig()
    fields = {field.name for field in dataclasses.fields(PretrainConfig)}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise PeftkitError(f"${PRETRAIN_OPTIONS_ENV} is not valid JSON ({error}); give an object such as "
                           '\'{"task": "digits", "epochs": 1}\', or unset it.') from None
    if not isinstance(options, dict) or set(options) - fields:
        unknown = sorted(set(options) - fields) if isinstance(options, dict) else options
        raise PeftkitError(f"${PRETRAIN_OPTIONS_ENV} must be a JSON object of PretrainConfig fields; "
                           f"{unknown} not among: {', '.join(sorted(fields))}.")
    return PretrainConfig(**options)


def default_backbone_dir(config: PretrainConfig | None = None) -> Path:
    """Where the backbone of ``config`` (default: the default recipe) lives in the cache."""
    config = config or default_pretrain_config()
    return cache_dir() / "backbones" / f"vit-{config.task}-{config.key()}"


def default_image_backbone(config: PretrainConfig | None = None, *, rebuild: bool = False,
                           reason: str = "no --model given for an image task, so ") -> Path:
    """The default image backbone's directory, built (once, under a lock) if it is not there yet
    (or ``rebuild``: built again and swapped in). ``reason`` starts the message to the user.

    Tells the user on stderr what is being built, where and how long it takes; the training
    loop's progress bar shows the build. Concurrent callers: one builds, the others wait on the
    lock and reuse its result. Under a multi-process launch nothing is built (every process would
    wait on the one building, which would wait on them): the error says to build it first.

    Raises:
        PeftkitError: a multi-process launch and no backbone built yet; a bad $PEFTKIT_PRETRAIN_OPTIONS.
        DataError: the pretraining data is missing (Debian's dataset-fashion-mnist), saying how to
            install it or pass --model instead.
    """
    from filelock import FileLock, Timeout

    from peftkit.training.distributed import launched_world_size

    config = config or default_pretrain_config()
    directory = default_backbone_dir(config)
    if (directory / "config.json").is_file() and not rebuild:
        return directory
    if launched_world_size() > 1:
        raise PeftkitError(
            f"the default image backbone is not built yet ({directory}); build it once in one process "
            "with `peftkit pretrain`, then launch again (or pass --model DIR)."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory.parent / f"{directory.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"peftkit: another process is building the default image backbone in {directory}; waiting for it.",
              file=sys.stderr, flush=True)
        lock.acquire()
    try:
        if (directory / "config.json").is_file() and not rebuild:  # built by the process we waited for
            return directory
        for stale in directory.parent.glob(f".{directory.name}.tmp-*"):  # a killed build's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        took = DEFAULT_BUILD_TIME if config == PretrainConfig() else "a time that grows with examples × epochs"
        print(
            f"peftkit: {reason}building the default image backbone once: "
            f"{config.summary()}, saved in {directory}. This takes {took}; later runs reuse it. "
            "(`peftkit pretrain` builds it ahead of time; --model DIR uses another ViT.)",
            file=sys.stderr, flush=True,
        )
        try:
            report = pretrain_vit(config, directory, overwrite=rebuild)
        except DataError as error:
            raise DataError(f"{error} (The default image backbone pretrains on it; or pass --model DIR of a ViT.)") from None
        print(f"peftkit: default image backbone built in {report['seconds']:.0f} s "
              f"(validation accuracy {report['accuracy']:.4f} on {report['task'].split(':')[0]}).",
              file=sys.stderr, flush=True)
    finally:
        lock.release()
    return directory


def pretrain_command(
    task: str | None = None,
    output: str | None = None,
    epochs: int | None = None,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pretrain a small ViT (6 layers × 96, 7×7 patches of 28×28 grayscale) on an image task and save it.

    With no --output and the default recipe this builds the default image backbone in the cache
    ($PEFTKIT_CACHE or ~/.cache/peftkit), the one `train`, `eval` and `compare` use on image
    tasks when no --model is given. Flags left out keep the default recipe's values (those of
    $PEFTKIT_PRETRAIN_OPTIONS when it is set).

    Args:
        task: Image task to pretrain on (default fashion-mnist; mnist, digits or an image folder).
        output: Directory for the model and its image processor (default: the cache's default backbone).
        epochs: Passes over the training images (default 3).
        max_train_examples: Seeded random subset of the training images (default 20,000; 0 = all).
        max_eval_examples: Seeded random subset of the validation images (default 2,000; 0 = all).
        learning_rate: Peak AdamW learning rate (default 1e-3).
        batch_size: Images per step (default 64).
        seed: Seeds the subset, the initial weights and the data order (default 0).
        overwrite: Replace an existing model in --output (or the cached default backbone).
    """
    given = {"task": task, "epochs": epochs, "max_train_examples": max_train_examples,
             "max_eval_examples": max_eval_examples, "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed}
    config = dataclasses.replace(default_pretrain_config(), **{name: value for name, value in given.items() if value is not None})
    for name in ("max_train_examples", "max_eval_examples"):
        if getattr(config, name) == 0:
            setattr(config, name, None)
    if output is None:
        directory = default_backbone_dir(config)
        if (directory / "config.json").is_file() and not overwrite:
            print(f"already built: {directory} (pass --overwrite to build it again)")
            return json.loads((directory / PRETRAIN_REPORT_FILE).read_text(encoding="utf-8"))
        if config != default_pretrain_config():
            print(f"not the default recipe, so `train` will not pick it up by itself: pass --model {directory}")
        default_image_backbone(config, rebuild=overwrite, reason="")
        report = json.loads((directory / PRETRAIN_REPORT_FILE).read_text(encoding="utf-8"))
    else:
        directory = Path(output).expanduser()
        print(f"pretraining {config.summary()}; saving in {directory}")
        report = pretrain_vit(config, directory, overwrite=overwrite)
    print(f"validation accuracy {report['accuracy']:.4f} on {report['eval_examples']:,} images; "
          f"{report['parameters']:,} parameters; {report['seconds']:.0f} s")
    print(f"saved: {directory} (model, image processor, metrics.json, learning_curve.png, {PRETRAIN_REPORT_FILE})")
    return report

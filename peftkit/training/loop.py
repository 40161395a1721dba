"""One training loop for every method, on Hugging Face Accelerate.

It never asks which method it trains: it optimises exactly the parameters that require grad
(the method's own plus the task head), evaluates once per epoch, keeps the best adapter
(through the caller's ``save_adapter``), and checkpoints often enough that ``resume=True``
continues a killed run to the very same result as an uninterrupted one. That last promise
rests on three things: the data order of an epoch is a function of (seed, epoch) only, so a
resumed epoch can skip exactly the batches it already trained on; every random generator is
saved with the checkpoint; and the loader draws nothing from the global torch generator
(dropout does, and must see the same stream).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from peftkit.errors import TrainingError
from peftkit.files import atomic_write_json, ensure_output_dir
from peftkit.training.activation_checkpointing import enable_activation_checkpointing
from peftkit.training.checkpoint import (
    capture_rng_state,
    find_checkpoint,
    load_checkpoint,
    read_trainer_state,
    remove_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from peftkit.training.distributed import make_accelerator
from peftkit.training.plots import plot_learning_curve

METRICS_FILE = "metrics.json"
LEARNING_CURVE_FILE = "learning_curve.png"

MetricsFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


@dataclasses.dataclass
class TrainingConfig:
    """How to train; the same for every method (learning rate and epochs come from its recipe)."""

    epochs: int = 3
    """Passes over the training set."""
    batch_size: int = 32
    """Examples per forward pass in each process (an optimizer step sees batch_size ×
    gradient_accumulation_steps × the number of processes)."""
    eval_batch_size: int = 64
    """Examples per forward pass during validation."""
    learning_rate: float | None = None
    """Peak learning rate; None = the method's recipe (peftkit.recipes), filled in by the caller."""
    weight_decay: float = 0.0
    """AdamW weight decay; never applied to biases or LayerNorm weights."""
    warmup_ratio: float = 0.0
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    lr_scheduler: str = "linear"
    """Any transformers.get_scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    mixed_precision: str = "no"
    """"no", "fp16" or "bf16" (Accelerate's mixed_precision)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (a cap on epochs × steps per epoch)."""
    checkpoint_every: int = 50
    """Write a resumable checkpoint every this many optimizer steps (and at each epoch end)."""
    seed: int = 0
    """Seeds the data order, dropout and every other random draw."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm of the trained parameters to this; None = no clipping."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations in backward instead of keeping them (less memory,
    about one more forward per step; same gradients, so a resumed run may switch it)."""
    optimizer: str = "adamw"
    """"adamw" (torch AdamW) or "sgd" (torch SGD with ``momentum``, as VPT's paper trains)."""
    momentum: float = 0.9
    """SGD momentum (ignored by AdamW)."""
    early_stopping_patience: int | None = None
    """Stop once neither the validation metric nor the validation loss has improved for this many
    epochs (an equal metric with a lower loss counts as a better metric); the adapter of the best
    metric is kept either way. None = train every epoch."""


# Settings a resumed run must share with the checkpoint, or it would not continue the same run.
RESUME_MUST_MATCH = (
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "lr_scheduler",
    "gradient_accumulation_steps",
    "max_steps",
    "seed",
    "max_grad_norm",
    "optimizer",
    "momentum",
    "early_stopping_patience",
)
OPTIMIZERS = ("adamw", "sgd")


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation per epoch that depends on (seed, epoch) only, so a resumed run can
    skip exactly the batches it already trained on. Accelerate calls ``set_epoch``."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self):
        epoch_seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(epoch_seed)
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())


def check_training_config(config: TrainingConfig) -> None:
    """Refuse settings that cannot train, all problems in one message (``train`` calls it; the CLI
    calls it before it creates the output directory).

    Raises TrainingError naming each bad setting and what it may be."""
    problems = []
    if config.learning_rate is None or not config.learning_rate > 0:
        problems.append(
            f"learning_rate must be a positive number, not {config.learning_rate!r} "
            "(peftkit.recipes.training_config fills it in from the method's recipe)"
        )
    for name in ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "checkpoint_every"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be at least 1, not {getattr(config, name)}")
    if config.max_steps is not None and config.max_steps < 1:
        problems.append(f"max_steps must be at least 1 (or None), not {config.max_steps}")
    schedulers = [kind.value for kind in SchedulerType]
    if config.lr_scheduler not in schedulers:
        problems.append(f"lr_scheduler must be one of {', '.join(schedulers)}, not {config.lr_scheduler!r}")
    if config.optimizer not in OPTIMIZERS:
        problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {config.optimizer!r}")
    if config.early_stopping_patience is not None and config.early_stopping_patience < 1:
        problems.append(f"early_stopping_patience must be at least 1 (or None), not {config.early_stopping_patience}")
    if not 0 <= config.warmup_ratio < 1:
        problems.append(f"warmup_ratio must be in [0, 1), not {config.warmup_ratio}")
    if problems:
        raise TrainingError("bad training settings: " + "; ".join(problems) + ".")


def _optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over the parameters that require grad; no decay on biases and norm
    weights (the rule transformers.Trainer uses)."""
    no_decay = {
        f"{module_name}.{param_name}" if module_name else param_name
        for module_name, module in model.named_modules()
        for param_name, _ in module.named_parameters(recurse=False)
        if isinstance(module, nn.LayerNorm)
        or param_name == "bias"
        or re.search(r"layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)", f"{module_name}.{param_name}".lower())
    }
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not trainable:
        raise TrainingError(
            "the model has no parameter that requires grad, so there is nothing to train; "
            "wrap it with peftkit.get_peft_model(model, config) first."
        )
    groups = [
        {"params": [p for n, p in trainable if n not in no_decay], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if n in no_decay], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def _make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    groups = _optimizer_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def _concat_padded(arrays: list[np.ndarray], pad_value: float) -> np.ndarray:
    """Concatenate batches along rows, padding trailing dims (token-level logits and labels
    differ in sequence length from batch to batch)."""
    if not arrays:
        return np.zeros((0,))
    target = np.max([a.shape[1:] for a in arrays], axis=0) if arrays[0].ndim > 1 else ()
    padded = []
    for array in arrays:
        widths = [(0, 0)] + [(0, int(t) - s) for t, s in zip(target, array.shape[1:])]
        padded.append(np.pad(array, widths, constant_values=pad_value) if any(w[1] for w in widths) else array)
    return np.concatenate(padded)


def _run_evaluation(model: nn.Module, loader, accelerator: Accelerator, metrics_fn: MetricsFn) -> dict[str, float]:
    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for batch in loader:
            logits, labels = model(**batch).logits, batch["labels"]
            if logits.ndim > 2:  # token classification: sequence lengths differ across processes
                logits = accelerator.pad_across_processes(logits, dim=1, pad_index=0)
                labels = accelerator.pad_across_processes(labels, dim=1, pad_index=-100)
            # Gathered over processes, without the rows Accelerate repeats to even out the last batch.
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_logits.append(logits.float().cpu().numpy())
            all_labels.append(labels.cpu().numpy())
    logits, labels = _concat_padded(all_logits, 0.0), _concat_padded(all_labels, -100)
    metrics = {name: float(value) for name, value in metrics_fn(logits, labels).items()}
    if logits.ndim == labels.ndim + 1 and np.issubdtype(labels.dtype, np.integer) and (labels != -100).any():
        # The mean cross-entropy over every labelled row (or token) of the validation set,
        # computed once from the gathered outputs, so it is the same for any number of processes.
        metrics["eval_loss"] = float(
            torch.nn.functional.cross_entropy(
                torch.from_numpy(logits).reshape(-1, logits.shape[-1]),
                torch.from_numpy(labels).reshape(-1).long(),
                ignore_index=-100,
            )
        )
    return metrics


def evaluate(
    model: nn.Module,
    eval_dataset,
    collator: Callable,
    metrics_fn: MetricsFn,
    *,
    batch_size: int = 64,
    mixed_precision: str = "no",
) -> dict[str, float]:
    """Metrics of ``model`` on ``eval_dataset`` (what ``peftkit eval`` reports)."""
    accelerator = make_accelerator(mixed_precision=mixed_precision)
    loader = DataLoader(eval_dataset, batch_size=batch_size, shuffle=False, collate_fn=collator, generator=torch.Generator())
    model, loader = accelerator.prepare(model, loader)
    return _run_evaluation(model, loader, accelerator, metrics_fn)


def _new_history() -> dict[str, Any]:
    return {
        "steps": [],  # one record per optimizer step: step, epoch, loss, learning_rate
        "epochs": [],  # one record per epoch: epoch, step, train_loss, validation metrics
        "best_metric": None,
        "best_epoch": None,
        "best_step": None,
        "best_loss": None,  # the best epoch's eval_loss: it breaks ties in the metric
        "train_seconds": 0.0,  # optimizer steps, data loading included
        "eval_seconds": 0.0,
    }


def _is_better(value: float, best: float | None, greater_is_better: bool,
               loss: float | None = None, best_loss: float | None = None) -> bool:
    """Whether an epoch's dev ``value`` beats the best so far. A tie counts as better when the dev
    loss fell: an NER tagger predicts no entity (F1 0) for its first epochs while its loss falls, and
    early stopping on the metric alone would stop it on that plateau before it tags anything."""
    if best is None or (value > best if greater_is_better else value < best):
        return True
    return value == best and loss is not None and best_loss is not None and math.isfinite(loss) and loss < best_loss


def _stale_epochs(epochs: list[dict[str, Any]], primary_metric: str, greater_is_better: bool) -> int:
    """Epochs since the run last made progress on its dev split: a better metric (``_is_better``)
    or a new lowest dev loss. Early stopping waits for both because a small dev split's metric
    can sit still, or fall from a lucky first epoch, while the model is still learning: a WeGeFT
    tagger scored F1 0.011 at epoch 1 and 0 at epochs 2-3 while its dev loss fell from 2.39 to
    0.28, and stopping on the metric alone ended it there. Derived from the recorded epochs, so a
    resumed run counts as an uninterrupted one does."""
    best = best_loss = lowest_loss = None
    last_progress = 0
    for index, record in enumerate(epochs, start=1):
        value, loss = record[primary_metric], record.get("eval_loss")
        progressed = False
        if _is_better(value, best, greater_is_better, loss, best_loss):
            best, best_loss, progressed = value, loss, True
        if loss is not None and math.isfinite(loss) and (lowest_loss is None or loss < lowest_loss):
            lowest_loss, progressed = loss, True
        if progressed:
            last_progress = index
    return len(epochs) - last_progress


def train(
    model: nn.Module,
    train_dataset,
    eval_dataset,
    collator: Callable,
    metrics_fn: MetricsFn,
    config: TrainingConfig,
    output_dir: str | Path,
    *,
    primary_metric: str,
    resume: bool = False,
    overwrite: bool = False,
    save_adapter: Callable[[Path], None] | None = None,
    greater_is_better: bool = True,
    eval_split_name: str = "validation",
) -> dict[str, Any]:
    """Train the parameters of ``model`` that require grad; return (and write) metrics.json.

    ``eval_split_name`` names ``eval_dataset`` in the per-epoch lines ("dev" when it is a split carved
    from the training data, so its scores are not mistaken for the reported validation scores).

    ``metrics_fn(logits, labels)`` → dict holding ``primary_metric``. ``save_adapter(dir)``
    is called with ``output_dir`` whenever validation improves (default: the unwrapped model's
    ``save_pretrained``). ``resume`` continues from ``output_dir/checkpoint``; ``overwrite``
    allows a fresh run in a non-empty ``output_dir``.
    """
    check_training_config(config)
    output_dir = ensure_output_dir(output_dir, overwrite=overwrite, resume=resume)
    checkpoint_dir = find_checkpoint(output_dir) if resume else None
    if resume:
        remove_stale_temporaries(output_dir)
    else:
        remove_checkpoints(output_dir)  # an old run's checkpoint must never be resumed into this one

    accelerator = make_accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
    )
    set_seed(config.seed)
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    unwrapped = model
    optimizer = _make_optimizer(model, config)
    # Own generators everywhere: a DataLoader without one draws its base seed from the global
    # torch generator on every epoch, which would shift dropout after a resume.
    train_loader = DataLoader(
        train_dataset,
        batch_size=config.batch_size,
        sampler=EpochShuffleSampler(len(train_dataset), config.seed),
        collate_fn=collator,
        generator=torch.Generator().manual_seed(config.seed),
    )
    eval_loader = DataLoader(
        eval_dataset, batch_size=config.eval_batch_size, shuffle=False, collate_fn=collator, generator=torch.Generator()
    )
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0:
        raise TrainingError("the training set is empty; give a task with training examples.")
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    # Accelerate steps a prepared scheduler once per process per optimizer step.
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer.optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    scheduler = accelerator.prepare(scheduler)
    trained_params = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trained_params)
    total_count = sum(p.numel() for p in unwrapped.parameters())

    state = {"epoch": 0, "batches_done": 0, "global_step": 0, "finished": False, "history": _new_history()}
    if checkpoint_dir is not None:
        _check_resumable(
            read_trainer_state(checkpoint_dir), config, len(train_dataset), accelerator.num_processes, checkpoint_dir
        )
        state = load_checkpoint(
            checkpoint_dir,
            model=accelerator.unwrap_model(model),
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=accelerator.scaler,
            process_index=accelerator.process_index,
        )
        accelerator.print(
            f"resuming from {checkpoint_dir}: epoch {state['epoch'] + 1}, batch {state['batches_done']}, "
            f"step {state['global_step']}/{total_steps}"
        )
    elif resume:
        accelerator.print(f"no checkpoint in {output_dir}; starting from the beginning.")
    history = state["history"]
    epoch, batches_done, global_step = state["epoch"], state["batches_done"], state["global_step"]

    if save_adapter is None:
        def save_adapter(directory: Path) -> None:
            accelerator.unwrap_model(model).save_pretrained(directory)

    def trainer_state(finished: bool) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "batches_done": batches_done,
            "global_step": global_step,
            "finished": finished,
            "num_train_examples": len(train_dataset),
            "num_processes": accelerator.num_processes,
            "config": dataclasses.asdict(config),
            "history": history,
        }

    def write_checkpoint(finished: bool = False) -> None:
        accelerator.wait_for_everyone()
        rng_states = gather_object([capture_rng_state()])  # every process's, for an exact resume
        if accelerator.is_main_process:
            save_checkpoint(
                output_dir,
                model=accelerator.unwrap_model(model),
                optimizer=optimizer,
                scheduler=scheduler,
                trainer_state=trainer_state(finished),
                scaler=accelerator.scaler,
                rng_states=rng_states,
            )

    def write_metrics(finished: bool) -> dict[str, Any]:
        metrics = {
            "primary_metric": primary_metric,
            "best_metric": history["best_metric"],
            "best_epoch": history["best_epoch"],
            "best_step": history["best_step"],
            "final_metrics": history["epochs"][-1] if history["epochs"] else None,
            "epochs": history["epochs"],
            "global_steps": global_step,
            "total_steps": total_steps,
            "finished": finished,
            "stopped_early": history.get("stopped_early", False),
            "train_seconds": history["train_seconds"],
            "eval_seconds": history["eval_seconds"],
            "seconds_per_step": history["train_seconds"] / max(1, len(history["steps"])),
            # A step's median time (first step excluded: it pays for lazy initialisation) and the
            # process's peak resident memory, for side-by-side method comparisons.
            "median_step_seconds": _median_step_seconds(history["steps"]),
            "peak_rss_bytes": _peak_rss_bytes(),
            # Examples per optimizer step over all processes: the figure that must stay the same
            # when a run moves from one device to several.
            "num_processes": accelerator.num_processes,
            "global_batch_size": config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes,
            "trainable_parameters": trainable_count,
            "total_parameters": total_count,
            "trainable_percent": 100.0 * trainable_count / total_count,
            "num_train_examples": len(train_dataset),
            "num_eval_examples": len(eval_dataset),
            "config": dataclasses.asdict(config),
            "train_loss": [[record["step"], record["loss"]] for record in history["steps"]],
        }
        if accelerator.is_main_process:
            atomic_write_json(output_dir / METRICS_FILE, metrics)
            plot_learning_curve(history, output_dir / LEARNING_CURVE_FILE, primary_metric=primary_metric)
        return metrics

    if state["finished"]:
        accelerator.print(f"the run in {output_dir} already finished; nothing to resume.")
        return write_metrics(finished=True)

    progress = tqdm(
        total=total_steps,
        initial=global_step,
        desc="training",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    last_checkpoint = str(checkpoint_dir) if checkpoint_dir is not None else None
    try:
        while epoch < config.epochs and global_step < total_steps and not history.get("stopped_early"):
            model.train()
            train_loader.set_epoch(epoch)
            loader = skip_first_batches(train_loader, batches_done) if batches_done else train_loader
            loader.set_epoch(epoch)
            micro_losses: list[float] = []
            step_started = time.perf_counter()
            try:
                for batch in loader:
                    with accelerator.accumulate(model):
                        outputs = model(**batch)
                        loss = getattr(outputs, "loss", None)
                        if loss is None:
                            raise TrainingError(
                                "the model returned no loss; the training batches must carry 'labels'."
                            )
                        loss_value = accelerator.reduce(loss.detach().float(), "mean").item()
                        if not math.isfinite(loss_value):
                            raise TrainingError(
                                f"the training loss is {loss_value} at step {global_step + 1} (epoch "
                                f"{epoch + 1}, batch {batches_done + 1}); stopped before applying it. "
                                f"The last good checkpoint is {last_checkpoint or 'none (none was written yet)'}. "
                                "Lower the learning rate or check the model and data for NaN/inf, then "
                                "start again with --overwrite."
                            )
                        learning_rate = scheduler.get_last_lr()[0]
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and config.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(trained_params, config.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    batches_done += 1
                    micro_losses.append(loss_value)
                    if not accelerator.sync_gradients:
                        continue
                    global_step += 1
                    step_seconds = time.perf_counter() - step_started
                    history["train_seconds"] += step_seconds
                    history["steps"].append(
                        {
                            "step": global_step,
                            "epoch": epoch + 1,
                            "loss": float(np.mean(micro_losses)),
                            "learning_rate": learning_rate,
                            "seconds": step_seconds,
                        }
                    )
                    micro_losses = []
                    progress.update(1)
                    progress.set_postfix(epoch=epoch + 1, loss=f"{history['steps'][-1]['loss']:.4f}", lr=f"{learning_rate:.2e}")
                    if global_step >= total_steps:
                        break
                    if global_step % config.checkpoint_every == 0 and batches_done < batches_per_epoch:
                        write_checkpoint()
                        last_checkpoint = str(output_dir / "checkpoint")
                    step_started = time.perf_counter()
            finally:
                if hasattr(loader, "end"):  # an early break leaves Accelerate thinking we are still in it
                    loader.end()

            eval_started = time.perf_counter()
            metrics = _run_evaluation(model, eval_loader, accelerator, metrics_fn)
            history["eval_seconds"] += time.perf_counter() - eval_started
            if primary_metric not in metrics:
                raise TrainingError(
                    f"metrics_fn returned {sorted(metrics)}, without the primary metric {primary_metric!r}; "
                    "pass primary_metric= one of those."
                )
            epoch_losses = [record["loss"] for record in history["steps"] if record["epoch"] == epoch + 1]
            record = {
                "epoch": epoch + 1,
                "step": global_step,
                "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                **metrics,
            }
            history["epochs"].append(record)
            improved = _is_better(metrics[primary_metric], history["best_metric"], greater_is_better,
                                  metrics.get("eval_loss"), history.get("best_loss"))
            if improved:
                history.update(best_metric=metrics[primary_metric], best_epoch=epoch + 1, best_step=global_step,
                               best_loss=metrics.get("eval_loss"))
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_adapter(output_dir)
            if accelerator.is_local_main_process:
                progress.write(
                    f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, {eval_split_name} "
                    + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
                    + (" (best so far, saved)" if improved else "")
                )
            epoch, batches_done = epoch + 1, 0
            stale_epochs = _stale_epochs(history["epochs"], primary_metric, greater_is_better)
            stopped_early = config.early_stopping_patience is not None and stale_epochs >= config.early_stopping_patience
            if stopped_early and epoch < config.epochs and accelerator.is_local_main_process:
                progress.write(f"early stop: neither the {eval_split_name} {primary_metric} nor its loss improved for "
                               f"{stale_epochs} epochs; best epoch {history['best_epoch']}")
            history["stopped_early"] = stopped_early and epoch < config.epochs
            finished = epoch >= config.epochs or global_step >= total_steps or stopped_early
            write_checkpoint(finished=finished)
            last_checkpoint = str(output_dir / "checkpoint")
            result = write_metrics(finished=finished)
    finally:
        progress.close()
    return result


def _median_step_seconds(steps: list[dict[str, Any]]) -> float | None:
    timed = [record["seconds"] for record in steps[1:] if "seconds" in record] or [
        record["seconds"] for record in steps if "seconds" in record
    ]
    return float(np.median(timed)) if timed else None


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _check_resumable(
    saved: dict[str, Any], config: TrainingConfig, num_train_examples: int, num_processes: int, where: Path
) -> None:
    """Refuse to resume into different settings: the result would match neither run."""
    saved_config = saved.get("config", {})
    # A checkpoint from before a setting existed ran with that setting's default.
    defaults = {field.name: field.default for field in dataclasses.fields(TrainingConfig)}
    differences = [
        f"{name} was {saved_config.get(name, defaults[name])!r}, now {getattr(config, name)!r}"
        for name in RESUME_MUST_MATCH
        if saved_config.get(name, defaults[name]) != getattr(config, name)
    ]
    if saved.get("num_train_examples") != num_train_examples:
        differences.append(f"training examples were {saved.get('num_train_examples')}, now {num_train_examples}")
    # The position in an epoch is counted in per-process batches, so it only means the same
    # thing with as many processes (checkpoints from before this was recorded had one).
    if saved.get("num_processes", 1) != num_processes:
        differences.append(
            f"processes were {saved.get('num_processes', 1)}, now {num_processes} (launch with as many processes)"
        )
    if differences:
        raise TrainingError(
            f"cannot resume from {where}: the settings changed ({'; '.join(differences)}). Resume with "
            "the run's original settings, or start again with --overwrite."
        )

"""Resumable training checkpoints that hold only what trains.

A checkpoint is the directory ``<output_dir>/checkpoint/``:

    trainable.safetensors   the parameters that require grad (never the frozen backbone)
    optimizer.pt            optimizer state (+ the mixed-precision grad scaler's, if any)
    scheduler.pt            learning-rate scheduler state
    rng_state.pt            python, numpy and torch (+ CUDA) random generator states, one set
                            per training process (each process draws its own dropout masks)
    trainer_state.json      epoch, batches done in it, global step, history, config

It is written into a temporary directory beside it and swapped in with ``os.replace``
(``peftkit.files.replace_directory``), so a kill at any moment leaves the previous complete
checkpoint or the new complete one. ``trainer_state.json`` is written last and read first:
a directory without it is not a checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peftkit.errors import TrainingError
from peftkit.files import atomic_write_json, replace_directory

CHECKPOINT_DIR = "checkpoint"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"
STATE_FILE = "trainer_state.json"
_TMP_PREFIX = ".checkpoint.tmp-"


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name → tensor of every parameter that requires grad, in ``named_parameters`` order."""
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def capture_rng_state() -> dict[str, Any]:
    """Every random generator the loop draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_directory_files(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(
    output_dir: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    scaler=None,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a complete checkpoint to a temporary directory, then swap it in as ``checkpoint/``.

    ``rng_states``: every training process's ``capture_rng_state()``, in process order
    (default: this process's only)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=output_dir))
    try:
        tensors = {name: param.detach().cpu().contiguous().clone() for name, param in trainable_parameters(model).items()}
        save_file(tensors, tmp_dir / TRAINABLE_FILE, metadata={"format": "pt"})
        optimizer_state = {"optimizer": optimizer.state_dict()}
        if scaler is not None:
            optimizer_state["scaler"] = scaler.state_dict()
        torch.save(optimizer_state, tmp_dir / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), tmp_dir / SCHEDULER_FILE)
        torch.save({"processes": rng_states or [capture_rng_state()]}, tmp_dir / RNG_FILE)
        atomic_write_json(tmp_dir / STATE_FILE, trainer_state)
        _fsync_directory_files(tmp_dir)
        final_dir = output_dir / CHECKPOINT_DIR
        replace_directory(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir


def find_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint in ``output_dir``, if any.

    ``replace_directory`` renames the old checkpoint aside before moving the new one in; a
    kill between those two renames leaves only ``.checkpoint.old``, which is still complete.
    """
    output_dir = Path(output_dir)
    for candidate in (output_dir / CHECKPOINT_DIR, output_dir / f".{CHECKPOINT_DIR}.old"):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def remove_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete the checkpoint and any half-written temporaries (a fresh run must not resume them)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for path in output_dir.iterdir():
        if path.name in (CHECKPOINT_DIR, f".{CHECKPOINT_DIR}.old") or path.name.startswith(_TMP_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


def remove_stale_temporaries(output_dir: str | os.PathLike) -> None:
    """Delete half-written checkpoint directories left by a killed run."""
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        for path in output_dir.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)


def read_trainer_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(checkpoint_dir) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TrainingError(
            f"cannot read the checkpoint state {path} ({error}); start again with --overwrite."
        ) from None


def load_checkpoint(
    checkpoint_dir: str | os.PathLike, *, model: nn.Module, optimizer, scheduler, scaler=None, process_index: int = 0
) -> dict[str, Any]:
    """Restore trainable parameters, optimizer, scheduler and this process's RNG states; return
    the trainer state."""
    checkpoint_dir = Path(checkpoint_dir)
    trainer_state = read_trainer_state(checkpoint_dir)
    try:
        saved = load_file(checkpoint_dir / TRAINABLE_FILE)
        optimizer_state = torch.load(checkpoint_dir / OPTIMIZER_FILE, weights_only=True)
        scheduler_state = torch.load(checkpoint_dir / SCHEDULER_FILE, weights_only=True)
        rng_state = torch.load(checkpoint_dir / RNG_FILE, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise TrainingError(
            f"the checkpoint in {checkpoint_dir} is incomplete or corrupt "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]}); "
            "start again with --overwrite."
        ) from None
    params = trainable_parameters(model)
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise TrainingError(
            f"the checkpoint in {checkpoint_dir} does not fit this model's trainable parameters "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}): it was made with another "
            "method, model or task. Resume with the same settings, or start again with --overwrite."
        )
    with torch.no_grad():
        for name, param in params.items():
            if param.shape != saved[name].shape:
                raise TrainingError(
                    f"the checkpoint's {name} has shape {tuple(saved[name].shape)}, the model's "
                    f"{tuple(param.shape)}; resume with the same settings or use --overwrite."
                )
            param.copy_(saved[name].to(device=param.device, dtype=param.dtype))
    optimizer.load_state_dict(optimizer_state["optimizer"])
    if scaler is not None and "scaler" in optimizer_state:
        scaler.load_state_dict(optimizer_state["scaler"])
    scheduler.load_state_dict(scheduler_state)
    # Checkpoints from before per-process states were kept hold one state, not a list.
    per_process = rng_state["processes"] if "processes" in rng_state else [rng_state]
    if process_index >= len(per_process):
        raise TrainingError(
            f"the checkpoint in {checkpoint_dir} holds random states for {len(per_process)} processes, "
            f"not for process {process_index}; resume with as many processes as wrote it."
        )
    restore_rng_state(per_process[process_index])
    return trainer_state

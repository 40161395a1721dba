"""`peftkit train` under `accelerate launch` with two CPU processes (gloo, through
torch.distributed) ends with the same adapter as one process with the same global batch.

Why they must agree: the epoch's data order depends on (seed, epoch) only; Accelerate hands
process k every other batch of that order, so two processes with batch b see together exactly
the examples one process sees with batch 2b; DDP averages the two mean losses' gradients, which
is the gradient of the mean over 2b (with gradient accumulation, of the mean over its
micro-batches too). Dropout is off in the tiny model and in LoRA so random masks (drawn per
process) do not enter. What remains is float summation order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftkit.errors import TrainingError
from peftkit.training.distributed import check_processes_joined, prefer_cpu_processes_without_devices
from tests.tiny_models import save_tiny_bert_checkpoint

WORDS_BY_LABEL = {
    "pos": ["great", "good", "fine", "nice"],
    "neg": ["bad", "terrible", "awful", "poor"],
}
GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT without dropout, saved like a hub checkpoint."""
    return save_tiny_bert_checkpoint(
        tmp_path_factory.mktemp("tiny-bert-no-dropout"),
        initializer_range=0.3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """32 training rows (4 global batches of 8) and 10 validation rows (uneven across 2 processes)."""
    directory = tmp_path_factory.mktemp("sentiment-32")
    subjects = ["the movie was", "a", "the actor was", "the plot is"]
    for split, count in (("train", 32), ("validation", 10)):
        rows = ["text,label"]
        for index in range(count):
            label = "pos" if index % 2 else "neg"
            words = WORDS_BY_LABEL[label]
            rows.append(f"{subjects[index % 4]} {words[index % 4]} {words[(index // 4) % 4]},{label}")
        (directory / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_train(
    model_dir: Path, task_dir: Path, output: Path, method: str, num_processes: int, accumulation: int = 1
) -> dict:
    """Train in fresh processes: `python -m peftkit` for one, `accelerate launch` for several;
    the global batch is GLOBAL_BATCH either way."""
    peftkit_args = [
        "-m", "peftkit", "train", "--method", method, "--model", str(model_dir), "--task", str(task_dir),
        "--output", str(output), "--epochs", "2", "--batch-size", str(GLOBAL_BATCH // (num_processes * accumulation)),
        "--gradient-accumulation-steps", str(accumulation),
        "--max-length", "16", "--learning-rate", "0.01", "--seed", "3", "--eval-batch-size", "4",
        "--method-options", json.dumps({"lora_dropout": 0.0} if method == "lora" else {}),
    ]
    if num_processes == 1:
        command = [sys.executable, *peftkit_args]
    else:
        command = [
            # torchrun underneath; without GPUs peftkit has Accelerate join the processes over gloo.
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *peftkit_args,
        ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)  # peftkit must find its way to CPU processes by itself
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, f"{' '.join(command)} failed:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}"
    return {"log": finished.stdout, "metrics": json.loads((output / "metrics.json").read_text())}


@pytest.mark.parametrize(("method", "accumulation"), [("pasta", 1), ("lora", 2)])
def test_two_processes_give_the_adapter_of_one_process_with_the_same_global_batch(
    model_dir, task_dir, tmp_path, method, accumulation
):
    one = run_train(model_dir, task_dir, tmp_path / "one", method, num_processes=1)
    two = run_train(model_dir, task_dir, tmp_path / "two", method, num_processes=2, accumulation=accumulation)

    assert one["metrics"]["num_processes"] == 1 and two["metrics"]["num_processes"] == 2
    assert one["metrics"]["global_batch_size"] == two["metrics"]["global_batch_size"] == GLOBAL_BATCH
    assert one["metrics"]["global_steps"] == two["metrics"]["global_steps"] == 2 * 32 // GLOBAL_BATCH
    # Only the main process reports: the header appears once, not once per process.
    assert two["log"].count(f"{method} on ") == 1

    single = load_file(tmp_path / "one" / "adapter_model.safetensors")
    double = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert single.keys() == double.keys()
    initial = {name: tensor.clone() for name, tensor in single.items()}
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-4, atol=1e-5, msg=f"{name} differs")
    # The runs trained (the adapter moved away from its initialisation: PASTA vectors start at
    # zero, PEFT's LoRA B matrices too), so agreement is not two untouched copies.
    moved = [name for name, tensor in initial.items() if ("lora_B" in name or "special_token_embeddings" in name) and tensor.abs().max() > 1e-3]
    assert moved, f"no trained tensor moved from zero: {sorted(initial)}"

    # Same training losses step by step, and validation (gathered across processes, the uneven
    # last batch de-duplicated) on all 10 rows with the same result.
    losses_one = [loss for _, loss in one["metrics"]["train_loss"]]
    losses_two = [loss for _, loss in two["metrics"]["train_loss"]]
    assert losses_two == pytest.approx(losses_one, rel=1e-4, abs=1e-6)
    final_one, final_two = one["metrics"]["final_metrics"], two["metrics"]["final_metrics"]
    assert final_two["accuracy"] == pytest.approx(final_one["accuracy"])
    assert final_two["eval_loss"] == pytest.approx(final_one["eval_loss"], rel=1e-4)
    assert one["metrics"]["num_eval_examples"] == two["metrics"]["num_eval_examples"] == 10


def test_a_multi_process_launch_without_gpus_asks_accelerate_for_cpu_processes(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    prefer_cpu_processes_without_devices()
    assert "ACCELERATE_USE_CPU" not in os.environ  # a lone process is left alone
    monkeypatch.setenv("WORLD_SIZE", "2")
    prefer_cpu_processes_without_devices()
    assert os.environ["ACCELERATE_USE_CPU"] == "true"


def test_processes_that_did_not_join_one_group_refuse_to_train(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match="started 2 processes but Accelerate joined 1"):
        check_processes_joined(1)
    check_processes_joined(2)
    monkeypatch.delenv("WORLD_SIZE")
    check_processes_joined(1)


def test_a_checkpoint_resumes_only_with_as_many_processes_as_wrote_it(tmp_path):
    from peftkit.training.loop import TrainingConfig, _check_resumable

    config = TrainingConfig(learning_rate=1e-3)
    saved = {"config": dataclasses.asdict(config), "num_train_examples": 32, "num_processes": 2}
    with pytest.raises(TrainingError, match="processes were 2, now 1"):
        _check_resumable(saved, config, 32, 1, tmp_path)
    _check_resumable(saved, config, 32, 2, tmp_path)
    # Checkpoints written before the count was recorded came from one process.
    del saved["num_processes"]
    _check_resumable(saved, config, 32, 1, tmp_path)


def test_one_process_can_train_in_float32_then_bf16_then_float32_again():
    """Accelerate's settings are process-wide; a notebook changing precision must not need a restart."""
    from peftkit.training.distributed import make_accelerator

    assert make_accelerator(mixed_precision="no").mixed_precision == "no"
    assert make_accelerator(mixed_precision="bf16").mixed_precision == "bf16"
    assert make_accelerator(mixed_precision="no").mixed_precision == "no"

"""The training loop: what it trains, what it writes, and that a resumed run ends where an
uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from peftkit.errors import TrainingError
from peftkit.training import TrainingConfig, train
from peftkit.training.checkpoint import TRAINABLE_FILE, find_checkpoint, read_trainer_state
from peftkit.training.loop import EpochShuffleSampler, _concat_padded, _is_better, _make_optimizer, _optimizer_groups
from tests.training.tiny_run import accuracy, make_dataset, make_model, pad_collate, run, tiny_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def trainable(model, clone: bool = True) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() if clone else p for name, p in model.named_parameters() if p.requires_grad}


class CrashAfter:
    """A collator that dies after ``batches`` batches, like a run killed mid-epoch."""

    def __init__(self, batches: int):
        self.remaining = batches

    def __call__(self, features):
        if self.remaining == 0:
            raise KeyboardInterrupt("simulated kill")
        self.remaining -= 1
        return pad_collate(features)


def test_trains_only_what_requires_grad_and_writes_its_outputs(tmp_path):
    model = make_model()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = trainable(model)

    metrics = run(tmp_path, model=model)

    for name, before in frozen_before.items():
        assert torch.equal(dict(model.named_parameters())[name], before), f"frozen {name} changed"
    assert all(not torch.equal(trained_before[n], p) for n, p in trainable(model).items())
    assert metrics["global_steps"] == metrics["total_steps"] == 2 * (48 // 4)
    assert len(metrics["epochs"]) == 2 and metrics["finished"]
    assert metrics["trainable_parameters"] == sum(p.numel() for p in trained_before.values())
    assert metrics["best_metric"] == max(e["accuracy"] for e in metrics["epochs"])
    assert metrics["best_metric"] > 0.75, "the tiny task is learnable; the loop failed to learn it"
    assert json.loads((tmp_path / "metrics.json").read_text())["best_epoch"] == metrics["best_epoch"]
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert set(saved) == set(trained_before)


def test_checkpoint_holds_only_trainable_parameters(tmp_path):
    model = make_model()
    run(tmp_path, model=model, epochs=1)
    saved = load_file(tmp_path / "checkpoint" / TRAINABLE_FILE)
    assert set(saved) == set(trainable(model))
    assert not any("encoder.layer" in name and "weight" in name for name in saved)
    state = read_trainer_state(tmp_path / "checkpoint")
    assert state["finished"] and state["global_step"] == 12 and state["epoch"] == 1


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_after_a_crash_ends_exactly_where_an_uninterrupted_run_does(tmp_path, accumulation):
    reference_model = make_model()
    reference = run(tmp_path / "straight", model=reference_model, gradient_accumulation_steps=accumulation)

    # 12 batches per epoch; the crash comes in epoch 2, a few batches after its last
    # checkpoint, so the resumed run must redo those steps exactly.
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crashed", collator=CrashAfter(18), gradient_accumulation_steps=accumulation)
    state = read_trainer_state(tmp_path / "crashed" / "checkpoint")
    assert state["epoch"] == 1 and 0 < state["batches_done"] < 12, "expected a mid-epoch checkpoint"

    resumed_model = make_model()
    with torch.no_grad():  # scrambled: the trained state must come from the checkpoint
        for param in trainable(resumed_model, clone=False).values():
            param.normal_()
    resumed = run(tmp_path / "crashed", model=resumed_model, resume=True, gradient_accumulation_steps=accumulation)

    final, expected = trainable(resumed_model), trainable(reference_model)
    assert all(torch.equal(final[name], expected[name]) for name in expected)
    assert [e["accuracy"] for e in resumed["epochs"]] == [e["accuracy"] for e in reference["epochs"]]
    assert resumed["train_loss"] == reference["train_loss"]
    assert resumed["global_steps"] == reference["global_steps"]


def test_resume_refuses_changed_settings(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, collator=CrashAfter(5))
    with pytest.raises(TrainingError, match=r"learning_rate was 0.03, now 0.001.*--overwrite"):
        run(tmp_path, resume=True, learning_rate=1e-3)


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    first = run(tmp_path, epochs=1)
    adapter = (tmp_path / "adapter_model.safetensors").read_bytes()
    again = run(tmp_path, epochs=1, resume=True)
    assert again["epochs"] == first["epochs"]
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == adapter


def test_refuses_a_non_empty_output_dir_unless_told(tmp_path):
    (tmp_path / "notes.txt").write_text("someone else's")
    with pytest.raises(TrainingError, match="--resume.*--overwrite"):
        run(tmp_path, epochs=1)
    run(tmp_path, epochs=1, overwrite=True)
    assert (tmp_path / "metrics.json").is_file()


def test_overwrite_discards_the_old_checkpoint(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, collator=CrashAfter(5))
    assert (tmp_path / "checkpoint").is_dir()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, collator=CrashAfter(1), overwrite=True)  # dies before its first checkpoint
    assert not (tmp_path / "checkpoint").exists(), "a fresh run must never leave the old run resumable"


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model = make_model()
    calls = {"n": 0}

    def poison_fourth_training_forward(module, args, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 5:
                return output * float("nan")
        return output

    model.base_model.classifier.register_forward_hook(poison_fourth_training_forward)
    with pytest.raises(TrainingError, match=r"loss is nan at step 5 \(epoch 1, batch 5\).*checkpoint"):
        run(tmp_path, model=model)
    state = read_trainer_state(tmp_path / "checkpoint")
    assert state["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "checkpoint" / TRAINABLE_FILE).values())


def test_max_steps_caps_training_and_still_evaluates(tmp_path):
    metrics = run(tmp_path, max_steps=5)
    assert metrics["global_steps"] == 5 and len(metrics["train_loss"]) == 5
    assert metrics["epochs"][-1]["step"] == 5 and metrics["best_metric"] is not None


def test_learning_rate_follows_the_schedule(tmp_path):
    metrics = run(tmp_path, epochs=1, warmup_ratio=0.25, learning_rate=1e-2)
    state = read_trainer_state(tmp_path / "checkpoint")
    rates = [record["learning_rate"] for record in state["history"]["steps"]]
    assert rates[0] == 0.0 and max(rates) == pytest.approx(1e-2) and rates[-1] < rates[3]
    assert metrics["config"]["warmup_ratio"] == 0.25


def scripted_evaluation(monkeypatch, records):
    """Make every evaluation of the loop return the next of ``records`` (metric and eval_loss)."""
    from peftkit.training import loop

    records = iter(records)
    monkeypatch.setattr(loop, "_run_evaluation", lambda *args, **kwargs: dict(next(records)))


def test_early_stopping_ends_after_patience_epochs_without_improvement_and_keeps_the_best(tmp_path, monkeypatch):
    # epochs 3 and 4 beat neither epoch 2's accuracy nor its loss; 0.9 is never reached
    scripted_evaluation(monkeypatch, [{"accuracy": a, "eval_loss": 1.0} for a in (0.5, 0.7, 0.6, 0.65, 0.9, 0.95)])

    def scripted(logits, labels):
        raise AssertionError("the scripted evaluation replaces metrics_fn")

    saved_at = []
    metrics = train(make_model(), make_dataset(), make_dataset(16, seed=1), pad_collate, scripted,
                    tiny_config(epochs=6, early_stopping_patience=2), tmp_path, primary_metric="accuracy",
                    save_adapter=lambda directory: saved_at.append(len(saved_at)))
    assert [epoch["accuracy"] for epoch in metrics["epochs"]] == [0.5, 0.7, 0.6, 0.65]
    assert metrics["stopped_early"] and metrics["finished"]
    assert metrics["best_epoch"] == 2 and metrics["best_metric"] == 0.7 and len(saved_at) == 2
    assert metrics["global_steps"] == 4 * 12  # 48 examples / batch 4 per epoch
    again = train(make_model(), make_dataset(), make_dataset(16, seed=1), pad_collate, scripted,
                  tiny_config(epochs=6, early_stopping_patience=2), tmp_path, primary_metric="accuracy", resume=True)
    assert len(again["epochs"]) == 4  # a resumed early-stopped run is finished, not continued


def test_early_stopping_waits_while_the_dev_loss_still_falls(tmp_path, monkeypatch):
    """A lucky first epoch (F1 0.011, then 0 while the loss falls from 2.39) must not stop a tagger."""
    records = [(0.011, 2.39), (0.0, 0.62), (0.0, 0.28), (0.2, 0.25), (0.15, 0.26), (0.18, 0.27), (0.5, 0.1)]
    scripted_evaluation(monkeypatch, [{"f1": f1, "eval_loss": loss} for f1, loss in records])
    metrics = train(make_model(), make_dataset(), make_dataset(16, seed=1), pad_collate, None,
                    tiny_config(epochs=7, early_stopping_patience=2), tmp_path, primary_metric="f1")
    # epochs 2-3 improve only the loss, epoch 4 both; epochs 5-6 neither: stop after 6, best epoch 4
    assert [epoch["f1"] for epoch in metrics["epochs"]] == [0.011, 0.0, 0.0, 0.2, 0.15, 0.18]
    assert metrics["stopped_early"] and metrics["best_epoch"] == 4 and metrics["best_metric"] == 0.2


def test_a_tied_metric_with_a_lower_dev_loss_counts_as_improvement():
    assert _is_better(0.0, 0.0, True, loss=0.4, best_loss=0.5)  # F1 stuck at 0 while the tagger learns
    assert not _is_better(0.0, 0.0, True, loss=0.6, best_loss=0.5)
    assert not _is_better(0.0, 0.0, True)  # no loss to break the tie: not better
    assert not _is_better(0.5, 0.5, True, loss=float("nan"), best_loss=0.5)
    assert _is_better(0.1, 0.2, False, loss=9.0, best_loss=0.1) and not _is_better(0.3, 0.2, False, loss=0.0, best_loss=0.1)


def test_early_stopping_on_a_flat_metric_follows_the_dev_loss(tmp_path):
    """An NER tagger scores F1 0 for its first epochs; the loss decides when it has stopped learning."""
    metrics = train(make_model(), make_dataset(), make_dataset(16, seed=1), pad_collate, lambda logits, labels: {"f1": 0.0},
                    tiny_config(epochs=8, early_stopping_patience=2, learning_rate=3e-2), tmp_path, primary_metric="f1")
    losses = [epoch["eval_loss"] for epoch in metrics["epochs"]]
    best = int(np.argmin(losses)) + 1  # first epoch of the lowest dev loss: the only "improvements" are loss drops
    assert metrics["best_epoch"] == best and metrics["best_metric"] == 0.0
    assert len(losses) > 2  # the old rule stopped every flat-metric run after epoch 3
    assert len(losses) == (8 if not metrics["stopped_early"] else best + 2)


def test_sgd_with_momentum_is_a_training_option(tmp_path):
    model = make_model()
    optimizer = _make_optimizer(model, TrainingConfig(learning_rate=0.1, optimizer="sgd", momentum=0.8))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.8
    assert isinstance(_make_optimizer(model, TrainingConfig(learning_rate=0.1)), torch.optim.AdamW)
    before = trainable(model)
    metrics = run(tmp_path, model=model, epochs=1, optimizer="sgd", learning_rate=0.5)
    assert metrics["config"]["optimizer"] == "sgd"
    assert any(not torch.equal(before[name], p) for name, p in trainable(model, clone=False).items())
    with pytest.raises(TrainingError, match="optimizer must be one of adamw, sgd, not 'adam'"):
        run(tmp_path, overwrite=True, optimizer="adam")
    with pytest.raises(TrainingError, match="early_stopping_patience must be at least 1"):
        run(tmp_path, overwrite=True, early_stopping_patience=0)


def test_a_model_without_trainable_parameters_is_refused(tmp_path):
    model = make_model()
    model.requires_grad_(False)
    with pytest.raises(TrainingError, match="nothing to train"):
        run(tmp_path, model=model)


def test_a_missing_learning_rate_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="learning_rate"):
        train(make_model(), make_dataset(), make_dataset(), pad_collate, accuracy, TrainingConfig(), tmp_path, primary_metric="accuracy")


def test_data_order_is_a_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=3)
    orders = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        orders[epoch] = list(sampler)
    assert sorted(orders[0]) == list(range(50)) and orders[0] != orders[1]
    again = EpochShuffleSampler(50, seed=3)
    again.set_epoch(1)
    assert list(again) == orders[1]
    other_seed = EpochShuffleSampler(50, seed=4)
    other_seed.set_epoch(1)
    assert list(other_seed) != orders[1]


def test_no_weight_decay_on_biases_and_layer_norms():
    model = make_model()
    for name, param in model.named_parameters():
        if "LayerNorm" in name:
            param.requires_grad_(True)
    groups = _optimizer_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "base_model.classifier.weight" in decayed
    assert "adapter.special_token_embeddings" in decayed
    assert "base_model.classifier.bias" in undecayed
    assert any("LayerNorm" in n for n in undecayed) and not any("LayerNorm" in n or "bias" in n for n in decayed)


def test_token_level_batches_of_different_lengths_concatenate():
    first, second = np.ones((2, 3, 4)), np.ones((1, 5, 4))
    logits = _concat_padded([first, second], 0.0)
    labels = _concat_padded([np.zeros((2, 3)), np.zeros((1, 5))], -100)
    assert logits.shape == (3, 5, 4) and labels.shape == (3, 5)
    assert (labels[:2, 3:] == -100).all() and (labels[2] == 0).all()


def test_a_killed_training_process_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL a real training process mid-epoch after a checkpoint exists, resume the run
    (here, in-process), and compare with an uninterrupted run."""
    killed_dir = tmp_path / "killed"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "tests.training.tiny_run", str(killed_dir)]
    process = subprocess.Popen([*command, "--seconds-per-batch", "0.15"], cwd=REPO_ROOT, env=environment)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state_file = killed_dir / "checkpoint" / "trainer_state.json"
            if state_file.is_file() and json.loads(state_file.read_text())["global_step"] >= 4:
                break
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.2)  # into the next batches, so the kill loses work
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    state = read_trainer_state(find_checkpoint(killed_dir))  # the kill may fall between two renames
    assert not state["finished"] and state["global_step"] < 24

    resumed_model = make_model()
    run(killed_dir, model=resumed_model, resume=True)
    reference_model = make_model()
    run(tmp_path / "straight", model=reference_model)

    resumed_final, reference_final = trainable(resumed_model), trainable(reference_model)
    for name, expected in reference_final.items():
        torch.testing.assert_close(resumed_final[name], expected, rtol=1e-6, atol=1e-7)
    resumed_best = load_file(killed_dir / "adapter_model.safetensors")
    reference_best = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    for name, expected in reference_best.items():
        torch.testing.assert_close(resumed_best[name], expected, rtol=1e-6, atol=1e-7)
    resumed_metrics = json.loads((killed_dir / "metrics.json").read_text())
    reference_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert [e["accuracy"] for e in resumed_metrics["epochs"]] == [e["accuracy"] for e in reference_metrics["epochs"]]


def test_bf16_mixed_precision_computes_in_bf16_and_keeps_float32_weights(tmp_path):
    """Accelerate's autocast runs the matrix products in bfloat16 (on CPU too); the trained
    vectors, the optimizer's copy of them and the saved adapter stay float32."""
    model = make_model()
    output_dtypes = set()
    query = model.base_model.bert.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda module, args, output: output_dtypes.add(output.dtype))
    metrics = run(tmp_path / "bf16", model=model, mixed_precision="bf16")
    assert output_dtypes == {torch.bfloat16}
    assert all(np.isfinite(loss) for _, loss in metrics["train_loss"])
    assert metrics["config"]["mixed_precision"] == "bf16"
    saved = load_file(tmp_path / "bf16" / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    assert all(param.dtype == torch.float32 for param in trainable(model, clone=False).values())

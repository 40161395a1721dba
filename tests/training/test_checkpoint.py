"""Checkpoints: what they hold, that they restore exactly, and that a failed write loses nothing."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import peftkit.training.checkpoint as checkpoint
from peftkit.errors import TrainingError
from peftkit.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint


def tiny_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)  # "the frozen backbone"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler


def take_a_step(model, optimizer, scheduler):
    model(torch.randn(5, 4)).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_round_trip_restores_parameters_optimizer_scheduler_and_every_rng(tmp_path):
    model, optimizer, scheduler = tiny_setup()
    take_a_step(model, optimizer, scheduler)
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={"global_step": 1})
    draws = (random.random(), np.random.rand(), torch.rand(3))
    take_a_step(model, optimizer, scheduler)  # uses torch's generator and Adam's moments
    expected = [p.detach().clone() for p in model.parameters()]

    restored, restored_optimizer, restored_scheduler = tiny_setup()  # same frozen part, fresh moments
    with torch.no_grad():
        restored[1].weight.normal_()  # scrambled: must come back from the checkpoint
    state = load_checkpoint(tmp_path / "checkpoint", model=restored, optimizer=restored_optimizer, scheduler=restored_scheduler)
    assert state == {"global_step": 1}
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(3), draws[2])
    take_a_step(restored, restored_optimizer, restored_scheduler)
    trained = [p for p in restored.parameters() if p.requires_grad]
    assert all(torch.equal(p, e) for p, e in zip(trained, expected[2:]))
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_each_process_resumes_its_own_random_generators(tmp_path):
    """A multi-process run saves every process's generators; process k gets back its own."""
    model, optimizer, scheduler = tiny_setup()
    per_process = []
    for seed in (11, 22):  # two processes whose dropout streams differ
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        per_process.append(checkpoint.capture_rng_state())
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={}, rng_states=per_process)
    expected = {}
    for index, seed in enumerate((11, 22)):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        expected[index] = (random.random(), np.random.rand(), torch.rand(3))
    for index in (1, 0):
        restored, restored_optimizer, restored_scheduler = tiny_setup()
        load_checkpoint(tmp_path / "checkpoint", model=restored, optimizer=restored_optimizer,
                        scheduler=restored_scheduler, process_index=index)
        draws = (random.random(), np.random.rand(), torch.rand(3))
        assert draws[:2] == expected[index][:2] and torch.equal(draws[2], expected[index][2])
    with pytest.raises(TrainingError, match="random states for 2 processes, not for process 2"):
        load_checkpoint(tmp_path / "checkpoint", model=restored, optimizer=restored_optimizer,
                        scheduler=restored_scheduler, process_index=2)


def test_a_checkpoint_with_one_unlisted_random_state_still_loads(tmp_path):
    """Checkpoints written before per-process states held one state dict, not a list."""
    model, optimizer, scheduler = tiny_setup()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={})
    torch.save(checkpoint.capture_rng_state(), tmp_path / "checkpoint" / checkpoint.RNG_FILE)
    expected = torch.rand(3)
    load_checkpoint(tmp_path / "checkpoint", model=model, optimizer=optimizer, scheduler=scheduler)
    assert torch.equal(torch.rand(3), expected)


def test_only_trainable_parameters_are_written(tmp_path):
    model, optimizer, scheduler = tiny_setup()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={})
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "checkpoint" / checkpoint.TRAINABLE_FILE)) == {"1.weight", "1.bias"}


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temporaries(tmp_path, monkeypatch):
    model, optimizer, scheduler = tiny_setup()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={"global_step": 1})

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={"global_step": 2})
    assert checkpoint.read_trainer_state(find_checkpoint(tmp_path))["global_step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]


def test_a_kill_between_the_two_renames_still_finds_the_old_checkpoint(tmp_path):
    model, optimizer, scheduler = tiny_setup()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={"global_step": 3})
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")  # what replace_directory does first
    found = find_checkpoint(tmp_path)
    assert found == tmp_path / ".checkpoint.old" and checkpoint.read_trainer_state(found)["global_step"] == 3
    assert find_checkpoint(tmp_path / "nowhere") is None


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    model, optimizer, scheduler = tiny_setup()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={})
    other, other_optimizer, other_scheduler = tiny_setup()
    other[0].requires_grad_(True)
    with pytest.raises(TrainingError, match="does not fit.*missing.*0.weight"):
        load_checkpoint(tmp_path / "checkpoint", model=other, optimizer=other_optimizer, scheduler=other_scheduler)


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    model, optimizer, scheduler = tiny_setup()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, trainer_state={})
    (tmp_path / "checkpoint" / checkpoint.OPTIMIZER_FILE).write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="incomplete or corrupt.*--overwrite"):
        load_checkpoint(tmp_path / "checkpoint", model=model, optimizer=optimizer, scheduler=scheduler)

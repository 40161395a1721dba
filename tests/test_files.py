"""Atomic writes: the file appears whole, with the mode a plain open() would give it."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest
import torch
from safetensors.torch import save_file

import peftkit
from peftkit.files import atomic_write, atomic_write_json
from tests.tiny_models import make_tiny_model, special_ids


@pytest.fixture
def umask_027():
    """A umask other than the usual 022, so a mode that merely happens to be 0644 cannot pass."""
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def replace_with_own_file(tmp: str) -> None:
    """A writer that, like safetensors' save_file, writes a file of its own and renames it over ``tmp``."""
    fd, own = tempfile.mkstemp(dir=os.path.dirname(tmp))  # mode 0600
    with os.fdopen(fd, "w") as handle:
        handle.write("data")
    os.replace(own, tmp)


@pytest.mark.parametrize("write", [
    lambda path: atomic_write_json(path, {"a": 1}),
    lambda path: atomic_write(path, lambda tmp: save_file({"x": torch.zeros(2)}, tmp)),
    lambda path: atomic_write(path, replace_with_own_file),
], ids=["json", "safetensors", "writer-replaces-the-file"])
def test_every_atomic_write_gets_the_umask_mode(write, umask_027, tmp_path):
    target = tmp_path / "out"
    write(target)
    assert mode(target) == umask_027
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no temporary file left behind


def test_saved_adapter_files_share_one_mode(umask_027, tmp_path):
    model = make_tiny_model("bert")
    peftkit.get_peft_model(model, peftkit.PastaConfig(special_token_ids=special_ids("bert"))).save_pretrained(tmp_path)
    assert {path.name: mode(path) for path in tmp_path.iterdir()} == {
        "adapter_config.json": umask_027, "adapter_model.safetensors": umask_027,
    }

"""Pretraining a ViT and the default image backbone: built once (under a lock), then reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from peftkit.errors import PeftkitError, TrainingError
from peftkit.loading import resolve_model_path
from peftkit.training import pretrain
from peftkit.training.pretrain import PretrainConfig, default_backbone_dir, default_image_backbone, pretrain_vit
from tests.tiny_models import TINY_VIT_PRETRAIN

TINY = TINY_VIT_PRETRAIN
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_default(tmp_path, monkeypatch) -> PretrainConfig:
    """The default backbone's recipe made tiny (as a user would, by environment) in an empty cache."""
    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrain.PRETRAIN_OPTIONS_ENV, json.dumps(TINY))
    return PretrainConfig(**TINY)


@pytest.fixture
def count_builds(monkeypatch) -> list[Path]:
    built: list[Path] = []

    def counting_pretrain_vit(config, output_dir, **kwargs):
        built.append(Path(output_dir))
        return pretrain_vit(config, output_dir, **kwargs)

    monkeypatch.setattr(pretrain, "pretrain_vit", counting_pretrain_vit)
    return built


def test_pretrain_saves_a_vit_that_auto_classes_load_with_its_processor(tmp_path):
    output = tmp_path / "vit"
    report = pretrain_vit(PretrainConfig(**TINY), output)
    assert sorted(p.name for p in output.iterdir()) == [
        "config.json", "learning_curve.png", "metrics.json", "model.safetensors", "preprocessor_config.json", "pretrain.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name != "vit"]  # the staging directory is gone
    model = AutoModelForImageClassification.from_pretrained(output)
    processor = AutoImageProcessor.from_pretrained(output)
    assert model.config.model_type == "vit" and model.config.hidden_size == 16 and model.config.num_channels == 1
    assert model.config.id2label[3] == "3" and processor.size == {"height": 8, "width": 8}
    assert report["train_examples"] == 64 and report["eval_examples"] == 32
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert json.loads((output / "pretrain.json").read_text())["accuracy"] == report["accuracy"]
    assert json.loads((output / "metrics.json").read_text())["final_metrics"]["accuracy"] == report["accuracy"]

    # The same recipe and seed give the same weights (what lets a benchmark and a cache agree).
    again = pretrain_vit(PretrainConfig(**TINY), tmp_path / "again")
    assert again["accuracy"] == report["accuracy"]
    for (name, a), b in zip(model.state_dict().items(), AutoModelForImageClassification.from_pretrained(tmp_path / "again").state_dict().values()):
        assert torch.equal(a, b), name


def test_pretrain_refuses_a_non_empty_output_and_a_text_task(tmp_path):
    output = tmp_path / "vit"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(TrainingError, match="--overwrite"):
        pretrain_vit(PretrainConfig(**TINY), output)
    assert (output / "keep.txt").read_text() == "mine"
    with pytest.raises(TrainingError, match="multiple of num_attention_heads"):
        pretrain_vit(PretrainConfig(**{**TINY, "hidden_size": 15}), tmp_path / "odd")


def test_the_default_image_backbone_is_built_once_then_reused(tiny_default, count_builds, capsys):
    first = resolve_model_path(None, "image-classification")
    message = capsys.readouterr().err
    assert "building the default image backbone once" in message and str(default_backbone_dir()) in message
    assert "built in" in message
    assert count_builds == [Path(first)] and Path(first) == default_backbone_dir(tiny_default)
    assert Path(first).is_relative_to(pretrain.cache_dir()) and (Path(first) / "preprocessor_config.json").is_file()
    weights = Path(first) / "model.safetensors"
    written = weights.stat().st_mtime_ns

    second = resolve_model_path(None, "image-classification")
    assert second == first and len(count_builds) == 1
    assert weights.stat().st_mtime_ns == written
    assert "building" not in capsys.readouterr().err
    # A text task without --model still gets the shipped MiniLM, never the ViT.
    assert resolve_model_path(None, "text-classification") != first


def test_another_recipe_gets_its_own_cache_directory(tiny_default, monkeypatch):
    other = {**TINY, "epochs": 2}
    monkeypatch.setenv(pretrain.PRETRAIN_OPTIONS_ENV, json.dumps(other))
    assert default_backbone_dir() == default_backbone_dir(PretrainConfig(**other)) != default_backbone_dir(tiny_default)
    assert default_backbone_dir(PretrainConfig()).name.startswith("vit-fashion-mnist-")


def test_a_killed_build_leaves_a_temporary_that_the_next_build_removes(tiny_default, count_builds):
    directory = default_backbone_dir()
    stale = directory.parent / f".{directory.name}.tmp-killed"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    default_image_backbone()
    assert not stale.exists() and len(count_builds) == 1 and (directory / "config.json").is_file()


def test_a_second_process_waits_for_the_build_and_does_not_build_again(tiny_default, tmp_path):
    """The lock: while this process builds, another asking for the backbone waits, then reuses it."""
    from filelock import FileLock

    directory = default_backbone_dir()
    directory.parent.mkdir(parents=True)
    lock = FileLock(str(directory.parent / f"{directory.name}.lock"))
    lock.acquire()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    waiter = subprocess.Popen(
        [sys.executable, "-c", "from peftkit.training.pretrain import default_image_backbone; print(default_image_backbone())"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        before = []  # its stderr up to the line saying it waits on the lock (EOF if it crashed)
        while not before or ("waiting" not in before[-1] and before[-1] != ""):
            before.append(waiter.stderr.readline())
        assert "another process is building" in before[-1], "".join(before)
        time.sleep(0.5)
        assert waiter.poll() is None  # still blocked on the lock
        pretrain_vit(PretrainConfig(**TINY), directory)  # what the lock holder builds
    finally:
        lock.release()
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert out.strip() == str(directory)
    assert "so building the default" not in "".join(before) + err


def test_bad_recipe_options_and_multi_process_launches_are_clear_errors(tiny_default, monkeypatch):
    monkeypatch.setenv(pretrain.PRETRAIN_OPTIONS_ENV, '{"task": "digits",')
    with pytest.raises(PeftkitError, match="not valid JSON"):
        default_image_backbone()
    monkeypatch.setenv(pretrain.PRETRAIN_OPTIONS_ENV, '{"layers": 2}')
    with pytest.raises(PeftkitError, match="'layers'"):
        default_image_backbone()
    monkeypatch.setenv(pretrain.PRETRAIN_OPTIONS_ENV, json.dumps(TINY))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PeftkitError, match="peftkit pretrain"):
        default_image_backbone()
    assert not default_backbone_dir().exists()


def test_fashion_mnist_missing_is_a_clear_error(tmp_path, monkeypatch):
    from peftkit.data import images
    from peftkit.errors import DataError

    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        pretrain_vit(PretrainConfig(), tmp_path / "vit")
    assert not (tmp_path / "vit").exists()
    # Through the default backbone (the default recipe): the same advice, plus --model.
    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(pretrain.PRETRAIN_OPTIONS_ENV, raising=False)
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*--model DIR"):
        resolve_model_path(None, "image-classification")
    assert not default_backbone_dir().exists()
    assert [p.name for p in default_backbone_dir().parent.iterdir()] == [f"{default_backbone_dir().name}.lock"]


def test_pretrain_command_builds_the_cached_default_or_writes_output(tiny_default, count_builds, tmp_path, capsys):
    from peftkit.cli import main

    assert main(["pretrain"]) == 0  # the default recipe (here the tiny one from the environment)
    assert count_builds == [default_backbone_dir()]  # no --output: the cache's default backbone
    assert "saved:" in capsys.readouterr().out
    assert resolve_model_path(None, "image-classification") == str(default_backbone_dir())
    assert len(count_builds) == 1
    assert main(["pretrain", "--task", "digits", "--epochs", "1"]) == 0  # flags equal to the recipe's
    assert "already built" in capsys.readouterr().out and len(count_builds) == 1
    weights = default_backbone_dir() / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert main(["pretrain", "--overwrite"]) == 0  # built again, swapped in
    assert len(count_builds) == 2 and weights.stat().st_mtime_ns != written
    assert sorted(p.name for p in default_backbone_dir().parent.iterdir()) == [
        default_backbone_dir().name, f"{default_backbone_dir().name}.lock"]  # no temporaries left
    assert main(["pretrain", "--epochs", "2"]) == 0  # another recipe: its own directory, said so
    assert "pass --model" in capsys.readouterr().out
    assert count_builds[-1] == default_backbone_dir(PretrainConfig(**{**TINY, "epochs": 2})) != count_builds[0]

    output = tmp_path / "mine"
    assert main(["pretrain", "--task", "digits", "--output", str(output), "--epochs", "1",
                 "--max-train-examples", "64", "--max-eval-examples", "32"]) == 0
    assert (output / "model.safetensors").is_file() and count_builds[-1] == output

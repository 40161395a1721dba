"""``peftkit compare``: each method in its own process, same budget, ratios to full fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkit.cli import main
from peftkit.errors import TrainingError
from peftkit.training.compare import compare_command, markdown_table
from tests.tiny_models import save_tiny_bert_checkpoint

WORDS = {"pos": ["the movie was great", "a good plot", "great actor"], "neg": ["the movie was terrible", "a bad plot", "bad actor"]}


@pytest.fixture
def model_and_task(tmp_path) -> tuple[Path, Path]:
    model_dir = save_tiny_bert_checkpoint(tmp_path / "tiny-bert")
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    for split, repeat in (("train", 3), ("validation", 1)):
        rows = ["text,label"] + [f"{t},{label}" for label, texts in WORDS.items() for t in texts * repeat]
        (task_dir / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return model_dir, task_dir


def test_compare_writes_json_table_and_plot_with_ratios_to_full(model_and_task, tmp_path):
    model_dir, task_dir = model_and_task
    output = tmp_path / "cmp"
    result = compare_command(
        methods="pasta,linear,full", model=str(model_dir), task=str(task_dir), output=str(output),
        epochs=1, batch_size=4, max_train_examples=None, max_length=16,
    )
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"pasta", "linear", "full"}
    assert rows["full"]["step_time_vs_full"] == 1.0 and rows["full"]["peak_memory_vs_full"] == 1.0
    # linear probe trains only the 32x2+2 head; PASTA adds 2 layers x 2 slots x 32
    assert rows["linear"]["trainable_parameters"] == 66
    assert rows["pasta"]["trainable_parameters"] == 66 + 2 * 2 * 32
    assert rows["full"]["trainable_parameters"] > 100 * rows["pasta"]["trainable_parameters"]
    assert rows["pasta"]["adapter_bytes"] < rows["full"]["adapter_bytes"] / 10
    assert rows["pasta"]["backbone_weights_rewritten_per_switch"] == 0
    assert rows["full"]["backbone_weights_rewritten_per_switch"] > 0
    for row in rows.values():
        assert 0.0 <= row["metric"] <= 1.0
        assert row["median_step_seconds"] > 0 and row["peak_memory_mb"] > 0
    saved = json.loads((output / "compare.json").read_text())
    assert [row["method"] for row in saved["rows"]] == ["pasta", "linear", "full"]
    table = (output / "compare.md").read_text()
    assert table == markdown_table(saved["rows"]) and "| pasta |" in table
    assert (output / "compare.png").stat().st_size > 1000
    assert (output / "pasta" / "adapter_model.safetensors").is_file()


def test_compare_refuses_a_non_empty_output_and_reports_a_failing_method(model_and_task, tmp_path):
    model_dir, task_dir = model_and_task
    output = tmp_path / "cmp"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not empty"):
        compare_command(methods="pasta", model=str(model_dir), task=str(task_dir), output=str(output))
    with pytest.raises(TrainingError, match="training no-such-method failed"):
        compare_command(methods="no-such-method", model=str(model_dir), task=str(task_dir), output=str(tmp_path / "b"))


def test_compare_is_a_cli_command(model_and_task, tmp_path, capsys):
    model_dir, task_dir = model_and_task
    assert main(["compare", "--methods", "", "--model", str(model_dir), "--task", str(task_dir), "--output", str(tmp_path / "c")]) == 2
    assert "--methods is empty" in capsys.readouterr().err


def test_compare_on_an_image_task_without_model_builds_the_default_backbone_once(tmp_path, monkeypatch, capsys):
    from peftkit.training import pretrain
    from tests.tiny_models import TINY_VIT_PRETRAIN

    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrain.PRETRAIN_OPTIONS_ENV, json.dumps(TINY_VIT_PRETRAIN))
    result = compare_command(methods="linear,vpt", task="digits", output=str(tmp_path / "cmp"), epochs=1,
                             batch_size=16, max_train_examples=64, max_eval_examples=32)
    backbone = str(pretrain.default_backbone_dir())
    assert capsys.readouterr().err.count("building the default image backbone once") == 1  # here, not per method
    assert result["train_args"][:2] == ["--model", backbone]
    for method in ("linear", "vpt"):
        config = json.loads((tmp_path / "cmp" / method / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == backbone
        assert "building" not in (tmp_path / "cmp" / f"{method}.log").read_text()

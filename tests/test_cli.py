"""The ``peftkit`` command end to end, on a tiny BERT and tiny CSV/CoNLL files (offline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from peftkit.cli import EVAL_METRICS_FILE, main, normalise_argv, predict_command
from peftkit.loading import TASK_INFO_FILE
from tests.tiny_models import save_tiny_bert_checkpoint

POSITIVE = ["the movie was great", "a good plot", "the actor was good", "great movie", "a great actor", "good good movie"]
NEGATIVE = ["the movie was terrible", "a bad plot", "the actor was bad", "terrible movie", "a bad actor", "bad bad plot"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT backbone and its word-level tokenizer, saved like a hub checkpoint."""
    return save_tiny_bert_checkpoint(tmp_path_factory.mktemp("tiny-bert"), initializer_range=0.3)


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("sentiment")
    for split, repeat in (("train", 3), ("validation", 1)):
        rows = ["text,label"] + [f"{t},pos" for t in POSITIVE * repeat] + [f"{t},neg" for t in NEGATIVE * repeat]
        (directory / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return directory


@pytest.fixture(scope="module")
def ner_file(tmp_path_factory) -> Path:
    sentences = [
        [("john", "B-PER"), ("lives", "O"), ("in", "O"), ("london", "B-LOC")],
        [("john", "B-PER"), ("works", "O"), ("at", "O"), ("google", "B-ORG")],
        [("the", "O"), ("actor", "O"), ("lives", "O"), ("in", "O"), ("paris", "B-LOC")],
    ] * 4
    path = tmp_path_factory.mktemp("ner") / "ner.conll"
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in sentence) for sentence in sentences) + "\n")
    return path


def train_args(model_dir, task, output, *extra) -> list[str]:
    return [
        "train", "--model", str(model_dir), "--task", str(task), "--output", str(output),
        "--epochs", "2", "--batch-size", "4", "--max-length", "16", *extra,
    ]


def test_train_eval_predict_a_pasta_adapter(model_dir, sentiment_dir, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(train_args(model_dir, sentiment_dir, output, "--learning-rate", "0.03")) == 0
    printed = capsys.readouterr().out
    assert "trainable params:" in printed
    assert "validation accuracy:" in printed and "majority-class baseline: 0.5000" in printed

    config = json.loads((output / "adapter_config.json").read_text())
    assert config["peftkit_method"] == "pasta" and config["num_special_tokens"] == 2
    assert config["base_model_name_or_path"] == str(model_dir.resolve())
    assert config["task"]["label_names"] == ["neg", "pos"] and config["task"]["kind"] == "text-classification"
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["config"]["learning_rate"] == 0.03
    assert metrics["majority_baseline"] == 0.5
    assert (output / "learning_curve.png").is_file()
    weights = load_file(output / "adapter_model.safetensors")
    assert "adapter.special_token_embeddings" in weights and not any("encoder" in k for k in weights)

    # eval rebuilds the base model and the validation split from what the adapter recorded,
    # so it reproduces the best epoch's accuracy exactly.
    assert main(["eval", str(output)]) == 0
    evaluated = json.loads((output / EVAL_METRICS_FILE).read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["best_metric"])
    assert evaluated["num_examples"] == 12 and "accuracy:" in capsys.readouterr().out

    assert main(["predict", str(output), "--text", "the movie was great"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    label, probability = first_line.split("\t")
    assert label in ("neg", "pos") and probability.startswith("(p=")
    result = predict_command(str(output), text="the movie was great")
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["label"] == label


def test_a_lora_adapter_keeps_its_task_beside_the_peft_files(model_dir, sentiment_dir, tmp_path, capsys):
    output = tmp_path / "lora"
    assert main(train_args(model_dir, sentiment_dir, output, "--method", "lora", "--method-options", '{"r": 2}')) == 0
    peft_config = json.loads((output / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["r"] == 2
    assert json.loads((output / TASK_INFO_FILE).read_text())["label_names"] == ["neg", "pos"]
    assert main(["eval", str(output)]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert json.loads((output / EVAL_METRICS_FILE).read_text())["accuracy"] == pytest.approx(metrics["best_metric"])


def test_token_classification_predicts_entities(model_dir, ner_file, tmp_path, capsys):
    output = tmp_path / "ner"
    assert main(train_args(model_dir, ner_file, output, "--learning-rate", "0.05", "--validation-fraction", "0.25")) == 0
    assert "validation f1:" in capsys.readouterr().out
    result = predict_command(str(output), text="john lives in paris")
    assert len(result["tags"]) == 4
    for entity in result["entities"]:
        words = "john lives in paris".split()[entity["start"] : entity["end"]]
        assert " ".join(words) == entity["text"] and result["tags"][entity["start"]] == f"B-{entity['type']}"
    printed = capsys.readouterr().out
    assert printed.strip() == "no entities found" if not result["entities"] else result["entities"][0]["text"] in printed


def test_a_non_empty_output_needs_resume_or_overwrite(model_dir, sentiment_dir, tmp_path, capsys):
    output = tmp_path / "busy"
    output.mkdir()
    (output / "keep.txt").write_text("x")
    assert main(train_args(model_dir, sentiment_dir, output)) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(train_args(model_dir, sentiment_dir, output, "--overwrite")) == 0
    assert (output / "adapter_config.json").is_file() and (output / "keep.txt").is_file()


def test_resume_of_a_finished_run_keeps_its_result(model_dir, sentiment_dir, tmp_path, capsys):
    output = tmp_path / "done"
    assert main(train_args(model_dir, sentiment_dir, output)) == 0
    first = json.loads((output / "metrics.json").read_text())
    assert main(train_args(model_dir, sentiment_dir, output, "--resume")) == 0
    assert "already finished" in capsys.readouterr().out
    assert json.loads((output / "metrics.json").read_text())["epochs"] == first["epochs"]


def test_a_model_that_is_not_local_is_a_clear_error_not_a_download(sentiment_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code = main(["train", "--model", "no-such-org/no-such-model", "--task", str(sentiment_dir), "--output", str(tmp_path / "x")])
    assert code == 2
    error = capsys.readouterr().err
    assert "not a local directory" in error and "does not download" in error
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_flags_from_a_config_file(model_dir, sentiment_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(model_dir), "task": str(sentiment_dir), "output": str(tmp_path / "from-yaml"),
        "epochs": 1, "batch_size": 6, "learning_rate": 0.02, "max_length": 16,
    }))
    assert main(["train", "--config", str(config)]) == 0
    metrics = json.loads((tmp_path / "from-yaml" / "metrics.json").read_text())
    assert metrics["config"]["batch_size"] == 6 and metrics["global_steps"] == 36 // 6


def test_dashed_flags_and_bare_booleans_are_normalised():
    assert normalise_argv(["train", "--batch-size", "8", "--resume", "--seed=3"]) == [
        "train", "--batch_size", "8", "--resume=true", "--seed=3",
    ]
    assert normalise_argv(["train", "--overwrite", "false"]) == ["train", "--overwrite", "false"]
    # values and unknown flags pass through untouched
    assert normalise_argv(["predict", "d", "--text", "--not-a-flag"]) == ["predict", "d", "--text", "--not-a-flag"]


def test_a_json_list_value_of_a_list_flag_gives_its_items():
    """compare --extra-train-args '["--text-pair-column", "b"]' reached train as one quoted string."""
    import jsonargparse

    argv = normalise_argv(["compare", "--extra-train-args", '["--text-pair-column", "b"]'])
    assert argv == ["compare", '--extra_train_args=["--text-pair-column", "b"]']

    def compare(extra_train_args: list[str] | None = None):
        return extra_train_args

    assert jsonargparse.CLI(compare, args=argv[1:]) == ["--text-pair-column", "b"]
    # repeated flags and a plain value still collect one item each
    assert normalise_argv(["serve", "--adapter", "a=x", "--adapter", "[b=y"]) == ["serve", '--adapter=["a=x", "[b=y"]']


def test_every_command_flag_has_help_text():
    """A docstring docstring_parser cannot read (a bare \\n in it, say) leaves every flag of
    `--help` without its description; each command's Args must describe each parameter."""
    import inspect

    import docstring_parser

    from peftkit.cli import COMMANDS

    for name, command in COMMANDS.items():
        described = {p.arg_name for p in docstring_parser.parse(command.__doc__ or "").params if p.description}
        missing = [p for p in inspect.signature(command).parameters if p not in described]
        assert not missing, f"peftkit {name}: no help for {missing}"


def test_help_shows_dashed_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--batch-size" in help_text and "--batch_size" not in help_text
    assert "--method-options" in help_text


def test_eval_refuses_a_task_with_other_labels(model_dir, sentiment_dir, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(train_args(model_dir, sentiment_dir, output, "--epochs", "1")) == 0
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "validation"):
        rows = ["text,label"] + [f"{t},good" for t in POSITIVE] + [f"{t},poor" for t in NEGATIVE]
        (other / f"{split}.csv").write_text("\n".join(rows) + "\n")
    assert main(["eval", str(output), "--task", str(other)]) == 2
    assert "same labels" in capsys.readouterr().err


def test_train_with_activation_checkpointing_gives_the_same_run(model_dir, sentiment_dir, tmp_path, monkeypatch):
    import peftkit.training.loop as loop

    used = []

    def spy(model):
        used.append(enable_activation_checkpointing(model))
        layers = encoder_layers(model.base_model)
        assert all(layer.gradient_checkpointing for layer in layers)
        return used[-1]

    enable_activation_checkpointing = loop.enable_activation_checkpointing
    from peftkit.models import encoder_layers

    monkeypatch.setattr(loop, "enable_activation_checkpointing", spy)
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    assert main(train_args(model_dir, sentiment_dir, plain, "--learning-rate", "0.03")) == 0
    assert used == []
    assert main(train_args(model_dir, sentiment_dir, checkpointed, "--learning-rate", "0.03", "--activation-checkpointing")) == 0
    assert used == ["transformers"]
    plain_metrics = json.loads((plain / "metrics.json").read_text())
    metrics = json.loads((checkpointed / "metrics.json").read_text())
    assert metrics["config"]["activation_checkpointing"] is True
    # Dropout is on while training: equal losses mean the recomputed layers saw the same masks.
    assert [loss for _, loss in metrics["train_loss"]] == pytest.approx([loss for _, loss in plain_metrics["train_loss"]])
    assert metrics["best_metric"] == plain_metrics["best_metric"]


# -- the image path: default backbone, image predict, wrong-kind models --------------------------------


@pytest.fixture
def tiny_default_backbone(tmp_path, monkeypatch) -> Path:
    """An empty cache and a tiny recipe for the default image backbone (set by environment, as a user could)."""
    from peftkit.training import pretrain
    from tests.tiny_models import TINY_VIT_PRETRAIN

    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrain.PRETRAIN_OPTIONS_ENV, json.dumps(TINY_VIT_PRETRAIN))
    return pretrain.default_backbone_dir()


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory) -> Path:
    """Six 8x8 grayscale digits from scikit-learn as PNG files, in a folder with a sub-folder."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("pngs")
    digits = load_digits()
    for index in range(6):
        path = folder / ("more" if index >= 4 else "") / f"digit{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.round(digits.images[index] * 255 / 16).astype(np.uint8), mode="L").save(path)
    return folder


def image_train_args(task, output, *extra) -> list[str]:
    return ["train", "--task", str(task), "--output", str(output), "--epochs", "1", "--batch-size", "16",
            "--max-train-examples", "64", "--max-eval-examples", "32", *extra]


def test_an_image_task_without_model_builds_the_default_backbone_once(tiny_default_backbone, tmp_path, capsys):
    assert main(image_train_args("digits", tmp_path / "vpt", "--method", "vpt")) == 0
    captured = capsys.readouterr()
    assert "building the default image backbone once" in captured.err
    assert f"model: {tiny_default_backbone}" in captured.out
    config = json.loads((tmp_path / "vpt" / "adapter_config.json").read_text())
    assert config["peftkit_method"] == "vpt" and config["base_model_name_or_path"] == str(tiny_default_backbone)

    written = (tiny_default_backbone / "model.safetensors").stat().st_mtime_ns
    assert main(image_train_args("digits", tmp_path / "linear", "--method", "linear")) == 0
    assert "building" not in capsys.readouterr().err
    assert (tiny_default_backbone / "model.safetensors").stat().st_mtime_ns == written

    # eval on an image adapter reproduces its best validation accuracy.
    assert main(["eval", str(tmp_path / "vpt")]) == 0
    metrics = json.loads((tmp_path / "vpt" / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "vpt" / EVAL_METRICS_FILE).read_text())
    assert evaluated["num_examples"] == 32 and evaluated["accuracy"] == pytest.approx(metrics["best_metric"])


def test_image_predict_equals_the_models_own_softmax(tiny_default_backbone, digit_pngs, tmp_path, capsys):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import peftkit

    adapter = tmp_path / "vpt"
    assert main(image_train_args("digits", adapter, "--method", "vpt", "--learning-rate", "0.05")) == 0
    capsys.readouterr()
    base = AutoModelForImageClassification.from_pretrained(tiny_default_backbone, num_labels=10)
    model = peftkit.PeftModel.from_pretrained(base, adapter).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_default_backbone)
    files = sorted(p for p in digit_pngs.rglob("*.png"))

    def expected(paths):
        with torch.no_grad():
            pixels = processor(images=[Image.open(p).convert("L") for p in paths], return_tensors="pt")["pixel_values"]
            return model(pixel_values=pixels).logits.softmax(-1)

    def check(result, paths):
        assert [row["image"] for row in result["predictions"]] == [str(p) for p in paths]
        for row, probabilities in zip(result["predictions"], expected(paths)):
            got = torch.tensor([row["probabilities"][str(label)] for label in range(10)])
            torch.testing.assert_close(got, probabilities, rtol=1e-5, atol=1e-6)
            assert row["label"] == str(int(probabilities.argmax())) and row["probability"] == pytest.approx(float(probabilities.max()))

    check(predict_command(str(adapter), image=str(files[0])), files[:1])  # one file, from Python
    check(predict_command(str(adapter), image=[str(p) for p in files[:3]], batch_size=2), files[:3])  # several, two batches
    check(predict_command(str(adapter), image=[str(digit_pngs)]), files)  # a folder, sub-folders included
    capsys.readouterr()

    # The command line: a repeated flag, several files after one flag, a folder; one line per image.
    for argv in (["--image", str(files[0]), "--image", str(files[1])], ["--image", str(files[0]), str(files[1])]):
        assert main(["predict", str(adapter), *argv, "--top-k", "2"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split("\t")[0] for line in lines] == [str(files[0]), str(files[1])]
        assert lines[0].split("\t")[2].startswith("(p=") and lines[0].split("\t")[3].startswith("then: ")
    assert main(["predict", str(adapter), "--image", str(digit_pngs)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(files)

    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(adapter), "--image", str(tmp_path / "notes.png")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["predict", str(adapter), "--image", str(tmp_path / "missing.png")]) == 2
    assert "no such image" in capsys.readouterr().err
    assert main(["predict", str(adapter), "--text", "a digit"]) == 2
    assert "--image PATH" in capsys.readouterr().err


def test_a_model_of_the_wrong_kind_is_refused_by_every_command(model_dir, sentiment_dir, digit_pngs, tmp_path, capsys):
    from peftkit.errors import ModelKindError
    from peftkit.training.compare import compare_command
    from tests.tiny_models import save_tiny_vit_checkpoint

    vit_dir = save_tiny_vit_checkpoint(tmp_path / "vit")
    capsys.readouterr()
    assert main(image_train_args("digits", tmp_path / "a", "--model", str(model_dir))) == 2
    assert "holds a text model (bert); it needs a vision model" in capsys.readouterr().err
    assert main(train_args(vit_dir, sentiment_dir, tmp_path / "b")) == 2
    assert "holds a vision model (vit); it needs a text model" in capsys.readouterr().err
    assert not (tmp_path / "b" / "adapter_config.json").exists()
    for model, task in ((vit_dir, sentiment_dir), (model_dir, "digits")):
        with pytest.raises(ModelKindError):  # before any method's run starts
            compare_command(methods="linear", model=str(model), task=str(task), output=str(tmp_path / "cmp"))
        assert not (tmp_path / "cmp").exists()

    # eval/predict of an image adapter on a text model, and of a text adapter given images.
    assert main(image_train_args("digits", tmp_path / "image", "--model", str(vit_dir), "--method", "linear")) == 0
    assert main(["eval", str(tmp_path / "image"), "--model", str(model_dir)]) == 2
    assert "it needs a vision model" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "image"), "--image", str(digit_pngs), "--model", str(model_dir)]) == 2
    assert "it needs a vision model" in capsys.readouterr().err
    assert main(train_args(model_dir, sentiment_dir, tmp_path / "text", "--epochs", "1")) == 0
    assert main(["predict", str(tmp_path / "text"), "--image", str(digit_pngs)]) == 2
    assert "not images" in capsys.readouterr().err


def test_train_from_a_classifier_with_another_label_count_replaces_its_head(model_dir, tmp_path, caplog):
    """A fine-tuned 2-label checkpoint trained on a 3-label task: a new head and a notice, no raw RuntimeError."""
    import logging

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = tmp_path / "two-label"
    AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(checkpoint)
    data = tmp_path / "three.csv"
    rows = [f"{t},pos" for t in POSITIVE] + [f"{t},neg" for t in NEGATIVE] + [f"{t} plot,meh" for t in POSITIVE]
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="peftkit.loading"):
        assert main(train_args(checkpoint, data, tmp_path / "run", "--method", "linear")) == 0
    assert "holds a task head for 2 labels but the task has 3" in caplog.text
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["task"]["label_names"] == ["meh", "neg", "pos"]


def test_eval_and_predict_an_adapter_saved_by_trainer(model_dir, sentiment_dir, tmp_path, capsys):
    """Trainer's save_model records the labels but not the data: predict needs nothing, eval needs --task."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    import peftkit

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}
    )
    model = peftkit.get_peft_model(base, peftkit.PastaConfig(num_special_tokens=2), tokenizer=tokenizer)
    rows = Dataset.from_dict({**tokenizer(POSITIVE + NEGATIVE, padding=True), "labels": [1] * 6 + [0] * 6})
    trainer = Trainer(model=model, args=TrainingArguments(str(tmp_path / "run"), max_steps=2, learning_rate=0.03), train_dataset=rows)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))

    result = predict_command(str(tmp_path / "adapter"), text="a great actor")
    assert result["label"] in {"neg", "pos"}
    assert main(["eval", str(tmp_path / "adapter")]) == 2
    assert "records no task data; pass --task" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "adapter"), "--task", str(sentiment_dir)]) == 0
    evaluated = json.loads((tmp_path / "adapter" / EVAL_METRICS_FILE).read_text())
    assert evaluated["num_examples"] == 12 and 0.0 <= evaluated["accuracy"] <= 1.0


def test_an_adapter_directory_as_model_names_its_base(model_dir, sentiment_dir, tmp_path, capsys):
    adapter = tmp_path / "sent"
    assert main(train_args(model_dir, sentiment_dir, adapter, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(train_args(adapter, sentiment_dir, tmp_path / "again")) == 2
    err = capsys.readouterr().err
    assert "is an adapter directory" in err and f"it records {model_dir}" in err and "peftkit eval" in err
    assert "Traceback" not in err and "KeyError" not in err


def test_eval_and_predict_of_an_adapter_from_a_checkpoint_with_another_head_warn_nothing(model_dir, tmp_path, caplog):
    """train replaces a 2-label head for a 3-label task and says so; eval/predict restore the adapter's head silently.
    (The CLI turns transformers' own reports down to errors; tests/test_auto.py covers them for AutoPeftModel.)"""
    import logging

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = tmp_path / "two-label"
    AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(checkpoint)
    data = tmp_path / "three.csv"
    rows = [f"{t},pos" for t in POSITIVE] + [f"{t},neg" for t in NEGATIVE] + [f"{t} plot,meh" for t in POSITIVE]
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="peftkit.loading"):
        assert main(train_args(checkpoint, data, tmp_path / "run")) == 0
        assert "holds a task head for 2 labels but the task has 3" in caplog.text
        caplog.clear()
        assert main(["eval", str(tmp_path / "run")]) == 0
        assert predict_command(str(tmp_path / "run"), text="the movie was great")
    assert "task head" not in caplog.text and "re-initialised" not in caplog.text


@pytest.mark.parametrize("value, problem", [("backbone_dropout=false", "it is not JSON"), ("[1, 2]", "it is a JSON list, not an object")])
def test_method_options_that_are_not_a_json_object_are_refused_by_name(value, problem, tmp_path, capsys):
    for argv in (["train", "--method-options", value], ["train", f"--method-options={value}"], ["train", "--method_options", value]):
        assert main([*argv, "--output", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert f"--method-options takes a JSON object, and {value!r} is not one: {problem}" in error
        assert "Expected a <class" not in error and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, guess", [("--lr", "--learning-rate"), ("--epoch", "--epochs"), ("--num-train-epochs", "--epochs"),
                                         ("--learning-rte", "--learning-rate"), ("--output-dir", "--output")])
def test_a_flag_the_command_does_not_have_is_refused_naming_the_likely_one(flag, guess, tmp_path, capsys):
    """argparse took --lr as an abbreviation of --lr-scheduler (a traceback from transformers) and
    --epoch silently as --epochs."""
    assert main(["train", "--method", "lora", flag, "0.01", "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"peftkit train has no flag {flag}: did you mean {guess}? `peftkit train --help` lists every flag." in error
    assert "Traceback" not in error and not (tmp_path / "out").exists()


def test_a_bad_scheduler_is_refused_before_the_output_directory_exists(tmp_path, capsys):
    assert main(["train", "--method", "lora", "--lr-scheduler", "0.01", "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "lr_scheduler must be one of linear, cosine," in error and "not '0.01'" in error
    assert "Traceback" not in error and not (tmp_path / "out").exists()


def test_an_interrupted_command_names_itself_in_the_resume_advice(monkeypatch, tmp_path, capsys):
    import peftkit.training.compare as compare_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "compare", interrupted)
    assert main(["compare", "--methods", "linear", "--output", str(tmp_path / "c")]) == 130
    error = capsys.readouterr().err
    assert "run the same `peftkit compare` command with --resume" in error and "peftkit train" not in error

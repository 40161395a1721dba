"""load_task dispatch: builtins, kind inference, errors, subsets, task info, metric helpers."""

import json

import pytest
import transformers
from datasets import Dataset, DatasetDict

from peftkit.data import (
    TaskConfig,
    auto_model_class,
    builtin_task_names,
    carve_dev_split,
    encode_task,
    load_task,
    majority_baseline,
    primary_metric,
)
from peftkit.errors import DataError


def write(path, text):
    path.write_text(text)
    return str(path)


def table(rows_per_class=5):
    lines = ["text,label"]
    for i in range(rows_per_class):
        lines += [f"good movie {i},pos", f"bad movie {i},neg"]
    return "\n".join(lines) + "\n"


def test_shipped_text_builtins_are_registered():
    assert {"bbc-news", "twitter-ner"} <= set(builtin_task_names())


def test_unknown_builtin_name_lists_the_builtins():
    with pytest.raises(DataError, match=r"unknown builtin task 'bbc'.*bbc-news.*twitter-ner.*--task path"):
        load_task(TaskConfig(task="bbc"))


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "train.csv"
    with pytest.raises(DataError, match=r"no such file or directory: .*nope/train.csv"):
        load_task(TaskConfig(task=str(missing)))


def test_directory_without_train_file_is_explained(tmp_path):
    write(tmp_path / "notes.md", "hello")
    with pytest.raises(DataError, match=r"has no train\.\* file \(found: notes.md\)"):
        load_task(TaskConfig(task=str(tmp_path), kind="text-classification"))


def test_kind_is_inferred_from_the_data(tmp_path):
    ner_lines = "john\tB-PER\nis\tO\n\nparis\tB-LOC\nis\tO\n\n" * 3
    cases = {
        "t.csv": (table(), "text-classification"),
        "t.jsonl": ("".join(json.dumps({"text": f"x {i}", "label": i % 2}) + "\n" for i in range(10)), "text-classification"),
        "t.tsv": (table().replace(",", "\t"), "text-classification"),
        "n.tsv": (ner_lines, "token-classification"),
        "n.conll": (ner_lines, "token-classification"),
        "n.txt": (ner_lines, "token-classification"),
    }
    for name, (content, kind) in cases.items():
        assert load_task(TaskConfig(task=write(tmp_path / name, content))).kind == kind, name
    Dataset.from_dict({"tokens": [["a"], ["b"]], "tags": [["O"], ["B-X"]]}).save_to_disk(str(tmp_path / "ner_saved"))
    assert load_task(TaskConfig(task=str(tmp_path / "ner_saved"))).kind == "token-classification"
    DatasetDict({"train": Dataset.from_dict({"text": [f"t{i}" for i in range(6)], "label": [0, 1] * 3})}).save_to_disk(str(tmp_path / "cls_saved"))
    assert load_task(TaskConfig(task=str(tmp_path / "cls_saved"))).kind == "text-classification"


def test_unknown_kind_and_kind_contradicting_a_builtin(tmp_path):
    with pytest.raises(DataError, match=r"unknown task kind 'regression'.*text-classification"):
        load_task(TaskConfig(task=write(tmp_path / "t.csv", table()), kind="regression"))
    with pytest.raises(DataError, match=r"'twitter-ner' is token-classification, not text-classification"):
        load_task(TaskConfig(task="twitter-ner", kind="text-classification"))


def test_max_examples_take_seeded_subsets():
    config = TaskConfig(task="twitter-ner", max_train_examples=50, max_eval_examples=20, seed=7)
    task = load_task(config)
    assert len(task.train) == 50 and len(task.validation) == 20
    assert list(load_task(config).train["tokens"]) == list(task.train["tokens"])
    with pytest.raises(DataError, match="at least 1"):
        load_task(TaskConfig(task="twitter-ner", max_train_examples=0))


def test_task_info_is_json_and_rebuilds_the_task(tmp_path):
    path = write(tmp_path / "reviews.csv", table(10).replace("text,label", "review,stars"))
    task = load_task(TaskConfig(task=path, text_column="review", label_column="stars", max_length=64, seed=2))
    info = json.loads(json.dumps(task.to_info()))
    assert info["kind"] == "text-classification" and info["name"] == "reviews"
    assert info["label_names"] == ["neg", "pos"] and info["max_length"] == 64 and info["is_pair"] is False
    assert info["columns"]["text_column"] == "review" and info["source"] == str((tmp_path / "reviews.csv").resolve())
    rebuilt = load_task(TaskConfig.from_info(info, seed=2))
    assert list(rebuilt.validation["text"]) == list(task.validation["text"])


def test_metric_helpers_per_kind(tmp_path):
    assert primary_metric("text-classification") == "accuracy"
    assert primary_metric("token-classification") == "f1"
    assert auto_model_class("text-classification") is transformers.AutoModelForSequenceClassification
    assert auto_model_class("token-classification") is transformers.AutoModelForTokenClassification
    with pytest.raises(DataError, match="unknown task kind"):
        primary_metric("nope")
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "dev.csv").write_text("text,label\nc,x\nd,x\ne,x\nf,y\n")
    task = load_task(TaskConfig(task=str(tmp_path)))
    assert majority_baseline(task) == pytest.approx(0.75)  # 3 of 4 validation rows are "x"
    ner = load_task(TaskConfig(task="twitter-ner", max_eval_examples=100))
    assert majority_baseline(ner) == 0.0  # "O" everywhere finds no entity


def test_encode_task_dispatches_on_the_kind(tmp_path, tiny_tokenizer):
    task = load_task(TaskConfig(task=write(tmp_path / "t.csv", table())))
    train, validation = encode_task(task, tiny_tokenizer, max_length=8)
    assert len(train) == len(task.train) and len(validation) == len(task.validation)
    assert list(train["labels"]) == list(task.train["label"])


def test_dev_split_comes_from_training_rows_only_and_keeps_duplicates_together(tmp_path):
    lines = ["text,label"] + [f"good movie {i},pos" for i in range(12)] + [f"bad movie {i},neg" for i in range(12)]
    lines += ["good movie 0,pos"] * 3  # a duplicated training text must not be on both sides
    train = write(tmp_path / "train.csv", "\n".join(lines) + "\n")
    task = load_task(TaskConfig(task=train, validation_fraction=0.25, seed=1))
    fit, dev = carve_dev_split(task, 0.25, seed=3)
    fit_texts, dev_texts, reported = set(fit.train["text"]), set(dev["text"]), set(task.validation["text"])
    assert not fit_texts & dev_texts and not dev_texts & reported and not fit_texts & reported
    assert len(fit.train) + len(dev) == len(task.train) and fit.validation is task.validation
    assert sorted(set(dev["label"])) == [0, 1]  # stratified: both classes on dev
    again, _ = carve_dev_split(task, 0.25, seed=3)
    assert again.train["text"] == fit.train["text"]  # seeded
    with pytest.raises(DataError, match="--dev-fraction must be between 0 and 1"):
        carve_dev_split(task, 1.0, seed=0)


@pytest.mark.parametrize("file_name", ["data.csv", "train.csv", "reviews.csv"])
def test_a_local_file_is_named_by_its_stem_however_the_path_is_written(tmp_path, monkeypatch, file_name):
    """``--task data.csv`` at train time and the absolute path eval reads back name the same task."""
    (tmp_path / "work").mkdir()
    write(tmp_path / "work" / file_name, table(5))
    monkeypatch.chdir(tmp_path / "work")
    relative = load_task(TaskConfig(task=file_name))
    monkeypatch.chdir(tmp_path)  # eval runs elsewhere, from the absolute source the adapter records
    absolute = load_task(TaskConfig.from_info(relative.to_info()))
    assert relative.name == absolute.name == file_name.removesuffix(".csv")


def test_a_local_directory_is_named_by_its_name_even_as_dot(tmp_path, monkeypatch):
    data_dir = tmp_path / "sentiment"
    data_dir.mkdir()
    write(data_dir / "train.csv", table(5))
    monkeypatch.chdir(data_dir)
    assert load_task(TaskConfig(task=".")).name == load_task(TaskConfig(task=str(data_dir))).name == "sentiment"

"""Text classification: CSV/JSONL/directories/save_to_disk, pairs, label names, splits, BBC News."""

import csv
import json
from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from peftkit.data import TaskConfig, compute_metrics, encode_task, load_task, make_collator
from peftkit.data.text_classification import clip_words
from peftkit.errors import DataError


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def sentiment_rows(count_per_class=10):
    rows = []
    for i in range(count_per_class):
        rows.append((f"a good movie number {i}", "pos"))
        rows.append((f"a bad movie number {i}", "neg"))
        rows.append((f"the movie number {i}", "neutral"))
    return rows


def test_csv_file_is_read_normalised_and_split_stratified(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", ["review", "sentiment", "extra"], [(t, l, 1) for t, l in sentiment_rows()])
    task = load_task(TaskConfig(task=str(path), text_column="review", label_column="sentiment"))
    assert task.kind == "text-classification" and task.name == "reviews" and not task.is_pair
    assert task.train.column_names == ["text", "label"]
    assert task.label_names == ["neg", "neutral", "pos"]  # sorted string labels
    assert len(task.train) + len(task.validation) == 30 and len(task.validation) == 6
    # Stratified: 20% of each class of 10 -> exactly 2 per class held out.
    assert Counter(list(task.validation["label"])) == {0: 2, 1: 2, 2: 2}
    texts = {r["text"]: task.label_names[r["label"]] for r in list(task.train) + list(task.validation)}
    assert texts["a good movie number 3"] == "pos" and texts["a bad movie number 7"] == "neg"


def test_stratified_split_is_reproducible_and_seeded(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["text", "label"], sentiment_rows(20))
    first = load_task(TaskConfig(task=str(path), seed=3))
    again = load_task(TaskConfig(task=str(path), seed=3))
    other = load_task(TaskConfig(task=str(path), seed=4))
    assert list(first.validation["text"]) == list(again.validation["text"])
    assert sorted(list(first.validation["text"])) != sorted(list(other.validation["text"]))
    assert Counter(list(other.validation["label"])) == {0: 4, 1: 4, 2: 4}


def test_duplicated_texts_stay_on_one_side_of_the_split(tmp_path):
    rows = [row for row in sentiment_rows(10) for _ in range(3)]  # every example three times
    task = load_task(TaskConfig(task=str(write_csv(tmp_path / "copies.csv", ["text", "label"], rows))))
    assert len(task.train) + len(task.validation) == 90 and len(task.validation) == 18  # 2 distinct x 3 per class
    assert not set(task.validation["text"]) & set(task.train["text"])


def test_jsonl_with_integer_labels_keeps_their_order_and_names_them(tmp_path):
    records = [{"body": f"review {i}", "stars": stars} for i, stars in enumerate([5, 1, 3] * 4)]
    task = load_task(TaskConfig(task=str(write_jsonl(tmp_path / "stars.jsonl", records)), text_column="body", label_column="stars"))
    assert task.label_names == ["1", "3", "5"]
    by_text = {r["text"]: task.label_names[r["label"]] for r in list(task.train) + list(task.validation)}
    assert by_text["review 0"] == "5" and by_text["review 1"] == "1" and by_text["review 2"] == "3"

    contiguous = [{"text": f"t {i}", "label": i % 2} for i in range(10)]
    task = load_task(TaskConfig(task=str(write_jsonl(tmp_path / "binary.jsonl", contiguous))))
    assert task.label_names == ["0", "1"]
    assert all(int(r["text"].split()[1]) % 2 == r["label"] for r in task.train)  # ids unchanged


def test_sentence_pairs_are_encoded_as_text_and_text_pair(tmp_path, tiny_tokenizer):
    rows = [(f"john lives in paris {i}", "john is in paris", "entailment") for i in range(5)]
    rows += [(f"john is big {i}", "john is a movie", "contradiction") for i in range(5)]
    path = write_csv(tmp_path / "nli.csv", ["premise", "hypothesis", "gold"], rows)
    config = TaskConfig(task=str(path), text_column="premise", text_pair_column="hypothesis", label_column="gold")
    task = load_task(config)
    assert task.is_pair and task.train.column_names == ["text", "text_pair", "label"]
    assert task.to_info()["is_pair"] is True
    train, _ = encode_task(task, tiny_tokenizer, max_length=32)
    assert set(train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    row = train[0]
    sep = tiny_tokenizer.sep_token_id
    assert row["input_ids"][0] == tiny_tokenizer.cls_token_id and row["input_ids"].count(sep) == 2
    assert 1 in row["token_type_ids"]  # second segment marked


def test_directory_with_train_and_dev_files(tmp_path):
    write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(4))
    write_csv(tmp_path / "dev.csv", ["text", "label"], [("a good plot", "pos"), ("a bad plot", "neg")])
    task = load_task(TaskConfig(task=str(tmp_path)))
    assert len(task.train) == 12 and len(task.validation) == 2
    assert list(task.validation["text"]) == ["a good plot", "a bad plot"]
    assert [task.label_names[i] for i in list(task.validation["label"])] == ["pos", "neg"]


def test_validation_label_unseen_in_training_is_rejected(tmp_path):
    write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(4))
    write_csv(tmp_path / "validation.csv", ["text", "label"], [("a good plot", "pos"), ("so so", "mixed")])
    with pytest.raises(DataError, match=r"'mixed'.*training data never has") as error:
        load_task(TaskConfig(task=str(tmp_path)))
    assert "validation.csv" in str(error.value)


def test_save_to_disk_uses_class_label_names_and_validation_split(tmp_path):
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["pos", "neg", "neutral"])})
    train = Dataset.from_dict({"sentence": ["good", "bad", "fine", "great"], "label": [0, 1, 2, 0]}, features=features)
    validation = Dataset.from_dict({"sentence": ["awful"], "label": [1]}, features=features)
    DatasetDict({"train": train, "validation": validation}).save_to_disk(str(tmp_path / "saved"))
    task = load_task(TaskConfig(task=str(tmp_path / "saved"), text_column="sentence"))
    assert task.label_names == ["pos", "neg", "neutral"]  # the feature's order, not sorted
    assert list(task.train["label"]) == [0, 1, 2, 0] and list(task.validation["text"]) == ["awful"]

    single = Dataset.from_dict({"text": [f"x{i}" for i in range(10)], "label": ["a", "b"] * 5})
    single.save_to_disk(str(tmp_path / "single"))
    task = load_task(TaskConfig(task=str(tmp_path / "single")))
    assert len(task.validation) == 2 and sorted(list(task.validation["label"])) == [0, 1]


def test_bbc_news_builtin_reads_all_articles():
    task = load_task(TaskConfig(task="bbc-news"))
    assert task.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(task.train) + len(task.validation) == 2225
    assert 420 <= len(task.validation) <= 460  # 20% of the 2,127 distinct articles (+ their copies)
    assert not set(task.validation["text"]) & set(task.train["text"])  # 98 duplicates never straddle
    counts = Counter(list(task.train["label"])) + Counter(list(task.validation["label"]))
    assert counts == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
    assert "license" in task.description or "non-commercial" in task.description
    texts = list(task.train["text"]) + list(task.validation["text"])
    mutu = next(text for text in texts if text.startswith("Chelsea sack Mutu"))  # the Latin-1 file
    assert "\u00a315.8m" in mutu


def test_encode_truncates_and_collator_pads(tmp_path, tiny_tokenizer):
    rows = [(f"{i} " + "john lives in new york " * 20, "long") for i in range(5)] + [
        (short, "short") for short in ("a movie", "a plot", "the movie", "the plot", "a paris")
    ]
    task = load_task(TaskConfig(task=str(write_csv(tmp_path / "d.csv", ["text", "label"], rows))))
    train, validation = encode_task(task, tiny_tokenizer, max_length=16)
    lengths = sorted(len(ids) for ids in list(train["input_ids"]))
    assert lengths[-1] == 16 and lengths[0] == 4  # [CLS] a movie [SEP]
    batch = make_collator(task.kind, tiny_tokenizer)([train[i] for i in range(len(train))])
    assert batch["input_ids"].shape == (len(train), 16)
    assert batch["labels"].tolist() == list(train["labels"])
    assert (batch["attention_mask"].sum(1) == torch_lengths(train)).all()


def torch_lengths(dataset):
    import torch

    return torch.tensor([len(ids) for ids in dataset["input_ids"]])


def test_clipping_long_texts_does_not_change_the_tokens(tiny_tokenizer):
    text = " ".join(["johnny lives in new yorker", "is\n\tbig", "a   good movie"] * 30)
    clipped = clip_words(text, 16)
    assert len(clipped) < len(text) and text.startswith(clipped)
    assert tiny_tokenizer(clipped, truncation=True, max_length=16) == tiny_tokenizer(text, truncation=True, max_length=16)
    assert clip_words("short text", 16) == "short text"


def test_classification_metrics_on_a_hand_made_example():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    logits = np.eye(3)[predictions]
    metrics = compute_metrics("text-classification", logits, labels, ["a", "b", "c"])
    # accuracy 3/5; F1 per class: a: P=1/2 R=1/2 -> 0.5; b: P=2/3 R=1 -> 0.8; c: 0 -> macro 1.3/3
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["macro_f1"] == pytest.approx(1.3 / 3)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"text_column": "body"}, r"no column 'body'.*columns are: text, label.*--text-column"),
        ({"label_column": "class"}, r"no column 'class'.*--label-column"),
        ({"text_pair_column": "second"}, r"no column 'second'.*--text-pair-column"),
        # every missing column at once: fixed one per run, each run would fail on the next
        ({"text_column": "body", "label_column": "class"},
         r"no column 'body' or 'class'; its columns are: text, label\. Name the right ones with --text-column and --label-column"),
    ],
)
def test_missing_column_names_the_column_and_the_flag(tmp_path, config, message):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], sentiment_rows(2))
    with pytest.raises(DataError, match=message):
        load_task(TaskConfig(task=str(path), **config))


def test_empty_file_and_header_only_file_are_rejected(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_task(TaskConfig(task=str(tmp_path / "empty.csv")))
    write_csv(tmp_path / "header.csv", ["text", "label"], [])
    with pytest.raises(DataError, match=r"header.csv is empty: it has no examples"):
        load_task(TaskConfig(task=str(tmp_path / "header.csv")))
    write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(2))
    write_csv(tmp_path / "validation.csv", ["text", "label"], [])
    with pytest.raises(DataError, match=r"validation.csv is empty"):
        load_task(TaskConfig(task=str(tmp_path)))


def test_rows_without_a_label_and_singleton_classes_are_rejected(tmp_path):
    path = write_csv(tmp_path / "holes.csv", ["text", "label"], [("a", "x"), ("b", ""), ("c", "x")])
    with pytest.raises(DataError, match=r"1 row\(s\) have no value in column 'label' \(first: data row 2\)"):
        load_task(TaskConfig(task=str(path)))
    path = write_csv(tmp_path / "lonely.csv", ["text", "label"], [*sentiment_rows(3), ("odd one", "rare")])
    with pytest.raises(DataError, match=r"'rare' have a single \(distinct\) example"):
        load_task(TaskConfig(task=str(path)))

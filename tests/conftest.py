"""Shared fixtures; the tiny model builders live in tests/tiny_models.py."""

import os

import pytest
import torch

from tests.tiny_models import make_bert_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def bert_tokenizer(tmp_path):
    return make_bert_tokenizer(tmp_path)


@pytest.fixture
def single_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core box they lose 10x to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

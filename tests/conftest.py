"""Shared fixtures; the tiny model builders live in tests/tiny_models.py."""

import os

import pytest

from tests.tiny_models import make_bert_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def bert_tokenizer(tmp_path):
    return make_bert_tokenizer(tmp_path)

"""Fixtures for the data tests: a tiny offline WordPiece tokenizer and small data files."""

import os

import pytest
from transformers import BertTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "john", "##ny", "lives", "in", "new", "york", "##er", "is", "big", "a", "good", "bad", "movie",
    "the", "plot", "was", "great", "paris", "smith",
]


@pytest.fixture
def tiny_tokenizer(tmp_path):
    """BertTokenizerFast read from a vocab.txt we write (transformers 5 ignores ``vocab_file=``)."""
    directory = tmp_path / "tokenizer"
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(directory))
    assert tokenizer.is_fast and tokenizer.convert_tokens_to_ids("york") == VOCAB.index("york")
    return tokenizer

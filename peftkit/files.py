"""Atomic file writes: write beside the target, fsync, then rename over it.

A kill at any moment leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from peftkit.errors import TrainingError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # Set after write, not before: mkstemp makes 0600, and a writer may replace tmp with its
        # own file (safetensors' save_file writes a temporary file of its own and renames it over
        # tmp, so a mode set on mkstemp's file is lost).
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def replace_directory(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Swap a fully written directory into place (old one removed only after the new one is in)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp_dir, final_dir)


def ensure_output_dir(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse to write into a non-empty directory unless the user said so."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not (overwrite or resume):
        raise TrainingError(
            f"output directory {path} is not empty; pass --resume to continue the run in it, "
            "--overwrite to replace it, or choose another --output."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def recorded_peft_type(directory: str | os.PathLike) -> str | None:
    """The ``peft_type`` of ``directory``'s adapter_config.json; None when there is no such file or
    it is unreadable (the callers only ask "is this an ICL / feature-probe directory?")."""
    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record.get("peft_type") if isinstance(record, dict) else None

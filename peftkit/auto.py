"""``AutoPeftModel...from_pretrained(adapter_dir)``: an adapter and the base model it records, in one call.

An adapter directory records its base (``base_model_name_or_path`` in adapter_config.json) and,
when peftkit wrote it, its task (kind and label names: ``task`` in adapter_config.json, or
``peftkit_task.json`` beside a PEFT adapter). These classes load that base from local files with
a head sized and named for those labels (so ``config.id2label`` names a pipeline's answers), then
the adapter onto it: peftkit's own methods through ``peftkit.PeftModel``, PEFT's (LoRA, ...)
through PEFT (its ``AutoPeftModel...`` when nothing recorded the labels). Names follow PEFT's
``peft.AutoPeftModelForSequenceClassification`` and friends; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from peftkit.errors import AdapterMismatchError, BaseModelError
from peftkit.loading import adapter_restores_head, in_hf_cache, load_base_model, read_task_info
from peftkit.peft_model import PeftModel, read_adapter_config, refuse_feature_probe


def recorded_base_path(adapter_dir: str | os.PathLike, record: dict[str, Any]) -> str:
    """The local directory (or Hugging Face cache name) of the base model the adapter records.

    Raises BaseModelError, naming the recorded path and the fixes, when it is not available
    locally: peftkit never downloads models.
    """
    name = record.get("base_model_name_or_path")
    if not name:
        raise BaseModelError(
            f"{adapter_dir}/adapter_config.json does not record its base model; pass it, "
            "from_pretrained(adapter_dir, base_model=PATH_OR_MODEL)."
        )
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if not in_hf_cache(name):
        raise BaseModelError(
            f"the adapter in {adapter_dir} was trained on the base model {name!r}, which is not here: "
            "no such directory and not in the Hugging Face cache (peftkit does not download models). "
            "Copy that model to this path, or pass where it is now: "
            "from_pretrained(adapter_dir, base_model=PATH_OR_MODEL)."
        )
    return name


class _AutoPeftModelBase:
    """Shared ``from_pretrained``; subclasses name their task kind and PEFT's counterpart."""

    task_kind: str | None = None  # None: the adapter's own (AutoPeftModel)
    peft_class_name = "AutoPeftModel"

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is built with {type(self).__name__}.from_pretrained(adapter_dir).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        base_model: str | os.PathLike | nn.Module | None = None,
        adapter_name: str = "default",
        is_trainable: bool = False,
        **kwargs: Any,
    ):
        """The adapter in ``pretrained_model_name_or_path`` on its base model.

        Args:
            pretrained_model_name_or_path: A directory written by ``save_pretrained`` (peftkit's
                or PEFT's) or by ``peftkit train``.
            base_model: The base model (a path, or the model itself) when it is no longer where
                the adapter recorded it.
            adapter_name: Name of the adapter in the returned model (PEFT's multi-adapter API).
            is_trainable: Leave the adapter trainable (default: frozen, eval mode).
            kwargs: Keywords for the base model's ``from_pretrained`` (dtype, torch_dtype,
                device_map, attn_implementation, low_cpu_mem_usage, ...), as in PEFT's
                ``AutoPeftModel``: a bf16 load gives a bf16 base with float32 adapter tables.
                transformers raises its own error (TypeError) for keywords it does not know.

        Returns a ``peftkit.PeftModel`` for peftkit adapters, PEFT's model for PEFT adapters.
        Raises BaseModelError when the base is not available locally, AdapterMismatchError when
        the adapter is for another task kind than this class loads, AdapterFileError for a
        directory that is not an adapter, TypeError for base-model keywords beside a ``base_model``
        given as a module (it is already loaded).
        """
        adapter_dir = pretrained_model_name_or_path
        record = read_adapter_config(adapter_dir)
        refuse_feature_probe(record, str(adapter_dir))
        task_info = read_task_info(adapter_dir)
        kind = cls._check_kind(adapter_dir, record, task_info)
        is_peftkit = "peftkit_method" in record
        if base_model is None:
            base_path = recorded_base_path(adapter_dir, record)
        elif isinstance(base_model, nn.Module):
            if kwargs:
                raise TypeError(
                    f"{cls.__name__}.from_pretrained got base-model keywords ({', '.join(sorted(kwargs))}) "
                    "beside a base_model that is already loaded; load that model with them, or pass its path."
                )
            base_path = None
        else:
            base_path = str(base_model)

        if not is_peftkit and isinstance(base_path, str) and base_model is None and not task_info.get("label_names"):
            import peft

            peft_class = getattr(peft, cls.peft_class_name, None)
            if peft_class is not None:  # PEFT has no AutoPeftModelForImageClassification
                return peft_class.from_pretrained(str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs)

        if isinstance(base_model, nn.Module):
            model = base_model
        else:
            model = load_base_model(base_path, {**task_info, "kind": kind}, model_class=cls._model_class(record, kind),
                                    head_restored=adapter_restores_head(record), **kwargs)
        # PEFT's adapters too: peftkit's from_pretrained hands them to PEFT after checking the
        # backbone they record and restoring the fast path (peftkit_options.json).
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable, adapter_name=adapter_name)

    @classmethod
    def _check_kind(cls, adapter_dir, record: dict[str, Any], task_info: dict[str, Any]) -> str | None:
        recorded = task_info.get("kind")
        if cls.task_kind is not None and recorded is not None and recorded != cls.task_kind:
            right = next((c.__name__ for c in _TASK_CLASSES if c.task_kind == recorded), "AutoPeftModel")
            raise AdapterMismatchError(
                f"the adapter in {adapter_dir} is for {recorded}, not {cls.task_kind}; load it with "
                f"peftkit.{right}.from_pretrained."
            )
        return cls.task_kind or recorded

    @classmethod
    def _model_class(cls, record: dict[str, Any], kind: str | None):
        """The task model class to build the base with: the kind's Auto class, else the recorded class."""
        import transformers

        from peftkit import data

        if kind is not None:
            return data.auto_model_class(kind)
        recorded = record.get("task_model_class")
        if recorded and hasattr(transformers, recorded):
            return getattr(transformers, recorded)
        return transformers.AutoModel


class AutoPeftModel(_AutoPeftModelBase):
    """An adapter on its base, built as the task model class the adapter was trained on."""


class AutoPeftModelForSequenceClassification(_AutoPeftModelBase):
    """A text-classification adapter on its base (``AutoModelForSequenceClassification``)."""

    task_kind = "text-classification"
    peft_class_name = "AutoPeftModelForSequenceClassification"


class AutoPeftModelForTokenClassification(_AutoPeftModelBase):
    """A token-classification (NER) adapter on its base (``AutoModelForTokenClassification``)."""

    task_kind = "token-classification"
    peft_class_name = "AutoPeftModelForTokenClassification"


class AutoPeftModelForImageClassification(_AutoPeftModelBase):
    """An image-classification adapter (VPT, ...) on its base (``AutoModelForImageClassification``)."""

    task_kind = "image-classification"
    peft_class_name = "AutoPeftModelForImageClassification"  # PEFT has none: loaded through peft.PeftModel


_TASK_CLASSES = (
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
    AutoPeftModelForImageClassification,
)

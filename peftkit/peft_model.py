"""The user-facing wrapper: ``get_peft_model`` and ``PeftModel``, named as in Hugging Face PEFT.

``get_peft_model(model, config)`` freezes every weight of ``model``, unfreezes the task head
(the modules a ``...ForSequenceClassification`` adds around its backbone) and attaches the
method. What requires grad afterwards is exactly what trains and what ``save_pretrained``
writes, whatever the method. PEFT's own configs (``peft.LoraConfig``) go to PEFT unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from peftkit.errors import AdapterFileError, AdapterMismatchError, MethodConfigError, UnsupportedModelError
from peftkit.files import atomic_write, atomic_write_json
from peftkit.methods.base import MethodConfig
from peftkit.methods.registry import get_method, method_names, spec_for_config
from peftkit.models import backbone_identity, check_backbone_identity, encoder_layers, head_module_names
from peftkit.models.backbones import without_checkpoint_wrappers

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def _is_peft_config(config: Any) -> bool:
    try:
        from peft import PeftConfig
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(config, PeftConfig)


def _uncompiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` result wraps (``_orig_mod``), or ``model`` itself.

    A compiled module's only child is the original, so the method would find no layers and the
    task head would be taken for the whole model (everything trainable). Adapters attach to the
    original; compile the wrapped model afterwards, ``torch.compile(peft_model)``."""
    # Only a loaded dynamo can have compiled it; importing it just to check costs seconds.
    compiled_class = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)
    while compiled_class is not None and isinstance(model, compiled_class):
        model = model._orig_mod
    return model


def get_peft_model(model: nn.Module, config, tokenizer=None):
    """Wrap ``model`` with a peftkit method, or with PEFT's own for a PEFT config.

    A ``torch.compile``-d model is unwrapped first (the method attaches to the original module);
    compile the returned model instead."""
    model = _uncompiled(model)
    if _is_peft_config(config):
        import peft

        return peft.get_peft_model(model, config)
    if not isinstance(config, MethodConfig):
        raise MethodConfigError(
            f"get_peft_model needs a method config such as peftkit.PastaConfig() or "
            f"peft.LoraConfig(...), not {type(config).__name__}."
        )
    return PeftModel(model, config, tokenizer=tokenizer)


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The adapter config of ``directory``, or a clear error when it is absent or corrupt."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise AdapterFileError(
            f"{directory} holds no {ADAPTER_CONFIG_NAME}, so it is not an adapter directory; "
            "point at a directory written by save_pretrained (or by `peftkit train`)."
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterFileError(
            f"{path} is corrupt ({error}); restore it or retrain the adapter."
        ) from None
    if not isinstance(record, dict):
        raise AdapterFileError(
            f"{path} holds a JSON {type(record).__name__}, not an object of adapter settings; "
            "restore the adapter_config.json that save_pretrained wrote, or retrain the adapter."
        )
    if "peft_type" not in record and "peftkit_method" not in record:
        if "model_type" in record or "architectures" in record:
            raise AdapterFileError(
                f"{path} is a model's config.json (it has model_type/architectures), not an adapter "
                "config: its field peft_type is missing. Put back the adapter_config.json that "
                "save_pretrained wrote, or load that directory as a base model instead."
            )
        raise AdapterFileError(
            f"{path} has no field peft_type, so it does not say which method made the adapter; "
            "restore the adapter_config.json that save_pretrained wrote, or retrain the adapter."
        )
    return record


def peft_method_types() -> set[str]:
    """PEFT's own ``peft_type`` values (LORA, IA3, ...): adapters PEFT loads itself."""
    import peft

    return {member.value for member in peft.PeftType}


def adapter_method_config(record: dict[str, Any], where: str) -> MethodConfig:
    """The peftkit method config an adapter_config.json record describes, checked field by field.

    Raises:
        AdapterFileError: ``peftkit_method`` missing (for a peft_type that is a peftkit method),
            unknown or not a string, or a method field of the wrong type; the message names the
            file, the field and the fix.
    """
    method = record.get("peftkit_method")
    if method is None:
        peft_type = record.get("peft_type")
        known = {spec.config_class().peft_type: name for name, spec in ((n, get_method(n)) for n in method_names())}
        hint = f'"peftkit_method": "{known[peft_type]}"' if peft_type in known else '"peftkit_method": "<method>"'
        raise AdapterFileError(
            f"{where} has peft_type {peft_type!r}, which is neither one of PEFT's methods nor has the "
            f"field peftkit_method that peftkit adapters carry. Add {hint} to it (methods: "
            f"{', '.join(method_names())}), or restore the file save_pretrained wrote."
        )
    if not isinstance(method, str):
        raise AdapterFileError(f"{where}: field peftkit_method must be a method name string, not {method!r}.")
    try:
        spec = get_method(method)
    except MethodConfigError:
        raise AdapterFileError(
            f"{where}: field peftkit_method is {method!r}, which this peftkit does not know (it knows "
            f"{', '.join(method_names())}); was the adapter made by a newer peftkit? Update peftkit."
        ) from None
    for field in ("base_model_identity", "task"):
        if field in record and not isinstance(record[field], dict):
            raise AdapterFileError(
                f"{where}: field {field} must be a JSON object, not {record[field]!r}; restore the "
                "file save_pretrained wrote."
            )
    names = {f.name for f in dataclasses.fields(spec.config_class)}
    try:
        return spec.config_class.from_dict({k: v for k, v in record.items() if k in names})
    except MethodConfigError as error:
        raise AdapterFileError(f"{where}: {error} Correct that field, or restore the file save_pretrained wrote.") from None


def read_adapter_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(directory) / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise AdapterFileError(f"{directory} has {ADAPTER_CONFIG_NAME} but no {ADAPTER_WEIGHTS_NAME}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(
            f"{path} is corrupt or truncated ({error}); restore it or retrain the adapter."
        ) from None


def _identity_or_none(model: nn.Module) -> dict | None:
    """The backbone's identity now, or None when it cannot be taken yet (meta tensors) or the
    model is one the method itself will reject with a clearer message."""
    if any(param.is_meta for param in model.parameters()):
        return None
    try:
        return backbone_identity(model)
    except UnsupportedModelError:
        return None


def _layers_checkpointed(model: nn.Module) -> bool:
    """True when the model's layers run under activation checkpointing: torch's checkpoint_wrapper
    (Accelerate, FSDP) holds the wrapped layer as ``_checkpoint_wrapped_module``; transformers'
    layers carry a ``gradient_checkpointing`` flag."""
    try:
        layers = encoder_layers(model)
    except UnsupportedModelError:
        return False
    return any(hasattr(layer, "_checkpoint_wrapped_module") or getattr(layer, "gradient_checkpointing", False)
               for layer in layers)


def _register_input_grads_hook(model: nn.Module):
    """Make the embeddings' output require grad while the layers are checkpointed.

    A reentrant checkpoint gives the parameters inside a layer gradients only when the layer's
    input requires grad, which a frozen embedding's output does not: WeGeFT, LoRA fusion or
    BitFit would silently train nothing. transformers does the same for its own checkpointing
    of text models (``enable_input_require_grads``), PEFT too; this covers checkpoint_wrapper and
    image models. Without checkpointing nothing changes, so a head-only method never pays for
    a backward through the frozen backbone."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(embeddings, nn.Module):
        return None

    def inputs_require_grad(module, args, output):
        if isinstance(output, torch.Tensor) and not output.requires_grad and torch.is_grad_enabled() \
                and _layers_checkpointed(model):
            output.requires_grad_(True)

    return embeddings.register_forward_hook(inputs_require_grad)


class PeftModel(nn.Module):
    """A frozen backbone plus one peftkit method and the task head."""

    def __init__(self, model: nn.Module, config: MethodConfig, tokenizer=None):
        super().__init__()
        model = _uncompiled(model)
        spec = spec_for_config(config)
        config = copy.deepcopy(config)  # the adapter may fill in resolved values (special ids)
        model.requires_grad_(False)
        # Fingerprint the backbone before the method can touch it: BitFit and full
        # fine-tuning train backbone weights, and the adapter must still match the
        # pristine base model it will be loaded onto.
        self.base_model_identity = _identity_or_none(model)
        self.head_modules = head_module_names(model)
        for name in self.head_modules:
            getattr(model, name).requires_grad_(True)
        self.base_model = model
        self.peft_config = config
        self.adapter = spec.adapter_class(model, config, tokenizer=tokenizer)
        self._input_grads_hook = _register_input_grads_hook(model)
        self.task_info: dict[str, Any] = {}
        self.train(model.training)  # a new adapter follows the mode the model was in

    # -- what HF-style callers expect -------------------------------------------------
    @property
    def config(self):
        return self.base_model.config

    def forward(self, *args, **kwargs):
        inputs = dict(kwargs)
        if args:  # a positional first argument is the model's main input (input_ids, pixel_values)
            inputs.setdefault(getattr(self.base_model, "main_input_name", "input_ids"), args[0])
        with self.adapter.forward_context(inputs):
            outputs = self.base_model(*args, **kwargs)
        extra = self.adapter.extra_loss()
        if extra is not None and getattr(outputs, "loss", None) is not None:
            outputs.loss = outputs.loss + extra
        return outputs

    # -- parameters -------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {
            without_checkpoint_wrappers(name): param.detach() for name, param in self.named_parameters() if param.requires_grad
        }

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # -- files --------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``adapter_model.safetensors`` then ``adapter_config.json``, each atomically."""
        directory = Path(save_directory)
        tensors = {name: t.contiguous().cpu().clone() for name, t in self.trainable_state_dict().items()}
        atomic_write(directory / ADAPTER_WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        identity = self.base_model_identity or backbone_identity(self.base_model)
        record = {
            "peft_type": self.peft_config.peft_type,
            "peftkit_method": self.peft_config.method_name,
            **self.peft_config.to_dict(),
            "base_model_name_or_path": identity["name_or_path"],
            "base_model_identity": identity,
            "task_model_class": type(self.base_model).__name__,
            "head_modules": self.head_modules,
            "task": self.task_info,
        }
        atomic_write_json(directory / ADAPTER_CONFIG_NAME, record)

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | os.PathLike, is_trainable: bool = False, tokenizer=None):
        """Restore an adapter onto ``model``; PEFT adapters (LoRA, ...) are loaded by PEFT."""
        model = _uncompiled(model)
        record = read_adapter_config(model_id)
        if "peftkit_method" not in record and record.get("peft_type") in peft_method_types():
            import peft

            return peft.PeftModel.from_pretrained(model, str(model_id), is_trainable=is_trainable)
        config = adapter_method_config(record, str(Path(model_id) / ADAPTER_CONFIG_NAME))
        check_backbone_identity(record.get("base_model_identity", {}), model, where=str(model_id))
        wrapped = cls(model, config, tokenizer=tokenizer)
        wrapped.task_info = record.get("task", {})
        wrapped.load_adapter_weights(read_adapter_weights(model_id), where=str(model_id))
        if not is_trainable:
            wrapped.requires_grad_(False)
            wrapped.eval()
        return wrapped

    def load_adapter_weights(self, tensors: dict[str, torch.Tensor], *, where: str = "the adapter") -> None:
        """Copy saved tensors into the trainable parameters, checking names and shapes first."""
        params = {without_checkpoint_wrappers(name): param for name, param in self.named_parameters()}
        expected = {name for name, p in params.items() if p.requires_grad}
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - set(params))
        if missing or unexpected:
            raise AdapterMismatchError(
                f"{where} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}. "
                "Was it saved for another method, task type or head?"
            )
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                hint = ""
                if any(name.startswith(f"base_model.{head}.") for head in self.head_modules):
                    hint = (
                        " The task head differs: load the base model with the adapter's number of "
                        "labels (e.g. AutoModelForSequenceClassification.from_pretrained(path, num_labels=N))."
                    )
                raise AdapterMismatchError(
                    f"{where}: tensor {name} has shape {tuple(tensor.shape)} but the model's is "
                    f"{tuple(params[name].shape)}.{hint}"
                )
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].dtype))

    # -- merging ------------------------------------------------------------------------
    def merge_and_unload(self) -> nn.Module:
        """Fold the method into the backbone's weights (mergeable methods) and return the model."""
        merged = self.adapter.merge(self.base_model)
        self.unload()
        return merged

    def unload(self) -> nn.Module:
        """Remove the method and return the base model as it was."""
        self.adapter.detach(self.base_model)
        if self._input_grads_hook is not None:
            self._input_grads_hook.remove()
            self._input_grads_hook = None
        return self.base_model

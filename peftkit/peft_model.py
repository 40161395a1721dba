"""The user-facing wrapper: ``get_peft_model`` and ``PeftModel``, named as in Hugging Face PEFT.

``get_peft_model(model, config)`` freezes every weight of ``model``, unfreezes the task head
(the modules a ``...ForSequenceClassification`` adds around its backbone) and attaches the
method. What requires grad afterwards is exactly what trains and what ``save_pretrained``
writes, whatever the method. PEFT's own configs (``peft.LoraConfig``) go to PEFT unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import peft
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from peftkit.errors import AdaptedModelError, AdapterFileError, AdapterMismatchError, MethodConfigError, UnsupportedModelError
from peftkit.files import atomic_write, atomic_write_json
from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import get_method, method_names, spec_for_config
from peftkit.models import (
    BackboneDropoutOff,
    backbone_dropout_sites,
    backbone_identity,
    check_backbone_identity,
    encoder_layers,
    head_module_names,
)
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


def get_peft_model(model: nn.Module, config, tokenizer=None, *, backbone_dropout: bool | None = None):
    """Wrap ``model`` with a peftkit method, or with PEFT's own for a PEFT config.

    A ``torch.compile``-d model is unwrapped first (the method attaches to the original module);
    compile the returned model instead. ``backbone_dropout=False`` is the frozen-backbone fast
    path (the backbone without its own dropout; the method's and the head's dropout stay): for
    a peftkit method it sets the config's ``backbone_dropout`` field, for PEFT's methods (LoRA,
    whose config has no such field) it is applied here and recorded in ``peftkit_options.json``
    beside the adapter by the returned model's ``save_pretrained`` and by peftkit's save
    (``save_peft_options``). None = the config's.
    PEFT's own ``unload()`` does not know of it: on a PEFT model call
    ``model.peftkit_backbone_dropout_off.restore()`` first to get the pretrained dropout back.

    Raises AdaptedModelError when ``model`` already carries an adapter (peftkit's or PEFT's), and
    MethodConfigError for ``backbone_dropout`` on a method that trains the backbone (full).
    """
    refuse_adapted_model(model)
    if _is_peft_config(config):
        dropout_sites = backbone_dropout_sites(_uncompiled(model))  # before PEFT adds lora_dropout
        identity = _identity_or_none(_uncompiled(model))  # before PEFT's layers join the backbone's parameters
        wrapped = peft.get_peft_model(model, config)
        setattr(wrapped, PEFT_BASE_MODEL_IDENTITY, identity)
        if backbone_dropout is False:
            setattr(wrapped, PEFT_BACKBONE_DROPOUT_OFF, BackboneDropoutOff(dropout_sites))
        _record_options_on_save(wrapped)
        return wrapped
    if not isinstance(config, MethodConfig):
        raise MethodConfigError(
            f"get_peft_model needs a method config such as peftkit.PastaConfig() or "
            f"peft.LoraConfig(...), not {type(config).__name__}."
        )
    if backbone_dropout is not None:
        config = type(config).from_dict({**config.to_dict(), "backbone_dropout": backbone_dropout})
    return PeftModel(model, config, tokenizer=tokenizer)


# peftkit's options for a PEFT adapter, whose config has no field for them: written beside it
# by save_peft_options, read back by PeftModel.from_pretrained. Plain PEFT ignores the file.
PEFT_OPTIONS_NAME = "peftkit_options.json"
# Where a PEFT model keeps its BackboneDropoutOff (the fast path), so the save can record it.
PEFT_BACKBONE_DROPOUT_OFF = "peftkit_backbone_dropout_off"
# Where a PEFT model keeps the identity of the backbone it was made for (models.backbone_identity,
# taken before PEFT wrapped it), recorded beside the adapter and checked on load as for peftkit's.
PEFT_BASE_MODEL_IDENTITY = "peftkit_base_model_identity"


def _record_options_on_save(wrapped: nn.Module) -> None:
    """Make this PEFT model's own ``save_pretrained`` also write ``peftkit_options.json``, so an
    adapter saved from Python (not only through peftkit's training) reloads with its fast path and
    its backbone checked."""
    peft_save = wrapped.save_pretrained

    def save_pretrained(save_directory, *args, **kwargs):
        peft_save(save_directory, *args, **kwargs)
        save_peft_options(wrapped, save_directory)

    save_pretrained.__doc__ = peft_save.__doc__
    wrapped.save_pretrained = save_pretrained


def save_peft_options(model: nn.Module, directory: str | os.PathLike) -> None:
    """Record, beside a PEFT adapter, the peftkit options it was trained with (backbone_dropout)
    and, when known, the identity of its backbone (``base_model_identity``)."""
    options: dict[str, Any] = {"backbone_dropout": getattr(model, PEFT_BACKBONE_DROPOUT_OFF, None) is None}
    if getattr(model, PEFT_BASE_MODEL_IDENTITY, None):
        options["base_model_identity"] = getattr(model, PEFT_BASE_MODEL_IDENTITY)
    atomic_write_json(Path(directory) / PEFT_OPTIONS_NAME, options)


def read_peft_options(directory: str | os.PathLike) -> dict[str, Any]:
    """The options save_peft_options recorded ({} for an adapter saved by plain PEFT).

    Raises AdapterFileError for a file that is not {"backbone_dropout": true/false}."""
    path = Path(directory) / PEFT_OPTIONS_NAME
    if not path.is_file():
        return {}
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterFileError(f"{path} is corrupt ({error}); delete it (the adapter then runs its backbone's dropout as pretrained) or retrain.") from None
    if isinstance(options, dict) and not isinstance(options.get("base_model_identity", {}), dict):
        raise AdapterFileError(
            f"{path}: base_model_identity must be a JSON object (what save_pretrained recorded of the "
            f"backbone), not {options['base_model_identity']!r}; delete that field (the backbone is then "
            "not checked) or save the adapter again."
        )
    if not isinstance(options, dict) or not isinstance(options.get("backbone_dropout", True), bool):
        raise AdapterFileError(
            f"{path} must be a JSON object like {{\"backbone_dropout\": false}}, not {options!r}; "
            "correct it, or delete it to run the backbone's dropout as pretrained."
        )
    return options


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The adapter config of ``directory``, or a clear error when it is absent or corrupt."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not Path(directory).exists():
        raise AdapterFileError(
            f"adapter directory {directory} does not exist; check the path, and point at a directory "
            "written by save_pretrained (or by `peftkit train`)."
        )
    if not Path(directory).is_dir():
        raise AdapterFileError(
            f"{directory} is a file, not an adapter directory; give the directory that holds it "
            f"({ADAPTER_CONFIG_NAME} and the weights), as written by save_pretrained or `peftkit train`."
        )
    if not path.is_file():
        from peftkit.training.compare import kept_adapters_hint

        raise AdapterFileError(
            kept_adapters_hint(Path(directory)) or
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


def refuse_feature_probe(record: dict[str, Any], where: str) -> None:
    """Raise AdapterFileError when ``record`` (an adapter_config.json) is a frozen-feature probe's."""
    if record.get("peft_type") == "FEATURE_PROBE":  # training.feature_probe.FEATURE_PROBE_PEFT_TYPE
        raise AdapterFileError(
            f"{where} is a frozen-feature probe (a logistic regression on pooled features), not an adapter "
            "that sits in the backbone: `peftkit eval` and `peftkit predict --text` run it; loading it onto a "
            "model, serving and batch prediction take adapters only. Train an adapter method (e.g. --method "
            "pasta) for those."
        )


def adapter_method_config(record: dict[str, Any], where: str) -> MethodConfig:
    """The peftkit method config an adapter_config.json record describes, checked field by field.

    Raises:
        AdapterFileError: ``peftkit_method`` missing (for a peft_type that is a peftkit method),
            unknown or not a string, or a method field of the wrong type; the message names the
            file, the field and the fix.
    """
    refuse_feature_probe(record, where)
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


ADAPTED_MARK = "_peftkit_adapted"  # set on a base model while a peftkit method is attached to it


def refuse_adapted_model(model: nn.Module) -> None:
    """Refuse a model that already carries an adapter (peftkit's or PEFT's): a second one on top
    would stack both methods, or fail at the first forward with a misleading message."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(model, peft.PeftModel):
        held = f"is already a {type(model).__module__.split('.')[0]} PeftModel"
    elif getattr(model, ADAPTED_MARK, False):
        held = "already carries a peftkit adapter (attached by an earlier get_peft_model or from_pretrained)"
    elif any(isinstance(module, BaseTunerLayer) for module in model.modules()):
        held = "already carries PEFT adapter layers (LoRA, ...)"
    else:
        return
    raise AdaptedModelError(
        f"{type(model).__name__} {held}; another adapter cannot be attached on top of it. Call "
        "unload() (or merge_and_unload()) on the wrapper holding it and use the model it returns, "
        "or load a fresh base model. To keep several adapters on one model and switch between "
        "them, use wrapped.load_adapter(directory, adapter_name=...) or wrapped.add_adapter(name, "
        "config), then wrapped.set_adapter(name)."
    )


def _label_settings(model: nn.Module) -> dict[str, Any]:
    """What a task model knows of its labels (config.id2label, ...), swapped with its head."""
    config = getattr(model, "config", None)
    return {
        "id2label": dict(getattr(config, "id2label", None) or {}),
        "label2id": dict(getattr(config, "label2id", None) or {}),
        "num_labels": getattr(model, "num_labels", None),
    }


def _apply_label_settings(model: nn.Module, labels: dict[str, Any]) -> None:
    config = getattr(model, "config", None)
    if config is not None and labels["id2label"]:
        config.id2label = dict(labels["id2label"])
        config.label2id = dict(labels["label2id"])
    if labels["num_labels"] is not None and hasattr(model, "num_labels"):
        model.num_labels = labels["num_labels"]  # the task model's loss reshapes logits by it


@dataclasses.dataclass
class HeldAdapter:
    """One adapter a PeftModel holds. The active one lives in the model (its method attached,
    its heads in place); the others are parked here: their heads, labels and parameters."""

    config: MethodConfig
    task_info: dict[str, Any]
    trainable: bool = True
    saved_names: list[str] = dataclasses.field(default_factory=list)
    """Names (as in the wrapper's state dict) of what this adapter trains and saves."""
    parked_parameters: dict[str, nn.Parameter] | None = None
    parked_heads: dict[str, nn.Module] | None = None
    parked_labels: dict[str, Any] | None = None


def _forward_with_signature_of(model: nn.Module):
    """PeftModel.forward under the signature of ``model.forward`` (one function per wrapper; a
    bound method, so deepcopy rebinds it to the copy)."""

    def forward(self, *args, **kwargs):
        return PeftModel.forward(self, *args, **kwargs)

    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature: keep the generic one
        return PeftModel.forward
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = inspect.Signature([self_parameter, *parameters])
    forward.__doc__ = PeftModel.forward.__doc__
    return forward


class _NoAdapter(MethodAdapter):
    """Stands in for the method while ``disable_adapter`` runs the plain base model."""


class PeftModel(peft.PeftModel):
    """A frozen backbone plus peftkit methods, one active, each with its own task head.

    It subclasses ``peft.PeftModel`` (without running its constructor) so that tools that
    single out PEFT models treat it as one: ``transformers.Trainer`` takes the columns and label
    names from the base model's forward, saves checkpoints and ``save_model`` through
    ``save_pretrained`` (an adapter directory, not the whole state dict) and resumes through
    ``load_adapter``. Every PEFT method used by those tools is overridden here; attributes the
    wrapper lacks are looked up on the base model, as in PEFT.

    Several adapters (PEFT's multi-adapter API): ``add_adapter(name, config)``,
    ``load_adapter(directory, adapter_name=name)``, ``set_adapter(name)``, ``delete_adapter(name)``,
    ``active_adapter``. Only the active one is attached; switching detaches it (its parameters,
    head modules and ``config.id2label`` are parked) and attaches the other with its own
    parameter objects, so each adapter gives its own logits exactly. Methods that rewrite backbone
    weights in place (BitFit, full fine-tuning) cannot share a backbone and are refused here.
    ``peft_config`` is the active adapter's config (a peftkit method config, not PEFT's dict).
    """

    def __init__(self, model: nn.Module, config: MethodConfig, tokenizer=None, adapter_name: str = "default"):
        nn.Module.__init__(self)  # not peft.PeftModel's: it would build PEFT's own tuner
        model = _uncompiled(model)
        refuse_adapted_model(model)
        spec_for_config(config)  # an unknown config fails before the model is touched
        model.requires_grad_(False)
        # Fingerprint the backbone before the method can touch it: BitFit and full
        # fine-tuning train backbone weights, and the adapter must still match the
        # pristine base model it will be loaded onto.
        self.base_model_identity = _identity_or_none(model)
        self.head_modules = head_module_names(model)
        self.base_model = model
        # Untrained heads and labels for adapters added later: each task starts from its own head.
        self._initial_heads = {name: copy.deepcopy(getattr(model, name)) for name in self.head_modules}
        self._initial_labels = _label_settings(model)
        # the adapter may fill in resolved values (special ids), so it gets a copy
        self._adapters = {adapter_name: HeldAdapter(copy.deepcopy(config), {})}
        self.active_adapter = adapter_name
        self.adapter = self._attach(self._adapters[adapter_name], tokenizer)
        # inspect.signature(wrapped.forward) is the base model's, so tools that keep only the
        # columns a model takes (Trainer's remove_unused_columns, ...) keep input_ids, labels, ...
        self.forward = types.MethodType(_forward_with_signature_of(model), self)
        self._input_grads_hook = _register_input_grads_hook(model)
        setattr(model, ADAPTED_MARK, True)
        self.train(model.training)  # a new adapter follows the mode the model was in

    # -- what HF-style callers expect -------------------------------------------------
    @property
    def config(self):
        return self.base_model.config

    @property
    def peft_config(self) -> MethodConfig:
        return self._adapters[self.active_adapter].config

    @property
    def task_info(self) -> dict[str, Any]:
        """The active adapter's task (kind, label names, ...), saved in its adapter_config.json."""
        return self._adapters[self.active_adapter].task_info

    @task_info.setter
    def task_info(self, value: dict[str, Any]) -> None:
        self._adapters[self.active_adapter].task_info = value

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def forward(self, *args, **kwargs):
        """The base model's forward with the method applied (and its extra loss added to ``loss``)."""
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
        return {name: param.detach() for name, param in self._parameters_by_saved_name().items() if param.requires_grad}

    def _parameters_by_saved_name(self) -> dict[str, nn.Parameter]:
        """Every parameter under the name it is saved as: without activation-checkpointing wrappers,
        so an adapter's files do not depend on whether (or when) its layers were wrapped."""
        return {without_checkpoint_wrappers(name): param for name, param in self.named_parameters()}

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
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        selected_adapters: list[str] | None = None,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write ``adapter_model.safetensors`` then ``adapter_config.json``, each atomically.

        PEFT's signature, so ``transformers.Trainer`` saves checkpoints and ``save_model`` here:
        ``state_dict`` (the full state dict a sharded run gathered) supplies the tensors when
        given; ``is_main_process=False`` writes nothing. As in PEFT, the adapter named
        "default" goes in ``save_directory`` and any other in ``save_directory/<name>``
        (``selected_adapters``: which, default all). PEFT's hub and embedding options do not
        apply and are ignored; only safetensors are written.
        """
        if not is_main_process:
            return
        if not safe_serialization:
            raise AdapterFileError(
                "peftkit writes adapters as safetensors only; call save_pretrained without "
                "safe_serialization=False."
            )
        names = list(self._adapters) if selected_adapters is None else list(selected_adapters)
        unknown = [name for name in names if name not in self._adapters]
        if unknown:
            raise AdapterMismatchError(f"no adapter named {unknown}; this model holds {self.adapter_names}.")
        for name in names:
            directory = Path(save_directory) if name == "default" else Path(save_directory) / name
            self._save_one(name, directory, state_dict)

    def _save_one(self, name: str, directory: Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        held = self._adapters[name]
        if name == self.active_adapter:
            live = self._parameters_by_saved_name()
            tensors = {n: (state_dict[n] if state_dict is not None and n in state_dict else live[n]) for n in held.saved_names}
            labels = _label_settings(self.base_model)
        else:
            tensors = self._parked_tensors(held)
            labels = held.parked_labels
        tensors = {n: t.detach().contiguous().cpu().clone() for n, t in tensors.items()}
        atomic_write(directory / ADAPTER_WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        identity = self.base_model_identity or backbone_identity(self.base_model)
        record = {
            "peft_type": held.config.peft_type,
            "peftkit_method": held.config.method_name,
            **held.config.to_dict(),
            "base_model_name_or_path": identity["name_or_path"],
            "base_model_identity": identity,
            "task_model_class": type(self.base_model).__name__,
            "head_modules": self.head_modules,
            # A model trained outside peftkit's CLI (Trainer) still records its labels, so
            # AutoPeftModel... can size the head and pipelines can name the labels.
            "task": held.task_info or _task_from_labels(type(self.base_model).__name__, labels),
        }
        atomic_write_json(directory / ADAPTER_CONFIG_NAME, record)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        is_trainable: bool = False,
        tokenizer=None,
        adapter_name: str = "default",
        **kwargs: Any,
    ):
        """Restore an adapter onto ``model``; PEFT adapters (LoRA, ...) are loaded by PEFT.

        Raises AdaptedModelError when ``model`` already carries an adapter (use ``load_adapter``
        on its wrapper instead), AdapterMismatchError for another backbone or head, and
        AdapterFileError for a missing or corrupt directory.
        """
        model = _uncompiled(model)
        record = read_adapter_config(model_id)
        if "peftkit_method" not in record and record.get("peft_type") in peft_method_types():
            refuse_adapted_model(model)
            options = read_peft_options(model_id)
            if options.get("base_model_identity"):  # recorded by peftkit's save; plain PEFT records only a name
                check_backbone_identity(options["base_model_identity"], model, where=str(model_id))
            dropout_sites = backbone_dropout_sites(model)  # before PEFT adds lora_dropout
            loaded = peft.PeftModel.from_pretrained(model, str(model_id), adapter_name=adapter_name, is_trainable=is_trainable, **kwargs)
            setattr(loaded, PEFT_BASE_MODEL_IDENTITY, options.get("base_model_identity"))  # kept if saved again
            if options.get("backbone_dropout") is False:  # the fast path it was trained with
                setattr(loaded, PEFT_BACKBONE_DROPOUT_OFF, BackboneDropoutOff(dropout_sites))
            return loaded
        config = adapter_method_config(record, str(Path(model_id) / ADAPTER_CONFIG_NAME))
        refuse_adapted_model(model)  # before the identity check, which an adapted model may fail confusingly
        _check_task_model_class(record, model, str(model_id))
        check_backbone_identity(record.get("base_model_identity", {}), model, where=str(model_id))
        wrapped = cls(model, config, tokenizer=tokenizer, adapter_name=adapter_name)
        wrapped.task_info = record.get("task", {})
        wrapped.load_adapter_weights(read_adapter_weights(model_id), where=str(model_id))
        labels = _labels_of_task(wrapped.task_info)
        if labels and labels["num_labels"] == getattr(model, "num_labels", None):
            _apply_label_settings(model, labels)  # pipelines name their answers from config.id2label
        if not is_trainable:
            wrapped._adapters[adapter_name].trainable = False
            wrapped.requires_grad_(False)
            wrapped.eval()
        return wrapped

    def load_adapter_weights(self, tensors: dict[str, torch.Tensor], *, where: str = "the adapter") -> None:
        """Copy saved tensors into the active adapter's parameters, checking names and shapes first."""
        params = self._parameters_by_saved_name()
        _copy_checked(params, self._adapters[self.active_adapter].saved_names, tensors, self.head_modules, where)

    # -- several adapters (PEFT's API) -------------------------------------------------------
    def add_adapter(self, adapter_name: str, peft_config: MethodConfig, tokenizer=None, **kwargs: Any) -> None:
        """Add a new adapter of a peftkit method, with a fresh head; the active one stays active.

        Raises AdapterMismatchError for a name in use, MethodConfigError for a PEFT config or a
        method that rewrites backbone weights (BitFit, full fine-tuning).
        """
        if adapter_name in self._adapters:
            raise AdapterMismatchError(
                f"this model already holds an adapter named {adapter_name!r}; choose another name "
                f"or delete_adapter({adapter_name!r}) first."
            )
        if _is_peft_config(peft_config):
            raise MethodConfigError(
                f"{type(peft_config).__name__} is PEFT's; a peftkit PeftModel holds peftkit methods only. "
                "For several LoRA adapters use PEFT's own model: peftkit.get_peft_model(fresh_base, "
                "LoraConfig(...)) then its add_adapter / load_adapter."
            )
        spec = spec_for_config(peft_config)
        self._refuse_backbone_rewriting(spec.adapter_class, type(peft_config).__name__)
        previous = self.active_adapter
        self._park()
        for name, head in self._initial_heads.items():
            setattr(self.base_model, name, copy.deepcopy(head).to(self._device()))
        _apply_label_settings(self.base_model, self._initial_labels)
        held = HeldAdapter(copy.deepcopy(peft_config), {})
        self._adapters[adapter_name] = held
        self.active_adapter = adapter_name
        try:
            self.adapter = self._attach(held, tokenizer)
        except BaseException:
            del self._adapters[adapter_name]
            self.active_adapter = previous
            self._unpark(previous)
            raise
        self._park()
        self._unpark(previous)

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False,
                     tokenizer=None, **kwargs: Any) -> None:
        """Load a saved peftkit adapter under ``adapter_name`` (PEFT's ``load_adapter``).

        A new name adds the adapter (with its own head, sized by the file, and its labels) without
        activating it; the name of a held adapter reloads its weights in place (what Trainer
        does to resume from a checkpoint), keeping it trainable if it was.
        """
        where = str(model_id)
        record = read_adapter_config(model_id)
        if "peftkit_method" not in record and record.get("peft_type") in peft_method_types():
            raise AdapterMismatchError(
                f"{where} holds a PEFT adapter ({record.get('peft_type')}); a peftkit PeftModel holds "
                "peftkit adapters only. Load it onto a fresh base model with "
                "peftkit.PeftModel.from_pretrained(base, directory)."
            )
        _check_task_model_class(record, self.base_model, where)
        self._check_same_backbone(record.get("base_model_identity", {}), where)
        recorded_class = record.get("task_model_class")
        if recorded_class and recorded_class != type(self.base_model).__name__:
            raise AdapterMismatchError(
                f"{where} was trained on a {recorded_class} but this model is a "
                f"{type(self.base_model).__name__}; its head cannot be swapped in. Load it onto a "
                f"{recorded_class} of the same checkpoint."
            )
        config = adapter_method_config(record, str(Path(model_id) / ADAPTER_CONFIG_NAME))
        tensors = read_adapter_weights(model_id)
        if adapter_name in self._adapters:
            held = self._adapters[adapter_name]
            if type(held.config) is not type(config) or held.config.to_dict() != config.to_dict():
                raise AdapterMismatchError(
                    f"{where} holds a {config.method_name} adapter with other settings than the "
                    f"adapter {adapter_name!r} held here; load it under another adapter_name, or "
                    f"delete_adapter({adapter_name!r}) first."
                )
            held.trainable = held.trainable or is_trainable
        else:
            self.add_adapter(adapter_name, config)
            held = self._adapters[adapter_name]
            held.trainable = is_trainable
            _fit_head_shapes(held.parked_heads, tensors)
            held.parked_labels = _labels_of_task(record.get("task")) or held.parked_labels
        held.task_info = record.get("task") or held.task_info
        if adapter_name == self.active_adapter:
            self.load_adapter_weights(tensors, where=where)
            self._set_trainable(held)
        else:
            _copy_checked(self._parked_tensors(held), held.saved_names, tensors, self.head_modules, where)

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the active adapter: its method, head and labels. As in PEFT, it is
        trainable afterwards unless ``inference_mode``; build an optimizer after switching."""
        if adapter_name not in self._adapters:
            raise AdapterMismatchError(
                f"no adapter named {adapter_name!r}; this model holds {self.adapter_names}. Add it "
                "first with load_adapter(directory, adapter_name=...) or add_adapter(name, config)."
            )
        if adapter_name != self.active_adapter:
            self._park()
            self._unpark(adapter_name)
        held = self._adapters[adapter_name]
        held.trainable = not inference_mode
        self._set_trainable(held)

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop an adapter; deleting the active one activates the first remaining (as PEFT does)."""
        if adapter_name not in self._adapters:
            raise AdapterMismatchError(f"no adapter named {adapter_name!r}; this model holds {self.adapter_names}.")
        if len(self._adapters) == 1:
            raise AdapterMismatchError(
                f"{adapter_name!r} is this model's only adapter; call unload() to get the base model back."
            )
        if adapter_name == self.active_adapter:
            remaining = next(name for name in self._adapters if name != adapter_name)
            warnings.warn(f"adapter {adapter_name!r} was active and is deleted; {remaining!r} is active now.")
            self._park()
            self._unpark(remaining)
            self._set_trainable(self._adapters[remaining])
        del self._adapters[adapter_name]

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the base model as it was wrapped (the untrained head, no method) inside the block,
        as PEFT's ``disable_adapter`` does; the active adapter comes back afterwards."""
        active = self.active_adapter
        if spec_for_config(self.peft_config).adapter_class.rewrites_backbone_weights:
            raise MethodConfigError(
                f"{type(self.peft_config).__name__} trains the backbone's own weights in place, so the "
                "model as it was wrapped is gone and disable_adapter cannot run it; load a fresh base "
                "model for its outputs."
            )
        self._park()
        for name, head in self._initial_heads.items():
            setattr(self.base_model, name, head.to(self._device()))
        _apply_label_settings(self.base_model, self._initial_labels)
        self.adapter = _NoAdapter(self.base_model, self._adapters[active].config)
        try:
            yield
        finally:
            del self.adapter
            self._unpark(active)
            self._set_trainable(self._adapters[active])

    def _attach(self, held: HeldAdapter, tokenizer=None):
        """Attach ``held``'s method to the base model (frozen but for the heads) and record what it trains."""
        model = self.base_model
        model.requires_grad_(False)
        for name in self.head_modules:
            getattr(model, name).requires_grad_(True)
        dropout_sites = backbone_dropout_sites(model)  # before the method adds dropout of its own
        adapter = spec_for_config(held.config).adapter_class(model, held.config, tokenizer=tokenizer)
        # The fast path (issue 15): the adapter is built first, so PASTA has read its dropout default.
        self._backbone_dropout_off = (
            None if getattr(held.config, "backbone_dropout", True) else BackboneDropoutOff(dropout_sites)
        )
        # modules the method put into the backbone start in training mode: follow the model's
        model.train(model.training)
        adapter.train(model.training)
        prefix = "base_model."
        held.saved_names = [f"adapter.{n}" for n, p in adapter.named_parameters() if p.requires_grad] + [
            without_checkpoint_wrappers(prefix + n) for n, p in model.named_parameters() if p.requires_grad
        ]
        return adapter

    def _park(self) -> None:
        """Detach the active adapter, keeping its parameter objects, head modules and labels."""
        held = self._adapters[self.active_adapter]
        params = self._parameters_by_saved_name()
        heads = tuple(f"base_model.{head}." for head in self.head_modules)
        held.parked_parameters = {n: params[n] for n in held.saved_names if not n.startswith(heads)}
        held.parked_heads = {head: getattr(self.base_model, head) for head in self.head_modules}
        held.parked_labels = _label_settings(self.base_model)
        self._restore_backbone_dropout()
        self.adapter.detach(self.base_model)
        del self.adapter

    def _unpark(self, adapter_name: str) -> None:
        """Attach a parked adapter again and put its own parameter objects back in place."""
        held = self._adapters[adapter_name]
        for head, module in held.parked_heads.items():
            setattr(self.base_model, head, module.to(self._device()))
        _apply_label_settings(self.base_model, held.parked_labels)
        self.active_adapter = adapter_name
        self.adapter = self._attach(held)
        actual_names = {without_checkpoint_wrappers(name): name for name, _ in self.named_parameters()}
        for name, parked in held.parked_parameters.items():
            owner_path, attribute = actual_names.get(name, name).rsplit(".", 1)
            owner = self.get_submodule(owner_path)
            fresh = owner._parameters[attribute]
            if parked.device != fresh.device or parked.dtype != fresh.dtype:
                parked.data = parked.data.to(device=fresh.device, dtype=fresh.dtype)  # the model moved meanwhile
            # The method looks its parameters up by name at every forward, so the parked objects
            # (which an optimizer may hold) are the ones used from now on.
            owner._parameters[attribute] = parked
        held.parked_parameters = held.parked_heads = held.parked_labels = None

    def _restore_backbone_dropout(self) -> None:
        if getattr(self, "_backbone_dropout_off", None) is not None:
            self._backbone_dropout_off.restore()
            self._backbone_dropout_off = None

    def _parked_tensors(self, held: HeldAdapter) -> dict[str, nn.Parameter]:
        tensors = dict(held.parked_parameters)
        for head, module in held.parked_heads.items():
            tensors.update({f"base_model.{head}.{n}": p for n, p in module.named_parameters()})
        return tensors

    def _set_trainable(self, held: HeldAdapter) -> None:
        self.requires_grad_(False)
        if held.trainable:
            params = self._parameters_by_saved_name()
            for name in held.saved_names:
                params[name].requires_grad_(True)

    def _device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    def _refuse_backbone_rewriting(self, new_adapter_class, new_name: str) -> None:
        active = self._adapters[self.active_adapter].config
        rewriting = [
            name for name, rewrites in (
                (type(active).__name__, spec_for_config(active).adapter_class.rewrites_backbone_weights),
                (new_name, new_adapter_class.rewrites_backbone_weights),
            ) if rewrites
        ]
        if rewriting:
            raise MethodConfigError(
                f"{rewriting[0]} trains the backbone's own weights in place, so it cannot share one "
                "backbone with other adapters; give each such adapter its own base model."
            )

    def _check_same_backbone(self, saved: dict, where: str) -> None:
        """Like check_backbone_identity, against the fingerprint taken when this model was wrapped
        (the backbone may since hold an active method's changes)."""
        current = self.base_model_identity or {}
        for key in ("model_type", "hidden_size", "num_layers", "num_parameters", "fingerprint"):
            if key in saved and key in current and saved[key] != current[key]:
                raise AdapterMismatchError(
                    f"the adapter in {where} was made for another backbone: its {key} is {saved[key]!r} "
                    f"but this model's is {current[key]!r}. Load it onto the base model it was trained on."
                )

    # -- merging ------------------------------------------------------------------------
    def merge_and_unload(self) -> nn.Module:
        """Fold the method into the backbone's weights (mergeable methods) and return the model."""
        merged = self.adapter.merge(self.base_model)
        self.unload()
        return merged

    def unload(self) -> nn.Module:
        """Remove the method and return the base model as it was (its dropout too)."""
        self._restore_backbone_dropout()
        self.adapter.detach(self.base_model)
        if self._input_grads_hook is not None:
            self._input_grads_hook.remove()
            self._input_grads_hook = None
        self.base_model.__dict__.pop(ADAPTED_MARK, None)
        return self.base_model


TASK_KINDS_BY_CLASS_SUFFIX = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForImageClassification": "image-classification",
}


def _task_suffix(class_name: str) -> str | None:
    """"ForTokenClassification" of "BertForTokenClassification": the task a model class heads (None: unknown)."""
    return next((suffix for suffix in TASK_KINDS_BY_CLASS_SUFFIX if class_name.endswith(suffix)), None)


def _check_task_model_class(record: dict[str, Any], model: nn.Module, where: str) -> None:
    """Refuse an adapter trained for another task (a token-classification adapter on a sequence
    classifier), naming both classes and the loader that fits. Checked before the backbone
    identity: a head of another kind also changes num_parameters, and "another backbone" would
    send the user after the wrong fault. (Another family with the same task, ELECTRA for BERT,
    is the backbone check's to report.)"""
    recorded_class = record.get("task_model_class")
    recorded_task, model_task = _task_suffix(recorded_class or ""), _task_suffix(type(model).__name__)
    if recorded_task is None or model_task is None or recorded_task == model_task:
        return
    recorded_kind = (record.get("task") or {}).get("kind") or TASK_KINDS_BY_CLASS_SUFFIX[recorded_task]
    raise AdapterMismatchError(
        f"{where} is a {recorded_kind} adapter, trained on a {recorded_class}, but this model is a "
        f"{type(model).__name__}; its head cannot be swapped in. Load it with peftkit.AutoPeftModel"
        f"{recorded_task}.from_pretrained({where!r}), or onto a {recorded_class} of the same checkpoint."
    )


def _task_from_labels(task_model_class: str, labels: dict[str, Any] | None) -> dict[str, Any]:
    """{kind, label_names} from a task model's config.id2label, or {} when it has none."""
    kind = next((k for suffix, k in TASK_KINDS_BY_CLASS_SUFFIX.items() if task_model_class.endswith(suffix)), None)
    id2label = (labels or {}).get("id2label") or {}
    if kind is None or not id2label:
        return {}
    return {"kind": kind, "label_names": [id2label[i] for i in sorted(id2label, key=int)]}


def _labels_of_task(task_info: dict[str, Any] | None) -> dict[str, Any] | None:
    """Label settings (config.id2label, ...) from an adapter's recorded label names, if any."""
    label_names = (task_info or {}).get("label_names")
    if not label_names:
        return None
    return {
        "id2label": dict(enumerate(label_names)),
        "label2id": {label: index for index, label in enumerate(label_names)},
        "num_labels": len(label_names),
    }


def _fit_head_shapes(heads: dict[str, nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    """Resize fresh head parameters to an adapter's saved ones (a task with another label count)."""
    for name, tensor in tensors.items():
        for head, module in heads.items():
            prefix = f"base_model.{head}."
            if not name.startswith(prefix):
                continue
            owner_path, _, attribute = name[len(prefix):].rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            current = owner._parameters.get(attribute)
            if current is not None and current.shape != tensor.shape:
                owner._parameters[attribute] = nn.Parameter(
                    torch.zeros(tensor.shape, dtype=current.dtype, device=current.device), current.requires_grad
                )
                if isinstance(owner, nn.Linear) and attribute == "weight":
                    owner.out_features, owner.in_features = tensor.shape


def _copy_checked(params: dict[str, torch.Tensor], expected_names, tensors: dict[str, torch.Tensor],
                  head_modules: list[str], where: str) -> None:
    """Copy ``tensors`` into ``params`` after checking the names and shapes match ``expected_names``."""
    expected = set(expected_names)
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise AdapterMismatchError(
            f"{where} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            "Was it saved for another method, task type or head?"
        )
    for name, tensor in tensors.items():
        if params[name].shape != tensor.shape:
            hint = ""
            if any(name.startswith(f"base_model.{head}.") for head in head_modules):
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

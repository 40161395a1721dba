"""Mixed-task inference: one frozen backbone, many adapters, rows of different tasks in ONE forward.

A PASTA adapter is a (layers × M × hidden) table plus a task head, so N tasks cost N tiny
tables. Stacking them into one (tasks, layers, M, hidden) tensor lets every row pick its own
task's vectors inside a single backbone pass:

    before layer l:  h[row, pos] += tables[task_of_row[row], l, slot(row, pos)]

then each task's head runs on its own rows. The head is the task model's own forward (built
from the task model class, its backbone swapped for a stand-in that hands over the shared
backbone's outputs for those rows), so what it sees is exactly what the single-task model's
head sees: BERT sequence classification gets the pooler output, token classification the
sequence output, RoBERTa/DeBERTa/DistilBERT their own pooling, with no family switch here.

LoRA adapters (PEFT) are served the same way through PEFT's own mixed batch: they are loaded
into one ``peft.PeftModel`` around the shared backbone and the forward gets
``adapter_names=[task of each row]`` (PASTA rows run LoRA's ``"__base__"`` path). PEFT's
``modules_to_save`` cannot hold heads of different shapes (tasks with different label counts)
in one wrapper, so heads are ours here too. Text tasks only (input ids in, logits out).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformers
from torch import nn

from peftkit.errors import AdapterFileError, AdapterMismatchError, PeftkitError, SpecialTokenError
from peftkit.methods.pasta import PastaConfig, resolve_special_token_ids
from peftkit.models import check_backbone_identity, encoder_layers, head_module_names, hidden_size
from peftkit.models.backbones import backbone as bare_backbone
from peftkit.peft_model import adapter_method_config, peft_method_types, read_adapter_config, read_adapter_weights

# Task kinds recorded in adapter_config.json["task"]["kind"] → the task model class whose head
# the adapter trained. PEFT records its own task_type instead.
TASK_MODEL_CLASSES = {
    "text-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
}
PEFT_TASK_TYPES = {
    "SEQ_CLS": transformers.AutoModelForSequenceClassification,
    "TOKEN_CLS": transformers.AutoModelForTokenClassification,
}
LORA_BASE = "__base__"  # PEFT's adapter name for "no LoRA on this row"
# A task name becomes a URL path segment (DELETE /adapters/NAME), a PEFT adapter name and a
# ModuleDict key, so it may hold no "/", ".", space or "%"; a leading letter or digit also keeps
# it apart from LORA_BASE.
TASK_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_task_name(name: Any) -> str:
    """``name`` if it is a usable task name (TASK_NAME_PATTERN), else PeftkitError naming the rule
    and a name that follows it. The one check behind ``--adapter NAME=DIR``, ``POST /adapters``
    and MultiTaskModel."""
    if isinstance(name, str) and TASK_NAME_PATTERN.fullmatch(name):
        return name
    suggestion = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:64] if isinstance(name, str) else ""
    raise PeftkitError(
        f"task name {name!r} is not usable: a task name is 1 to 64 letters, digits, '_' or '-', starting with a "
        "letter or digit (it is part of URLs such as /adapters/NAME); "
        + (f"rename it, e.g. {suggestion!r}." if suggestion else "rename it, e.g. 'sentiment'.")
    )


@dataclasses.dataclass
class TaskPrediction:
    """One row's answer: its task, its logits and the predicted label name(s)."""

    task: str
    logits: torch.Tensor
    """(num_labels,) for sequence tasks; (tokens, num_labels) over the row's real tokens
    (attention_mask 1, in order) for token tasks."""
    label: str | list[str]
    """The argmax label name; a list with one name per real token for token tasks."""


class BackboneOutputFeed(nn.Module):
    """Stands in for a task model's backbone: returns the shared backbone's outputs for the
    task's rows, so the task model's own forward computes its head on exactly those."""

    def __init__(self):
        super().__init__()
        self.outputs = None

    def forward(self, *args, **kwargs):
        if self.outputs is None:
            raise PeftkitError("a MultiTaskModel task head ran without backbone outputs; call MultiTaskModel.forward.")
        return self.outputs


@dataclasses.dataclass
class _LoadedTask:
    """What one adapter directory contributes, before it is stacked with the others."""

    name: str
    method: str  # "pasta" or "lora"
    head: nn.Module  # the task model with a BackboneOutputFeed for a backbone
    label_names: list[str]
    special_token_table: torch.Tensor | None = None  # PASTA: (adapted layers, M, hidden)
    adapted_layers: list[int] = dataclasses.field(default_factory=list)
    special_token_ids: list[int] = dataclasses.field(default_factory=list)
    lora_config: Any = None
    lora_tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def _select_rows(outputs, rows: torch.Tensor):
    """The same ModelOutput with every batch-first tensor (and tuple of them) cut to ``rows``."""
    def select(value):
        if isinstance(value, torch.Tensor):
            return value[rows]
        if isinstance(value, tuple):
            return tuple(select(v) for v in value)
        return value

    return type(outputs)(**{key: select(value) for key, value in outputs.items()})


def _backbone_view(backbone: nn.Module, task_backbone_children: set[str]) -> nn.Module:
    """The shared backbone as the task model holds it, for the identity check: BERT token
    classification builds its backbone without the pooler, so an AutoModel's pooler must not
    count against that adapter's fingerprint."""
    extra = [name for name, _ in backbone.named_children() if name not in task_backbone_children]
    if not extra:
        return backbone
    view = nn.Module()
    view.config = backbone.config
    for name, param in backbone.named_parameters(recurse=False):
        view.register_parameter(name, param)
    for name, child in backbone.named_children():
        if name in task_backbone_children:
            view.add_module(name, child)
    return view


def _on_meta(task_model_class, config) -> nn.Module:
    """The task model built on the meta device: its structure, with no memory behind it."""
    build = getattr(task_model_class, "from_config", None) or task_model_class  # Auto class or concrete
    with torch.device("meta"):
        return build(config)


def _build_task_head(
    backbone: nn.Module,
    task_model_class,
    head_tensors: dict[str, torch.Tensor],
    label_names: list[str] | None,
    where: str,
) -> tuple[nn.Module, set[str], list[str]]:
    """The task model with its backbone replaced by a feed and its saved head loaded.

    Built on the meta device so no second backbone is ever allocated; returns the head model,
    the names of the children its own backbone would have had, and the label names."""

    def on_meta(num_labels: int):
        config = copy.deepcopy(backbone.config)
        config.num_labels = num_labels
        if label_names is not None and len(label_names) == num_labels:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {name: i for i, name in enumerate(label_names)}
        return _on_meta(task_model_class, config)

    task_model = on_meta(len(label_names) if label_names else 2)
    heads = head_module_names(task_model)
    if not label_names:
        # The last parameter of a head is its output layer's (weight or bias): dim 0 = num_labels.
        last = [name for name, _ in task_model.named_parameters() if name.split(".")[0] in heads][-1]
        if last not in head_tensors:
            raise AdapterMismatchError(
                f"{where} has no tensor {last} for the head of {type(task_model).__name__}; it was "
                "trained for another task model class. Pass task_model_classes={task: AutoModelFor...}."
            )
        task_model = on_meta(head_tensors[last].shape[0])
    prefix = task_model.base_model_prefix
    task_backbone_children = {name for name, _ in getattr(task_model, prefix).named_children()}
    setattr(task_model, prefix, BackboneOutputFeed())
    parameter = next(backbone.parameters())
    task_model.to_empty(device=parameter.device).to(parameter.dtype)
    expected = set(task_model.state_dict())
    missing, unexpected = sorted(expected - set(head_tensors)), sorted(set(head_tensors) - expected)
    if missing or unexpected:
        raise AdapterMismatchError(
            f"{where}: its head tensors do not fit {type(task_model).__name__} (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}). Was it trained for another task model class? Pass "
            "task_model_classes={task: AutoModelFor...} to say which."
        )
    try:
        task_model.load_state_dict({k: v.to(parameter.dtype) for k, v in head_tensors.items()})
    except RuntimeError as error:
        raise AdapterMismatchError(f"{where}: its head does not fit this backbone ({error}).") from None
    task_model.requires_grad_(False).eval()
    names = [task_model.config.id2label[i] for i in range(task_model.config.num_labels)]
    return task_model, task_backbone_children, names


def _task_model_class_of(name: str, record: dict, task_model_classes: Mapping[str, Any], where: str):
    if name in task_model_classes:
        return task_model_classes[name]
    kind = (record.get("task") or {}).get("kind")
    if kind in TASK_MODEL_CLASSES:
        return TASK_MODEL_CLASSES[kind]
    if record.get("task_type") in PEFT_TASK_TYPES:
        return PEFT_TASK_TYPES[record["task_type"]]
    class_name = (record.get("auto_mapping") or {}).get("base_model_class")
    if class_name and hasattr(transformers, class_name):
        return getattr(transformers, class_name)
    raise AdapterFileError(
        f"{where} does not record which task model it was trained with (no task kind, PEFT "
        "task_type or auto_mapping). Say it: MultiTaskModel.from_adapters(..., "
        f"task_model_classes={{{name!r}: AutoModelForSequenceClassification}})."
    )


def _load_pasta_task(name, directory, record, backbone, tokenizer, model_class) -> _LoadedTask:
    where = str(directory)
    config = adapter_method_config(record, f"{where}/adapter_config.json")
    if not isinstance(config, PastaConfig):
        raise AdapterMismatchError(
            f"{where} is a {record['peftkit_method']!r} adapter; mixed-task batches take PASTA adapters "
            "(per-row special-token tables) and LoRA adapters (PEFT's per-row adapter_names). Other "
            "methods change weights every row shares: serve them with one PeftModel per task."
        )
    if config.pooler != "frozen":  # the mixed batch reads the shared backbone's pretrained pooler
        raise AdapterMismatchError(
            f"{where} is a PASTA adapter with pooler={config.pooler!r}, and mixed-task batches use the "
            "backbone's pretrained pooler for every row; serve it on its own "
            "(peftkit.PeftModel.from_pretrained) or train it with pooler='frozen'."
        )
    tensors = read_adapter_weights(directory)
    table = tensors.pop("adapter.special_token_embeddings", None)
    layers = list(range(len(encoder_layers(backbone)))) if config.layers is None else list(config.layers)
    expected_shape = (len(layers), config.num_special_tokens, hidden_size(backbone))
    if table is None or tuple(table.shape) != expected_shape:
        raise AdapterMismatchError(
            f"{where}: adapter.special_token_embeddings is "
            f"{'missing' if table is None else tuple(table.shape)}, expected {expected_shape} "
            "(layers, special tokens, hidden) for this backbone. Load the backbone the adapter was made for."
        )
    head_tensors = {k.removeprefix("base_model."): v for k, v in tensors.items() if k.startswith("base_model.")}
    if set(tensors) - {f"base_model.{k}" for k in head_tensors}:
        raise AdapterMismatchError(f"{where} holds tensors a PASTA adapter does not: {sorted(tensors)[:4]}.")
    label_names = (record.get("task") or {}).get("label_names")
    head, children, label_names = _build_task_head(backbone, model_class, head_tensors, label_names, where)
    check_backbone_identity(record.get("base_model_identity", {}), _backbone_view(backbone, children), where=where)
    special_ids = resolve_special_token_ids(backbone, config, tokenizer)
    return _LoadedTask(
        name, "pasta", head, label_names, special_token_table=table,
        adapted_layers=layers, special_token_ids=special_ids,
    )


def _load_lora_task(name, directory, record, backbone, model_class) -> _LoadedTask:
    import peft

    where = str(directory)
    config = peft.PeftConfig.from_pretrained(str(directory))
    if not isinstance(config, peft.LoraConfig) or config.use_dora:
        raise AdapterMismatchError(
            f"{where} is a PEFT {record.get('peft_type')}{' (DoRA)' if getattr(config, 'use_dora', False) else ''} "
            "adapter; PEFT mixes only plain LoRA adapters within one batch. Serve it with its own PeftModel."
        )
    config = copy.deepcopy(config)
    config.modules_to_save = None  # heads are ours: PEFT cannot hold heads of different shapes per adapter
    config.inference_mode = True
    tensors = read_adapter_weights(directory)
    prefix = _on_meta(model_class, copy.deepcopy(backbone.config)).base_model_prefix
    backbone_prefix, model_prefix = f"base_model.model.{prefix}.", "base_model.model."
    # Saved from the task model (base_model.model.bert.encoder...), loaded around the bare
    # backbone (base_model.model.encoder...); everything else is the head.
    lora_tensors = {
        model_prefix + k.removeprefix(backbone_prefix): v for k, v in tensors.items() if k.startswith(backbone_prefix)
    }
    head_tensors = {k.removeprefix(model_prefix): v for k, v in tensors.items() if not k.startswith(backbone_prefix)}
    head_tensors = {k.replace(".modules_to_save.", ".", 1): v for k, v in head_tensors.items()}
    if not lora_tensors:
        raise AdapterMismatchError(
            f"{where} has no LoRA tensors under {backbone_prefix}; it was made for another "
            f"model class than {model_class.__name__}. Pass task_model_classes={{{name!r}: ...}}."
        )
    if not head_tensors:
        raise AdapterMismatchError(
            f"{where} saved no task head; train it with modules_to_save=['classifier'] (PEFT adds it "
            "for task_type='SEQ_CLS'/'TOKEN_CLS') so each task keeps its own head."
        )
    label_names = (record.get("task") or {}).get("label_names")
    head, _, label_names = _build_task_head(backbone, model_class, head_tensors, label_names, where)
    return _LoadedTask(name, "lora", head, label_names, lora_config=config, lora_tensors=lora_tensors)


def load_task_adapter(
    backbone: nn.Module, name: str, directory: str | os.PathLike, tokenizer=None, task_model_class=None
) -> _LoadedTask:
    """Read one adapter directory (PASTA from peftkit or LoRA from PEFT) for ``backbone``, without
    touching the backbone: the result is stacked with others by ``MultiTaskModel(backbone, tasks)``.

    Raises PeftkitError for a bad task name, AdapterFileError for a directory that is not an
    adapter, AdapterMismatchError for one made for another backbone, task class or method."""
    check_task_name(name)
    record = read_adapter_config(directory)
    classes = {name: task_model_class} if task_model_class is not None else {}
    model_class = _task_model_class_of(name, record, classes, str(directory))
    if "peftkit_method" in record or record.get("peft_type") not in peft_method_types():
        # read_adapter_config's checks name the missing or wrong field of a peftkit record
        return _load_pasta_task(name, directory, record, backbone, tokenizer, model_class)
    return _load_lora_task(name, directory, record, backbone, model_class)


def _check_special_tokens_agree(tasks: Sequence[_LoadedTask]) -> None:
    pasta = [task for task in tasks if task.method == "pasta"]
    for task in pasta[1:]:
        if set(task.special_token_ids) != set(pasta[0].special_token_ids):
            raise AdapterMismatchError(
                f"PASTA adapters disagree on the special tokens: {pasta[0].name!r} adapts ids "
                f"{pasta[0].special_token_ids}, {task.name!r} adapts {task.special_token_ids}. One "
                "batch finds special tokens once, so every task must use the same ids; retrain one "
                "with PastaConfig(special_token_ids=...) matching the others."
            )


class MultiTaskModel(nn.Module):
    """One frozen backbone serving many tasks; each row of a batch names its own task."""

    def __init__(self, backbone: nn.Module, tasks: Sequence[_LoadedTask]):
        super().__init__()
        _check_special_tokens_agree(tasks)
        backbone.requires_grad_(False).eval()
        self.backbone = backbone
        self.tasks = list(tasks)  # what a server rebuilds from when it adds or removes a task
        self.task_names = [task.name for task in tasks]
        self.task_index = {name: i for i, name in enumerate(self.task_names)}
        self.label_names = {task.name: task.label_names for task in tasks}
        self.task_heads = nn.ModuleDict({task.name: task.head for task in tasks})
        self._lora_adapter_of = {task.name: task.name if task.method == "lora" else LORA_BASE for task in tasks}

        # PASTA: every task's table padded into one (tasks, layers, M_max, hidden) tensor; the
        # layers a task does not adapt and the slots past its own M stay zero, and each row's
        # slot is capped at its own task's M - 1, so padding never changes a row.
        pasta = [task for task in tasks if task.method == "pasta"]
        layers = encoder_layers(backbone)
        parameter = next(backbone.parameters())
        max_slots = max((task.special_token_table.shape[1] for task in pasta), default=1)
        tables = torch.zeros(len(tasks), len(layers), max_slots, hidden_size(backbone), dtype=parameter.dtype)
        num_special_tokens = torch.zeros(len(tasks), dtype=torch.long)  # 0 = not a PASTA task
        for task in pasta:
            index = self.task_index[task.name]
            table_slots = task.special_token_table.shape[1]
            tables[index, task.adapted_layers, :table_slots] = task.special_token_table.to(parameter.dtype)
            num_special_tokens[index] = table_slots
        self.register_buffer("special_token_tables", tables.to(parameter.device), persistent=False)
        self.register_buffer("num_special_tokens", num_special_tokens.to(parameter.device), persistent=False)
        self.special_token_ids = pasta[0].special_token_ids if pasta else []
        self.register_buffer("special_ids", torch.tensor(self.special_token_ids, dtype=torch.long), persistent=False)
        adapted = sorted({layer for task in pasta for layer in task.adapted_layers})
        self._positions: tuple[torch.Tensor, ...] | None = None
        self._hooks = [
            layers[layer].register_forward_pre_hook(self._make_hook(layer), with_kwargs=True) for layer in adapted
        ]

        # LoRA: PEFT's own mixed batch, all adapters in one PeftModel around the shared backbone.
        self.lora_backbone = None
        try:
            for task in (task for task in tasks if task.method == "lora"):
                self._add_lora_adapter(task)
        except BaseException:
            self.unload()  # a failed build must leave the backbone as it found it
            raise
        if self.lora_backbone is not None:
            self.lora_backbone.requires_grad_(False).eval()

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_adapters(
        cls,
        base_model: nn.Module,
        adapters: Mapping[str, str | os.PathLike],
        tokenizer=None,
        task_model_classes: Mapping[str, Any] | None = None,
    ) -> "MultiTaskModel":
        """Load ``{task name: adapter directory}`` (PASTA from peftkit, LoRA from PEFT, or a mix)
        onto ``base_model`` (an ``AutoModel``, or a task model whose backbone is used).

        Each adapter must have been made for this backbone, and PASTA adapters must agree on the
        special-token ids (resolved as ``PeftModel.from_pretrained`` does: recorded ids, else the
        tokenizer's, else the model config's). ``task_model_classes`` names the task model class
        (``AutoModelForTokenClassification``, ...) of adapters whose files do not record it."""
        if not adapters:
            raise PeftkitError("MultiTaskModel.from_adapters needs at least one {task name: adapter directory}.")
        backbone = bare_backbone(base_model)
        task_model_classes = dict(task_model_classes or {})
        loaded = [
            load_task_adapter(backbone, name, directory, tokenizer, task_model_classes.get(name))
            for name, directory in adapters.items()
        ]
        return cls(backbone, loaded)

    @classmethod
    def from_lora_adapters(
        cls,
        base_model: nn.Module,
        adapters: Mapping[str, str | os.PathLike],
        task_model_classes: Mapping[str, Any] | None = None,
    ) -> "MultiTaskModel":
        """Like ``from_adapters`` for PEFT LoRA adapters only (saved with ``save_pretrained``)."""
        for name, directory in adapters.items():
            if read_adapter_config(directory).get("peft_type") != "LORA":
                raise AdapterMismatchError(f"{directory} (task {name!r}) is not a PEFT LoRA adapter; use from_adapters.")
        return cls.from_adapters(base_model, adapters, task_model_classes=task_model_classes)

    def _add_lora_adapter(self, task: _LoadedTask) -> None:
        import peft

        where = f"the LoRA adapter of task {task.name!r}"
        try:
            if self.lora_backbone is None:
                self.lora_backbone = peft.PeftModel(self.backbone, task.lora_config, adapter_name=task.name)
            else:
                self.lora_backbone.add_adapter(task.name, task.lora_config)
            result = peft.set_peft_model_state_dict(self.lora_backbone, task.lora_tensors, adapter_name=task.name)
        except (RuntimeError, ValueError) as error:
            raise AdapterMismatchError(
                f"{where} does not fit this backbone ({str(error).splitlines()[0][:300]}). Load the "
                "backbone the adapter was trained on."
            ) from None
        missing = [k for k in result.missing_keys if "lora_" in k and f".{task.name}." in k]
        if result.unexpected_keys or missing:
            raise AdapterMismatchError(
                f"{where} does not fit this backbone: unexpected {list(result.unexpected_keys)[:3]}, "
                f"missing {missing[:3]}. Load the backbone the adapter was trained on."
            )

    # -- the forward ----------------------------------------------------------------------
    def special_token_positions(
        self, input_ids: torch.Tensor, task_of_row: torch.Tensor, attention_mask: torch.Tensor | None = None
    ):
        """Rows, columns, slots and task of every special token of the PASTA rows; a row's slot
        is its occurrence order capped at its own task's M - 1. Padding (``attention_mask`` 0)
        is never special, whatever its id."""
        slots_of_row = self.num_special_tokens[task_of_row]  # M of each row's task; 0 = not PASTA
        special_token_mask = torch.isin(input_ids, self.special_ids) & (slots_of_row > 0)[:, None]
        if attention_mask is not None:
            special_token_mask &= attention_mask.bool()
        missing = ((slots_of_row > 0) & ~special_token_mask.any(dim=1)).nonzero().flatten()
        if len(missing):
            raise SpecialTokenError(
                f"row(s) {missing.tolist()[:5]} contain none of the special tokens {self.special_token_ids}, "
                "so their PASTA adapters cannot act. Tokenize with add_special_tokens=True (the default)."
            )
        occurrence = special_token_mask.long().cumsum(dim=1) - 1
        slots = torch.minimum(occurrence, (slots_of_row - 1)[:, None])
        rows, columns = special_token_mask.nonzero(as_tuple=True)
        return rows, columns, slots[rows, columns], task_of_row[rows]

    def _make_hook(self, layer_index: int):
        def add_task_special_token_vectors(layer, args, kwargs):
            if self._positions is None:
                raise SpecialTokenError(
                    "this backbone serves a MultiTaskModel, whose layers need each row's task: call the "
                    "MultiTaskModel, or MultiTaskModel.unload() to get the plain backbone back."
                )
            rows, columns, slots, tasks = self._positions
            # h[row, pos] += table[task_of_row[row], layer, slot]
            delta = self.special_token_tables[tasks, layer_index, slots]
            if args:
                return (args[0].index_put((rows, columns), delta, accumulate=True), *args[1:]), kwargs
            kwargs["hidden_states"] = kwargs["hidden_states"].index_put((rows, columns), delta, accumulate=True)
            return args, kwargs

        return add_task_special_token_vectors

    @contextlib.contextmanager
    def _rows_of_tasks(self, input_ids: torch.Tensor, task_of_row: torch.Tensor, attention_mask: torch.Tensor | None):
        self._positions = self.special_token_positions(input_ids, task_of_row, attention_mask) if self._hooks else None
        try:
            yield
        finally:
            self._positions = None

    def task_of_rows(self, task_names: Sequence[str], batch_size: int) -> torch.Tensor:
        if isinstance(task_names, str) or len(task_names) != batch_size:
            raise PeftkitError(
                f"task_names must list one task per row: got {task_names!r} for {batch_size} rows."
            )
        unknown = sorted({name for name in task_names if name not in self.task_index})
        if unknown:
            raise PeftkitError(
                f"unknown task(s) {unknown}: this model serves {self.task_names}. Load an adapter for "
                "it with MultiTaskModel.from_adapters(base_model, {name: directory, ...})."
            )
        return torch.tensor([self.task_index[name] for name in task_names], device=self.special_ids.device)

    @torch.inference_mode()
    def task_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        task_names: Sequence[str] = (),
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Each row's logits from its own task's head, after one backbone pass for the whole batch."""
        task_of_row = self.task_of_rows(task_names, len(input_ids))
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        with self._rows_of_tasks(input_ids, task_of_row, attention_mask):
            if self.lora_backbone is not None:
                adapter_names = [self._lora_adapter_of[name] for name in task_names]
                outputs = self.lora_backbone(**inputs, adapter_names=adapter_names)
            else:
                outputs = self.backbone(**inputs)
        logits_of_row: list[torch.Tensor] = [None] * len(input_ids)
        for task_index in task_of_row.unique().tolist():
            name = self.task_names[task_index]
            rows = (task_of_row == task_index).nonzero().flatten()
            head = self.task_heads[name]
            feed = getattr(head, head.base_model_prefix)
            feed.outputs = _select_rows(outputs, rows)
            try:
                logits = head(**{key: value[rows] for key, value in inputs.items() if value is not None}).logits
            finally:
                feed.outputs = None
            for position, row in enumerate(rows.tolist()):
                logits_of_row[row] = logits[position]
        return logits_of_row

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        task_names: Sequence[str] = (),
        token_type_ids: torch.Tensor | None = None,
    ) -> list[TaskPrediction]:
        """One prediction per row: ``task_names[i]`` says which task row ``i`` belongs to."""
        logits_of_row = self.task_logits(input_ids, attention_mask, task_names, token_type_ids)
        predictions = []
        for row, (name, logits) in enumerate(zip(task_names, logits_of_row)):
            labels = self.label_names[name]
            if logits.dim() == 2:  # token classification: the row's real tokens only
                if attention_mask is not None:
                    logits = logits[attention_mask[row].bool()]
                predictions.append(TaskPrediction(name, logits, [labels[i] for i in logits.argmax(-1).tolist()]))
            else:
                predictions.append(TaskPrediction(name, logits, labels[int(logits.argmax())]))
        return predictions

    def unload(self) -> nn.Module:
        """Remove the PASTA hooks and LoRA layers; return the backbone as it was."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.lora_backbone is not None:
            self.lora_backbone.unload()
            self.lora_backbone = None
        return self.backbone

"""What one more task costs: trainable parameters, bytes stored, backbone weights rewritten.

Serving many tasks from one backbone (design.md §5) is cheap when a task switch only swaps
adapter tensors; it is expensive when the switch must rewrite backbone weights in place (BitFit's
biases, full fine-tuning's everything, or any merged adapter's target matrices). Every figure
here comes from the adapter directory and the method's declared attributes
(``MethodAdapter.rewrites_backbone_weights``, ``mergeable``), not from a table of method names:

* trainable parameters: the elements of the tensors stored in ``adapter_model.safetensors``
  (what trained is what is saved), split into the method's own and the task head's;
* bytes per task: the files one task needs (``loading.ADAPTER_FILES``: PEFT's config and
  weights, the task's labels, peftkit's options beside a PEFT adapter); LoRA fusion's pool
  is shared by every task and reported apart;
* backbone weights rewritten per task switch: for a method that trains backbone weights, the
  backbone tensors its file stores; for a merged adapter, the backbone tensors its ``merge``
  writes (counted by the in-place version counter of every backbone tensor during a merge on a
  freshly built model, so no method has to declare its targets; an adapter that stores nothing
  but the head merges nothing); for a PEFT LoRA directory,
  out × in of every module its safetensors adapts.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from peftkit.errors import AdapterFileError
from peftkit.loading import ADAPTER_FILES
from peftkit.methods.registry import get_method
from peftkit.models.backbones import backbone
from peftkit.peft_model import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PeftModel, read_adapter_config, read_peft_options


def stored_tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a safetensors file, read from its header only."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(f"{path} is missing or corrupt ({error}); restore it or retrain the adapter.") from None


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _merged_peft_lora_weights(shapes: dict[str, tuple[int, ...]]) -> int:
    """out × in of every module a PEFT LoRA file adapts: what merging it rewrites."""
    rewritten = 0
    for key, shape in shapes.items():
        for a_marker, b_marker in ((".lora_A.", ".lora_B."), (".lora_embedding_A", ".lora_embedding_B")):
            if a_marker in key:
                b_shape = shapes[key.replace(a_marker, b_marker)]
                # A: r × in (× kernel), B: out × r (lora_embedding_A: r × vocab, _B: dim × r).
                rewritten += b_shape[0] * _numel(shape[1:])
    return rewritten


def build_base_model(record: dict[str, Any]) -> nn.Module:
    """A randomly initialised backbone of the adapter's base model, from its config alone:
    which tensors a merge writes depends on shapes, not on trained values."""
    from transformers import AutoConfig, AutoModel

    name = record.get("base_model_name_or_path")
    if not name:
        raise AdapterFileError(
            "the adapter does not record its base model (base_model_name_or_path), so the weights a "
            "merge rewrites cannot be counted; pass the model: cost_report(dir, merged=True, model=...)."
        )
    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as error:
        raise AdapterFileError(
            f"cannot read the config of the adapter's base model {name!r} ({error}); pass the model: "
            "cost_report(dir, merged=True, model=...)."
        ) from None
    return AutoModel.from_config(config)


def weights_written_by_merge(record: dict[str, Any], model: nn.Module) -> tuple[int, int]:
    """(elements, tensors) of the backbone that the method's ``merge`` writes in place."""
    spec = get_method(record["peftkit_method"])
    fields = {k: v for k, v in record.items() if k in spec.config_class.__dataclass_fields__}
    wrapped = PeftModel(copy.deepcopy(model), spec.config_class.from_dict(fields))
    return _written_by(list(backbone(wrapped.base_model).parameters()), lambda: wrapped.adapter.merge(wrapped.base_model))


def _written_by(params: list[nn.Parameter], merge) -> tuple[int, int]:
    """(elements, tensors) of ``params`` that ``merge()`` writes: in place (the tensor's version
    counter moves) or by replacing its data (a new storage, as PEFT's IA3 merge does)."""
    before = [(p.data_ptr(), p._version) for p in params]
    merge()
    written = [p for p, state in zip(params, before) if (p.data_ptr(), p._version) != state]
    return sum(p.numel() for p in written), len(written)


# PEFT's methods that add virtual tokens (or their keys/values) to the sequence: nothing to merge.
_PEFT_PROMPT_LEARNING = ("prompt_tuning", "p_tuning", "prefix_tuning", "multitask_prompt_tuning", "adaption_prompt")


def weights_written_by_peft_merge(record: dict[str, Any], model: nn.Module) -> tuple[int, int]:
    """(elements, tensors) of the backbone that PEFT's own ``merge_adapter`` writes for the PEFT
    config ``record`` (IA3 scales its target weights, and their biases outside the feed-forward).
    The adapter is rebuilt on a copy of ``model`` from the record alone, without its task head:
    which tensors a merge writes depends on the targets and shapes, not on trained values."""
    import peft

    fields = {key: value for key, value in record.items() if key not in ("modules_to_save", "task_type")}
    config = peft.get_peft_config(fields)
    wrapped = peft.get_peft_model(copy.deepcopy(model), config)
    return _written_by([p for p in wrapped.get_base_model().parameters() if not p.requires_grad], wrapped.merge_adapter)


def cost_report(adapter_dir: str | os.PathLike, merged: bool = False, model: nn.Module | None = None) -> dict[str, Any]:
    """The per-task cost of the adapter in ``adapter_dir`` (peftkit's or PEFT's format).

    ``merged``: count the backbone weights a task switch rewrites when the adapter is merged
    into the backbone rather than kept beside it. ``model`` (optional) is the base model, used
    only to see which weights a merge writes (a peftkit method's, or a PEFT method other than
    LoRA, whose shapes suffice); by default one is built from the base model's config.

    Raises AdapterFileError for a missing or corrupt adapter file, or, when a merge must be
    counted without ``model``, for a base model whose config cannot be read.
    """
    directory = Path(adapter_dir)
    record = read_adapter_config(directory)
    shapes = stored_tensor_shapes(directory / ADAPTER_WEIGHTS_NAME)
    files = {path.name: path.stat().st_size for path in sorted(directory.iterdir()) if path.is_file()}
    report: dict[str, Any] = {
        "adapter_dir": str(directory),
        "bytes_per_task": sum(files.get(name, 0) for name in ADAPTER_FILES),
        "files": files,
        "merged": merged,
        "notes": [],
    }

    if "peftkit_method" in record:
        adapter_class = get_method(record["peftkit_method"]).adapter_class
        heads = tuple(f"base_model.{head}." for head in record.get("head_modules", []))
        head_keys = {key for key in shapes if key.startswith(heads)}
        backbone_keys = {key for key in shapes if key.startswith("base_model.") and key not in head_keys}
        mergeable, rewrites = adapter_class.mergeable, adapter_class.rewrites_backbone_weights
        report.update(method=record["peftkit_method"], format="peftkit")
        backbone_parameters = record.get("base_model_identity", {}).get("num_parameters")
        rewritten = rewritten_tensors = 0
        if rewrites:  # the trained backbone tensors themselves are what a switch must write back
            rewritten = sum(_numel(shapes[key]) for key in backbone_keys)
            rewritten_tensors = len(backbone_keys)
        elif merged and not mergeable:
            report["notes"].append(f"{record['peftkit_method']} cannot be merged; it always stays beside the backbone")
            report["merged"] = False
        elif merged and set(shapes) - head_keys:  # a head-only adapter merges nothing
            rewritten, rewritten_tensors = weights_written_by_merge(
                record, model if model is not None else build_base_model(record))
    else:  # a PEFT directory (LoRA and friends)
        peft_type = str(record.get("peft_type", "unknown")).lower()
        # modules_to_save (the task head) are stored under their module's own name, the method's
        # tensors (lora_A, ia3_l, prompt_embeddings, ...) under the module they adapt or none.
        heads = tuple(f".{head}." for head in record.get("modules_to_save") or ())
        head_keys = {key for key in shapes if any(head in f".{key.removeprefix('base_model.model.')}" for head in heads)}
        backbone_keys = set()
        mergeable, rewrites = peft_type not in _PEFT_PROMPT_LEARNING, False
        report.update(method=peft_type, format="peft")
        # peftkit's save records the backbone beside PEFT's files (peftkit_options.json)
        backbone_parameters = read_peft_options(directory).get("base_model_identity", {}).get("num_parameters")
        rewritten = rewritten_tensors = 0
        if merged and peft_type == "lora":  # from the stored shapes alone, no model built
            rewritten = _merged_peft_lora_weights(shapes)
            rewritten_tensors = sum(1 for key in shapes if ".lora_A." in key or ".lora_embedding_A" in key)
        elif merged and mergeable:
            rewritten, rewritten_tensors = weights_written_by_peft_merge(
                record, model if model is not None else build_base_model(record))
        elif merged:
            report["notes"].append(f"PEFT {peft_type} cannot be merged: its virtual tokens always stay beside the backbone")
            report["merged"] = False

    trainable = sum(_numel(shape) for shape in shapes.values())
    head = sum(_numel(shapes[key]) for key in head_keys)
    report.update(
        trainable_parameters=trainable,
        method_parameters=trainable - head,
        head_parameters=head,
        backbone_parameters=backbone_parameters,
        trainable_percent=100.0 * trainable / backbone_parameters if backbone_parameters else None,
        mergeable=mergeable,
        rewrites_backbone_weights=rewrites,
        backbone_weights_rewritten_per_switch=rewritten,
        backbone_tensors_rewritten_per_switch=rewritten_tensors,
        shared_pool=_shared_pool(record),
    )
    return report


def _shared_pool(record: dict[str, Any]) -> dict[str, Any] | None:
    """LoRA fusion's pool: stored once and shared by every task fused from it."""
    pool = record.get("pool")
    if not pool:
        return None
    weights = [Path(directory) / ADAPTER_WEIGHTS_NAME for directory in pool]
    return {
        "adapters": len(pool),
        "parameters": sum(_numel(shape) for path in weights for shape in stored_tensor_shapes(path).values()),
        "bytes": sum(path.stat().st_size for path in weights)
        + sum((Path(directory) / ADAPTER_CONFIG_NAME).stat().st_size for directory in pool),
    }


def format_cost_table(reports: list[dict[str, Any]]) -> str:
    """A Markdown table of cost reports, one row per adapter."""
    header = ("| adapter | method | trainable params | of which head | % of backbone | bytes per task "
              "| shared pool bytes | backbone weights rewritten per switch |")
    lines = [header, "|" + "---|" * 8]
    for report in reports:
        percent = report["trainable_percent"]
        pool_bytes = "" if report["shared_pool"] is None else f"{report['shared_pool']['bytes']:,}"
        rewritten = report["backbone_weights_rewritten_per_switch"]
        state = "merged" if report["merged"] else "unmerged"
        lines.append(
            f"| {Path(report['adapter_dir']).name} | {report['method']} | {report['trainable_parameters']:,} "
            f"| {report['head_parameters']:,} | {'' if percent is None else f'{percent:.3f}%'} "
            f"| {report['bytes_per_task']:,} | {pool_bytes} "
            f"| {'?' if rewritten is None else f'{rewritten:,}'} ({state}) |"
        )
    return "\n".join(lines)


def cost_command(adapter_dir: str, merged: bool = False) -> dict[str, Any]:
    """``peftkit cost DIR [--merged]``: print the cost table of one adapter and return its report.

    Args:
        adapter_dir: An adapter directory (adapter_config.json + adapter_model.safetensors).
        merged: Also count what a task switch rewrites when the adapter is merged into the weights.
    """
    report = cost_report(adapter_dir, merged=merged)
    print(format_cost_table([report]))
    for note in report["notes"]:
        print(f"note: {note}")
    return report

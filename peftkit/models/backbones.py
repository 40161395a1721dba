"""Backbone knowledge shared by every method.

Transformers families name the same things differently (``encoder.layer`` in BERT,
``transformer.layer`` in DistilBERT, ``hidden_size`` vs ``dim``); this module is the one
place that knows, so methods can ask "where are the layers?" without a family switch.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any, Callable

import torch
from torch import nn

from peftkit.errors import AdapterMismatchError, UnsupportedModelError

# Attribute paths, relative to the bare backbone (``model.base_model``), of the stack of
# Transformer blocks.  Order matters only when a model has several (none we support).
LAYER_PATHS = (
    "encoder.layer",  # BERT, RoBERTa, ELECTRA, DeBERTa(-v2), ViT, DeiT
    "transformer.layer",  # DistilBERT
    "encoder.layers",  # BART-style encoders
    "layers",  # Llama/SmolLM-style decoders (base_model is the decoder itself)
    "h",  # GPT-2
)


def _get_path(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def backbone(model: nn.Module) -> nn.Module:
    """The bare Transformer inside a task model (``BertForX.bert``) or the model itself."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's Transformer blocks, in order, or a clear error naming what we looked for."""
    base = backbone(model)
    for path in LAYER_PATHS:
        layers = _get_path(base, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise UnsupportedModelError(
        f"cannot find the Transformer layers of {type(model).__name__}: looked for "
        f"{', '.join(LAYER_PATHS)} under its backbone. peftkit supports BERT, RoBERTa, "
        "DistilBERT, ELECTRA, DeBERTa-v2, ViT/DeiT and Llama-style models; pass one of those "
        "(e.g. loaded with AutoModelForSequenceClassification.from_pretrained)."
    )


# Where torch's checkpoint_wrapper (Accelerate/FSDP activation checkpointing) keeps the module it
# wraps; parameter names under a wrapped layer contain it, state dicts strip it.
CHECKPOINT_WRAPPER_ATTRIBUTE = "_checkpoint_wrapped_module"


def without_checkpoint_wrappers(name: str) -> str:
    """A parameter name as it is without activation-checkpointing wrappers (as torch's state dicts)."""
    return name.replace(f"{CHECKPOINT_WRAPPER_ATTRIBUTE}.", "")


class LayerPreHooks:
    """Forward pre-hooks (``hook(module, args, kwargs)``) on some of a model's Transformer
    layers, kept on the *outermost* module in each layer's slot.

    Activation checkpointing by torch's ``checkpoint_wrapper`` (Accelerate, FSDP) replaces a
    layer in its ``ModuleList`` by a wrapper that recomputes the inner module in backward. A
    hook left on the inner layer would then run inside the checkpoint: again during backward,
    outside the forward that set its per-batch state, and, for a reentrant checkpoint, on an
    input that does not require grad. ``follow_wrappers`` (called at every forward) moves each
    hook to whatever module now holds the slot, so the hook runs once, before the checkpoint.
    transformers' own checkpointing wraps ``forward`` inside the layer, so hooks stay outside
    it anyway.
    """

    def __init__(self, model: nn.Module, hooks: dict[int, Callable]):
        self._model = model
        self._hooks = dict(hooks)  # layer index → hook
        self._handles: dict[int, tuple[nn.Module, Any]] = {}  # layer index → (hooked module, handle)
        self.follow_wrappers()

    def follow_wrappers(self) -> None:
        layers = encoder_layers(self._model)
        for index, hook in self._hooks.items():
            hooked = self._handles.get(index)
            if hooked is not None and hooked[0] is layers[index]:
                continue
            if hooked is not None:
                hooked[1].remove()
            self._handles[index] = (layers[index], layers[index].register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        for _, handle in self._handles.values():
            handle.remove()
        self._handles = {}
        self._hooks = {}


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("hidden_size", "dim", "d_model", "n_embd"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModelError(
        f"cannot tell the hidden size of {type(model).__name__}: its config has none of "
        "hidden_size, dim, d_model, n_embd."
    )


def hidden_dropout_prob(model: nn.Module) -> float:
    """The model's own dropout on hidden states (BERT: hidden_dropout_prob, DistilBERT: dropout)."""
    config = getattr(model, "config", None)
    for name in ("hidden_dropout_prob", "dropout", "hidden_dropout"):
        value = getattr(config, name, None)
        if isinstance(value, float):
            return value
    return 0.0


def backbone_dropout_sites(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every dropout probability of the backbone, as (module, attribute name) pairs.

    Two kinds, because transformers keeps both: ``nn.Dropout`` modules (hidden states,
    embeddings, attention probabilities; BERT, RoBERTa, ELECTRA and DistilBERT hand
    ``self.dropout.p`` to scaled-dot-product attention) and plain float attributes whose name
    says dropout (ViT's and Llama's ``attention_dropout``, the ``dropout_p`` they pass to SDPA).
    Only modules under ``backbone(model)``: the task head's dropout (BERT's classifier dropout
    sits beside the backbone, ``model.dropout``) is the head's. Call it on the model before a
    method adds modules of its own (LoRA's, WeGeFT's dropout), so theirs are not among them."""
    sites: list[tuple[nn.Module, str]] = []
    for module in backbone(model).modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            sites.append((module, "p"))
            continue
        sites += [(module, name) for name, value in vars(module).items()
                  if "dropout" in name.lower() and isinstance(value, float)]
    return sites


class BackboneDropoutOff:
    """The frozen backbone's dropout probabilities set to 0 until ``restore()``.

    With p = 0 a training-mode forward of the backbone draws no dropout masks and
    scaled-dot-product attention gets ``dropout_p=0.0``, so it may take its memory-efficient or
    flash kernel instead of the one that materialises every attention map (issue 15)."""

    def __init__(self, sites: list[tuple[nn.Module, str]]):
        self._saved = [(module, name, getattr(module, name)) for module, name in sites]
        for module, name, _ in self._saved:
            setattr(module, name, 0.0)

    def restore(self) -> None:
        for module, name, value in self._saved:
            setattr(module, name, value)
        self._saved = []


def special_token_ids_from_config(config) -> list[int]:
    """[CLS]/[SEP]-like ids a model config declares (RoBERTa's bos/eos), in that order."""
    ids: list[int] = []
    for name in ("cls_token_id", "bos_token_id", "sep_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level children a task model adds around its backbone (classifier, pre_classifier,
    DeBERTa's pooler). These are new and task-specific, so they train and are saved with the
    adapter; everything under the backbone stays frozen (BERT's pretrained pooler included)."""
    prefix = getattr(model, "base_model_prefix", None)
    if backbone(model) is model or prefix is None:
        return []
    return [
        name
        for name, child in model.named_children()
        if name != prefix and any(True for _ in child.parameters())
    ]


# Roundings the fingerprint is taken at (see backbone_identity). Each is exact for a copy in its
# own dtype or in float32 of the same weights: rounding float32 to bfloat16 gives the very bits a
# checkpoint loaded with dtype=torch.bfloat16 holds, and likewise for float16.
FINGERPRINT_ROUNDINGS = {"bfloat16": torch.bfloat16, "float16": torch.float16}
FINGERPRINT_METHOD = "sha256 of every tensor rounded to bfloat16 / float16"
# id(parameter) → (weak reference, (data_ptr, version, dtype, device, shape), {rounding: digest}),
# dropped when the parameter dies: serving N adapters on one base hashes it once, and a parameter
# changed in place (an optimizer step, copy_ under no_grad: both bump its version) is hashed again.
# (Tensors compare elementwise, so they cannot be keys of a WeakKeyDictionary.)
_TENSOR_DIGESTS: dict[int, tuple] = {}


def _tensor_digests(param: torch.Tensor) -> dict[str, bytes]:
    key = (param.data_ptr(), param._version, param.dtype, param.device, tuple(param.shape))
    cached = _TENSOR_DIGESTS.get(id(param))
    if cached is not None and cached[0]() is param and cached[1] == key:
        return cached[2]
    digests = {}
    with torch.no_grad():
        for name, dtype in FINGERPRINT_ROUNDINGS.items():
            # Same width as int16, so the rounded bits are hashed as they are (numpy has no bfloat16).
            values = param.detach().to(dtype).contiguous().view(torch.int16).cpu().numpy()
            digests[name] = hashlib.sha256(memoryview(values.reshape(-1))).digest()
    try:
        reference = weakref.ref(param, lambda _, ident=id(param): _TENSOR_DIGESTS.pop(ident, None))
    except TypeError:  # cannot be weakly referenced: not cached
        return digests
    _TENSOR_DIGESTS[id(param)] = (reference, key, digests)
    return digests


def _fingerprints(base: nn.Module) -> dict[str, str]:
    combined = {name: hashlib.sha256() for name in FINGERPRINT_ROUNDINGS}
    for name, param in base.named_parameters():
        name = without_checkpoint_wrappers(name)
        for rounding, digest in _tensor_digests(param).items():
            combined[rounding].update(f"{name}{tuple(param.shape)}".encode())
            combined[rounding].update(digest)
    return {rounding: digest.hexdigest()[:32] for rounding, digest in combined.items()}


def _sampled_fingerprint(base: nn.Module) -> str:
    """The fingerprint adapters saved before peftkit hashed every value: a strided sample of
    each tensor. Kept only to check those older adapters."""
    digest = hashlib.sha256()
    for name, param in base.named_parameters():
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1024)][:1024].to(torch.float32).cpu()
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:32]


def _weights_dtype(base: nn.Module) -> str:
    """The floating dtype most of the backbone's values are held in ("float32", "bfloat16", ...)."""
    counts: dict[torch.dtype, int] = {}
    for param in base.parameters():
        if param.is_floating_point():
            counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return str(max(counts, key=counts.get)).removeprefix("torch.") if counts else "float32"


def backbone_identity(model: nn.Module) -> dict:
    """A record of which backbone an adapter was made for: architecture figures plus
    fingerprints of *every* frozen weight, so a base differing in a single value is told apart.

    Independent of device and, as far as can be exact, of dtype: each tensor is hashed after
    rounding to bfloat16 and, separately, to float16 (SHA-256 of the rounded bits). A float32
    copy and a bfloat16 copy of the same checkpoint give the same bfloat16 fingerprint (the
    bfloat16 copy holds exactly the float32 values rounded to nearest); float32 and float16
    copies agree on the float16 one. No single rounding can match all three: bfloat16 and
    float16 round the same float32 value differently (a bfloat16 copy and a float16 copy of a
    float32 checkpoint are different numbers), so ``check_backbone_identity`` compares at
    the rounding both sides hold exactly. Cost: two roundings and hashes of every value, 0.57 s
    for MiniLM's 22.7M parameters on a 2-core CPU at load average 16 (1 ms when repeated: the
    digests are cached per parameter).
    The task head is not part of the backbone and not fingerprinted; buffers (position ids)
    hold no learned values.
    """
    base = backbone(model)
    config = getattr(model, "config", None)
    fingerprints = _fingerprints(base)
    return {
        "name_or_path": getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", ""),
        "model_type": getattr(config, "model_type", type(base).__name__),
        "hidden_size": hidden_size(model),
        "num_layers": len(encoder_layers(model)),
        "num_parameters": sum(p.numel() for p in base.parameters()),
        "dtype": _weights_dtype(base),
        "fingerprint_method": FINGERPRINT_METHOD,
        "fingerprint": fingerprints["bfloat16"],
        "fingerprint_float16": fingerprints["float16"],
    }


def _rounding_to_compare(saved_dtype: str, current_dtype: str) -> str:
    """float16 when either side holds float16 values (its bfloat16 rounding would be a double
    rounding, off in about one value in sixteen), else bfloat16."""
    return "float16" if "float16" in (saved_dtype, current_dtype) and "bfloat16" not in (saved_dtype, current_dtype) \
        else "bfloat16"


def check_backbone_identity(saved: dict, model: nn.Module, *, where: str) -> None:
    """Refuse an adapter made for another backbone, saying which figure differs.

    Raises:
        AdapterMismatchError: an architecture figure or the weights' fingerprint differ.
    """
    current = backbone_identity(model)
    if saved.get("fingerprint_method") == FINGERPRINT_METHOD:
        saved_dtype, current_dtype = saved.get("dtype", "float32"), current["dtype"]
        rounding = _rounding_to_compare(saved_dtype, current_dtype)
        key = "fingerprint" if rounding == "bfloat16" else "fingerprint_float16"
        hint = ""
        if {saved_dtype, current_dtype} == {"bfloat16", "float16"}:
            hint = (
                f" (The adapter was saved on a {saved_dtype} copy and this one is {current_dtype}: their "
                "values differ by rounding, so they cannot be matched. Load the base in float32 or "
                f"in {saved_dtype}.)"
            )
    else:  # saved before every value was hashed
        current = {**current, "fingerprint": _sampled_fingerprint(backbone(model))}
        key, hint = "fingerprint", ""
    for name in ("model_type", "hidden_size", "num_layers", "num_parameters", key):
        if name in saved and saved[name] != current[name]:
            raise AdapterMismatchError(
                f"the adapter in {where} was made for another backbone: its {name} is "
                f"{saved[name]!r} but this model's is {current[name]!r} (adapter made for "
                f"{saved.get('name_or_path') or 'an unnamed model'}, this model is "
                f"{current['name_or_path'] or 'unnamed'}). Load the base model the adapter "
                f"was trained on, or retrain the adapter for this one.{hint}"
            )

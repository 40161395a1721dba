"""LoRA fusion: a new task from a pool of frozen LoRA modules (LoRAFusion, GLSVLSI 2025).

K LoRA modules (A_k, B_k), each trained on some task and saved by PEFT, stay frozen. What
trains is one coefficient per pool adapter and per Transformer block, w ∈ R^{K × blocks}, and
a DoRA magnitude m per adapted linear. For an adapted linear W0 in block l:

    A = Σ_k w_kl A_k,   B = Σ_k w_kl B_k,   ΔW = (α/r)·B A
    W' = m ⊙ (W0 + ΔW) / ‖W0 + ΔW‖_col          y = x W'ᵀ + b

and the loss adds l1_weight · mean|w| (``extra_loss``; ``PeftModel.forward`` adds it to
``outputs.loss`` whenever labels are given, so the training loop stays method-blind).

What we followed, after reading the official code (ASU-ESIC-FAN-Lab/LoRAFusion: the DoRA
variant ``LoRAs/dorahubtmp.py`` of its history, the plain one ``LoRAs/loraFusionLearner.py``):

* One coefficient per (pool adapter, block), shared by every adapted module of the block and
  by both of its factors: the official ``params[i][j // 4]`` indexes the T5 block of LoRA key j
  (4 keys per encoder block: q/v × A/B), so w is ``lora_num × num_blocks``. Ours: blocks are
  the model's Transformer layers that hold an adapted module, in order.
* w: Xavier-uniform on the K × blocks matrix; L1 term 5e-4 · mean|w| (``default_l1_regularization``).
  Official optimiser: Adam, lr 0.02 (weight decay 1e-5) for w, lr 0.005 for m.
* Magnitude: the official DoRA variant creates PEFT's DoRA while lora_B = 0, so m starts at
  ‖W0‖_col, *not* at ‖W0 + ΔW‖: with the Xavier w ≠ 0 the first forward is the fused direction
  rescaled to W0's norms (equal to neither the frozen model nor W0 + ΔW). That is our default,
  ``magnitude_init="base"``; ``"fused"`` starts m at ‖W0 + ΔW‖ so the first forward is W0 + ΔW.
* ‖·‖_col is PEFT's DoRA norm: for torch's (out × in) weight, the L2 norm over the input dim
  of each output row (a column of Wᵀ), one value per output feature, the shape of m. PEFT
  treats it as a constant in backward (DoRA §4.3, ``weight_norm.detach()``) and the official
  code runs through PEFT, so ``detach_column_norm=True`` by default.
* Gradients come from autograd. The official code copies the fused factors into PEFT's LoRA
  weights outside autograd and chain-rules by hand; its non-DoRA learner adds an extra factor
  2·w to that gradient.

Where we differ on purpose: each pool adapter's own scaling s_k = α_k/r (α_k/√r for rsLoRA)
is split as √s_k into both of its factors, so adapters trained with different α still fuse
and one-hot w on adapter k reproduces that adapter exactly; with one α this is exactly the
(α/r)·B A above. No LoRA dropout on the fused path (it acts on a handful of coefficients).
Pool heads (PEFT's ``modules_to_save``) are ignored: the new task trains its own head.
The pool is read-only buffers, never saved with the task; the task's adapter config records
each pool directory and the SHA-256 of its weights file, and loading refuses a changed pool.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from peftkit.errors import AdapterFileError, AdapterMismatchError, MethodConfigError, UnsupportedModelError
from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import register_method
from peftkit.models import encoder_layers

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."


@dataclasses.dataclass
class LoraFusionConfig(MethodConfig):
    method_name = "lora-fusion"

    pool: list[str] = dataclasses.field(default_factory=list)
    """Directories of PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors) to fuse."""
    l1_weight: float = 5e-4
    """Weight of the L1 term on the coefficients, l1_weight · mean|w| (official 5e-4)."""
    coefficient_init: str = "xavier"
    """"xavier" (official: Xavier-uniform on K × blocks) or "mean" (every w = 1/K, the pool's average)."""
    magnitude_init: str = "base"
    """"base": m = ‖W0‖_col (official, via PEFT's DoRA); "fused": m = ‖W0 + ΔW‖_col, so step 0 is W0 + ΔW."""
    detach_column_norm: bool = True
    """Treat ‖W0 + ΔW‖_col as a constant in backward, as PEFT's DoRA does (DoRA paper §4.3)."""
    pool_sha256: list[str] | None = None
    """SHA-256 of each pool weights file; filled in when the adapter is created, checked on load."""
    backbone_dropout: bool = True
    """False = the frozen backbone runs without its own dropout (hidden, attention, embeddings): the fast path."""


@dataclasses.dataclass
class PoolLora:
    """One PEFT LoRA adapter of the pool, as read from its directory."""

    directory: str
    rank: int
    scaling: float  # α/r (α/√r for rsLoRA): ΔW_k = scaling · B_k A_k
    base_model_name_or_path: str | None
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path → (A_k: r × in, B_k: out × r)
    sha256: str


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_pool_lora(directory: str | os.PathLike) -> PoolLora:
    """Read one PEFT LoRA directory, refusing what fusion cannot combine (DoRA, biases, Conv1D...)."""
    directory = Path(directory)
    config_path, weights_path = directory / PEFT_CONFIG_NAME, directory / PEFT_WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise AdapterFileError(
            f"LoRA fusion pool entry {directory} is not a PEFT adapter directory (it needs "
            f"{PEFT_CONFIG_NAME} and {PEFT_WEIGHTS_NAME}); save each pool LoRA with "
            "peft_model.save_pretrained(DIR) and list those directories in LoraFusionConfig(pool=[...])."
        )
    try:
        record = json.loads(config_path.read_text(encoding="utf-8"))
        tensors = load_file(str(weights_path))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(f"pool adapter {directory} is corrupt ({error}); restore or retrain it.") from None
    if "peftkit_method" in record or record.get("peft_type") != "LORA":
        kind = record.get("peftkit_method") or record.get("peft_type")
        raise MethodConfigError(
            f"pool entry {directory} is a {kind!r} adapter; LoRA fusion fuses PEFT LoRA adapters "
            "only (peft.get_peft_model(model, peft.LoraConfig(...)) then save_pretrained)."
        )
    unsupported = {
        "use_dora": "DoRA (use_dora=True)",
        "lora_bias": "LoRA biases (lora_bias=True)",
        "fan_in_fan_out": "Conv1D layers (fan_in_fan_out=True)",
        "rank_pattern": "per-module ranks (rank_pattern)",
        "alpha_pattern": "per-module alphas (alpha_pattern)",
    }
    used = [what for field, what in unsupported.items() if record.get(field)]
    if used:
        raise MethodConfigError(
            f"pool adapter {directory} uses {', '.join(used)}, which LoRA fusion does not combine; "
            "fuse plain LoRA adapters (one rank and alpha, nn.Linear targets, no bias)."
        )
    factors: dict[str, list] = {}
    for key, tensor in tensors.items():
        if ".lora_embedding_" in key or ".lora_magnitude_vector" in key:
            raise MethodConfigError(
                f"pool adapter {directory} holds {key}; LoRA fusion fuses LoRA on nn.Linear layers only."
            )
        for slot, marker in enumerate((".lora_A.weight", ".lora_B.weight")):
            if key.endswith(marker):
                module = key[: -len(marker)].removeprefix(PEFT_KEY_PREFIX)
                factors.setdefault(module, [None, None])[slot] = tensor
    # Other keys are the pool task's own head (modules_to_save): the fused task trains its own.
    incomplete = [module for module, pair in factors.items() if pair[0] is None or pair[1] is None]
    if not factors or incomplete:
        raise AdapterFileError(
            f"pool adapter {directory} has "
            + (f"unpaired LoRA factors for {incomplete[:3]}" if incomplete else "no lora_A/lora_B weights")
            + "; restore it or save it again with peft's save_pretrained."
        )
    ranks = {pair[0].shape[0] for pair in factors.values()}
    if len(ranks) != 1:
        raise MethodConfigError(f"pool adapter {directory} has modules of different ranks {sorted(ranks)}.")
    rank = ranks.pop()
    alpha = float(record.get("lora_alpha", 8))
    scaling = alpha / math.sqrt(rank) if record.get("use_rslora") else alpha / rank
    return PoolLora(
        directory=str(directory.resolve()),
        rank=rank,
        scaling=scaling,
        base_model_name_or_path=record.get("base_model_name_or_path") or None,
        factors={module: (pair[0], pair[1]) for module, pair in factors.items()},
        sha256=file_sha256(weights_path),
    )


def _same_model_name(first: str, second: str) -> bool:
    if os.path.isdir(first) and os.path.isdir(second):
        return os.path.realpath(first) == os.path.realpath(second)
    return first.rstrip("/") == second.rstrip("/")


def check_pool_compatible(pool: list[PoolLora]) -> None:
    """Refuse a pool whose adapters cannot be summed factor by factor, saying what differs."""
    first = pool[0]
    for other in pool[1:]:
        if other.rank != first.rank:
            raise MethodConfigError(
                f"LoRA fusion sums the pool's A_k and B_k, so every adapter needs one rank, but "
                f"{first.directory} has r={first.rank} and {other.directory} has r={other.rank}. "
                "Fuse adapters trained with the same LoraConfig(r=...)."
            )
        if set(other.factors) != set(first.factors):
            only_first = sorted(set(first.factors) - set(other.factors))
            only_other = sorted(set(other.factors) - set(first.factors))
            raise MethodConfigError(
                f"pool adapters adapt different modules: {first.directory} only has "
                f"{only_first[:4] or 'none'}, {other.directory} only has {only_other[:4] or 'none'}. "
                "Fuse adapters trained with the same target_modules (and layers)."
            )
        if (first.base_model_name_or_path and other.base_model_name_or_path
                and not _same_model_name(first.base_model_name_or_path, other.base_model_name_or_path)):
            raise AdapterMismatchError(
                f"pool adapters were made for different base models: {first.directory} for "
                f"{first.base_model_name_or_path!r}, {other.directory} for {other.base_model_name_or_path!r}. "
                "Fuse adapters of one base model (if it is the same model saved elsewhere, set "
                "base_model_name_or_path in their adapter_config.json to the same value)."
            )


def _find_linear(model: nn.Module, module_path: str, directory: str) -> tuple[str, nn.Linear]:
    """The model's nn.Linear a pool key names, whether the pool was trained on this task model
    (``bert.encoder...``) or on its bare backbone (``encoder...``)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [module_path, f"{prefix}.{module_path}", module_path.removeprefix(f"{prefix}.")] if prefix else [module_path]
    for name in dict.fromkeys(candidates):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, FusedLoraLinear):
            module = module.original
        if not isinstance(module, nn.Linear):
            raise MethodConfigError(
                f"pool adapter {directory} adapts {name}, a {type(module).__name__}; LoRA fusion "
                "fuses LoRA on nn.Linear layers only."
            )
        return name, module
    raise AdapterMismatchError(
        f"pool adapter {directory} adapts {module_path}, which {type(model).__name__} does not have: "
        "the pool was made for another architecture. Fuse adapters trained on this base model."
    )


class PoolFactors(nn.Module):
    """The frozen pool factors of one adapted linear, stacked over the K pool adapters."""

    def __init__(self, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: torch.Tensor, block: int):
        super().__init__()
        # Non-persistent buffers: they move with .to() but never enter a state dict or a task file.
        self.register_buffer("lora_A", lora_A, persistent=False)  # (K, r, in)
        self.register_buffer("lora_B", lora_B, persistent=False)  # (K, out, r)
        self.register_buffer("scaling", scaling, persistent=False)  # (K,) α_k/r
        self.block = block  # column of the coefficient matrix this linear uses


class FusedLoraLinear(nn.Module):
    """Stands in for a target nn.Linear and computes ``x W'ᵀ + b`` with the fused weight W'.

    It registers the original's own ``weight`` and ``bias`` Parameters (state-dict names and the
    backbone fingerprint are unchanged) and keeps the original, unregistered, for ``detach``.
    W' is built by the adapter at every forward, so the adapter's parameters can be swapped
    (``torch.func.functional_call``) and moved with ``.to()``.
    """

    def __init__(self, original: nn.Linear, adapter: "LoraFusionAdapter", key: str):
        super().__init__()
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight = original.weight
        self.bias = original.bias
        self.key = key
        self._adapter = (adapter,)  # a tuple, so nn.Module does not register the adapter twice
        self._original = (original,)

    @property
    def original(self) -> nn.Linear:
        return self._original[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._adapter[0].fused_weight(self.key, self.weight).to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, key={self.key!r}"


class LoraFusionAdapter(MethodAdapter):
    """Owns the coefficients, the magnitudes and the pool buffers; swaps each target linear
    for a FusedLoraLinear."""

    mergeable = True

    def __init__(self, model: nn.Module, config: LoraFusionConfig, tokenizer=None):
        super().__init__(model, config, tokenizer)
        if isinstance(config.pool, (str, os.PathLike)):
            config.pool = [config.pool]
        if not config.pool:
            raise MethodConfigError(
                "LoraFusionConfig.pool is empty: give the directories of the PEFT LoRA adapters to "
                "fuse, e.g. LoraFusionConfig(pool=['lora/sport', 'lora/tech'])."
            )
        if config.coefficient_init not in ("xavier", "mean"):
            raise MethodConfigError(
                f"LoraFusionConfig.coefficient_init must be 'xavier' or 'mean', not {config.coefficient_init!r}."
            )
        if config.magnitude_init not in ("base", "fused"):
            raise MethodConfigError(
                f"LoraFusionConfig.magnitude_init must be 'base' or 'fused', not {config.magnitude_init!r}."
            )
        pool = [read_pool_lora(directory) for directory in config.pool]
        self._check_pool_unchanged(pool, config)
        check_pool_compatible(pool)
        self._check_base_model(pool, model)
        config.pool = [entry.directory for entry in pool]
        config.pool_sha256 = [entry.sha256 for entry in pool]

        targets = {}  # model path → (linear, pool module path), in the model's module order
        for module_path in pool[0].factors:
            name, linear = _find_linear(model, module_path, pool[0].directory)
            targets[name] = (linear, module_path)
        # By module, not name: under a layer already wrapped for activation checkpointing the
        # module's name holds the wrapper's attribute, the pool's path does not.
        order = {id(module): index for index, module in enumerate(model.modules())}
        targets = dict(sorted(targets.items(), key=lambda item: order[id(item[1][0])]))
        block_of = self._blocks(model, targets)
        blocks = sorted(set(block_of.values()))

        weight = next(iter(targets.values()))[0].weight
        # float32 whatever the base's dtype (as PEFT's autocast_adapter_dtype): the trained
        # coefficients and magnitudes, and the pool they mix; W' is cast to the input's dtype.
        factory = {"device": weight.device, "dtype": torch.float32}
        coefficients = torch.empty(len(pool), len(blocks), **factory)
        if config.coefficient_init == "xavier":
            nn.init.xavier_uniform_(coefficients)  # as the official torch.empty(lora_num, num_blocks)
        else:
            nn.init.constant_(coefficients, 1.0 / len(pool))
        self.fusion_coefficients = nn.Parameter(coefficients)
        self.pool = nn.ModuleDict()
        self.magnitudes = nn.ParameterDict()
        scaling = torch.tensor([entry.scaling for entry in pool], **factory)
        self._replaced: list[tuple[nn.Module, str]] = []
        for name, (linear, module_path) in targets.items():
            key = name.replace(".", "-")  # '.' is not allowed in module/parameter dict keys
            lora_A = torch.stack([entry.factors[module_path][0] for entry in pool]).to(**factory)
            lora_B = torch.stack([entry.factors[module_path][1] for entry in pool]).to(**factory)
            expected = ((len(pool), pool[0].rank, linear.in_features), (len(pool), linear.out_features, pool[0].rank))
            if (tuple(lora_A.shape), tuple(lora_B.shape)) != expected:
                raise AdapterMismatchError(
                    f"the pool's LoRA factors for {name} have shapes A {tuple(lora_A.shape[1:])}, "
                    f"B {tuple(lora_B.shape[1:])}, but this model's {name} is "
                    f"{linear.out_features} × {linear.in_features}: the pool was made for another "
                    "base model. Fuse adapters trained on this one."
                )
            self.pool[key] = PoolFactors(lora_A, lora_B, scaling.clone(), blocks.index(block_of[name]))
            self.magnitudes[key] = nn.Parameter(torch.ones(linear.out_features, **factory))
        # Swap the linears only once every check passed, so a refused pool leaves the model as it was.
        for name, (linear, _) in targets.items():
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child_name, FusedLoraLinear(linear, self, name.replace(".", "-")))
            self._replaced.append((parent, child_name))
        self.blocks = blocks
        self._init_magnitudes(config.magnitude_init)

    # -- the math ---------------------------------------------------------------------
    def delta_weight(self, key: str) -> torch.Tensor:
        """ΔW = (α/r)·B A with A = Σ_k w_kl A_k and B = Σ_k w_kl B_k, l the linear's block."""
        pool = self.pool[key]
        # w_kl·√(α_k/r) on each factor: their product carries α_k/r once, per adapter.
        weights = self.fusion_coefficients[:, pool.block] * pool.scaling.sqrt()
        lora_A = torch.einsum("k,kri->ri", weights, pool.lora_A)  # A = Σ_k w_kl A_k
        lora_B = torch.einsum("k,kor->or", weights, pool.lora_B)  # B = Σ_k w_kl B_k
        return lora_B @ lora_A

    def fused_weight(self, key: str, base_weight: torch.Tensor) -> torch.Tensor:
        """W' = m ⊙ (W0 + ΔW) / ‖W0 + ΔW‖_col."""
        direction = base_weight + self.delta_weight(key)
        column_norm = torch.linalg.vector_norm(direction, dim=1)  # one per output row, as PEFT's DoRA
        if self.config.detach_column_norm:
            column_norm = column_norm.detach()
        return (self.magnitudes[key] / column_norm).unsqueeze(1) * direction

    def regularization_loss(self) -> torch.Tensor:
        """l1_weight · mean|w|, the official L1 term on the fusion coefficients."""
        return self.config.l1_weight * self.fusion_coefficients.abs().mean()

    def extra_loss(self) -> torch.Tensor:
        return self.regularization_loss()

    # -- set-up helpers -----------------------------------------------------------------
    @staticmethod
    def _check_pool_unchanged(pool: list[PoolLora], config: LoraFusionConfig) -> None:
        """On load, the pool must be the one the coefficients were trained against."""
        if config.pool_sha256 is None:
            return
        recorded = list(config.pool_sha256)
        if len(recorded) != len(pool):
            raise AdapterMismatchError(
                f"this LoRA fusion adapter was trained on a pool of {len(recorded)} adapters but its "
                f"config lists {len(pool)} directories; its adapter_config.json is inconsistent."
            )
        for entry, expected in zip(pool, recorded):
            if entry.sha256 != expected:
                raise AdapterMismatchError(
                    f"pool adapter {entry.directory} changed since this LoRA fusion adapter was trained "
                    f"(SHA-256 {entry.sha256[:12]}… instead of {expected[:12]}…); the coefficients only "
                    "make sense with the original pool. Restore those files, or retrain the fusion."
                )

    @staticmethod
    def _check_base_model(pool: list[PoolLora], model: nn.Module) -> None:
        model_name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        for entry in pool:
            if model_name and entry.base_model_name_or_path and not _same_model_name(
                    model_name, entry.base_model_name_or_path):
                raise AdapterMismatchError(
                    f"pool adapter {entry.directory} was made for {entry.base_model_name_or_path!r}, "
                    f"but this model is {model_name!r}. Fuse adapters of this base model (if it is the "
                    "same model saved elsewhere, set base_model_name_or_path in that adapter_config.json)."
                )

    @staticmethod
    def _blocks(model: nn.Module, targets: dict) -> dict[str, int]:
        """Transformer layer index of every target linear: one coefficient per (adapter, layer)."""
        try:
            layers = encoder_layers(model)
        except UnsupportedModelError:
            layers = []
        layer_of = {id(module): index for index, layer in enumerate(layers) for module in layer.modules()}
        block_of = {}
        for name, (linear, _) in targets.items():
            if id(linear) not in layer_of:
                raise MethodConfigError(
                    f"the pool adapts {name}, which is outside the model's Transformer layers; LoRA "
                    "fusion has one coefficient per adapter and layer, so it fuses LoRA inside layers only."
                )
            block_of[name] = layer_of[id(linear)]
        return block_of

    @torch.no_grad()
    def _init_magnitudes(self, how: str) -> None:
        """m = ‖W0‖_col (official) or ‖W0 + ΔW‖_col at the initial coefficients."""
        for parent, child_name in self._replaced:
            wrapper = getattr(parent, child_name)
            weight = wrapper.weight.float()  # norms of a half-precision base, in float32
            if how == "fused":
                weight = weight + self.delta_weight(wrapper.key)
            self.magnitudes[wrapper.key].copy_(torch.linalg.vector_norm(weight, dim=1))

    # -- merge / detach -------------------------------------------------------------------
    def merge(self, model: nn.Module) -> nn.Module:
        """W0 ← W' in place in every adapted linear; ``detach`` then puts plain Linears back."""
        with torch.no_grad():
            for parent, child_name in self._replaced:
                wrapper = getattr(parent, child_name)
                wrapper.weight.copy_(self.fused_weight(wrapper.key, wrapper.weight))
        return model

    def detach(self, model: nn.Module) -> None:
        for parent, child_name in self._replaced:
            setattr(parent, child_name, getattr(parent, child_name).original)
        self._replaced = []


register_method(LoraFusionConfig, LoraFusionAdapter)

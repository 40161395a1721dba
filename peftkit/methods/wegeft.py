"""WeGeFT: Weight-Generative Fine-Tuning (Savadikar, Song, Wu, ICML 2025).

The fine-tuning weights are generated from the pretrained ones by a shared low-rank map:

    W' = W (I + s·φ ψ),   ΔW = s·W φ ψ,   φ: d_in × r,  ψ: r × d_in,  s = alpha / rank

and the forward never forms ΔW (a d_out × d_in matrix):

    y = x Wᵀ + b + s·(x ψᵀ)(W φ)ᵀ

What we followed, after reading the official code (savadikarc/gift, ``peft/src/peft/tuners/
wegeft/layer.py``, ``transform_dim="input"``, the only path its configs use):

* Composition and order: there ``phi`` and ``psi`` are ``nn.Linear(d_in, r)``, the update is
  ``F.linear(psi(x), phi(W)) * scaling`` and ``get_delta_weight`` is ``(W @ phi.weightᵀ) @
  psi.weight * scaling`` — i.e. ``ΔW = s·W φ ψ`` with our φ = ``phi.weightᵀ`` (d_in × r) and
  ψ = ``psi.weight`` (r × d_in); ``scaling = alpha / r``.
* Init: ψ kaiming-uniform(a=√5) (the nn.Linear default, fan-in d_in), φ = 0, so ΔW = 0 and
  step 0 equals the frozen model.
* Dropout is applied to the frozen weight W inside the delta path only (``phi(dropout(W))``),
  not to the input, and not to the frozen ``x Wᵀ`` term.
* Sharing: the official configs tie one (φ, ψ) pair per module type across all layers
  (``tied_modules=[["model.layers.\\d+.self_attn.q_proj"], ...]``); ΔW still differs per layer
  because W does. Ours groups by the module's path inside its layer (``attention.self.query``)
  by default; ``share_across_layers=False`` gives every module its own pair.

Where we differ on purpose: ``merge`` never applies dropout (the official ``get_delta_weight``
does, which makes a merge made in training mode random). The official ``transform_dim="output"``
path builds φ with the wrong shape and is not offered. Official LLM scripts use r = 64,
alpha = 128, dropout 0; design.md's encoder defaults are r = 32 on query/value.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.errors import MethodConfigError, UnsupportedModelError
from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import register_method
from peftkit.models import encoder_layers, head_module_names
from peftkit.models.backbones import CHECKPOINT_WRAPPER_ATTRIBUTE

# The family's own query/value names: ours where PEFT's LoRA target map has none, else PEFT's
# (BERT/RoBERTa/ELECTRA: query/value, DeBERTa-v2: query_proj/value_proj, Llama: q_proj/v_proj).
DEFAULT_TARGET_MODULES = {"distilbert": ["q_lin", "v_lin"]}
# Tried in order when the family has no entry or its names are not in the model (ViT/DeiT are
# query/value before transformers 5 and q_proj/v_proj in it).
QUERY_VALUE_NAMES = (["query", "value"], ["q_proj", "v_proj"], ["q_lin", "v_lin"], ["query_proj", "value_proj"])


@dataclasses.dataclass
class WeGeFTConfig(MethodConfig):
    method_name = "wegeft"

    rank: int = 32
    """r, the inner size of φ (d_in × r) and ψ (r × d_in); design.md: 32 for RoBERTa, 64 for LLMs, 16 for ViT."""
    alpha: float = 64.0
    """Scale numerator: ΔW is multiplied by s = alpha / rank (official LLM runs: 128 / 64)."""
    dropout: float = 0.1
    """Dropout on the frozen W inside the delta path (official LLM scripts use 0)."""
    target_modules: list[str] | None = None
    """Suffixes of the nn.Linear names to adapt, e.g. ["query", "value"]; None = the family's default."""
    share_across_layers: bool = True
    """One (φ, ψ) pair per module type shared by every layer (the paper's); False = one per module."""
    backbone_dropout: bool = True
    """False = the frozen backbone runs without its own dropout (hidden, attention, embeddings): the fast path."""


def default_target_modules(model: nn.Module) -> list[str]:
    """The family's attention query/value projections (those the model really has), or a clear error."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = DEFAULT_TARGET_MODULES.get(model_type) or PEFT_TARGETS.get(model_type)
    names = backbone_linear_modules(model)
    for candidate in ([family] if family else []) + list(QUERY_VALUE_NAMES):
        if all(any(n == s or n.endswith(f".{s}") for n in names) for s in candidate):
            return list(candidate)
    raise MethodConfigError(
        f"WeGeFT has no default target modules for {type(model).__name__} (model type "
        f"{model_type!r}); give them, e.g. WeGeFTConfig(target_modules=[...]) with some of this "
        f"model's Linear layers: {', '.join(linear_module_suffixes(model)) or 'none found'}."
    )


def backbone_linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear of the model outside its task head (the head trains in full anyway)."""
    heads = tuple(f"{name}." for name in head_module_names(model))
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not f"{name}.".startswith(heads)
    }


def linear_module_suffixes(model: nn.Module, limit: int = 12) -> list[str]:
    """Distinct last names of the backbone's Linear layers (query, key, dense, ...), for messages."""
    suffixes = dict.fromkeys(name.rsplit(".", 1)[-1] for name in backbone_linear_modules(model))
    return list(suffixes)[:limit]


def _layer_relative_paths(model: nn.Module) -> dict[int, str]:
    """id(module) → its path inside its Transformer block (``attention.self.query``)."""
    try:
        layers = encoder_layers(model)
    except UnsupportedModelError:
        return {}  # no layer stack: every module is its own type
    # A layer already wrapped by torch's checkpoint_wrapper names its modules under the wrapper's
    # attribute; the type is the same module (shared pair, same saved name) either way.
    return {
        id(module): name.removeprefix(f"{CHECKPOINT_WRAPPER_ATTRIBUTE}.")
        for layer in layers for name, module in layer.named_modules() if name
    }


class WeGeFTLinear(nn.Module):
    """A frozen nn.Linear plus the generated update s·(x ψᵀ)(W φ)ᵀ.

    It registers the original's own ``weight`` and ``bias`` Parameters (so state-dict names and
    the backbone fingerprint are unchanged) and keeps the original module, unregistered, to put
    back on ``detach``. φ and ψ are looked up by key in the adapter's ParameterDicts at every
    forward, never registered here, so a shared pair is saved once and ``torch.func``'s
    functional_call can swap it.
    """

    def __init__(self, original: nn.Linear, factors: tuple[nn.ParameterDict, nn.ParameterDict], key: str,
                 scaling: float, dropout: float):
        super().__init__()
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight = original.weight
        self.bias = original.bias
        self.scaling = scaling
        self.key = key
        self.weight_dropout = nn.Dropout(dropout)
        self._factors = factors  # tuples: nn.Module does not register what is inside them
        self._original = (original,)

    @property
    def original(self) -> nn.Linear:
        """The nn.Linear this replaced (same weight and bias Parameters), put back by ``detach``."""
        return self._original[0]

    @property
    def phi(self) -> torch.Tensor:
        return self._factors[0][self.key]

    @property
    def psi(self) -> torch.Tensor:
        return self._factors[1][self.key]

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s·W φ ψ in float32 (no dropout: used for merging and checking, not in training)."""
        return self.scaling * (self.weight.float() @ self.phi.float()) @ self.psi.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # φ and ψ are float32 on any base; the products run in the base's dtype.
        frozen = F.linear(x, self.weight, self.bias)  # x Wᵀ + b
        generated = self.weight_dropout(self.weight) @ self.phi.to(self.weight.dtype)  # W φ: d_out × r
        update = F.linear(F.linear(x, self.psi.to(x.dtype)), generated.to(x.dtype))
        return frozen + self.scaling * update  # + s·(x ψᵀ)(W φ)ᵀ

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, key={self.key!r}, scaling={self.scaling}"


class WeGeFTAdapter(MethodAdapter):
    """Owns the (φ, ψ) pairs and swaps each target nn.Linear for a WeGeFTLinear that uses one."""

    mergeable = True

    def __init__(self, model: nn.Module, config: WeGeFTConfig, tokenizer=None):
        super().__init__(model, config, tokenizer)
        if config.target_modules is None:
            config.target_modules = default_target_modules(model)
        if isinstance(config.target_modules, str):
            config.target_modules = [config.target_modules]
        if not isinstance(config.rank, int) or config.rank < 1:
            raise MethodConfigError(f"WeGeFTConfig.rank must be a positive integer, not {config.rank!r}.")
        if not 0.0 <= config.dropout < 1.0:
            raise MethodConfigError(f"WeGeFTConfig.dropout must be in [0, 1), not {config.dropout!r}.")
        targets = self._find_targets(model, config.target_modules)
        self.scaling = config.alpha / config.rank
        # φ and ψ, keyed by module type (shared) or by module path (per layer); '.' is not allowed in keys.
        self.phi = nn.ParameterDict()
        self.psi = nn.ParameterDict()
        relative_paths = _layer_relative_paths(model)
        self._replaced: list[tuple[nn.Module, str]] = []  # (parent, attribute) of each wrapper
        for name, linear in targets.items():
            in_path = relative_paths.get(id(linear)) if config.share_across_layers else None
            key = (in_path or name).replace(".", "-")
            if key not in self.phi:
                self._create_pair(key, linear, name)
            elif self.phi[key].shape[0] != linear.in_features:
                raise MethodConfigError(
                    f"WeGeFT shares one (φ, ψ) pair across layers for {key!r}, but {name} has "
                    f"{linear.in_features} inputs and an earlier one {self.phi[key].shape[0]}; "
                    "set share_across_layers=False."
                )
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            wrapper = WeGeFTLinear(linear, (self.phi, self.psi), key, self.scaling, config.dropout)
            setattr(parent, child_name, wrapper)
            self._replaced.append((parent, child_name))

    def _find_targets(self, model: nn.Module, suffixes: list[str]) -> dict[str, nn.Linear]:
        linears = backbone_linear_modules(model)

        def matches(name: str, suffix: str) -> bool:
            return name == suffix or name.endswith(f".{suffix}")

        for suffix in suffixes:
            if not any(matches(name, suffix) for name in linears):
                raise MethodConfigError(
                    f"WeGeFT target module {suffix!r} matches no nn.Linear in the backbone of "
                    f"{type(model).__name__}; its Linear layers are named "
                    f"{', '.join(linear_module_suffixes(model)) or '(none)'}. "
                    "Set WeGeFTConfig(target_modules=[...]) to some of those."
                )
        return {n: m for n, m in linears.items() if any(matches(n, suffix) for suffix in suffixes)}

    def _create_pair(self, key: str, linear: nn.Linear, name: str) -> None:
        rank, d_in = self.config.rank, linear.in_features
        if rank > d_in:
            raise MethodConfigError(
                f"WeGeFT rank {rank} exceeds the input size {d_in} of {name}: φψ (d_in × d_in) "
                f"cannot have rank above d_in. Use WeGeFTConfig(rank=...) of at most {d_in}."
            )
        weight = linear.weight
        # float32 whatever the base's dtype (as PEFT's autocast_adapter_dtype): AMP's gradient
        # scaler refuses half-precision gradients, and small updates vanish in bfloat16.
        phi = torch.zeros(d_in, rank, device=weight.device, dtype=torch.float32)  # ΔW = 0 at start
        psi = torch.empty(rank, d_in, device=weight.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(psi, a=math.sqrt(5))  # as nn.Linear(d_in, r): bound 1/sqrt(d_in)
        self.phi[key] = nn.Parameter(phi)
        self.psi[key] = nn.Parameter(psi)

    def merge(self, model: nn.Module) -> nn.Module:
        """W ← W + s·W φ ψ in place, in every adapted layer; ``detach`` then puts plain Linears back."""
        with torch.no_grad():
            for parent, child_name in self._replaced:
                wrapper = getattr(parent, child_name)
                wrapper.weight.add_(wrapper.delta_weight())
        return model

    def detach(self, model: nn.Module) -> None:
        for parent, child_name in self._replaced:
            setattr(parent, child_name, getattr(parent, child_name).original)
        self._replaced = []


register_method(WeGeFTConfig, WeGeFTAdapter)

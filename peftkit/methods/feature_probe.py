"""Frozen-feature probe: a regularised logistic regression on a frozen backbone's pooled features.

The baseline a practitioner writes in ten lines (Alain & Bengio 2016, "linear classifier probes";
the standard frozen-feature evaluation of sentence embeddings, e.g. SentEval, Conneau & Kiela
2018): run the frozen backbone once, pool its last hidden states the way the model was trained
to be pooled, and fit scikit-learn's L2-regularised ``LogisticRegression`` on the features:

    x = pool(h_L(text))                        # [hidden] per example (or per word, for NER)
    p(y | x) = softmax(W standardise(x) + b)    # W: [num_labels, hidden], C chosen on a dev split

Pooling follows the model, as ``sentence_transformers`` would: a checkpoint saved in its layout
(``modules.json`` naming a ``sentence_transformers.models.Pooling`` module whose folder, e.g.
``1_Pooling/config.json``, sets ``pooling_mode_mean_tokens`` / ``_cls_token`` / ``_max_tokens``
/ ``_mean_sqrt_len_tokens``) is pooled in those modes (several are concatenated, in
sentence-transformers' order cls, max, mean, mean_sqrt_len), and L2-normalised if a
``Normalize`` module follows. all-MiniLM-L6-v2 says mean + normalise. Any other model is read
at its first token, [CLS] (BERT's [CLS], RoBERTa's <s>), as BERT's own classifier reads it.
Mean and max pool only over real tokens: padding never changes a feature.

Token classification has nothing to pool: each word's feature is the last hidden state of its
first sub-token, the position that carries its tag (``peftkit.data.token_classification``).

Where this differs from the trained-head ``linear`` probe (``peftkit.methods.linear_probe``):
that one trains BERT's classifier on the *pooler* output (a tanh layer on [CLS] that MiniLM's
sentence-embedding training never used) by SGD for a few epochs; this one reads the features
the model was trained to produce and solves the convex problem exactly, with C chosen on dev.

This module holds the model-side pieces (which pooling, the pooled features, the fitted
probe as a linear map); ``peftkit.training.feature_probe`` runs the backbone over a task, caches
the features and chooses C. Nothing here imports training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from peftkit.errors import MethodConfigError, UnsupportedModelError
from peftkit.methods.base import MethodConfig

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")  # sentence-transformers' concatenation order
SENTENCE_TRANSFORMERS_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
# Modes sentence-transformers has that need weights or a causal layout this probe does not rebuild.
UNSUPPORTED_FLAGS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
FIRST_SUBTOKEN = "first_subtoken"  # the token-classification "pooling": one feature per word


@dataclasses.dataclass
class FeatureProbeConfig(MethodConfig):
    """A logistic regression on frozen pooled features; every field has a default."""

    method_name: ClassVar[str] = "feature-probe"

    c_values: list[float] = dataclasses.field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    """LogisticRegression's C (inverse L2 strength, on standardised features) tried on the dev split."""
    pooling: str | None = None
    """cls, mean, max or mean_sqrt_len (or several, comma-separated); None = what the model's 1_Pooling says, else cls."""
    normalize: bool | None = None
    """L2-normalise pooled features; None = whether the model's modules.json lists a Normalize module."""
    max_iter: int = 2000
    """lbfgs iterations per fit."""

    def check(self) -> None:
        if not self.c_values or any(not (isinstance(c, (int, float)) and c > 0) for c in self.c_values):
            raise MethodConfigError(f"c_values must be a non-empty list of positive numbers, not {self.c_values!r}; e.g. [0.01, 0.1, 1, 10].")
        if self.pooling is not None:
            parse_pooling(self.pooling)
        if self.max_iter < 1:
            raise MethodConfigError(f"max_iter must be ≥ 1, not {self.max_iter}.")


@dataclasses.dataclass(frozen=True)
class Pooling:
    """How a sequence becomes one feature vector: modes concatenated in order, then maybe L2-normalised."""

    modes: tuple[str, ...]
    normalize: bool
    source: str  # where the choice came from, for the run's report

    def describe(self) -> str:
        return "+".join(self.modes) + (", L2-normalised" if self.normalize else "") + f" ({self.source})"


def parse_pooling(text: str) -> tuple[str, ...]:
    """"mean" / "cls,max" → modes in sentence-transformers' order; an unknown mode is a MethodConfigError."""
    modes = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(modes - set(POOLING_MODES))
    if not modes or unknown:
        raise MethodConfigError(
            f"pooling {text!r} is not one of {', '.join(POOLING_MODES)} (comma-separate several); e.g. "
            "--method-options '{\"pooling\": \"mean\"}'."
        )
    return tuple(mode for mode in POOLING_MODES if mode in modes)


def _sentence_transformers_modules(model_dir: Path) -> list[dict[str, Any]] | None:
    path = model_dir / "modules.json"
    if not path.is_file():
        return None
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UnsupportedModelError(f"{path} is not readable JSON ({error}); repair it or delete it to pool at [CLS].") from None
    if not isinstance(modules, list):
        raise UnsupportedModelError(f"{path} should list the sentence-transformers modules; repair it or delete it to pool at [CLS].")
    return modules


def sentence_pooling(model_dir: str | Path, tokenizer=None, config: FeatureProbeConfig | None = None) -> Pooling:
    """The pooling the model at ``model_dir`` was trained with (see the module docstring).

    ``config.pooling`` / ``config.normalize`` override what the directory says. ``tokenizer``
    checks the [CLS] fallback: the tokenizer must start every input with its cls token.

    Raises:
        UnsupportedModelError: 1_Pooling names only modes this probe cannot rebuild (weighted
            mean, last token) or none, or the model has no pooling config and no [CLS] first
            token to fall back on; the message says to pass ``pooling`` in --method-options.
    """
    config = config or FeatureProbeConfig()
    model_dir = Path(model_dir)
    modules = _sentence_transformers_modules(model_dir) if model_dir.is_dir() else None
    normalize = any(str(module.get("type", "")).endswith(".Normalize") for module in modules or [])
    if config.normalize is not None:
        normalize = config.normalize
    if config.pooling is not None:
        return Pooling(parse_pooling(config.pooling), normalize, "--method-options")
    pooling_module = next((m for m in modules or [] if str(m.get("type", "")).endswith(".Pooling")), None)
    if pooling_module is not None:
        path = model_dir / str(pooling_module.get("path", "1_Pooling")) / "config.json"
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UnsupportedModelError(
                f"{model_dir}/modules.json names a Pooling module but {path} is not readable ({error}); "
                "restore it, or choose the pooling: --method-options '{\"pooling\": \"mean\"}'."
            ) from None
        modes = tuple(mode for flag, mode in SENTENCE_TRANSFORMERS_FLAGS.items() if settings.get(flag))
        if not modes:
            asked = [flag for flag in UNSUPPORTED_FLAGS if settings.get(flag)]
            raise UnsupportedModelError(
                f"{path} asks for {', '.join(asked) if asked else 'no pooling mode'}; the feature probe pools with "
                f"{', '.join(POOLING_MODES)} only. Choose one: --method-options '{{\"pooling\": \"mean\"}}'."
            )
        return Pooling(tuple(mode for mode in POOLING_MODES if mode in modes), normalize, str(path.relative_to(model_dir)))
    if tokenizer is not None:
        cls_id = getattr(tokenizer, "cls_token_id", None)
        first = tokenizer("a")["input_ids"][:1]
        if cls_id is None or first != [cls_id]:
            raise UnsupportedModelError(
                f"{model_dir} has no sentence-transformers pooling config (modules.json + 1_Pooling) and its tokenizer "
                "does not start inputs with a [CLS] token to read; choose the pooling: --method-options '{\"pooling\": \"mean\"}'."
            )
    return Pooling(("cls",), normalize, "[CLS]: no sentence-transformers pooling config")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pooled features of a batch, as sentence-transformers' Pooling (+ Normalize) computes them.

    Args:
        hidden: [batch, seq, hidden] last hidden states.
        attention_mask: [batch, seq], 1 on real tokens, 0 on padding (padding never counts).
    Returns:
        [batch, hidden × len(pooling.modes)] in ``hidden``'s dtype and device.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    lengths = mask.sum(1).clamp(min=1)  # a row of only padding would divide by zero
    parts = []
    for mode in pooling.modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1))
        elif mode == "mean":
            parts.append((hidden * mask).sum(1) / lengths)
        else:  # mean_sqrt_len
            parts.append((hidden * mask).sum(1) / lengths.sqrt())
    features = torch.cat(parts, dim=-1)
    return torch.nn.functional.normalize(features, p=2, dim=-1) if pooling.normalize else features


def first_subtoken_features(hidden: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Per row, the hidden states at the positions that carry a word's tag (labels ≠ -100).

    Args:
        hidden: [batch, seq, hidden]; labels: [batch, seq] with -100 on later sub-tokens, specials, padding.
    Returns:
        One [words kept, hidden] tensor per row.
    """
    return [row[row_labels != -100] for row, row_labels in zip(hidden, labels)]


def linear_map(classifier, scaler, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted ``StandardScaler`` + ``LogisticRegression`` as one map, logits = x Wᵀ + b.

    Folds the standardisation in (W = coef / σ, b = intercept − W μ), expands a binary fit's one
    row to two logits (−z/2, z/2: the same softmax), and gives labels the training split never
    had a bias of −inf (never predicted). Returns W [num_labels, features], b [num_labels], float32.
    """
    coefficients = classifier.coef_ / scaler.scale_
    intercepts = classifier.intercept_ - coefficients @ scaler.mean_
    if len(classifier.classes_) == 2:
        coefficients = np.concatenate([-coefficients / 2, coefficients / 2])
        intercepts = np.concatenate([-intercepts / 2, intercepts / 2])
    weight = np.zeros((num_labels, coefficients.shape[1]))
    bias = np.full(num_labels, -np.inf)
    weight[classifier.classes_] = coefficients
    bias[classifier.classes_] = intercepts
    return weight.astype(np.float32), bias.astype(np.float32)


class FeatureProbeModel(torch.nn.Module):
    """The frozen backbone, its pooling and the fitted probe as one module: ``model(**batch).logits``.

    ``pooling`` None means token classification: the probe is applied at every position and
    the task's metrics read the first sub-token of each word, as for a token-classification head.
    The linear map is moved to the backbone's device and dtype.
    """

    def __init__(self, backbone: torch.nn.Module, pooling: Pooling | None, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.pooling = pooling
        reference = next(backbone.parameters())
        self.classifier = torch.nn.Linear(weight.shape[1], weight.shape[0], device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(bias)
        self.classifier.requires_grad_(False)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **inputs: Any) -> torch.Tensor:
        """[batch, features] pooled, or [batch, seq, hidden] for token classification."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        return hidden if self.pooling is None else pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **inputs: Any):
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.classifier(self.features(input_ids, attention_mask, **inputs)))

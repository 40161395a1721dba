"""VPT: Visual Prompt Tuning (Jia et al., ECCV 2022) for Hugging Face ViT and DeiT.

p learned prompt vectors P are inserted into the token sequence right after [CLS] (after
[CLS] + distillation token for DeiT), once position embeddings have been added to the
patches, so they carry no position of their own:

    x_0 = cat(x[:, :1], P_0, x[:, 1:])                  (input of layer 1, both variants)
    deep: x_i = cat(x_i[:, :1], P_i, x_i[:, 1 + p:])     (input of every later layer i)

Shallow: P_0 only; later layers carry those positions on like any token. Deep: each layer
gets its own P_i; what the previous layer wrote at the prompt positions is discarded. The
sequence grows by p (ViT has no padding mask to extend); the head still reads position 0,
the final [CLS] after the encoder LayerNorm, exactly as ``ViTForImageClassification`` does.

What we followed, after reading the paper and the official code (KMnP/vpt,
``src/models/vit_prompt/vit.py``): init U(±sqrt(6 / (3·patch_h·patch_w + hidden))) (the
official Xavier-style bound, 3 being the RGB patch conv's input channels); dropout on the
prompts (expanded over the batch, so every row gets its own mask), 0.1 for deep and 0.0 for
shallow by default; and the frozen backbone always runs in eval mode, also while training
(the official code overrides ``train()`` for that): here the adapter's ``train()`` (reached
from ``PeftModel.train()``) and every forward put the backbone's modules in eval mode and
leave them there, so ``model.train()`` turns on only the prompt dropout (and the head's, if it
has any). The modes must stay put, not be restored after each forward: activation
checkpointing recomputes layers during backward, and a recomputation with the backbone's
dropout back on would give other activations than the forward. The one exception is each
Transformer layer's own flag (``GradientCheckpointingLayer``), which holds no dropout and only
switches transformers' activation checkpointing on in training.

The prompts are float32 whatever the base's dtype (as PEFT's ``autocast_adapter_dtype``) and
are cast to the hidden state's dtype when inserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from peftkit.errors import DataError, MethodConfigError, UnsupportedModelError
from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import register_method
from peftkit.models import LayerPreHooks, encoder_layers, hidden_size
from peftkit.models.backbones import backbone

# model_type -> the learned tokens the embeddings put before the patches; prompts go after them.
LEADING_TOKENS = {"vit": ("cls_token",), "deit": ("cls_token", "distillation_token")}


@dataclasses.dataclass
class VptConfig(MethodConfig):
    method_name = "vpt"

    num_prompt_tokens: int = 10
    """Prompt vectors p inserted after [CLS] (after [CLS] and the distillation token in DeiT)."""
    deep: bool = False
    """False = VPT-Shallow (prompts at the input of layer 1 only); True = VPT-Deep (new prompts at every layer)."""
    prompt_dropout: float | None = None
    """Dropout on the prompt vectors; None = the paper's default, 0.1 for deep and 0.0 for shallow."""
    init: str = "uniform"
    """"uniform": U(±sqrt(6/(3·patch_h·patch_w + hidden))) as the official code; "zeros" for debugging."""
    backbone_dropout: bool = False
    """Always False: as the paper, the frozen backbone runs in eval mode (no dropout), also while training."""


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


class VptAdapter(MethodAdapter):
    """The prompt table (layers_with_prompts, p, hidden) and the hooks that put it in the sequence."""

    def __init__(self, model: nn.Module, config: VptConfig, tokenizer=None):
        super().__init__(model, config, tokenizer)
        base = backbone(model)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        embeddings = getattr(base, "embeddings", None)
        if model_type not in LEADING_TOKENS or not hasattr(embeddings, "patch_embeddings"):
            raise UnsupportedModelError(
                f"VPT inserts prompts after the [CLS] token of a Vision Transformer, but "
                f"{type(model).__name__} (model_type {model_type!r}) is not one peftkit supports; "
                f"use a ViT or DeiT model ({', '.join(sorted(LEADING_TOKENS))}), e.g. "
                "AutoModelForImageClassification.from_pretrained(path) or ViTModel."
            )
        if "MaskedImageModeling" in type(model).__name__:
            raise UnsupportedModelError(
                f"{type(model).__name__} decodes patches by their position in the sequence, which "
                "prompts would shift; use the ...ForImageClassification model or the bare ...Model."
            )
        if config.num_prompt_tokens < 1:
            raise MethodConfigError(f"VptConfig.num_prompt_tokens must be at least 1, not {config.num_prompt_tokens}.")
        if config.prompt_dropout is not None and not 0.0 <= config.prompt_dropout < 1.0:
            raise MethodConfigError(f"VptConfig.prompt_dropout must be in [0, 1), not {config.prompt_dropout}.")
        if config.backbone_dropout:
            raise MethodConfigError(
                "VptConfig.backbone_dropout=True cannot apply: VPT runs its frozen backbone in eval mode "
                "(no dropout) while the prompts train, as the paper and the official code do. Drop the "
                "option; only the prompts' own dropout is VPT's to set (prompt_dropout)."
            )

        layers = encoder_layers(model)
        self.num_leading_tokens = sum(getattr(embeddings, name, None) is not None for name in LEADING_TOKENS[model_type])
        self.num_channels = int(model.config.num_channels)
        self.image_size = _pair(model.config.image_size)
        patch_h, patch_w = _pair(model.config.patch_size)
        hidden = hidden_size(model)

        device = next(model.parameters()).device
        # float32 on any base: trained in full precision, cast to the hidden state's dtype on use
        prompts = torch.zeros(
            len(layers) if config.deep else 1, config.num_prompt_tokens, hidden, dtype=torch.float32, device=device
        )
        if config.init == "uniform":
            bound = math.sqrt(6.0 / (3 * patch_h * patch_w + hidden))
            nn.init.uniform_(prompts, -bound, bound)
        elif config.init != "zeros":
            raise MethodConfigError(f"VptConfig.init must be 'uniform' or 'zeros', not {config.init!r}.")
        # Row 0 goes in after the embeddings; row i (deep only) replaces the prompts before layer i.
        self.prompt_embeddings = nn.Parameter(prompts)
        default_dropout = 0.1 if config.deep else 0.0
        self.prompt_dropout = nn.Dropout(default_dropout if config.prompt_dropout is None else config.prompt_dropout)

        # A tuple, not an attribute holding the module, so the backbone is not registered twice.
        self._frozen_backbone = (base,)
        self._embeddings_hook = embeddings.register_forward_hook(self._insert_prompts)
        self._layer_hooks = LayerPreHooks(
            model, {i: self._make_replace_hook(i) for i in range(1, len(layers))} if config.deep else {}
        )
        self.keep_backbone_in_eval()

    def keep_backbone_in_eval(self) -> None:
        """Every backbone module in eval mode except the layers' own checkpointing switch."""
        for module in self._frozen_backbone[0].modules():
            if not isinstance(module, GradientCheckpointingLayer):
                module.training = False

    def train(self, mode: bool = True):
        super().train(mode)
        self.keep_backbone_in_eval()  # PeftModel.train() reaches the backbone first, then here
        return self

    def _prompts(self, layer: int, batch_size: int) -> torch.Tensor:
        return self.prompt_dropout(self.prompt_embeddings[layer].expand(batch_size, -1, -1))

    def _insert_prompts(self, embeddings_module, args, embedded: torch.Tensor) -> torch.Tensor:
        # x = cat(x[:, :k], P_0, x[:, k:]), k = 1 ([CLS]) or 2 ([CLS] + distillation token)
        k = self.num_leading_tokens
        prompts = self._prompts(0, embedded.shape[0]).to(embedded.dtype)
        return torch.cat((embedded[:, :k], prompts, embedded[:, k:]), dim=1)

    def _make_replace_hook(self, layer: int):
        def replace_prompts(layer_module, args, kwargs):
            # x_i = cat(x_i[:, :k], P_i, x_i[:, k + p:]): the previous layer's prompt outputs are dropped
            k, p = self.num_leading_tokens, self.config.num_prompt_tokens
            hidden = args[0] if args else kwargs["hidden_states"]
            prompts = self._prompts(layer, hidden.shape[0]).to(hidden.dtype)
            hidden = torch.cat((hidden[:, :k], prompts, hidden[:, k + p:]), dim=1)
            if args:
                return (hidden, *args[1:]), kwargs
            kwargs["hidden_states"] = hidden
            return args, kwargs

        return replace_prompts

    def check_pixel_values(self, pixel_values, *, interpolate_pos_encoding: bool = False) -> None:
        """Refuse images of the wrong shape here, before ViT fails deep inside torch."""
        expected = (self.num_channels, *self.image_size)
        if not isinstance(pixel_values, torch.Tensor):
            raise DataError(
                f"VPT needs pixel_values, a (batch, {expected[0]}, {expected[1]}, {expected[2]}) tensor; "
                f"got {type(pixel_values).__name__}. Encode images with the model's image processor."
            )
        shape = tuple(pixel_values.shape)
        wrong_size = shape[2:] != expected[1:] and not interpolate_pos_encoding
        if pixel_values.dim() != 4 or shape[1] != expected[0] or wrong_size:
            raise DataError(
                f"pixel_values has shape {shape} but this model takes (batch, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) images: {expected[0]} channel(s) of "
                f"{expected[1]}x{expected[2]} pixels. Encode the images with the model's own image "
                "processor (AutoImageProcessor / ViTImageProcessor with size="
                f"{{'height': {expected[1]}, 'width': {expected[2]}}}"
                + (", converting grayscale to RGB" if expected[0] == 3 else "")
                + "), or pass interpolate_pos_encoding=True to run another image size."
            )

    @contextlib.contextmanager
    def forward_context(self, inputs: dict[str, Any]):
        # PeftModel files a positional first argument under "input_ids"; for ViT it is the images.
        pixel_values = inputs.get("pixel_values", inputs.get("input_ids"))
        self.check_pixel_values(pixel_values, interpolate_pos_encoding=bool(inputs.get("interpolate_pos_encoding")))
        if inputs.get("attention_mask") is not None:
            raise DataError(
                "VPT lengthens the sequence by the prompts, so an attention_mask over the patches "
                "no longer fits it; call the model without attention_mask (ViT does not need one)."
            )
        # The frozen backbone runs in eval mode (dropout off) even while the prompts train, also
        # when the user switched it back to training (base_model.train()).
        self.keep_backbone_in_eval()
        self._layer_hooks.follow_wrappers()
        yield

    def detach(self, model: nn.Module) -> None:
        self._embeddings_hook.remove()
        self._layer_hooks.remove()
        self._frozen_backbone[0].train(self.training)  # the plain model again follows one mode


register_method(VptConfig, VptAdapter)

"""PASTA: Parameter-efficient tuning with Special Token Adaptation (Yang et al., EACL 2023).

Before every Transformer layer l, the hidden state of the m-th special token of each row
gets a trained vector added to it:

    h_l[row, pos_m] += dropout(e_l[m])

It is added to the residual stream itself, so it changes that position's Q, K, V and FFN
input; sequence length is unchanged. What we followed, after reading the paper and the
official code (luka-group/PASTA, BERT only):

* Adapted tokens are [CLS] and [SEP] (RoBERTa's <s> and </s>, ...), not [PAD]/[MASK]/[UNK].
  Slots are by order of occurrence in the row: 0 = [CLS], 1 = first [SEP], 2 = second [SEP]
  of a pair. The official scripts use M = 2 slots for single sentences (CoLA, SST-2, NER)
  and 3 for pairs; occurrences past the last slot (RoBERTa's ``</s></s>`` separator) share
  the last slot rather than being left out.
* Dropout on the added vector is the model's hidden dropout (0.1 for BERT), as there.
* Only the tables and the task head train; BERT's pretrained pooler stays frozen
  (``pooler="frozen"``, the default). Two options for sentence-embedding backbones, whose
  pooler and [CLS] were never trained for classification (all-MiniLM-L6-v2 pools by MEAN):
  ``pooler="trained"`` trains a copy of the pooler with the head (hidden² + hidden more
  parameters; the backbone's own stays untouched, so adapters can still share it), and
  ``pooler="mean"`` feeds the head the attention-masked mean of the last hidden states
  instead of the pooler's output (no parameters beyond the classifier). Both need a head that
  reads the backbone's pooler (BERT-style sequence classification); see
  benchmarks/results/pasta_recipe.md for what each measured.

Where we differ on purpose: positions come from each row's own input ids (the official code
hard-codes ids 101/102 and takes the count of special tokens from the first row), so any
padding side, any mix of single and pair rows and any family work; the tables start at zero
(``init="zeros"``) so step 0 equals the frozen model, with ``init="normal"`` following the
official normal(0, initializer_range).

Padding is never adapted: a position with ``attention_mask == 0`` is not a special token,
whatever its id (GPT-2-style tokenizers pad with their end token, some RoBERTa setups with
</s>), so neither its vector nor the slot count of the real tokens after it change.

Precision and activation checkpointing: the tables stay float32 on half-precision bases (as
PEFT's ``autocast_adapter_dtype``), so optimizers and AMP's gradient scaler see float32; the
added vectors are cast to the hidden state's dtype. The hooks sit on whatever module holds
each layer's slot at forward time, so when a layer is wrapped later (torch's
``checkpoint_wrapper``, FSDP) the addition moves outside the checkpointed region and is
never recomputed: recomputation needs no per-forward positions, and a reentrant checkpoint
sees an input that requires grad.

Cost: everything that depends on the batch is worked out once per forward, in
``forward_context``: where the special tokens are (two host reads: the check that every row
has one, and the number of them), their slots, and every layer's vectors for them in one gather
(``dropout`` drawn only for those vectors, in training). Each layer's hook then does one
out-of-place ``index_put`` at those positions, with no sync. A dense alternative, adding
``[e_l; 0][slot]`` at every position, needs no positions at all but cost 1.7-2.5x more per
layer on CPU (its gather and add touch the whole hidden state twice; index_put copies it once).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from peftkit.errors import SpecialTokenError
from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import register_method
from peftkit.models import LayerPreHooks, encoder_layers, hidden_dropout_prob, hidden_size, special_token_ids_from_config
from peftkit.models.backbones import backbone

POOLERS = ("frozen", "trained", "mean")


@dataclasses.dataclass
class PastaConfig(MethodConfig):
    method_name = "pasta"

    num_special_tokens: int = 3
    """Slots per layer (M): 2 for single sentences, 3 for pairs ([CLS], [SEP], [SEP])."""
    special_token_ids: list[int] | None = None
    """Ids to adapt, e.g. [101, 102]; default: the tokenizer's cls/sep, else the config's."""
    dropout: float | None = None
    """Dropout on the added vectors; None = the model's hidden dropout."""
    init: str = "zeros"
    """"zeros" (step 0 = frozen model) or "normal" (the official normal(0, 0.02))."""
    layers: list[int] | None = None
    """Indices of the layers to adapt; None = every layer."""
    backbone_dropout: bool = True
    """False = the frozen backbone runs without its own dropout (hidden, attention, embeddings): the fast path."""
    pooler: str = "frozen"
    """What the head reads: "frozen" (the paper: the pretrained pooler), "trained" (a trained copy of it), "mean" (masked mean of the last hidden states)."""


def resolve_special_token_ids(model: nn.Module, config: PastaConfig, tokenizer=None) -> list[int]:
    """The ids to adapt: the config's, else the tokenizer's [CLS]/[SEP], else the model config's."""
    if config.special_token_ids:
        ids = [int(i) for i in config.special_token_ids]
        source = "PastaConfig(special_token_ids=...)"
    elif tokenizer is not None:
        ids = [i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id) if i is not None]
        ids = list(dict.fromkeys(ids))
        source = f"the tokenizer ({type(tokenizer).__name__})"
        if not ids:
            raise SpecialTokenError(
                f"the tokenizer {type(tokenizer).__name__} has no [CLS]/[SEP]-like special tokens "
                "(cls_token and sep_token are both unset), so PASTA has nothing to adapt. "
                "Use an encoder whose vocabulary has them, or give "
                "PastaConfig(special_token_ids=[...]) for tokens your inputs do contain."
            )
    else:
        ids = special_token_ids_from_config(model.config)
        source = f"the model config ({type(model.config).__name__})"
        if not ids:
            raise SpecialTokenError(
                f"cannot tell which token ids are special for {type(model).__name__}: its config "
                "declares no cls/sep/bos/eos token ids. Pass the tokenizer, "
                "get_peft_model(model, config, tokenizer=tokenizer), or give the ids, "
                "PastaConfig(special_token_ids=[cls_id, sep_id])."
            )
    vocab_size = getattr(model.config, "vocab_size", None)
    bad = [i for i in ids if i < 0 or (vocab_size is not None and i >= vocab_size)]
    if bad:
        raise SpecialTokenError(
            f"special token ids {bad} from {source} are not in the model's vocabulary "
            f"(size {vocab_size}); the tokenizer and the model do not belong together."
        )
    return ids


class PastaAdapter(MethodAdapter):
    """Per-layer special-token tables plus the pre-hooks that add them to the residual stream."""

    def __init__(self, model: nn.Module, config: PastaConfig, tokenizer=None):
        super().__init__(model, config, tokenizer)
        if config.num_special_tokens < 1:
            raise SpecialTokenError("PastaConfig.num_special_tokens must be at least 1 ([CLS]).")
        layers = encoder_layers(model)
        self.layer_indices = list(range(len(layers))) if config.layers is None else list(config.layers)
        if any(not 0 <= i < len(layers) for i in self.layer_indices):
            raise SpecialTokenError(
                f"PastaConfig.layers={config.layers} names layers the model lacks; it has "
                f"{len(layers)} (0..{len(layers) - 1})."
            )
        self.special_token_ids = resolve_special_token_ids(model, config, tokenizer)
        config.special_token_ids = self.special_token_ids  # saved, so loading needs no tokenizer
        self.register_buffer(
            "special_ids", torch.tensor(self.special_token_ids, dtype=torch.long), persistent=False
        )
        device = next(model.parameters()).device
        # One (M x hidden) table per adapted layer, stored as one (layers, M, hidden) tensor;
        # float32 whatever the base's dtype, so it trains in full precision under fp16/bf16.
        table = torch.zeros(
            len(self.layer_indices), config.num_special_tokens, hidden_size(model), dtype=torch.float32, device=device
        )
        if config.init == "normal":
            nn.init.normal_(table, std=getattr(model.config, "initializer_range", 0.02))
        elif config.init != "zeros":
            raise SpecialTokenError(f"PastaConfig.init must be 'zeros' or 'normal', not {config.init!r}.")
        self.special_token_embeddings = nn.Parameter(table)
        self.dropout = nn.Dropout(hidden_dropout_prob(model) if config.dropout is None else config.dropout)
        # Set per forward: rows and columns of the special tokens, (n,) each, and every adapted
        # layer's vectors for them, (layers, n, hidden).
        self._positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._hooks = LayerPreHooks(
            model, {layer: self._make_hook(table_index) for table_index, layer in enumerate(self.layer_indices)}
        )
        self._attention_mask: torch.Tensor | None = None
        self._pooler_hook = None if config.pooler == "frozen" else self._replace_pooler(model, config.pooler)

    def _replace_pooler(self, model: nn.Module, mode: str):
        """A forward hook on the backbone's pooler that replaces its output, (batch, hidden), with
        a trained copy's ("trained") or with the masked mean of its input ("mean")."""
        if mode not in POOLERS:
            raise SpecialTokenError(f"PastaConfig.pooler must be one of {', '.join(map(repr, POOLERS))}, not {mode!r}.")
        pooler = getattr(backbone(model), "pooler", None)
        if not isinstance(pooler, nn.Module):
            raise SpecialTokenError(
                f"PastaConfig.pooler={mode!r} changes what the head reads from the backbone's pooler, but "
                f"{type(model).__name__} has none (token classification, and RoBERTa/DistilBERT/ELECTRA/DeBERTa "
                "heads, read the hidden states directly). Use pooler='frozen' with this model, or a BERT-style "
                "sequence classification model (e.g. BertForSequenceClassification)."
            )
        if mode == "trained":
            # A float32 copy (like the tables), so bf16/fp16 bases still train it in full precision.
            self.trained_pooler = copy.deepcopy(pooler).float().requires_grad_(True)

        def replace_pooled_output(module, args, output):
            hidden = args[0]  # (batch, seq, hidden): the last layer's hidden states
            if mode == "trained":
                return self.trained_pooler(hidden.float()).to(output.dtype)
            mask = self._attention_mask
            if mask is None:
                return hidden.mean(dim=1)
            # Padding must not dilute the mean: sum over real tokens / their count (at least 1).
            weights = mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

        return pooler.register_forward_hook(replace_pooled_output)

    def special_token_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, columns and slot (occurrence order, capped at M-1) of every special token,
        each of shape (number of special tokens,).

        ``input_ids`` and ``attention_mask`` are (batch, seq); positions the mask marks 0 are
        padding and never special, whatever their id.

        Raises:
            SpecialTokenError: a row holds no special token outside padding.
        """
        # Two or three ids: one broadcast comparison, rather than torch.isin's general machinery.
        special_token_mask = (input_ids.unsqueeze(-1) == self.special_ids.to(input_ids.device)).any(dim=-1)
        if attention_mask is not None:
            special_token_mask &= attention_mask.to(input_ids.device).bool()
        has_special = special_token_mask.any(dim=1)
        if not bool(has_special.all()):  # one host read; the rows are only listed when it fails
            missing = (~has_special).nonzero().flatten()
            raise SpecialTokenError(
                f"row(s) {missing.tolist()[:5]} of input_ids contain none of the special tokens "
                f"{self.special_token_ids} outside padding, so PASTA cannot adapt them. Tokenize with "
                "add_special_tokens=True (the default), or set PastaConfig(special_token_ids=...) "
                "to ids your inputs contain."
            )
        slots = (special_token_mask.cumsum(dim=1) - 1).clamp(max=self.config.num_special_tokens - 1)
        rows, columns = special_token_mask.nonzero(as_tuple=True)
        return rows, columns, slots[rows, columns]

    @contextlib.contextmanager
    def forward_context(self, inputs: dict[str, Any]):
        input_ids = inputs.get("input_ids")
        if input_ids is None:
            raise SpecialTokenError(
                "PASTA finds special tokens by their ids: call the model with input_ids, "
                "not inputs_embeds."
            )
        self._hooks.follow_wrappers()  # layers wrapped since the last forward (checkpoint_wrapper, FSDP)
        rows, columns, slots = self.special_token_positions(input_ids, inputs.get("attention_mask"))
        # dropout(e_l[slot]) for every layer at once: (layers, special tokens, hidden), float32
        self._positions = rows, columns, self.dropout(self.special_token_embeddings[:, slots])
        self._attention_mask = inputs.get("attention_mask")
        try:
            yield
        finally:
            self._positions = self._attention_mask = None

    def _make_hook(self, table_index: int):
        def add_special_token_vectors(layer, args, kwargs):
            if self._positions is None:
                raise SpecialTokenError(
                    "a PASTA-adapted layer ran outside PeftModel.forward; call the wrapped "
                    "model returned by get_peft_model, not the base model. (Under activation "
                    "checkpointing this means a checkpointed region holds several layers: "
                    "checkpoint each layer, with gradient_checkpointing_enable() or "
                    "checkpoint_wrapper on every layer.)"
                )
            hidden = args[0] if args else kwargs["hidden_states"]
            rows, columns, vectors = self._positions
            # h[special] += e_l[slot]  (out of place, so autograd sees it and output_hidden_states
            # keeps the layer's input); float32 vectors cast to the hidden state's dtype (bf16 bases)
            adapted = hidden.index_put((rows, columns), vectors[table_index].to(hidden.dtype), accumulate=True)
            if args:
                return (adapted, *args[1:]), kwargs
            kwargs["hidden_states"] = adapted
            return args, kwargs

        return add_special_token_vectors

    def detach(self, model: nn.Module) -> None:
        self._hooks.remove()
        if self._pooler_hook is not None:
            self._pooler_hook.remove()


register_method(PastaConfig, PastaAdapter)

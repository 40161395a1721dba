"""The output function f whose kernel we take: prompt-based (masked LM) or [CLS]-head.

Prompt-based fine-tuning (LM-BFF, used by Malladi et al.): the input is wrapped in a
template such as ``{sentence} It was [MASK].`` and f(x) is the vector of the label words'
logits (``great``/``terrible``) at the [MASK] position, read by the pretrained masked-LM head,
so no parameter is new. On a causal LM (``encode_causal_prompt``, formulation "causal") f(x) is
the next-token logits of the label words' first tokens after the ICL template, read by the
LM's pretrained output layer: the template filling and verbalizer tokens are in-context
learning's own (``peftkit.methods.icl``), so the kernel differentiates exactly the function
ICL scores with. Standard fine-tuning: f(x) is the logits of a sequence-classification
head on [CLS]; that head is new and random, so ``linear_probe_head`` first sets it to the
logistic-regression solution on frozen features (the official code's ``--from_linearhead``,
used for its no-prompt kernels). For two classes f is the difference of the two logits and
labels become ±1, as in the paper.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
from torch import nn

from peftkit.errors import DataError, PeftkitError
from peftkit.models import head_module_names

DEFAULT_TEMPLATE = "{sentence} It was [MASK]."  # SST-2 in the paper
DEFAULT_PAIR_TEMPLATE = "{sentence} ? [MASK] , {sentence2}"  # NLI in the paper
MASK_PLACEHOLDER = "[MASK]"
_SLOTS = re.compile(r"(\{sentence2?\})")

Example = dict[str, torch.Tensor]


def label_word_ids(tokenizer, label_words: Sequence[str]) -> list[int]:
    """One vocabulary id per label word, read as a word after a space (RoBERTa's "Ġgreat")."""
    ids = []
    for word in label_words:
        pieces = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
        if len(pieces) != 1 or pieces[0] == tokenizer.unk_token_id:
            raise PeftkitError(
                f"label word {word!r} is not one token of this vocabulary (it becomes "
                f"{tokenizer.convert_ids_to_tokens(pieces)}); choose label words that are single "
                "tokens, e.g. --label_words great,terrible."
            )
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise PeftkitError(f"label words {list(label_words)} map to repeated tokens {ids}; make them distinct.")
    return ids


def encode_prompt(tokenizer, template: str, sentence: str, sentence2: str | None = None, *, max_length: int = 128) -> Example:
    """Tokenize ``template`` filled with the sentence(s), truncating only the sentences.

    Plain truncation would cut the template's [MASK] off long inputs, so the filled text is
    tokenized whole and tokens are dropped from the end of the longer sentence until it fits.
    """
    if template.count(MASK_PLACEHOLDER) != 1:
        raise PeftkitError(f"a prompt template needs exactly one {MASK_PLACEHOLDER}: {template!r}")
    if "{sentence}" not in template:
        raise PeftkitError(f"a prompt template needs a {{sentence}} slot: {template!r}")
    if ("{sentence2}" in template) != (sentence2 is not None):
        raise DataError(
            f"template {template!r} and data disagree on sentence pairs: "
            f"{'the data has no second sentence' if sentence2 is None else 'the template has no {sentence2} slot'}."
        )
    text, spans = "", {}
    for piece in _SLOTS.split(template):
        if piece in ("{sentence}", "{sentence2}"):
            filler = (sentence if piece == "{sentence}" else sentence2).strip()
            spans[piece] = (len(text), len(text) + len(filler))
            text += filler
        else:
            text += piece.replace(MASK_PLACEHOLDER, tokenizer.mask_token)
    try:
        encoding = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        raise PeftkitError(
            f"{type(tokenizer).__name__} cannot return character offsets; load a fast tokenizer "
            "(AutoTokenizer.from_pretrained(path, use_fast=True))."
        ) from None
    owners = [
        next((slot for slot, (lo, hi) in spans.items() if end > start and lo <= start and end <= hi), None)
        for start, end in encoding["offset_mapping"]
    ]
    keep = [True] * len(owners)
    for _ in range(len(owners) - max_length):  # drop the last token of the longest sentence
        counts = {slot: sum(k and o == slot for k, o in zip(keep, owners)) for slot in spans}
        longest = max(counts, key=counts.get)
        if counts[longest] == 0:
            raise DataError(f"max_length={max_length} is shorter than the template {template!r} alone.")
        keep[max(i for i, (k, o) in enumerate(zip(keep, owners)) if k and o == longest)] = False
    example = {
        name: torch.tensor([[v for v, k in zip(values, keep) if k]])
        for name, values in encoding.items()
        if name in ("input_ids", "attention_mask", "token_type_ids")
    }
    mask_positions = (example["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    if len(mask_positions) != 1:
        raise DataError(
            f"the prompt for {sentence[:40]!r} holds {len(mask_positions)} {tokenizer.mask_token} tokens, "
            "not one; remove mask tokens from the text."
        )
    example["mask_position"] = mask_positions
    return example


def encode_causal_prompt(tokenizer, template: str, sentence: str, sentence2: str | None = None, *, max_length: int = 128) -> Example:
    """The ICL template (``IclConfig.template``, e.g. "Text: {text}\nCategory: {label}") filled up to
    {label}, with ``mask_position`` = its last token, where a causal LM predicts the label word.

    Tokens are dropped from the end of the longer text until the prompt fits ``max_length``.
    """
    from peftkit.methods.icl import query_token_ids, start_token_ids, template_pieces

    pieces = template_pieces(template)
    has_pair = any(field == "text_pair" for _, field in pieces)
    if has_pair != (sentence2 is not None):
        raise DataError(
            f"template {template!r} and data disagree on sentence pairs: "
            f"{'the data has no second sentence' if sentence2 is None else 'the template has no {text_pair} slot'}."
        )
    texts = {"text": tokenizer(sentence, add_special_tokens=False)["input_ids"]}
    if has_pair:
        texts["text_pair"] = tokenizer(sentence2, add_special_tokens=False)["input_ids"]
    start = start_token_ids(tokenizer)
    fixed = len(start) + len(query_token_ids(tokenizer, pieces, {field: [] for field in texts}))
    if fixed >= max_length:
        raise DataError(f"max_length={max_length} is shorter than the template {template!r} alone.")
    while sum(map(len, texts.values())) > max_length - fixed:
        longest = max(texts, key=lambda field: len(texts[field]))
        texts[longest] = texts[longest][:-1]
    ids = start + query_token_ids(tokenizer, pieces, texts)
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "mask_position": torch.tensor([len(ids) - 1]),
    }


def causal_label_word_ids(tokenizer, template: str, label_words: Sequence[str]) -> list[int]:
    """The first token of each label word as ICL tokenizes it after ``template``; they must differ."""
    from peftkit.methods.icl import label_prefix, template_pieces, verbalizer_token_ids

    first = [tokens[0] for tokens in verbalizer_token_ids(tokenizer, label_words, prefix=label_prefix(template_pieces(template)))]
    if len(set(first)) != len(first):
        raise PeftkitError(
            f"label words {list(label_words)} start with the same token ({tokenizer.convert_ids_to_tokens(first)}), "
            "so their next-token logits cannot tell them apart; choose label words that begin differently."
        )
    return first


def encode_classification(tokenizer, sentence: str, sentence2: str | None = None, *, max_length: int = 128) -> Example:
    """The standard [CLS] ... [SEP] input of a sequence-classification model."""
    encoding = tokenizer(sentence, sentence2, truncation=True, max_length=max_length, return_tensors="pt")
    return {name: tensor for name, tensor in encoding.items() if name in ("input_ids", "attention_mask", "token_type_ids")}


def collate_examples(examples: Sequence[Example], pad_token_id: int) -> Example:
    """Right-pad one-example inputs into a batch (the [MASK] positions stay valid)."""
    length = max(example["input_ids"].shape[1] for example in examples)
    batch: dict[str, list[torch.Tensor]] = {}
    for example in examples:
        for name, tensor in example.items():
            if name == "mask_position":
                batch.setdefault(name, []).append(tensor)
                continue
            pad = pad_token_id if name == "input_ids" else 0
            batch.setdefault(name, []).append(nn.functional.pad(tensor, (0, length - tensor.shape[1]), value=pad))
    return {name: torch.cat(tensors) for name, tensors in batch.items()}


def _two_logits_to_one(logits: torch.Tensor, binary: bool) -> torch.Tensor:
    # Binary tasks: f = logit(positive) - logit(negative), fitted against labels ±1.
    return (logits[:, 1] - logits[:, 0]).unsqueeze(-1) if binary else logits


def output_embeddings(model: nn.Module) -> nn.Module:
    """The vocabulary projection of a masked LM, also inside a peftkit/PEFT wrapper."""
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        projection = getter() if callable(getter) else None
        if isinstance(projection, nn.Module):
            return projection
    raise PeftkitError(
        f"{type(model).__name__} has no vocabulary projection (get_output_embeddings); the prompt "
        "formulation needs a masked LM, e.g. AutoModelForMaskedLM.from_pretrained(path)."
    )


class PromptOutput(nn.Module):
    """f(x) = the label words' logits at [MASK] from the masked-LM head (binary: their difference)."""

    def __init__(self, model: nn.Module, label_word_ids: Sequence[int], binary: bool = False):
        super().__init__()
        if binary and len(label_word_ids) != 2:
            raise PeftkitError(f"a binary output needs two label words, got {len(label_word_ids)}.")
        self.model = model
        self.binary = binary
        self.register_buffer("label_word_ids", torch.tensor(list(label_word_ids)), persistent=False)

    def forward(self, mask_position: torch.Tensor, **inputs) -> torch.Tensor:
        rows = torch.arange(mask_position.shape[0])

        def project_mask_only(module, args):
            # Only the [MASK] position reaches the 30k-word projection: the logits of the other
            # positions are never used, and computing them would double the cost of a gradient.
            return (args[0][rows, mask_position],)

        hook = output_embeddings(self.model).register_forward_pre_hook(project_mask_only)
        try:
            vocabulary_logits = self.model(**inputs).logits  # [batch, vocab]
        finally:
            hook.remove()
        return _two_logits_to_one(vocabulary_logits[:, self.label_word_ids], self.binary)


class ClassifierOutput(nn.Module):
    """f(x) = the sequence-classification head's logits (binary: their difference)."""

    def __init__(self, model: nn.Module, binary: bool = False):
        super().__init__()
        self.model = model
        self.binary = binary

    def forward(self, **inputs) -> torch.Tensor:
        inputs.pop("mask_position", None)
        return _two_logits_to_one(self.model(**inputs).logits, self.binary)


def score_layer(model: nn.Module) -> nn.Linear:
    """The last linear layer of a classification head: the one producing the logits."""
    num_labels = model.config.num_labels
    layers = [
        module
        for name in head_module_names(model)
        for module in getattr(model, name).modules()
        if isinstance(module, nn.Linear) and module.out_features == num_labels
    ]
    if not layers:
        raise PeftkitError(
            f"cannot find the layer producing the {num_labels} logits of {type(model).__name__}; "
            "load it with AutoModelForSequenceClassification.from_pretrained(path, num_labels=N)."
        )
    return layers[-1]


@torch.no_grad()
def linear_probe_head(model: nn.Module, examples: Sequence[Example], labels: Sequence[int], pad_token_id: int,
                      batch_size: int = 16) -> float:
    """Set the classification head's last layer to logistic regression on its frozen inputs.

    Returns the probe's training accuracy. Binary heads get [-w/2, w/2] so that the logit
    difference equals the probe's margin, as in the official code.
    """
    from sklearn.linear_model import LogisticRegression

    layer = score_layer(model)
    features: list[torch.Tensor] = []
    hook = layer.register_forward_pre_hook(lambda module, args: features.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            model(**collate_examples(examples[start : start + batch_size], pad_token_id))
    finally:
        hook.remove()
        model.train(was_training)
    inputs, targets = torch.cat(features).double().numpy(), np.asarray(labels)
    probe = LogisticRegression(max_iter=5000).fit(inputs, targets)
    weight = torch.as_tensor(probe.coef_, dtype=layer.weight.dtype)
    bias = torch.as_tensor(probe.intercept_, dtype=layer.weight.dtype)
    if layer.out_features == 2 and weight.shape[0] == 1:
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    if weight.shape != layer.weight.shape:
        raise DataError(
            f"the probe learned {weight.shape[0]} classes but the head has {layer.out_features}; "
            "every class needs at least one training example."
        )
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)
    return float(probe.score(inputs, targets))

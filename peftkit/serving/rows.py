"""One input row in, one answer out: the text ↔ tokens ↔ labels steps the server and `peftkit predict` share.

A text-classification row is ``tokenizer(text, text_pair)``; a token-classification row is the
text split on whitespace into words (each remembering its character span) and tokenized with
``is_split_into_words=True``, exactly as training encoded it (peftkit.data.token_classification),
so the model sees what it was trained on. Answers are probabilities (softmax of the logits):
a label and its score per row, or per word a tag and its score plus the entities those tags
spell, with character offsets into the text the client sent.

Policy for texts longer than the model reads (``max_length`` tokens): refused with
TextTooLongError unless the caller asked for truncation, in which case the row is cut to
``max_length`` tokens (pairs: longest first) and the answer says ``truncated: true``. A silent
cut would answer for a text nobody sent.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import seqeval.metrics.sequence_labeling  # noqa: F401  (decode_entities imports it on first use)
import torch

# Imported here, not on first use: a server's first token-classification adapter would
# otherwise pull in datasets/seqeval mid-run and look like it cost 100 MB of memory.
from peftkit.data.token_classification import decode_entities, require_fast_tokenizer, word_predictions  # noqa: F401
from peftkit.errors import RequestError

TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
SERVED_KINDS = (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a client needs to know about a served task (GET /tasks)."""

    name: str
    kind: str  # text-classification or token-classification
    label_names: tuple[str, ...]
    takes_pairs: bool  # trained on (text, text_pair); single-text tasks refuse a pair
    method: str  # "pasta", "lora", ...
    adapter_bytes: int  # size of the files the task needs on disk (loading.ADAPTER_FILES)


@dataclasses.dataclass
class EncodedRow:
    """A tokenized row and what is needed to turn its logits back into words."""

    features: dict[str, list[int]]  # input_ids, attention_mask (, token_type_ids), unpadded
    text: str
    truncated: bool
    word_spans: list[tuple[int, int]] | None = None  # token tasks: (start, end) characters of each word
    word_ids: list[int | None] | None = None  # token tasks: the word of each token (None = special)


def model_max_length(tokenizer, model_config) -> int:
    """The most tokens a row may have: the tokenizer's limit, capped by the position embeddings."""
    limits = [getattr(model_config, "max_position_embeddings", None)]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit is not None and tokenizer_limit < 1_000_000:  # "no limit" is stored as ~1e30
        limits.append(tokenizer_limit)
    limits = [limit for limit in limits if isinstance(limit, int) and limit > 0]
    return min(limits) if limits else 512


@dataclasses.dataclass(frozen=True)
class Fields:
    """A row's fields as the caller's user writes them, so that a refusal names what they type and
    how they give it: JSON keys sent to the server (the defaults), flags passed to ``peftkit predict``."""

    text: str = '"text"'
    text_pair: str = '"text_pair"'
    truncate: str = '"truncate": true'
    verb: str = "send"


PREDICT_FLAGS = Fields(text="--text", text_pair="--text-pair", truncate="--truncate", verb="pass")


def check_text_pair(task: str, takes_pairs: bool, has_pair: bool, *, fields: Fields = Fields()) -> None:
    """RequestError (422, missing_text_pair / unexpected_text_pair) unless a pair comes exactly when the
    task was trained on pairs: a model fed one text where it learnt two (or the reverse) answers
    without complaint, and wrongly."""
    if has_pair and not takes_pairs:
        raise RequestError(
            f"task {task!r} classifies single texts, but a text_pair was given: drop {fields.text_pair} and "
            f"{fields.verb} only {fields.text} (pairs go to tasks trained on pairs).", code="unexpected_text_pair",
        )
    if takes_pairs and not has_pair:
        raise RequestError(
            f"task {task!r} classifies pairs of texts, but no text_pair was given: add {fields.text_pair} beside {fields.text}.",
            code="missing_text_pair",
        )


def encode_row(
    tokenizer, spec: TaskSpec, text: Any, text_pair: Any = None, *, max_length: int, truncate: bool = False,
    fields: Fields = Fields(),
) -> EncodedRow:
    """Tokenize one row for ``spec``'s task.

    Raises RequestError (status 422) for a non-string or empty text, a pair sent to a
    single-text task or a pair missing for a pair task, and (status 422, code text_too_long) for a
    row over ``max_length`` tokens when ``truncate`` is false. The messages name ``fields`` as the
    caller's user writes them."""
    for field, value, optional in ((fields.text, text, False), (fields.text_pair, text_pair, True)):
        if value is None and optional:
            continue
        if value is not None and not isinstance(value, str):
            raise RequestError(
                f"{field} must be a string, got {type(value).__name__}: {fields.verb} it as a string.", code="invalid_text"
            )
        if value is None or not value.strip():  # None: JSON null, or an empty cell of a file
            raise RequestError(f"{field} is empty: {fields.verb} the text to classify (at least one non-space character).",
                               code="empty_text")
    check_text_pair(spec.name, spec.takes_pairs, text_pair is not None, fields=fields)

    if spec.kind == TOKEN_CLASSIFICATION:
        matches = list(re.finditer(r"\S+", text))
        words = [match.group() for match in matches]
        encoding = tokenizer(words, is_split_into_words=True, truncation=False)
        word_spans = [match.span() for match in matches]
    else:
        encoding = tokenizer(text, text_pair, truncation=False)
        word_spans = None
    num_tokens = len(encoding["input_ids"])
    truncated = num_tokens > max_length
    if truncated:
        if not truncate:
            raise RequestError(
                f"the text is {num_tokens} tokens long and this model reads at most {max_length}: shorten it, "
                f"or {fields.verb} {fields.truncate} to classify only its first tokens.", code="text_too_long",
            )
        if spec.kind == TOKEN_CLASSIFICATION:
            encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        else:
            encoding = tokenizer(text, text_pair, truncation="longest_first", max_length=max_length)
    features = {key: list(values) for key, values in encoding.items() if key in ("input_ids", "attention_mask", "token_type_ids")}
    word_ids = encoding.word_ids() if spec.kind == TOKEN_CLASSIFICATION else None
    return EncodedRow(features, text, truncated, word_spans, word_ids)


def pad_rows(tokenizer, rows: list[EncodedRow], device: torch.device) -> dict[str, torch.Tensor]:
    """The rows padded into one batch (the tokenizer's pad id and side) on ``device``."""
    batch = tokenizer.pad([row.features for row in rows], return_tensors="pt")
    return {key: value.to(device) for key, value in batch.items()}


def answer_row(spec: TaskSpec, logits: torch.Tensor, row: EncodedRow) -> dict[str, Any]:
    """The JSON answer for one row from its logits.

    ``logits``: (num_labels,) for text classification; (tokens, num_labels) over the row's own
    tokens (no padding) for token classification. Scores are softmax probabilities."""
    probabilities = logits.float().softmax(-1).cpu()
    if spec.kind != TOKEN_CLASSIFICATION:
        best = int(probabilities.argmax())
        return {
            "label": spec.label_names[best],
            "score": float(probabilities[best]),
            "probabilities": {name: float(p) for name, p in zip(spec.label_names, probabilities.tolist())},
            "truncated": row.truncated,
        }
    scores, predicted = probabilities.max(-1)
    num_words = len(row.word_spans)
    tag_of_word = word_predictions(row.word_ids, predicted.tolist(), num_words)
    first_token = word_predictions(row.word_ids, range(len(row.word_ids)), num_words)  # each word's first token
    words = []
    for index, (start, end) in enumerate(row.word_spans):
        if tag_of_word[index] is None:  # cut off by truncation: no prediction
            continue
        words.append({
            "text": row.text[start:end], "start": start, "end": end,
            "label": spec.label_names[tag_of_word[index]], "score": float(scores[first_token[index]]),
        })
    tags = [word["label"] for word in words]
    entities = []
    for entity_type, first, last, _ in decode_entities([word["text"] for word in words], tags):
        start, end = words[first]["start"], words[last - 1]["end"]
        entities.append({
            "type": entity_type, "text": row.text[start:end], "start": start, "end": end,
            "score": sum(word["score"] for word in words[first:last]) / (last - first),
        })
    return {"entities": entities, "words": words, "truncated": row.truncated}

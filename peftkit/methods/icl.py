"""In-context learning (ICL): classify by prompting a frozen causal LM with k labelled examples.

Nothing is trained (0 parameters). For a query x, the prompt is k demonstrations from the
training split followed by the query, each written with a template, and every label c is
scored by the causal LM's log-likelihood of its verbalizer (the label word, summed over its
tokens) as the continuation:

    score(c | x) = Σ_j log p(v_c[j] | demonstrations, template(x), v_c[<j])

and the prediction is argmax_c score. Brown et al. (2020) score this way; Zhao et al. (2021,
"Calibrate Before Use") showed the label bias it carries (majority label, recency, common
tokens) and removed it with *contextual calibration*: the label probabilities p_cf that the
same prompt gives for content-free queries ("N/A", "", "[MASK]") are divided out,
q(c | x) ∝ p(c | x) / p_cf(c). That is ``IclConfig.calibrate``.

Demonstrations: k seeded, class-balanced examples of the training split (classes taken in
turn in a seeded order, so k < number of classes does not always favour the first classes),
presented in a seeded order. A demonstration whose text equals the query is never shown with
it: it is replaced by the next candidate of its class (or dropped if there is none).

Long texts are truncated so that the whole prompt fits the model's context: each text gets at
most ``max_text_tokens`` tokens, fewer if k + 1 of them would not fit; ``truncation`` counts
what was cut. The verbalizer scoring (``verbalizer_token_ids``, ``label_log_likelihoods``) is
the one piece of code the empirical-NTK prompt formulation on causal LMs shares.

The shared demonstration prefix is run once and its key/value cache reused for every query
(cropped back after each), so a query costs only its own tokens.
"""

from __future__ import annotations

import dataclasses
import inspect
import string
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from peftkit.errors import DataError, MethodConfigError
from peftkit.methods.base import MethodConfig

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")  # Zhao et al. 2021, the three they average
TEMPLATE_FIELDS = ("text", "text_pair", "label")


@dataclasses.dataclass
class IclConfig(MethodConfig):
    """In-context learning on a causal LM; every field has a default."""

    method_name: ClassVar[str] = "icl"

    num_demonstrations: int = 4
    """k, the labelled training examples shown before the query (0 = zero-shot)."""
    template: str = "Text: {text}\nCategory: {label}"
    """One example: {text} (and {text_pair} for pairs), ending with {label}; the space before {label} goes with the label word."""
    separator: str = "\n\n"
    """Between demonstrations, and between the last one and the query."""
    label_words: list[str] | None = None
    """The verbalizer, one word per label in label order; None = the task's label names."""
    calibrate: bool = False
    """Contextual calibration (Zhao et al. 2021): divide out the label probabilities of content-free queries."""
    max_text_tokens: int = 128
    """Tokens kept per text (demonstration or query); fewer when k + 1 texts would not fit the context."""
    max_prompt_tokens: int | None = None
    """The context to fit in; None = the model's own (max_position_embeddings)."""
    seed: int = 0
    """Seeds which demonstrations are drawn and their order."""

    def check(self) -> None:
        if self.num_demonstrations < 0:
            raise MethodConfigError(f"num_demonstrations must be ≥ 0, not {self.num_demonstrations}.")
        if self.max_text_tokens < 1:
            raise MethodConfigError(f"max_text_tokens must be ≥ 1, not {self.max_text_tokens}.")
        template_pieces(self.template)


def template_pieces(template: str) -> list[tuple[str, str | None]]:
    """``template`` as (literal, field) pairs; it must hold {text} and end with {label}."""
    try:
        pieces = [(literal, field) for literal, field, _, _ in string.Formatter().parse(template)]
    except ValueError as error:
        raise MethodConfigError(f"the ICL template {template!r} does not parse ({error}); write e.g. 'Text: {{text}}\\nCategory: {{label}}'.") from None
    fields = [field for _, field in pieces if field is not None]
    unknown = sorted(set(fields) - set(TEMPLATE_FIELDS))
    if unknown or "text" not in fields or fields[-1:] != ["label"] or pieces[-1][1] != "label" or fields.count("label") != 1:
        raise MethodConfigError(
            f"the ICL template {template!r} must contain {{text}} (and optionally {{text_pair}}) and end with "
            f"{{label}}, with no other fields{' (unknown: ' + ', '.join(unknown) + ')' if unknown else ''}; "
            "e.g. 'Text: {text}\\nCategory: {label}'."
        )
    return pieces


def label_prefix(pieces: list[tuple[str, str | None]]) -> str:
    """What precedes the label word: the spaces before {label} (a single space if there are none)."""
    literal = pieces[-1][0]
    return literal[len(literal.rstrip(" ")):] or " "


def start_token_ids(tokenizer) -> list[int]:
    """[BOS] if the tokenizer starts its inputs with one (Llama's), else nothing (GPT-2's, SmolLM2's)."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def query_token_ids(tokenizer, pieces: list[tuple[str, str | None]], texts: dict[str, list[int]]) -> list[int]:
    """The template up to {label}, its literal pieces tokenized apart from the (already tokenized,
    truncated) texts: the same token sequence whether the prompt is scored, cached or differentiated."""
    ids: list[int] = []
    for literal, field in pieces:
        literal = literal.rstrip(" ") if field == "label" else literal
        ids += tokenizer(literal, add_special_tokens=False)["input_ids"] if literal else []
        if field in ("text", "text_pair"):
            ids += texts[field]
    return ids


def default_label_words(label_names: Sequence[str]) -> list[str]:
    """Label names as words: "sci_tech" → "sci tech"."""
    return [str(name).replace("_", " ").replace("-", " ").strip() for name in label_names]


# -- verbalizer scoring (shared with the empirical-NTK prompt formulation) -------------------------


def verbalizer_token_ids(tokenizer, label_words: Sequence[str], prefix: str = " ") -> list[list[int]]:
    """Each label word's token ids as it follows the prompt (``prefix`` + word, no special tokens).

    Raises MethodConfigError if a word tokenizes to nothing or two labels share their tokens.
    """
    ids = [tokenizer(prefix + word, add_special_tokens=False)["input_ids"] for word in label_words]
    empty = [word for word, tokens in zip(label_words, ids) if not tokens]
    if empty:
        raise MethodConfigError(f"label word(s) {empty} tokenize to nothing; give other label_words.")
    seen: dict[tuple[int, ...], str] = {}
    for word, tokens in zip(label_words, ids):
        if tuple(tokens) in seen:
            raise MethodConfigError(
                f"label words {seen[tuple(tokens)]!r} and {word!r} have the same tokens {tokens}; "
                "give distinct label_words."
            )
        seen[tuple(tokens)] = word
    return ids


def _forward_logits(model: nn.Module, input_ids: list[int], cache) -> torch.Tensor:
    """Logits (len, vocab) in float32 for ``input_ids`` continuing ``cache`` (None = from scratch)."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    if cache is None:
        return model(input_ids=ids, use_cache=False).logits[0].float()
    # transformers ≥ 5.24 names the argument ``cache``; earlier 5.x ``past_key_values``.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return model(input_ids=ids, use_cache=True, **{name: cache}).logits[0].float()


@torch.no_grad()
def label_log_likelihoods(model: nn.Module, prompts: Sequence[Sequence[int]], verbalizers: Sequence[Sequence[int]],
                          prefix: Sequence[int] = ()) -> torch.Tensor:
    """score[i, c] = Σ_j log p(verbalizers[c][j] | prefix + prompts[i] + verbalizers[c][:j]) under a causal LM.

    Args:
        model: any ``AutoModelForCausalLM`` (logits over the vocabulary at every position).
        prompts: N token-id lists; each non-empty unless ``prefix`` is.
        verbalizers: C token-id lists (``verbalizer_token_ids``).
        prefix: tokens shared by every prompt (the demonstrations), run once and cached.
    Returns:
        (N, C) float64 log-likelihoods, summed over each verbalizer's tokens.

    Labels whose verbalizers differ only in their last token share one forward; with
    single-token label words a prompt costs exactly one forward.
    """
    cache = None
    prefix = list(prefix)
    if prefix:
        from transformers import DynamicCache

        cache = DynamicCache()
        prefix_logits = _forward_logits(model, prefix, cache)[-1]
    scores = torch.zeros(len(prompts), len(verbalizers), dtype=torch.float64)
    for row, prompt in enumerate(prompts):
        prompt = list(prompt)
        if not prompt and not prefix:
            raise DataError("an empty prompt with no prefix cannot be scored; the template must put text before the label.")
        by_sequence: dict[tuple[int, ...], list[int]] = {}
        for label, tokens in enumerate(verbalizers):
            by_sequence.setdefault(tuple(prompt + list(tokens[:-1])), []).append(label)
        for sequence, labels in by_sequence.items():
            if sequence:
                logits = _forward_logits(model, list(sequence), cache)
                if cache is not None:
                    cache.crop(-len(sequence))  # back to the shared prefix for the next sequence
                if prefix:
                    logits = torch.cat([prefix_logits[None], logits])  # position of the prefix's last token predicts the first
            else:
                logits = prefix_logits[None]
            log_probs = logits.log_softmax(-1).double()
            start = len(prompt) - (0 if prefix else 1)  # the row of ``log_probs`` that predicts the first verbalizer token
            for label in labels:
                tokens = verbalizers[label]
                scores[row, label] = sum(log_probs[start + j, token] for j, token in enumerate(tokens))
    return scores


def content_free_probabilities(content_free_scores: torch.Tensor) -> torch.Tensor:
    """p_cf (C,): the mean over M content-free queries of their label distributions ((M, C) log-likelihoods in)."""
    return content_free_scores.log_softmax(-1).exp().mean(0)


def calibrated_log_probabilities(scores: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """Contextual calibration (Zhao et al. 2021): log q(c|x) = log p(c|x) − log p_cf(c), renormalised.

    scores (N, C) are label log-likelihoods; content_free is p_cf, (C,) or one row per query (N, C).
    """
    return (scores.log_softmax(-1) - content_free.log()).log_softmax(-1)


# -- demonstrations --------------------------------------------------------------------------------


def balanced_order(labels: Sequence[int], seed: int) -> list[int]:
    """Every index of ``labels``, ordered so that any first k are seeded and class-balanced:
    a seeded shuffle within each class, classes taken in turn in a seeded class order."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index in rng.permutation(len(labels)).tolist():
        by_class.setdefault(int(labels[index]), []).append(index)
    classes = [sorted(by_class)[i] for i in rng.permutation(len(by_class))]
    order: list[int] = []
    while any(by_class[c] for c in classes):
        for c in classes:
            if by_class[c]:
                order.append(by_class[c].pop(0))
    return order


def select_demonstrations(labels: Sequence[int], k: int, seed: int) -> list[int]:
    """k seeded, class-balanced training indices, in a seeded presentation order."""
    chosen = balanced_order(labels, seed)[:k]
    return [chosen[i] for i in np.random.default_rng(seed + 1).permutation(len(chosen))]


def demonstrations_without(query_text: str, demonstrations: Sequence[int], texts: Sequence[str], labels: Sequence[int],
                           reserve: Sequence[int]) -> list[int]:
    """``demonstrations`` with any whose text equals the query replaced by the first unused
    ``reserve`` index of the same class (dropped when there is none): the query is never its own example."""
    used = set(demonstrations)
    result = []
    for index in demonstrations:
        if texts[index].strip() != query_text.strip():
            result.append(index)
            continue
        substitute = next(
            (r for r in reserve if r not in used and labels[r] == labels[index] and texts[r].strip() != query_text.strip()), None
        )
        if substitute is not None:
            used.add(substitute)
            result.append(substitute)
    return result


# -- the classifier --------------------------------------------------------------------------------


@dataclasses.dataclass
class Truncation:
    """What fitting the context cost: texts seen, texts cut, tokens before and after."""

    text_token_budget: int = 0
    texts: int = 0
    texts_truncated: int = 0
    tokens_before: int = 0
    tokens_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        kept = self.tokens_kept / self.tokens_before if self.tokens_before else 1.0
        return {**dataclasses.asdict(self), "fraction_truncated": self.texts_truncated / max(1, self.texts), "fraction_tokens_kept": kept}

    def summary(self) -> str:
        report = self.to_dict()
        return (
            f"{self.texts_truncated} of {self.texts} texts truncated to {self.text_token_budget} tokens "
            f"({100 * report['fraction_tokens_kept']:.0f}% of their tokens kept)"
        )


class InContextClassifier:
    """A frozen causal LM + tokenizer + a pool of labelled examples, classifying by ICL.

    ``pool_texts``/``pool_labels`` (and ``pool_pairs`` for pairs) are the training split (or
    what a saved run kept of it); ``demonstrations`` and ``reserve`` index into them.
    ``log_probabilities(texts)`` → (N, C) label log-probabilities (calibrated if configured).
    """

    def __init__(self, model: nn.Module, tokenizer, config: IclConfig, label_words: Sequence[str],
                 pool_texts: Sequence[str], pool_labels: Sequence[int], pool_pairs: Sequence[str] | None = None,
                 demonstrations: Sequence[int] | None = None, reserve: Sequence[int] | None = None):
        config.check()
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.label_words = list(label_words)
        self.pool_texts, self.pool_labels = list(pool_texts), [int(label) for label in pool_labels]
        self.pool_pairs = list(pool_pairs) if pool_pairs is not None else None
        self.pieces = template_pieces(config.template)
        self.is_pair = any(field == "text_pair" for _, field in self.pieces)
        if self.is_pair and self.pool_pairs is None:
            raise MethodConfigError("the template has {text_pair} but the task has no second text; drop {text_pair} from the template.")
        if demonstrations is None:
            order = balanced_order(self.pool_labels, config.seed)
            demonstrations = select_demonstrations(self.pool_labels, config.num_demonstrations, config.seed)
            reserve = [index for index in order if index not in set(demonstrations)][: 2 * len(set(self.pool_labels))]
        if len(demonstrations) < config.num_demonstrations:
            raise DataError(
                f"{config.num_demonstrations} demonstrations asked for but the training split has {len(demonstrations)}; "
                "lower num_demonstrations."
            )
        self.demonstrations, self.reserve = list(demonstrations), list(reserve or [])
        self.verbalizers = verbalizer_token_ids(tokenizer, self.label_words, prefix=label_prefix(self.pieces))
        self.start_ids = start_token_ids(tokenizer)
        self.separator_ids = self._ids(config.separator)
        self.text_token_budget = self._text_budget()
        self.truncation = Truncation(text_token_budget=self.text_token_budget)
        self._prefix_cache: dict[tuple[int, ...], tuple[list[int], torch.Tensor | None]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def context_size(self) -> int:
        if self.config.max_prompt_tokens is not None:
            return self.config.max_prompt_tokens
        model_config = getattr(self.model, "config", None)
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(model_config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    def _text_budget(self) -> int:
        """Tokens per text so that k demonstrations + the query + the longest label word fit."""
        k = self.config.num_demonstrations
        literal = sum(len(self._ids(text)) for text, _ in self.pieces)
        longest_label = max(len(tokens) for tokens in self.verbalizers)
        fixed = len(self.start_ids) + (k + 1) * literal + k * (longest_label + len(self.separator_ids)) + longest_label
        texts_per_example = 2 if self.is_pair else 1
        budget = min(self.config.max_text_tokens, (self.context_size() - fixed) // ((k + 1) * texts_per_example))
        if budget < 1:
            raise MethodConfigError(
                f"{k} demonstrations do not fit in a context of {self.context_size()} tokens with this template; "
                "lower num_demonstrations or shorten the template."
            )
        return budget

    def _text_ids(self, text: str, count: bool = True) -> list[int]:
        ids = self._ids(text)
        if len(ids) > self.text_token_budget:
            ids = ids[: self.text_token_budget]
        if count:
            self._count_truncation(len(self._ids(text)), len(ids))
        return ids

    def _count_truncation(self, before: int, kept: int) -> None:
        self.truncation.texts += 1
        self.truncation.tokens_before += before
        self.truncation.texts_truncated += int(kept < before)
        self.truncation.tokens_kept += kept

    def example_ids(self, text: str, pair: str | None = None, label: int | None = None, count: bool = True) -> list[int]:
        """The template filled for one example, up to {label} (query) or through the label word
        (demonstration); ``count`` adds its texts to the truncation report."""
        texts = {"text": self._text_ids(text, count)}
        if self.is_pair:
            texts["text_pair"] = self._text_ids(pair or "", count)
        ids = query_token_ids(self.tokenizer, self.pieces, texts)
        if label is not None:
            ids += self.verbalizers[label] + self.separator_ids
        return ids

    def prefix_ids(self, demonstrations: Sequence[int]) -> list[int]:
        ids = list(self.start_ids)
        for index in demonstrations:
            pair = self.pool_pairs[index] if self.pool_pairs is not None else None
            ids += self.example_ids(self.pool_texts[index], pair, self.pool_labels[index])
        return ids

    def _prefix_and_content_free(self, demonstrations: tuple[int, ...]) -> tuple[list[int], torch.Tensor]:
        if demonstrations not in self._prefix_cache:
            prefix = self.prefix_ids(demonstrations)
            # Content-free queries go through the same template (and {text_pair}) as a real one.
            prompts = [self.example_ids(text, text if self.is_pair else None, count=False) for text in CONTENT_FREE_INPUTS]
            content_free = content_free_probabilities(label_log_likelihoods(self.model, prompts, self.verbalizers, prefix))
            self._prefix_cache[demonstrations] = (prefix, content_free)
        return self._prefix_cache[demonstrations]

    def demonstrations_for(self, text: str) -> tuple[int, ...]:
        return tuple(demonstrations_without(text, self.demonstrations, self.pool_texts, self.pool_labels, self.reserve))

    def label_scores(self, texts: Sequence[str], pairs: Sequence[str] | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, p_cf): (N, C) label log-likelihoods of the queries and (N, C) the content-free
        label probabilities under each query's demonstrations (for calibration)."""
        from tqdm.auto import tqdm

        scores, content_free = [], []
        for index in tqdm(range(len(texts)), desc="in-context", unit="query", disable=not progress):
            prefix, row_content_free = self._prefix_and_content_free(self.demonstrations_for(texts[index]))
            prompt = self.example_ids(texts[index], pairs[index] if pairs is not None else None)
            scores.append(label_log_likelihoods(self.model, [prompt], self.verbalizers, prefix))
            content_free.append(row_content_free[None])
        if not scores:
            empty = torch.zeros(0, len(self.verbalizers), dtype=torch.float64)
            return empty, empty
        return torch.cat(scores), torch.cat(content_free)

    def log_probabilities(self, texts: Sequence[str], pairs: Sequence[str] | None = None, progress: bool = False,
                          calibrate: bool | None = None) -> torch.Tensor:
        """(N, C) label log-probabilities of the queries, calibrated when ``calibrate`` (default: the config's)."""
        scores, content_free = self.label_scores(texts, pairs, progress)
        if self.config.calibrate if calibrate is None else calibrate:
            return calibrated_log_probabilities(scores, content_free)
        return scores.log_softmax(-1)

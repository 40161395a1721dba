"""Tiny random models of every supported text family, built from configs (offline, fast)."""

from __future__ import annotations

import os

import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLS_ID, SEP_ID, PAD_ID = 2, 3, 0

FAMILY_CONFIGS = {
    "bert": lambda: BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    ),
    "roberta": lambda: RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=70, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ),
    "distilbert": lambda: DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64),
    "electra": lambda: ElectraConfig(
        vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    ),
    "deberta-v2": lambda: DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
    ),
}
FAMILIES = sorted(FAMILY_CONFIGS)


def make_tiny_model(family: str = "bert", *, num_labels: int = 3, seed: int = 0, token_classification: bool = False):
    """A tiny random task model of ``family`` in eval mode (seeded, so two calls are identical)."""
    config = FAMILY_CONFIGS[family]()
    config.num_labels = num_labels
    torch.manual_seed(seed)
    auto = AutoModelForTokenClassification if token_classification else AutoModelForSequenceClassification
    return auto.from_config(config).eval()


def special_ids(family: str) -> list[int]:
    return [0, 2] if family == "roberta" else [CLS_ID, SEP_ID]


def make_batch(family: str = "bert") -> dict[str, torch.Tensor]:
    """Two rows of different lengths, right-padded: a pair and a single sentence."""
    cls, sep = special_ids(family)
    pad = 1 if family == "roberta" else PAD_ID
    input_ids = torch.tensor(
        [
            [cls, 10, 11, 12, sep, 20, 21, sep],
            [cls, 13, 14, sep, pad, pad, pad, pad],
        ]
    )
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad).long()}


def make_bert_tokenizer(directory):
    """A BertTokenizerFast over a small word vocabulary written to ``directory`` (no downloads)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        "the", "a", "movie", "was", "great", "terrible", "good", "bad", "plot", "actor",
        "john", "lives", "in", "london", "paris", "works", "at", "google", "##s", "##ing",
    ]
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    # transformers 5 ignores vocab_file= in the constructor; from_pretrained reads vocab.txt
    return BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)


def save_tiny_bert_checkpoint(directory, **config_overrides):
    """A tiny random BertModel and its word-level tokenizer saved in ``directory`` like a hub
    checkpoint, for runs that load a model by path (the CLI, subprocesses)."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, **config_overrides,
    )
    BertModel(config).save_pretrained(directory)
    make_bert_tokenizer(directory).save_pretrained(directory)
    return directory


# A ViT recipe small enough to pretrain in about a second on scikit-learn's 8x8 digits
# (fields of peftkit.training.pretrain.PretrainConfig).
TINY_VIT_PRETRAIN = dict(
    task="digits", image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32, max_train_examples=64, max_eval_examples=32, epochs=1, batch_size=16,
)


def save_tiny_vit_checkpoint(directory):
    """A tiny ViT pretrained on digits and saved with its image processor, like `peftkit pretrain --output`."""
    from peftkit.training.pretrain import PretrainConfig, pretrain_vit

    pretrain_vit(PretrainConfig(**TINY_VIT_PRETRAIN), directory)
    return directory


CAUSAL_LM_CORPUS = [
    "Text: the movie was great\nCategory: positive",
    "Text: a bad plot and a terrible actor\nCategory: negative",
    "Shares rose sharply after the merger; the match ended in a draw.",
]


def make_byte_level_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer (as GPT-2's and SmolLM2's) trained in memory on a few lines, so
    label words like " positive" may take one token or several; "<s>" is BOS, "</s>" EOS and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CAUSAL_LM_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def make_tiny_causal_lm(family: str = "llama", *, vocab_size: int = 300, max_positions: int = 256, seed: int = 0):
    """A tiny random causal LM (Llama or GPT-2) in eval mode, seeded."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=1)
    else:
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1, pad_token_id=1,
            initializer_range=0.2,
        )
    return AutoModelForCausalLM.from_config(config).eval()


def save_tiny_causal_lm(directory, family: str = "llama", **kwargs):
    """A tiny random causal LM and its byte-level tokenizer saved in ``directory`` like a hub checkpoint."""
    tokenizer = make_byte_level_tokenizer()
    make_tiny_causal_lm(family, vocab_size=len(tokenizer), **kwargs).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

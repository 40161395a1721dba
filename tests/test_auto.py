"""AutoPeftModel...from_pretrained(adapter_dir) finds its base; peftkit models in transformers pipelines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import peft
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    pipeline,
)

import peftkit
from peftkit.errors import AdapterMismatchError, BaseModelError
from tests.tiny_models import save_tiny_bert_checkpoint

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SENTIMENT = ["negative", "neutral", "positive"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SHAPES = ["circle", "square"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_bert_checkpoint(tmp_path_factory.mktemp("tiny-bert"))


def randomise_trainable(peft_model, seed: int = 0, scale: float = 1.0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.normal_(std=scale)


def save_text_adapter(model_dir, directory, token_classification: bool = False):
    """A PASTA adapter with a non-trivial table and head, saved with its task's labels."""
    labels = TAGS if token_classification else SENTIMENT
    auto = AutoModelForTokenClassification if token_classification else AutoModelForSequenceClassification
    base = auto.from_pretrained(model_dir, num_labels=len(labels))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    peft_model = peftkit.get_peft_model(base, peftkit.PastaConfig(num_special_tokens=2), tokenizer=tokenizer)
    randomise_trainable(peft_model, scale=2.0)
    kind = "token-classification" if token_classification else "text-classification"
    peft_model.task_info = {"kind": kind, "label_names": labels}
    peft_model.save_pretrained(directory)
    return directory


def test_auto_class_loads_the_recorded_base_with_the_adapters_labels(model_dir, tmp_path):
    adapter = save_text_adapter(model_dir, tmp_path / "adapter")
    model = peftkit.AutoPeftModelForSequenceClassification.from_pretrained(adapter)
    assert isinstance(model, peftkit.PeftModel) and not model.training
    assert model.config.id2label == dict(enumerate(SENTIMENT))
    reference = peftkit.PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3), adapter
    )
    inputs = AutoTokenizer.from_pretrained(model_dir)(["the movie was great", "a bad plot"], padding=True, return_tensors="pt")
    assert torch.equal(model(**inputs).logits, reference(**inputs).logits)
    # the plain AutoPeftModel builds the task model class the adapter recorded
    plain = peftkit.AutoPeftModel.from_pretrained(adapter)
    assert type(plain.base_model).__name__ == "BertForSequenceClassification"
    assert torch.equal(plain(**inputs).logits, reference(**inputs).logits)


def test_a_missing_base_is_a_clear_error_and_base_model_fixes_it(model_dir, tmp_path):
    moved = shutil.copytree(model_dir, tmp_path / "base")
    adapter = save_text_adapter(moved, tmp_path / "adapter")
    shutil.rmtree(moved)
    with pytest.raises(BaseModelError, match=rf"{moved}.*not here.*base_model="):
        peftkit.AutoPeftModelForSequenceClassification.from_pretrained(adapter)
    model = peftkit.AutoPeftModelForSequenceClassification.from_pretrained(adapter, base_model=model_dir)
    assert model.config.id2label[2] == "positive"


def test_the_wrong_auto_class_names_the_right_one(model_dir, tmp_path):
    adapter = save_text_adapter(model_dir, tmp_path / "adapter", token_classification=True)
    with pytest.raises(AdapterMismatchError, match="AutoPeftModelForTokenClassification"):
        peftkit.AutoPeftModelForSequenceClassification.from_pretrained(adapter)


def test_peft_lora_adapters_are_loaded_by_peft(model_dir, tmp_path):
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    lora = peftkit.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    randomise_trainable(lora)
    lora.save_pretrained(str(tmp_path / "lora"))
    model = peftkit.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "lora")
    assert isinstance(model, peft.PeftModelForSequenceClassification)
    inputs = AutoTokenizer.from_pretrained(model_dir)("great movie", return_tensors="pt")
    lora.eval()
    assert torch.allclose(model(**inputs).logits, lora(**inputs).logits)


def test_text_classification_pipeline_names_labels_and_matches_the_logits(model_dir, tmp_path):
    model = peftkit.AutoPeftModelForSequenceClassification.from_pretrained(save_text_adapter(model_dir, tmp_path / "a"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    text = "the actor was terrible"
    answer = classify(text, top_k=None)
    probabilities = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
    assert {item["label"] for item in answer} == set(SENTIMENT)
    for item in answer:
        assert item["score"] == pytest.approx(probabilities[SENTIMENT.index(item["label"])].item(), abs=1e-6)


def test_token_classification_pipeline_aggregates_entities_from_the_logits(model_dir, tmp_path):
    model = peftkit.AutoPeftModelForTokenClassification.from_pretrained(
        save_text_adapter(model_dir, tmp_path / "a", token_classification=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "john lives in london and paris"
    encoded = tokenizer(text, return_tensors="pt")
    probabilities = model(**encoded).logits.softmax(-1)[0, 1:-1]  # the words, without [CLS]/[SEP]
    predicted = [TAGS[i] for i in probabilities.argmax(-1).tolist()]
    scores = probabilities.max(-1).values

    tokens = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="none")(text)
    expected_tokens = [(w, tag, s.item()) for w, tag, s in zip(text.split(), predicted, scores) if tag != "O"]
    assert [(t["word"], t["entity"]) for t in tokens] == [(w, tag) for w, tag, _ in expected_tokens]
    assert [t["score"] for t in tokens] == pytest.approx([s for _, _, s in expected_tokens], abs=1e-6)

    entities = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")(text)
    assert entities, "the random head tags some words; pick another seed if this changes"
    assert all(entity["entity_group"] in {"PER", "LOC"} for entity in entities)
    # "simple" groups B-X/I-X runs of the tokens above and averages their scores
    assert sum(len(e["word"].split()) for e in entities) == len(expected_tokens)
    assert np.mean([e["score"] for e in entities for _ in e["word"].split()]) == pytest.approx(
        np.mean([s for _, _, s in expected_tokens]), abs=1e-5
    )


def test_image_classification_pipeline_with_a_vpt_adapter(tmp_path):
    torch.manual_seed(0)
    arch = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    ViTForImageClassification(ViTConfig(**arch)).save_pretrained(tmp_path / "vit")
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    processor.save_pretrained(tmp_path / "vit")
    base = ViTForImageClassification.from_pretrained(tmp_path / "vit", num_labels=2)
    vpt = peftkit.get_peft_model(base, peftkit.VptConfig(num_prompt_tokens=2))
    randomise_trainable(vpt, scale=2.0)
    vpt.task_info = {"kind": "image-classification", "label_names": SHAPES}
    vpt.save_pretrained(tmp_path / "adapter")

    model = peftkit.AutoPeftModelForImageClassification.from_pretrained(tmp_path / "adapter")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    answer = pipeline("image-classification", model=model, image_processor=processor)(image, top_k=2)
    probabilities = model(**processor(images=image, return_tensors="pt")).logits.softmax(-1)[0]
    assert {item["label"] for item in answer} == set(SHAPES)
    for item in answer:
        assert item["score"] == pytest.approx(probabilities[SHAPES.index(item["label"])].item(), abs=1e-6)


def test_an_adapter_saved_by_trainer_records_its_labels(model_dir, tmp_path):
    base = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=3, id2label=dict(enumerate(SENTIMENT)), label2id={n: i for i, n in enumerate(SENTIMENT)}
    )
    peftkit.get_peft_model(base, peftkit.LinearProbeConfig()).save_pretrained(tmp_path)  # no task_info set
    record = json.loads((tmp_path / "adapter_config.json").read_text())
    assert record["task"] == {"kind": "text-classification", "label_names": SENTIMENT}
    assert peftkit.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path).config.id2label[0] == "negative"


def test_base_model_keywords_reach_the_base_and_unknown_ones_raise(model_dir, tmp_path):
    adapter = save_text_adapter(model_dir, tmp_path / "adapter")
    for keywords in ({"dtype": torch.bfloat16}, {"torch_dtype": torch.bfloat16}):
        model = peftkit.AutoPeftModelForSequenceClassification.from_pretrained(adapter, **keywords)
        assert model.base_model.bert.embeddings.word_embeddings.weight.dtype == torch.bfloat16
        tables = list(model.adapter.parameters())
        assert tables and all(table.dtype == torch.float32 for table in tables)  # adapter tables stay fp32
    eager = peftkit.AutoPeftModel.from_pretrained(adapter, attn_implementation="eager")
    assert eager.base_model.config._attn_implementation == "eager"
    with pytest.raises(TypeError, match="bogus_kwarg"):
        peftkit.AutoPeftModelForSequenceClassification.from_pretrained(adapter, bogus_kwarg=1)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    with pytest.raises(TypeError, match="already loaded"):
        peftkit.AutoPeftModel.from_pretrained(adapter, base_model=base, dtype=torch.bfloat16)


def test_a_token_classification_adapter_on_a_sequence_classifier_names_its_class(model_dir, tmp_path):
    ner = save_text_adapter(model_dir, tmp_path / "ner", token_classification=True)
    model = peftkit.AutoPeftModelForSequenceClassification.from_pretrained(save_text_adapter(model_dir, tmp_path / "sentiment"))
    expected = "token-classification adapter, trained on a BertForTokenClassification.*AutoPeftModelForTokenClassification"
    with pytest.raises(AdapterMismatchError, match=expected) as caught:
        model.load_adapter(ner, adapter_name="ner")
    assert "another backbone" not in str(caught.value)
    with pytest.raises(AdapterMismatchError, match=expected):
        peftkit.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=5), ner)


@pytest.fixture
def transformers_log():
    """What transformers logs (its own logger does not propagate to the root, so caplog misses it)."""
    import logging

    from transformers.utils import logging as transformers_logging

    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_warning()  # the CLI, run by other tests in this process, turns it down
    logging.getLogger("transformers").addHandler(handler)
    yield records
    logging.getLogger("transformers").removeHandler(handler)
    transformers_logging.set_verbosity(verbosity)


def test_loading_an_adapter_does_not_report_the_head_it_restores(model_dir, tmp_path, transformers_log):
    adapter = save_text_adapter(model_dir, tmp_path / "adapter")
    transformers_log.clear()
    AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    assert "classifier.weight" in "".join(transformers_log)  # transformers reports the new head of a bare base...
    transformers_log.clear()
    peftkit.AutoPeftModelForSequenceClassification.from_pretrained(adapter)
    peftkit.AutoPeftModel.from_pretrained(adapter)
    assert "classifier" not in "".join(transformers_log)  # ...but not when the adapter restores it right after

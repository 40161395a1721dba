"""Mixed-task batches: one backbone pass, rows of different tasks, each row as if run alone."""

from __future__ import annotations

import functools
import json

import peft
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

import peftkit
from peftkit.errors import AdapterFileError, AdapterMismatchError, PeftkitError, SpecialTokenError
from peftkit.serving import MultiTaskModel
from tests.tiny_models import CLS_ID, FAMILIES, PAD_ID, SEP_ID, make_batch, make_tiny_model, special_ids

TOLERANCE = 1e-5

# name → (token classification?, num_labels, PastaConfig options, task info recorded in the file)
PASTA_TASKS = {
    "sentiment": (False, 2, {"num_special_tokens": 2}, {"kind": "text-classification", "label_names": ["neg", "pos"]}),
    # no task info: the head's label count is read from its tensors, the class given by the caller
    "topic": (False, 3, {"num_special_tokens": 3, "layers": [1]}, {}),
    "entities": (True, 5, {"num_special_tokens": 2}, {"kind": "token-classification", "label_names": list("OBIXY")}),
}
LORA_TASKS = {
    "lora_sentiment": (False, 2, {}),
    "lora_entities": (True, 4, {"task_type": "TOKEN_CLS"}),
}


def task_model(token_classification: bool, num_labels: int, seed: int = 0):
    """A task model whose backbone holds the shared checkpoint's weights, as from_pretrained would
    give (transformers draws other random weights for another task class, even with one seed)."""
    model = make_tiny_model("bert", num_labels=num_labels, token_classification=token_classification)
    weights = make_tiny_model("bert", seed=seed).bert.state_dict()
    model.bert.load_state_dict({k: v for k, v in weights.items() if k in model.bert.state_dict()})
    return model


def randomise_head(classifier) -> None:
    """Heads far from their tiny init, so logits are large enough for the 1e-5 checks to bite."""
    with torch.no_grad():
        for param in classifier.parameters():
            param.normal_(std=0.5)


@pytest.fixture(scope="module")
def pasta_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pasta")
    for seed, (name, (token_cls, num_labels, options, info)) in enumerate(PASTA_TASKS.items()):
        model = task_model(token_cls, num_labels)
        torch.manual_seed(100 + seed)  # make_tiny_model reseeds: give each task its own draws
        peft_model = peftkit.get_peft_model(model, peftkit.PastaConfig(special_token_ids=[CLS_ID, SEP_ID], **options))
        with torch.no_grad():
            peft_model.adapter.special_token_embeddings.normal_()
        randomise_head(model.classifier)
        peft_model.task_info = info
        peft_model.save_pretrained(root / name)
        if not info:  # save_pretrained records the head's kind and labels; this adapter must not
            record = json.loads((root / name / "adapter_config.json").read_text())
            (root / name / "adapter_config.json").write_text(json.dumps({**record, "task": {}}))
    return {name: root / name for name in PASTA_TASKS}


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    for seed, (name, (token_cls, num_labels, options)) in enumerate(LORA_TASKS.items()):
        model = task_model(token_cls, num_labels)
        torch.manual_seed(200 + seed)
        config = peft.LoraConfig(
            r=4, target_modules=["query", "value"], modules_to_save=["classifier"], init_lora_weights=False, **options
        )
        peft_model = peftkit.get_peft_model(model, config)
        randomise_head(peft_model.base_model.model.classifier.modules_to_save[peft_model.active_adapter])
        peft_model.save_pretrained(root / name)
    return {name: root / name for name in LORA_TASKS}


def shared_backbone(seed: int = 0):
    """The frozen backbone every task shares (an AutoModel-like BertModel, pooler included)."""
    return make_tiny_model("bert", seed=seed).bert


CLASSES = {"topic": AutoModelForSequenceClassification}


@pytest.fixture(scope="module")
def pasta_model(pasta_dirs):
    return MultiTaskModel.from_adapters(shared_backbone(), pasta_dirs, task_model_classes=CLASSES)


def mixed_batch():
    """Rows of different lengths (right-padded), singles and pairs, tasks interleaved."""
    rows = [
        ([CLS_ID, 10, 11, 12, SEP_ID], "sentiment"),
        ([CLS_ID, 13, SEP_ID, 20, 21, 22, SEP_ID], "topic"),
        ([CLS_ID, 14, 15, 16, 17, 18, 19, SEP_ID], "entities"),
        ([CLS_ID, 23, SEP_ID, 24, SEP_ID], "sentiment"),  # a pair on a 2-slot task: slot capped at 1
        ([CLS_ID, 25, 26, SEP_ID], "topic"),
        ([CLS_ID, 27, SEP_ID, 28, 29, SEP_ID], "entities"),
    ]
    return rows


def pad(rows):
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [PAD_ID] * (width - len(ids)) for ids, _ in rows])
    return input_ids, (input_ids != PAD_ID).long(), [task for _, task in rows]


@functools.lru_cache(maxsize=None)
def single_task_model(directory, token_cls: bool, num_labels: int):
    """The reference: the task's own PeftModel (peftkit for PASTA, PEFT for LoRA)."""
    return peftkit.PeftModel.from_pretrained(task_model(token_cls, num_labels), directory).eval()


def single_task_logits(directory, token_cls, num_labels, input_ids, attention_mask):
    with torch.no_grad():
        return single_task_model(directory, token_cls, num_labels)(input_ids=input_ids, attention_mask=attention_mask).logits


def assert_rows_match_single_task(model, rows, dirs, specs):
    input_ids, attention_mask, tasks = pad(rows)
    logits_of_row = model.task_logits(input_ids, attention_mask, tasks)
    for name in set(tasks):
        token_cls, num_labels = specs[name][:2]
        picked = [i for i, task in enumerate(tasks) if task == name]
        expected = single_task_logits(dirs[name], token_cls, num_labels, input_ids[picked], attention_mask[picked])
        for position, row in enumerate(picked):
            assert logits_of_row[row].shape == expected[position].shape
            torch.testing.assert_close(logits_of_row[row], expected[position], atol=TOLERANCE, rtol=0)
    return logits_of_row


def test_mixed_batch_equals_each_task_alone(pasta_dirs, pasta_model):
    logits = assert_rows_match_single_task(pasta_model, mixed_batch(), pasta_dirs, PASTA_TASKS)
    # the tables matter: with them zeroed the same rows give other logits
    without_tables = MultiTaskModel.from_adapters(shared_backbone(), pasta_dirs, task_model_classes=CLASSES)
    without_tables.special_token_tables.zero_()
    input_ids, attention_mask, tasks = pad(mixed_batch())
    for row, zeroed in enumerate(without_tables.task_logits(input_ids, attention_mask, tasks)):
        assert not torch.allclose(zeroed, logits[row], atol=1e-3)


def test_rows_in_any_order_give_the_same_answers(pasta_model):
    rows = mixed_batch()
    input_ids, attention_mask, tasks = pad(rows)
    original = pasta_model.task_logits(input_ids, attention_mask, tasks)
    order = [4, 2, 0, 5, 1, 3]
    shuffled = pasta_model.task_logits(input_ids[order], attention_mask[order], [tasks[i] for i in order])
    for position, row in enumerate(order):
        torch.testing.assert_close(shuffled[position], original[row], atol=TOLERANCE, rtol=0)


def test_padded_rows_equal_rows_run_alone(pasta_model):
    input_ids, attention_mask, tasks = pad(mixed_batch())
    batched = pasta_model.task_logits(input_ids, attention_mask, tasks)
    for row, (ids, task) in enumerate(mixed_batch()):
        alone = pasta_model.task_logits(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), [task])[0]
        length = len(ids)
        expected = batched[row][:length] if alone.dim() == 2 else batched[row]
        torch.testing.assert_close(alone, expected, atol=TOLERANCE, rtol=0)


def test_predictions_name_labels_per_row_and_per_token(pasta_model):
    input_ids, attention_mask, tasks = pad(mixed_batch())
    predictions = pasta_model(input_ids, attention_mask, tasks)
    assert [p.task for p in predictions] == tasks
    sentiment, topic, entities = predictions[0], predictions[1], predictions[2]
    assert sentiment.label == ["neg", "pos"][int(sentiment.logits.argmax())]
    assert topic.logits.shape == (3,) and topic.label == f"LABEL_{int(topic.logits.argmax())}"
    # token task: one label per real token of the row (8 tokens, no padding in row 2; 6 in row 5)
    assert entities.logits.shape == (8, 5) and len(entities.label) == 8
    assert entities.label == [list("OBIXY")[i] for i in entities.logits.argmax(-1).tolist()]
    assert len(predictions[5].label) == 6


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_head_is_fed_what_its_own_model_feeds_it(family, tmp_path):
    """RoBERTa/DeBERTa/DistilBERT/ELECTRA pool differently; the task model's own forward does it."""
    references = {}
    for index, token_cls in enumerate((False, True)):  # sequence task (M=2), token task (M=3)
        model = make_tiny_model(family, num_labels=2 + index, token_classification=token_cls)
        shared = make_tiny_model(family).base_model.state_dict()
        model.base_model.load_state_dict({k: v for k, v in shared.items() if k in model.base_model.state_dict()})
        config = peftkit.PastaConfig(special_token_ids=special_ids(family), num_special_tokens=2 + index)
        references[f"task{index}"] = reference = peftkit.get_peft_model(model, config)
        torch.manual_seed(index)
        with torch.no_grad():
            reference.adapter.special_token_embeddings.normal_()
        reference.task_info = {"kind": "token-classification" if token_cls else "text-classification"}
        reference.save_pretrained(tmp_path / f"task{index}")
        reference.eval()
    served = MultiTaskModel.from_adapters(make_tiny_model(family).base_model, {k: tmp_path / k for k in references})
    batch = make_batch(family)  # row 0 a pair, row 1 a padded single
    for tasks in (["task0", "task1"], ["task1", "task0"]):
        logits = served.task_logits(batch["input_ids"], batch["attention_mask"], tasks)
        for row, task in enumerate(tasks):
            with torch.no_grad():
                expected = references[task](**{k: v[row : row + 1] for k, v in batch.items()}).logits[0]
            length = int(batch["attention_mask"][row].sum())
            got, expected = (logits[row][:length], expected[:length]) if expected.dim() == 2 else (logits[row], expected)
            torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_adapter_for_another_backbone_is_rejected(pasta_dirs):
    with pytest.raises(AdapterMismatchError, match="another backbone.*fingerprint"):
        MultiTaskModel.from_adapters(shared_backbone(seed=1), pasta_dirs, task_model_classes=CLASSES)


def test_unknown_task_name_is_rejected(pasta_model):
    input_ids, attention_mask, tasks = pad(mixed_batch())
    with pytest.raises(PeftkitError, match=r"unknown task\(s\) \['poetry'\].*serves"):
        pasta_model(input_ids, attention_mask, tasks[:-1] + ["poetry"])
    with pytest.raises(PeftkitError, match="one task per row"):
        pasta_model(input_ids, attention_mask, tasks[:-1])


@pytest.mark.parametrize("name, suggestion", [
    ("a/b", "a-b"), ("a.b", "a-b"), ("my task", "my-task"), ("__base__", "base"), ("", None), ("x" * 65, "x" * 64),
])
def test_task_names_that_cannot_be_urls_or_adapter_names_are_rejected(pasta_dirs, name, suggestion):
    directory = next(iter(pasta_dirs.values()))
    with pytest.raises(PeftkitError, match="letters, digits, '_' or '-'") as raised:
        MultiTaskModel.from_adapters(shared_backbone(), {name: directory}, task_model_classes={name: AutoModelForSequenceClassification})
    assert f"e.g. {suggestion or 'sentiment'!r}" in str(raised.value)


def test_adapter_that_does_not_say_its_task_model_class_needs_one(pasta_dirs):
    with pytest.raises(AdapterFileError, match="task_model_classes"):
        MultiTaskModel.from_adapters(shared_backbone(), {"topic": pasta_dirs["topic"]})


def test_adapters_with_other_special_ids_are_rejected(pasta_dirs, tmp_path):
    model = task_model(False, 2)
    other = peftkit.get_peft_model(model, peftkit.PastaConfig(special_token_ids=[CLS_ID, 4], num_special_tokens=2))
    other.task_info = {"kind": "text-classification"}
    other.save_pretrained(tmp_path)
    with pytest.raises(AdapterMismatchError, match="disagree on the special tokens"):
        MultiTaskModel.from_adapters(shared_backbone(), {"sentiment": pasta_dirs["sentiment"], "other": tmp_path})


@pytest.mark.parametrize("pooler", ["trained", "mean"])
def test_adapters_whose_head_reads_another_pooler_are_refused(pooler, tmp_path):
    other = peftkit.get_peft_model(task_model(False, 2), peftkit.PastaConfig(special_token_ids=[CLS_ID, SEP_ID], pooler=pooler))
    other.task_info = {"kind": "text-classification"}
    other.save_pretrained(tmp_path)
    with pytest.raises(AdapterMismatchError, match=f"pooler={pooler!r}.*serve it on its own"):
        MultiTaskModel.from_adapters(shared_backbone(), {"other": tmp_path})


def test_special_ids_resolved_from_the_tokenizer_are_recorded(bert_tokenizer, tmp_path):
    """Ids the adapter took from the tokenizer are saved, so serving needs no tokenizer."""
    model = task_model(False, 2)
    saved = peftkit.get_peft_model(model, peftkit.PastaConfig(num_special_tokens=2), tokenizer=bert_tokenizer)
    with torch.no_grad():
        saved.adapter.special_token_embeddings.normal_()
    saved.task_info = {"kind": "text-classification"}
    saved.save_pretrained(tmp_path)
    served = MultiTaskModel.from_adapters(shared_backbone(), {"task": tmp_path})
    assert served.special_token_ids == [CLS_ID, SEP_ID]
    batch = bert_tokenizer(["the movie was great", "john lives in london"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = saved(**batch).logits
    got = served.task_logits(batch["input_ids"], batch["attention_mask"], ["task", "task"], batch["token_type_ids"])
    torch.testing.assert_close(torch.stack(got), expected, atol=TOLERANCE, rtol=0)


def test_backbone_is_guarded_while_serving_and_restored_by_unload(pasta_dirs):
    backbone = shared_backbone()
    input_ids, attention_mask, _ = pad(mixed_batch())
    with torch.no_grad():
        before = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    served = MultiTaskModel.from_adapters(backbone, pasta_dirs, task_model_classes=CLASSES)
    with pytest.raises(SpecialTokenError, match="call the MultiTaskModel"):
        backbone(input_ids=input_ids, attention_mask=attention_mask)
    assert served.unload() is backbone
    with torch.no_grad():
        assert torch.equal(backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, before)


# -- LoRA through PEFT's mixed batch (adapter_names) -------------------------------------------


def test_lora_mixed_batch_equals_each_task_alone(lora_dirs):
    model = MultiTaskModel.from_lora_adapters(shared_backbone(), lora_dirs)
    rows = [(ids, "lora_sentiment" if i % 2 else "lora_entities") for i, (ids, _) in enumerate(mixed_batch())]
    assert_rows_match_single_task(model, rows, lora_dirs, LORA_TASKS)


def test_pasta_and_lora_tasks_share_one_batch(pasta_dirs, lora_dirs):
    model = MultiTaskModel.from_adapters(shared_backbone(), {**pasta_dirs, **lora_dirs}, task_model_classes=CLASSES)
    names = ["lora_sentiment", "sentiment", "lora_entities", "topic", "entities", "lora_sentiment"]
    rows = [(ids, name) for (ids, _), name in zip(mixed_batch(), names)]
    assert_rows_match_single_task(model, rows, {**pasta_dirs, **lora_dirs}, {**PASTA_TASKS, **LORA_TASKS})


def test_lora_adapter_for_another_backbone_is_rejected(lora_dirs):
    wider = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    with pytest.raises(AdapterMismatchError, match="does not fit this backbone"):
        MultiTaskModel.from_lora_adapters(BertModel(wider), lora_dirs)


def test_a_build_that_fails_leaves_the_backbone_as_it_was(pasta_dirs, lora_dirs):
    """A server adding a task rebuilds the model; a LoRA adapter that does not fit must not leave
    PASTA hooks or half-attached LoRA layers behind."""
    from peftkit.serving import load_task_adapter

    backbone = shared_backbone()
    input_ids, attention_mask, _ = pad(mixed_batch())
    with torch.no_grad():
        before = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    tasks = [load_task_adapter(backbone, "sentiment", pasta_dirs["sentiment"]),
             load_task_adapter(backbone, "lora_sentiment", lora_dirs["lora_sentiment"])]
    tasks[1].lora_tensors = {key: value[..., :-1] for key, value in tasks[1].lora_tensors.items()}  # wrong shapes
    with pytest.raises(AdapterMismatchError, match="does not fit this backbone"):
        MultiTaskModel(backbone, tasks)
    assert not any("lora_" in name for name, _ in backbone.named_parameters())
    with torch.no_grad():  # no PASTA hook left either: the plain backbone runs and gives what it gave
        assert torch.equal(backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, before)


def test_lora_unknown_task_is_rejected(lora_dirs):
    model = MultiTaskModel.from_lora_adapters(shared_backbone(), lora_dirs)
    input_ids, attention_mask, _ = pad(mixed_batch()[:2])
    with pytest.raises(PeftkitError, match="unknown task"):
        model(input_ids, attention_mask, ["lora_sentiment", "sentiment"])


def test_plain_peft_mixed_batch_with_same_shaped_heads(tmp_path):
    """The pure-PEFT route, for tasks whose heads have the same shape: load_adapter each, then
    forward(..., adapter_names=[...]); modules_to_save keeps one head per adapter."""
    for seed, name in enumerate(("a", "b")):
        model = task_model(False, 3)
        torch.manual_seed(300 + seed)
        config = peft.LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"], init_lora_weights=False)
        saved = peftkit.get_peft_model(model, config)
        randomise_head(saved.base_model.model.classifier.modules_to_save["default"])
        saved.save_pretrained(tmp_path / name)
    served = peft.PeftModel.from_pretrained(task_model(False, 3), tmp_path / "a", adapter_name="a")
    served.load_adapter(tmp_path / "b", adapter_name="b")
    served.eval()
    input_ids, attention_mask, _ = pad(mixed_batch())
    names = ["a", "b", "b", "a", "b", "a"]
    with torch.no_grad():
        mixed = served(input_ids=input_ids, attention_mask=attention_mask, adapter_names=names).logits
    for name in ("a", "b"):
        rows = [i for i, n in enumerate(names) if n == name]
        expected = single_task_logits(tmp_path / name, False, 3, input_ids[rows], attention_mask[rows])
        torch.testing.assert_close(mixed[rows], expected, atol=TOLERANCE, rtol=0)
    assert not torch.allclose(mixed[0], single_task_logits(tmp_path / "b", False, 3, input_ids[:1], attention_mask[:1])[0])


@pytest.mark.parametrize("pad_id", [SEP_ID, CLS_ID], ids=["pad-is-sep", "pad-is-cls"])
def test_padding_sharing_a_special_tokens_id_is_never_adapted(pasta_model, pad_id):
    """GPT-2-style tokenizers pad with their end token. Left-padded, pads counted as special
    tokens would shift every real token's slot; they must be neither adapted nor counted."""
    rows = mixed_batch()
    width = max(len(ids) for ids, _ in rows)

    def left_pad(pad):
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in rows])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows])
        return input_ids, attention_mask

    tasks = [task for _, task in rows]
    task_of_row = pasta_model.task_of_rows(tasks, len(rows))
    (input_ids, attention_mask), (plain_ids, _) = left_pad(pad_id), left_pad(PAD_ID)
    positions = pasta_model.special_token_positions(input_ids, task_of_row, attention_mask)
    expected = pasta_model.special_token_positions(plain_ids, task_of_row, attention_mask)
    for got, want in zip(positions, expected):
        assert torch.equal(got, want)
    # End to end on the token task, whose real tokens never attend to pads (sequence heads
    # read position 0, a pad when left-padded, so their logits depend on the pad's id anyway).
    padded = pasta_model.task_logits(input_ids, attention_mask, tasks)
    plain = pasta_model.task_logits(plain_ids, attention_mask, tasks)
    for row, (ids, task) in enumerate(rows):
        if task == "entities":
            torch.testing.assert_close(padded[row][-len(ids):], plain[row][-len(ids):], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_float32_adapters_serve_on_a_half_precision_backbone(pasta_dirs, pasta_model, dtype):
    served = MultiTaskModel.from_adapters(shared_backbone().to(dtype), pasta_dirs, task_model_classes=CLASSES)
    input_ids, attention_mask, tasks = pad(mixed_batch())
    expected = pasta_model.task_logits(input_ids, attention_mask, tasks)
    for got, want in zip(served.task_logits(input_ids, attention_mask, tasks), expected):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.1)


def test_a_damaged_adapter_config_is_refused_naming_file_and_field(pasta_dirs, tmp_path):
    import json
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(pasta_dirs["sentiment"], damaged)
    record = json.loads((damaged / "adapter_config.json").read_text())
    (damaged / "adapter_config.json").write_text(json.dumps({**record, "num_special_tokens": "2"}))
    with pytest.raises(AdapterFileError, match=r"damaged/adapter_config.json.*num_special_tokens must be an int"):
        MultiTaskModel.from_adapters(shared_backbone(), {"sentiment": damaged}, task_model_classes=CLASSES)
    del record["peftkit_method"]
    (damaged / "adapter_config.json").write_text(json.dumps(record))
    with pytest.raises(AdapterFileError, match=r"Add \"peftkit_method\": \"pasta\""):
        MultiTaskModel.from_adapters(shared_backbone(), {"sentiment": damaged}, task_model_classes=CLASSES)

"""PASTA: frozen backbone, vectors added only at special-token positions, every family."""

from __future__ import annotations

import collections

import pytest
import torch

import peftkit
from peftkit.errors import SpecialTokenError, UnsupportedModelError
from tests.tiny_models import FAMILIES, PAD_ID, make_batch, make_tiny_model, special_ids


def wrap(family: str, **config):
    model = make_tiny_model(family)
    config.setdefault("special_token_ids", special_ids(family))
    return model, peftkit.get_peft_model(model, peftkit.PastaConfig(**config))


@pytest.mark.parametrize("family", FAMILIES)
def test_step_zero_logits_equal_frozen_model(family):
    batch = make_batch(family)
    frozen_logits = make_tiny_model(family)(**batch).logits
    _, peft_model = wrap(family)
    assert torch.equal(peft_model(**batch).logits, frozen_logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_changes_only_pasta_vectors_and_head(family):
    model, peft_model = wrap(family)
    backbone_before = {n: p.detach().clone() for n, p in peft_model.base_model.base_model.named_parameters()}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert "adapter.special_token_embeddings" in trainable
    assert all(n == "adapter.special_token_embeddings" or n.startswith(tuple(f"base_model.{h}." for h in peft_model.head_modules)) for n in trainable)

    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(family)
    for _ in range(3):
        loss = peft_model(**batch, labels=torch.tensor([0, 2])).loss
        loss.backward()
        for name, param in peft_model.named_parameters():
            if name not in trainable:
                assert param.grad is None, f"{name} got a gradient"
        assert peft_model.adapter.special_token_embeddings.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()

    for name, param in peft_model.base_model.base_model.named_parameters():
        assert torch.equal(param, backbone_before[name]), f"backbone weight {name} changed"
    assert peft_model.adapter.special_token_embeddings.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_vectors_added_only_at_special_positions_at_each_layer_input(family):
    _, peft_model = wrap(family)
    with torch.no_grad():
        peft_model.adapter.special_token_embeddings.normal_()
    layers = peftkit.models.encoder_layers(peft_model.base_model)
    before, after = {}, {}

    def capture(store, index):
        def hook(module, args, kwargs):
            store[index] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return hook

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(capture(before, index), with_kwargs=True, prepend=True))
        handles.append(layer.register_forward_pre_hook(capture(after, index), with_kwargs=True))
    batch = make_batch(family)
    peft_model(**batch)
    for handle in handles:
        handle.remove()

    cls, sep = special_ids(family)
    # slot of each position: row 0 is a pair ([CLS] .. [SEP] .. [SEP]), row 1 a single sentence
    expected_slots = {(0, 0): 0, (0, 4): 1, (0, 7): 2, (1, 0): 0, (1, 3): 1}
    table = peft_model.adapter.special_token_embeddings.detach()
    for index in range(len(layers)):
        delta = after[index] - before[index]
        for row in range(2):
            for column in range(batch["input_ids"].shape[1]):
                slot = expected_slots.get((row, column))
                if slot is None:
                    assert torch.equal(delta[row, column], torch.zeros_like(delta[row, column]))
                else:
                    assert torch.allclose(delta[row, column], table[index, slot], atol=1e-6)


def test_positions_follow_each_rows_own_ids_any_padding_side():
    _, peft_model = wrap("bert", num_special_tokens=3)
    cls, sep = special_ids("bert")
    left_padded = torch.tensor([[0, 0, cls, 9, sep], [cls, 9, sep, 8, sep]])
    rows, columns, slots = peft_model.adapter.special_token_positions(left_padded)
    assert list(zip(rows.tolist(), columns.tolist(), slots.tolist())) == [
        (0, 2, 0), (0, 4, 1), (1, 0, 0), (1, 2, 1), (1, 4, 2),
    ]


@pytest.mark.parametrize("pad_is", ["sep", "cls"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_is_never_adapted_whatever_id_it_shares(pad_is, side):
    """GPT-2-style tokenizers pad with their end token (some RoBERTa setups with </s>): a pad
    must get no vector and must not shift the slots of the row's real special tokens."""
    _, peft_model = wrap("bert", num_special_tokens=3)
    cls, sep = special_ids("bert")
    pad = sep if pad_is == "sep" else cls
    real = [[cls, 9, sep, 8, sep], [cls, 9, sep]]
    width = 7

    def padded(pad_id):
        rows = [[pad_id] * (width - len(ids)) + ids if side == "left" else ids + [pad_id] * (width - len(ids)) for ids in real]
        masks = [[0] * (width - len(ids)) + [1] * len(ids) if side == "left" else [1] * len(ids) + [0] * (width - len(ids)) for ids in real]
        return torch.tensor(rows), torch.tensor(masks)

    input_ids, attention_mask = padded(pad)
    rows, columns, slots = peft_model.adapter.special_token_positions(input_ids, attention_mask)
    assert attention_mask[rows, columns].all()
    offset = [width - len(ids) if side == "left" else 0 for ids in real]
    assert sorted(zip(rows.tolist(), columns.tolist(), slots.tolist())) == sorted(
        [(0, offset[0] + 0, 0), (0, offset[0] + 2, 1), (0, offset[0] + 4, 2), (1, offset[1] + 0, 0), (1, offset[1] + 2, 1)]
    )
    # Through the layers: the same hidden states at every real token as with a plain pad id.
    with torch.no_grad():
        peft_model.adapter.special_token_embeddings.normal_()
        shared = peft_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        plain_ids, _ = padded(PAD_ID)
        plain = peft_model(input_ids=plain_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    real_positions = attention_mask.bool()
    for layer in range(1, len(shared)):  # [0] is the embeddings, where the pad ids still differ
        torch.testing.assert_close(shared[layer][real_positions], plain[layer][real_positions], atol=1e-5, rtol=0)


def test_occurrences_past_the_last_slot_share_it():
    # RoBERTa pairs: <s> a </s></s> b </s> has four special tokens for three slots.
    _, peft_model = wrap("roberta", num_special_tokens=3)
    ids = torch.tensor([[0, 9, 2, 2, 8, 2]])
    _, columns, slots = peft_model.adapter.special_token_positions(ids)
    assert columns.tolist() == [0, 2, 3, 5]
    assert slots.tolist() == [0, 1, 2, 2]


def test_padded_batch_equals_rows_run_alone():
    _, peft_model = wrap("bert")
    with torch.no_grad():
        peft_model.adapter.special_token_embeddings.normal_()
    batch = make_batch("bert")
    batched = peft_model(**batch).logits
    for row in range(2):
        length = int(batch["attention_mask"][row].sum())
        alone = peft_model(input_ids=batch["input_ids"][row : row + 1, :length]).logits
        assert torch.allclose(batched[row], alone[0], atol=1e-5)


def test_parameter_count_is_layers_times_slots_times_hidden_plus_head():
    model, peft_model = wrap("bert", num_special_tokens=2)
    head = sum(p.numel() for p in model.classifier.parameters())
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert trainable == 2 * 2 * 32 + head
    assert total == sum(p.numel() for p in model.parameters()) + 2 * 2 * 32


def test_print_trainable_parameters(capsys):
    _, peft_model = wrap("bert", num_special_tokens=2)
    peft_model.print_trainable_parameters()
    assert "trainable params: 227" in capsys.readouterr().out  # 2*2*32 + classifier 32*3+3


def test_special_ids_from_tokenizer(bert_tokenizer):
    model = make_tiny_model("bert")
    peft_model = peftkit.get_peft_model(model, peftkit.PastaConfig(), tokenizer=bert_tokenizer)
    assert peft_model.adapter.special_token_ids == [bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id]
    encoded = bert_tokenizer(["the movie was great"], ["a bad plot"], return_tensors="pt")
    peft_model(**encoded)


def test_special_ids_from_model_config():
    model = make_tiny_model("roberta")  # RobertaConfig declares bos/eos ids 0 and 2
    peft_model = peftkit.get_peft_model(model, peftkit.PastaConfig())
    assert peft_model.adapter.special_token_ids == [0, 2]


def test_no_special_ids_anywhere_says_what_to_give():
    with pytest.raises(SpecialTokenError, match="tokenizer=tokenizer.*special_token_ids"):
        peftkit.get_peft_model(make_tiny_model("bert"), peftkit.PastaConfig())


def test_tokenizer_without_special_tokens_is_rejected(bert_tokenizer):
    bert_tokenizer.cls_token = None
    bert_tokenizer.sep_token = None
    with pytest.raises(SpecialTokenError, match="no \\[CLS\\]/\\[SEP\\]"):
        peftkit.get_peft_model(make_tiny_model("bert"), peftkit.PastaConfig(), tokenizer=bert_tokenizer)


def test_special_ids_outside_vocabulary_are_rejected():
    with pytest.raises(SpecialTokenError, match="not in the model's vocabulary"):
        peftkit.get_peft_model(make_tiny_model("bert"), peftkit.PastaConfig(special_token_ids=[101, 102]))


def test_rows_without_special_tokens_are_rejected():
    _, peft_model = wrap("bert")
    with pytest.raises(SpecialTokenError, match="row\\(s\\) \\[1\\].*add_special_tokens"):
        peft_model(input_ids=torch.tensor([[2, 9, 3], [9, 9, 9]]))


def test_inputs_embeds_without_ids_is_rejected():
    _, peft_model = wrap("bert")
    with pytest.raises(SpecialTokenError, match="input_ids"):
        peft_model(inputs_embeds=torch.zeros(1, 3, 32))


def test_calling_the_base_model_directly_is_caught():
    model, _ = wrap("bert")
    with pytest.raises(SpecialTokenError, match="PeftModel.forward"):
        model(**make_batch("bert"))


def test_model_without_known_layers_is_rejected():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = make_tiny_model("bert").config
    with pytest.raises(UnsupportedModelError, match="cannot find the Transformer layers"):
        peftkit.get_peft_model(model, peftkit.PastaConfig(special_token_ids=[2, 3]))


def test_official_normal_initialisation_option():
    _, peft_model = wrap("bert", init="normal")
    table = peft_model.adapter.special_token_embeddings
    assert 0.005 < table.std().item() < 0.05
    with pytest.raises(SpecialTokenError, match="init"):
        wrap("bert", init="ones")


def test_chosen_layers_only():
    _, peft_model = wrap("bert", layers=[1])
    assert peft_model.adapter.special_token_embeddings.shape == (1, 3, 32)
    with pytest.raises(SpecialTokenError, match="layers"):
        wrap("bert", layers=[5])


def test_unload_restores_the_model():
    model, peft_model = wrap("bert")
    with torch.no_grad():
        peft_model.adapter.special_token_embeddings.normal_()
    restored = peft_model.unload()
    assert torch.equal(restored(**make_batch("bert")).logits, make_tiny_model("bert")(**make_batch("bert")).logits)


def old_formulation_logits(family: str, table: torch.Tensor, input_ids, attention_mask, dtype=torch.float32):
    """The formulation PASTA's eval path replaced, written out independently: pre-hooks on a
    fresh copy of the model add ``table[layer][slot]`` at each special token's (row, column),
    found with torch.isin, nonzero and index_put, exactly as the code did before."""
    model = make_tiny_model(family).to(dtype)
    ids = torch.tensor(special_ids(family))
    special = torch.isin(input_ids, ids) & attention_mask.bool()
    slots = (special.long().cumsum(dim=1) - 1).clamp(max=table.shape[1] - 1)
    rows, columns = special.nonzero(as_tuple=True)

    def hook_for(layer):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            added = hidden.index_put((rows, columns), table[layer][slots[rows, columns]].to(hidden.dtype), accumulate=True)
            if args:
                return (added, *args[1:]), kwargs
            return args, dict(kwargs, hidden_states=added)
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(index), with_kwargs=True)
               for index, layer in enumerate(peftkit.models.encoder_layers(model))]
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    for handle in handles:
        handle.remove()
    return logits


def random_padded_batch(family: str, generator: torch.Generator, rows: int = 6, width: int = 12):
    """Rows of random words with 1-4 special tokens each (pairs, RoBERTa's doubled </s>, more
    than M), padded on a random side with a pad id that is sometimes a special id."""
    cls, sep = special_ids(family)
    input_ids = torch.full((rows, width), PAD_ID if family != "roberta" else 1)
    attention_mask = torch.zeros(rows, width, dtype=torch.long)
    pad_as = [None, cls, sep]
    for row in range(rows):
        length = int(torch.randint(3, width + 1, (1,), generator=generator))
        words = torch.randint(5, 100, (length,), generator=generator)
        words[0] = cls
        for position in torch.randint(1, length, (int(torch.randint(1, 4, (1,), generator=generator)),), generator=generator):
            words[position] = sep
        pad = pad_as[int(torch.randint(0, 3, (1,), generator=generator))]
        left = bool(torch.randint(0, 2, (1,), generator=generator))
        span = slice(width - length, width) if left else slice(0, length)
        if pad is not None:
            input_ids[row] = pad
        input_ids[row, span], attention_mask[row, span] = words, 1
    return input_ids, attention_mask


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_outputs_equal_the_old_sparse_formulation(family, dtype):
    """Eval mode adds the tables densely (a zero row for non-special positions); the result must
    be the old per-position index_put's, to the bit, on random rows, paddings and pad ids."""
    generator = torch.Generator().manual_seed(7)
    base = make_tiny_model(family).to(dtype)  # a bf16 base gets float32 tables, cast at each add
    peft_model = peftkit.get_peft_model(base, peftkit.PastaConfig(num_special_tokens=3, special_token_ids=special_ids(family)))
    peft_model.eval()
    with torch.no_grad():
        peft_model.adapter.special_token_embeddings.normal_(generator=generator)
    table = peft_model.adapter.special_token_embeddings.detach()
    assert table.dtype == torch.float32  # the tables stay float32 on a bf16 base
    for _ in range(3):
        input_ids, attention_mask = random_padded_batch(family, generator)
        with torch.no_grad():
            dense = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
        assert torch.equal(dense, old_formulation_logits(family, table, input_ids, attention_mask, dtype))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_positions_are_found_once_per_forward_not_per_layer(mode):
    """The batch's positions, host reads included, are worked out once per forward: a model
    with three times the layers makes no more nonzero/isin/bool calls, and each layer's hook
    only runs index_put."""
    from torch.overrides import TorchFunctionMode

    class CountCalls(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = collections.Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls[getattr(func, "__name__", str(func))] += 1
            return func(*args, **(kwargs or {}))

    def calls_of(num_layers):
        model = make_tiny_model("bert")
        model.config.num_hidden_layers = num_layers
        model = type(model)(model.config).train(mode == "train")
        peft_model = peftkit.get_peft_model(model, peftkit.PastaConfig(special_token_ids=special_ids("bert")))
        with CountCalls() as counter:
            peft_model(**make_batch("bert"))
        return counter.calls

    two, six = calls_of(2), calls_of(6)
    for name in ("nonzero", "isin", "__bool__", "item", "tolist"):
        assert two[name] == six[name], name
    assert two["isin"] == 0 and two["nonzero"] == 1
    assert six["index_put"] - two["index_put"] == 4  # one per added layer


def test_eval_mode_still_rejects_rows_without_special_tokens():
    _, peft_model = wrap("bert")
    peft_model.eval()
    with torch.no_grad(), pytest.raises(SpecialTokenError, match="row\\(s\\) \\[0\\]"):
        peft_model(input_ids=torch.tensor([[9, 9, 9], [2, 9, 3]]))


# -- what the head reads (PastaConfig.pooler) -------------------------------------------------------


def test_trained_pooler_starts_as_the_frozen_one_and_trains_only_its_copy():
    model, peft_model = wrap("bert", pooler="trained")
    batch = make_batch("bert")
    assert torch.allclose(peft_model(**batch).logits, make_tiny_model("bert")(**batch).logits, atol=1e-6)
    pooler = model.bert.pooler
    trainable, _ = peft_model.get_nb_trainable_parameters()
    head = sum(p.numel() for p in model.classifier.parameters())
    assert trainable == 2 * 3 * 32 + head + 32 * 32 + 32  # tables + head + the pooler's dense layer
    frozen_before = {n: p.detach().clone() for n, p in pooler.named_parameters()}
    copy_before = peft_model.adapter.trained_pooler.dense.weight.detach().clone()
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        peft_model(**batch, labels=torch.tensor([0, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen_before[n]) for n, p in pooler.named_parameters())
    assert not torch.equal(peft_model.adapter.trained_pooler.dense.weight, copy_before)


def test_mean_pooler_feeds_the_head_the_masked_mean_of_the_last_hidden_states():
    model, peft_model = wrap("bert", pooler="mean")
    with torch.no_grad():
        peft_model.adapter.special_token_embeddings.normal_()
    peft_model.eval()
    batch = make_batch("bert")
    captured = {}
    handle = model.bert.encoder.register_forward_hook(lambda m, a, out: captured.update(hidden=out.last_hidden_state))
    logits = peft_model(**batch).logits
    handle.remove()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (captured["hidden"] * mask).sum(1) / mask.sum(1)
    assert torch.allclose(logits, model.classifier(mean), atol=1e-6)
    assert peft_model.get_nb_trainable_parameters()[0] == 2 * 3 * 32 + sum(p.numel() for p in model.classifier.parameters())
    for row in range(2):  # padding does not dilute the mean
        length = int(batch["attention_mask"][row].sum())
        alone = peft_model(input_ids=batch["input_ids"][row : row + 1, :length]).logits
        assert torch.allclose(logits[row], alone[0], atol=1e-5)


@pytest.mark.parametrize("pooler", ["trained", "mean"])
def test_pooler_option_survives_save_and_load(pooler, tmp_path):
    _, peft_model = wrap("bert", pooler=pooler)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    peft_model.eval()
    peft_model.task_info = {"kind": "text-classification", "label_names": ["a", "b", "c"]}
    peft_model.save_pretrained(tmp_path)
    batch = make_batch("bert")
    loaded = peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)
    assert loaded.peft_config.pooler == pooler
    assert torch.equal(loaded(**batch).logits, peft_model(**batch).logits)
    unloaded = loaded.unload()  # the pooler's hook goes with the adapter: the backbone pools as before
    assert torch.equal(unloaded.bert(**batch).pooler_output, make_tiny_model("bert").bert(**batch).pooler_output)


def test_pooler_option_refuses_nonsense_and_models_without_a_pooler():
    with pytest.raises(SpecialTokenError, match="pooler must be one of 'frozen', 'trained', 'mean'"):
        wrap("bert", pooler="cls")
    with pytest.raises(SpecialTokenError, match="has none"):
        wrap("roberta", pooler="mean")  # RoBERTa's head reads [CLS] itself: there is no pooler to replace
    tagger = make_tiny_model("bert", token_classification=True)
    with pytest.raises(SpecialTokenError, match="pooler='frozen'"):
        peftkit.get_peft_model(tagger, peftkit.PastaConfig(special_token_ids=special_ids("bert"), pooler="trained"))

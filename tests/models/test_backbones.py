"""The backbone identity an adapter records: every weight counts, dtype and device do not."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import peftkit
from peftkit.errors import AdapterMismatchError
from peftkit.models import backbone_identity, check_backbone_identity
from peftkit.models.backbones import _sampled_fingerprint
from tests.tiny_models import make_batch, make_tiny_model, special_ids


def saved_adapter(directory, base=None):
    base = base if base is not None else make_tiny_model("bert")
    model = peftkit.get_peft_model(base, peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal"))
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("tensor", ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.1.output.dense.weight"])
def test_a_base_differing_in_one_value_the_old_sample_missed_is_refused(tensor, tmp_path):
    saved_adapter(tmp_path)
    other = make_tiny_model("bert")
    with torch.no_grad():
        flat = other.get_parameter(tensor).view(-1)
        flat[1] += 0.05  # index 1: between the old strided sample's points (0, stride, ...)
    assert _sampled_fingerprint(other.bert) == _sampled_fingerprint(make_tiny_model("bert").bert)
    with pytest.raises(AdapterMismatchError, match="another backbone.*fingerprint"):
        peftkit.PeftModel.from_pretrained(other, tmp_path)


def test_a_change_in_place_after_a_first_identity_is_seen(tmp_path):
    model = make_tiny_model("bert")
    before = backbone_identity(model)
    assert backbone_identity(model) == before  # cached, and the same
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[3, 4] += 0.01
    assert backbone_identity(model)["fingerprint"] != before["fingerprint"]


def checkpoint_dir(tmp_path):
    make_tiny_model("bert").save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.parametrize("saved_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loaded_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_an_adapter_loads_on_the_same_checkpoint_in_another_dtype(saved_dtype, loaded_dtype, tmp_path):
    base_dir = checkpoint_dir(tmp_path)
    trained_on = AutoModelForSequenceClassification.from_pretrained(base_dir, dtype=saved_dtype)
    reference = saved_adapter(tmp_path / "adapter", trained_on)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, dtype=loaded_dtype)
    if {saved_dtype, loaded_dtype} == {torch.bfloat16, torch.float16}:
        # Two different roundings of the float32 checkpoint: no exact match exists; say so.
        with pytest.raises(AdapterMismatchError, match="Load the base in float32"):
            peftkit.PeftModel.from_pretrained(base, tmp_path / "adapter")
        return
    loaded = peftkit.PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert loaded.adapter.special_token_embeddings.dtype == torch.float32
    batch = make_batch("bert")
    with torch.no_grad():
        expected = reference(**batch).logits.float()
        got = loaded(**batch).logits
    assert got.dtype == loaded_dtype
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)


def test_identity_records_dtype_and_both_fingerprints():
    identity = backbone_identity(make_tiny_model("bert"))
    assert identity["dtype"] == "float32"
    assert len(identity["fingerprint"]) == 32 and len(identity["fingerprint_float16"]) == 32
    as_bf16 = make_tiny_model("bert").to(torch.bfloat16)
    assert backbone_identity(as_bf16)["fingerprint"] == identity["fingerprint"]
    as_fp16 = make_tiny_model("bert").to(torch.float16)
    assert backbone_identity(as_fp16)["fingerprint_float16"] == identity["fingerprint_float16"]


def test_adapters_saved_with_the_sampled_fingerprint_still_load():
    model = make_tiny_model("bert")
    legacy = {k: v for k, v in backbone_identity(model).items()
              if k not in ("fingerprint_method", "fingerprint_float16", "dtype")}
    legacy["fingerprint"] = _sampled_fingerprint(model.bert)
    check_backbone_identity(legacy, make_tiny_model("bert"), where="an old adapter")
    with pytest.raises(AdapterMismatchError, match="fingerprint"):
        check_backbone_identity(legacy, make_tiny_model("bert", seed=1), where="an old adapter")

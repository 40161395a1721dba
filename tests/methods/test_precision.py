"""Half-precision bases: the hook methods' tables (and WeGeFT's φ, ψ, LoRA fusion's coefficients and magnitudes) stay float32 (as PEFT's autocast_adapter_dtype),
their vectors are cast to the hidden state's dtype, and nothing needs the base to stay float32."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

import peftkit
from tests.methods.test_lora_fusion import make_pool_lora
from tests.methods.test_vpt import images, tiny_vit
from tests.tiny_models import FAMILY_CONFIGS, make_batch, make_tiny_model, special_ids

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 0.1, torch.float16: 0.02}


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list[str]:
    directory = tmp_path_factory.mktemp("pool")
    return [make_pool_lora(directory / f"lora{k}", seed=k, model=make_tiny_model("bert")) for k in range(2)]


def adapted(method: str, dtype: torch.dtype, pool: list[str] | None = None):
    """(PeftModel over a ``dtype`` base, its inputs, the name of its float32 table)."""
    if method in ("pasta", "wegeft", "lora-fusion"):
        base = make_tiny_model("bert").to(dtype)
        config = {
            "pasta": lambda: peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal"),
            "wegeft": lambda: peftkit.WeGeFTConfig(rank=4, dropout=0.0),
            "lora-fusion": lambda: peftkit.LoraFusionConfig(pool=pool),
        }[method]()
        return peftkit.get_peft_model(base, config), {**make_batch("bert"), "labels": torch.tensor([0, 2])}
    base = tiny_vit().to(dtype)
    config = peftkit.VptConfig(num_prompt_tokens=3, deep=method == "vpt-deep")
    return peftkit.get_peft_model(base, config), {"pixel_values": images().to(dtype), "labels": torch.tensor([0, 1, 2, 0])}


@pytest.mark.parametrize("method", ["pasta", "vpt-shallow", "vpt-deep", "wegeft", "lora-fusion"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_float32_tables_on_a_base_of_any_dtype(method, dtype, pool):
    torch.manual_seed(0)
    model, inputs = adapted(method, dtype, pool)
    table = next(param for name, param in model.adapter.named_parameters())
    assert table.dtype == torch.float32
    with torch.no_grad():
        reference = adapted(method, torch.float32, pool)[0]
        reference.adapter.load_state_dict(model.adapter.state_dict())
        expected = reference(**{**inputs, **_float(inputs)}).logits
    outputs = model(**inputs)
    assert outputs.logits.dtype == dtype
    torch.testing.assert_close(outputs.logits.float(), expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    outputs.loss.backward()
    assert table.grad.dtype == torch.float32 and table.grad.abs().sum() > 0
    before = table.detach().clone()
    torch.optim.AdamW([table], lr=1e-2).step()
    assert not torch.equal(table, before)


def _float(inputs):
    return {k: v.float() for k, v in inputs.items() if v.is_floating_point()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_base_cast_after_wrapping(dtype):
    model, inputs = adapted("pasta", torch.float32)
    model.base_model.to(dtype)  # the table is the adapter's, still float32
    cast_first, _ = adapted("pasta", dtype)
    cast_first.adapter.load_state_dict(model.adapter.state_dict())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, cast_first(**inputs).logits)


def test_gradient_scaler_unscales_pasta_on_a_float16_base():
    """AMP's GradScaler refuses float16 gradients; a float16 PASTA table had them."""
    torch.manual_seed(0)
    base = BertModel(FAMILY_CONFIGS["bert"]()).eval().to(torch.float16)
    model = peftkit.get_peft_model(base, peftkit.PastaConfig(special_token_ids=special_ids("bert"), init="normal"))
    table = model.adapter.special_token_embeddings
    optimizer = torch.optim.SGD([table], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    loss = model(**make_batch("bert")).pooler_output.float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    before = table.detach().clone()
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(table, before)


def test_autocast_bfloat16_on_a_float32_base():
    model, inputs = adapted("pasta", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs).loss
    loss.backward()
    assert model.adapter.special_token_embeddings.grad.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_wegeft_merges_its_float32_factors_into_a_half_precision_base(dtype):
    model, inputs = adapted("wegeft", dtype)
    with torch.no_grad():
        for phi in model.adapter.phi.values():
            phi.normal_(std=0.1)
        adapted_logits = model(**inputs).logits
        merged = model.merge_and_unload()
        assert merged.bert.encoder.layer[0].attention.self.query.weight.dtype == dtype
        torch.testing.assert_close(merged(**inputs).logits, adapted_logits, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])

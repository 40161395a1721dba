"""LoRA fusion: frozen PEFT LoRA pool, only coefficients and magnitudes train, one-hot = that LoRA."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file

import peftkit
from peftkit.errors import AdapterFileError, AdapterMismatchError, MethodConfigError
from peftkit.methods.lora_fusion import LoraFusionConfig
from tests.tiny_models import make_batch, make_tiny_model

LABELS = torch.tensor([0, 1])


def make_pool_lora(directory, *, seed: int, model=None, r: int = 4, alpha: int = 8,
                   targets=("query", "value"), **lora_options):
    """A PEFT LoRA on the tiny BERT with random (non-zero) lora_B, saved to ``directory``."""
    model = copy.deepcopy(model if model is not None else make_tiny_model("bert", num_labels=2))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets if isinstance(targets, str) else list(targets), **lora_options))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.3)
    lora.save_pretrained(str(directory))
    return str(directory)


@pytest.fixture
def pool(tmp_path):
    # Different alphas on purpose: fusion must reproduce each adapter with its own α/r.
    return [make_pool_lora(tmp_path / f"lora{k}", seed=k, alpha=alpha) for k, alpha in enumerate((8, 16, 4))]


def fuse(pool, **options):
    return peftkit.get_peft_model(make_tiny_model("bert", num_labels=2), LoraFusionConfig(pool=pool, **options))


def train_steps(peft_model, steps: int = 3):
    peft_model.train()
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(steps):
        peft_model(**make_batch("bert"), labels=LABELS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


def test_only_coefficients_magnitudes_and_head_train(pool):
    peft_model = fuse(pool)
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    magnitudes = {f"adapter.magnitudes.bert-encoder-layer-{layer}-attention-self-{module}"
                  for layer in (0, 1) for module in ("query", "value")}
    heads = {"base_model.classifier.weight", "base_model.classifier.bias"}
    assert trainable == {"adapter.fusion_coefficients"} | magnitudes | heads
    assert peft_model.adapter.fusion_coefficients.shape == (3, 2)  # K pool adapters × layers
    assert all(not buffer.requires_grad for buffer in peft_model.adapter.buffers())

    peft_model.train()
    peft_model(**make_batch("bert"), labels=LABELS).loss.backward()
    for name, param in peft_model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert param.grad is None, f"frozen {name} got a gradient"
    assert all(buffer.grad is None for buffer in peft_model.adapter.buffers())


def test_pool_and_backbone_bit_identical_after_training(pool):
    peft_model = fuse(pool)
    backbone_before = {n: p.detach().clone() for n, p in peft_model.base_model.bert.named_parameters()}
    coefficients_before = peft_model.adapter.fusion_coefficients.detach().clone()
    train_steps(peft_model)

    assert not torch.equal(peft_model.adapter.fusion_coefficients, coefficients_before)
    for name, param in peft_model.base_model.bert.named_parameters():
        assert torch.equal(param, backbone_before[name]), f"backbone weight {name} changed"
    for k, directory in enumerate(pool):
        saved = load_file(f"{directory}/adapter_model.safetensors")
        for layer in (0, 1):
            for module in ("query", "value"):
                factors = peft_model.adapter.pool[f"bert-encoder-layer-{layer}-attention-self-{module}"]
                prefix = f"base_model.model.bert.encoder.layer.{layer}.attention.self.{module}"
                assert torch.equal(factors.lora_A[k], saved[f"{prefix}.lora_A.weight"])
                assert torch.equal(factors.lora_B[k], saved[f"{prefix}.lora_B.weight"])


def test_pool_is_not_saved_with_the_task(pool, tmp_path):
    peft_model = fuse(pool)
    peft_model.save_pretrained(tmp_path / "task")
    saved = load_file(str(tmp_path / "task" / "adapter_model.safetensors"))
    assert not any("pool" in key or "lora_" in key for key in saved)
    assert sum(t.numel() for t in saved.values()) == 3 * 2 + 4 * 32 + (2 * 32 + 2)  # w, m, head
    record = json.loads((tmp_path / "task" / "adapter_config.json").read_text())
    assert record["peft_type"] == "LORA_FUSION"
    assert len(record["pool"]) == len(record["pool_sha256"]) == 3


def set_one_hot(peft_model, k: int) -> None:
    """w = one-hot on adapter k and m = ‖W0 + ΔW_k‖_col: then W' must be exactly W0 + ΔW_k."""
    adapter = peft_model.adapter
    with torch.no_grad():
        adapter.fusion_coefficients.zero_()
        adapter.fusion_coefficients[k] = 1.0
        for key in adapter.magnitudes:
            base_weight = peft_model.base_model.get_submodule(key.replace("-", ".")).weight
            adapter.magnitudes[key].copy_(torch.linalg.vector_norm(base_weight + adapter.delta_weight(key), dim=1))


def test_one_hot_coefficients_equal_that_lora_loaded_by_peft(pool):
    peft_model = fuse(pool).eval()
    batch = make_batch("bert")
    logits_seen = []
    for k, directory in enumerate(pool):
        set_one_hot(peft_model, k)
        reference = peft.PeftModel.from_pretrained(make_tiny_model("bert", num_labels=2), directory).eval()
        with torch.no_grad():
            expected, fused = reference(**batch).logits, peft_model(**batch).logits
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
        logits_seen.append(fused)
    assert not torch.allclose(logits_seen[0], logits_seen[1], atol=1e-3)  # the pool adapters differ


def test_pool_made_on_the_bare_backbone_fuses_into_a_task_model(tmp_path):
    bare = make_tiny_model("bert", num_labels=2).bert  # keys "base_model.model.encoder.layer..."
    directory = make_pool_lora(tmp_path / "bare", seed=3, model=bare)
    assert any(k.startswith("base_model.model.encoder.") for k in load_file(f"{directory}/adapter_model.safetensors"))
    peft_model = fuse([directory]).eval()
    set_one_hot(peft_model, 0)
    reference = peft.PeftModel.from_pretrained(make_tiny_model("bert", num_labels=2).bert, directory).eval()
    batch = make_batch("bert")
    with torch.no_grad():
        expected = peft_model.base_model.classifier(reference(**batch).pooler_output)
        torch.testing.assert_close(peft_model(**batch).logits, expected, rtol=1e-5, atol=1e-5)


def test_save_load_gives_identical_logits(pool, tmp_path):
    peft_model = fuse(pool)
    train_steps(peft_model)
    peft_model.save_pretrained(tmp_path / "task")
    loaded = peftkit.PeftModel.from_pretrained(make_tiny_model("bert", num_labels=2), tmp_path / "task")
    batch = make_batch("bert")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, peft_model(**batch).logits)
    assert loaded.peft_config.pool == peft_model.peft_config.pool


def test_changed_pool_is_refused_on_load(pool, tmp_path):
    fuse(pool).save_pretrained(tmp_path / "task")
    make_pool_lora(pool[1], seed=99)  # the pool adapter is retrained in place
    with pytest.raises(AdapterMismatchError, match="changed since"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert", num_labels=2), tmp_path / "task")


def test_loss_adds_l1_on_coefficients(pool):
    peft_model = fuse(pool, l1_weight=0.1).eval()
    batch = make_batch("bert")
    with torch.no_grad():
        logits = peft_model(**batch).logits
        loss = peft_model(**batch, labels=LABELS).loss
        regularization = peft_model.adapter.regularization_loss()
    expected_l1 = 0.1 * peft_model.adapter.fusion_coefficients.abs().mean()
    torch.testing.assert_close(regularization, expected_l1)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, LABELS) + expected_l1)


def test_magnitude_init_base_and_fused(pool):
    base = fuse(pool, magnitude_init="base")
    query = base.base_model.bert.encoder.layer[0].attention.self.query
    torch.testing.assert_close(base.adapter.magnitudes[query.key], torch.linalg.vector_norm(query.weight, dim=1))

    torch.manual_seed(0)
    fused = fuse(pool, magnitude_init="fused")
    query = fused.base_model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        direction = query.weight + fused.adapter.delta_weight(query.key)
        torch.testing.assert_close(fused.adapter.fused_weight(query.key, query.weight), direction)
        assert not torch.allclose(direction, query.weight, atol=1e-3)  # Xavier w ≠ 0: ΔW ≠ 0


def test_gradient_of_coefficients_matches_finite_differences(pool):
    peft_model = fuse(pool, coefficient_init="mean", detach_column_norm=False).double().eval()
    batch = make_batch("bert")

    def loss():
        return peft_model(**batch, labels=LABELS).loss

    loss().backward()
    coefficients = peft_model.adapter.fusion_coefficients
    analytic = coefficients.grad[1, 0].item()
    step = 1e-6
    with torch.no_grad():
        coefficients[1, 0] += step
        up = loss().item()
        coefficients[1, 0] -= 2 * step
        down = loss().item()
    assert analytic == pytest.approx((up - down) / (2 * step), rel=1e-5, abs=1e-9)


def test_merge_and_unload_matches_fused_model(pool):
    peft_model = fuse(pool)
    train_steps(peft_model)
    batch = make_batch("bert")
    with torch.no_grad():
        fused_logits = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()
        assert type(merged.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
        torch.testing.assert_close(merged(**batch).logits, fused_logits, rtol=1e-5, atol=1e-5)


def test_unload_restores_the_frozen_model(pool):
    batch = make_batch("bert")
    with torch.no_grad():
        frozen_logits = make_tiny_model("bert", num_labels=2)(**batch).logits
        model = fuse(pool).unload()
        assert torch.equal(model(**batch).logits, frozen_logits)


def test_empty_pool_is_rejected():
    with pytest.raises(MethodConfigError, match="pool is empty"):
        fuse([])


def test_pool_of_different_ranks_is_rejected(pool, tmp_path):
    other = make_pool_lora(tmp_path / "rank8", seed=5, r=8)
    with pytest.raises(MethodConfigError, match=r"r=4 .* r=8"):
        fuse([pool[0], other])


def test_pool_of_different_target_modules_is_rejected(pool, tmp_path):
    other = make_pool_lora(tmp_path / "query_key", seed=5, targets=("query", "key"))
    with pytest.raises(MethodConfigError, match="different modules.*key"):
        fuse([pool[0], other])


def test_same_modules_named_differently_are_compatible(pool, tmp_path):
    other = make_pool_lora(tmp_path / "regex", seed=5, targets=r".*\.(value|query)")
    assert fuse([pool[0], other]).adapter.fusion_coefficients.shape == (2, 2)


def test_pool_for_another_base_model_is_rejected(pool, tmp_path):
    wider = make_tiny_model("bert", num_labels=2)
    wider = type(wider)(type(wider.config)(**{**wider.config.to_dict(), "hidden_size": 48}))
    other = make_pool_lora(tmp_path / "wider", seed=5, model=wider)
    with pytest.raises(AdapterMismatchError, match="another base model"):
        fuse([other])

    renamed = make_pool_lora(tmp_path / "renamed", seed=6)
    record = json.loads((tmp_path / "renamed" / "adapter_config.json").read_text())
    record["base_model_name_or_path"] = "some-org/another-bert"
    (tmp_path / "renamed" / "adapter_config.json").write_text(json.dumps(record))
    model = make_tiny_model("bert", num_labels=2)
    model.config._name_or_path = "my-org/tiny-bert"
    with pytest.raises(AdapterMismatchError, match="another-bert"):
        peftkit.get_peft_model(model, LoraFusionConfig(pool=[renamed]))
    first = json.loads((tmp_path / "lora0" / "adapter_config.json").read_text())
    first["base_model_name_or_path"] = "my-org/tiny-bert"
    (tmp_path / "lora0" / "adapter_config.json").write_text(json.dumps(first))
    with pytest.raises(AdapterMismatchError, match="different base models"):
        fuse([pool[0], renamed])


def test_non_lora_and_dora_pool_entries_are_rejected(tmp_path):
    pasta = peftkit.get_peft_model(make_tiny_model("bert", num_labels=2), peftkit.PastaConfig(special_token_ids=[2, 3]))
    pasta.save_pretrained(tmp_path / "pasta")
    with pytest.raises(MethodConfigError, match="'pasta' adapter"):
        fuse([str(tmp_path / "pasta")])
    dora = make_pool_lora(tmp_path / "dora", seed=1, use_dora=True)
    with pytest.raises(MethodConfigError, match="DoRA"):
        fuse([dora])
    with pytest.raises(AdapterFileError, match="not a PEFT adapter directory"):
        fuse([str(tmp_path / "missing")])

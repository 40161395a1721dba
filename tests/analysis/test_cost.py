"""Cost report: figures on tiny adapters equal the ones computed by hand from the tiny BERT.

Tiny BERT (tests/tiny_models.py): vocab 100, hidden 32, 2 layers, intermediate 64, 64 positions,
2 token types; the 2-label classifier head is 32·2 + 2 = 66 parameters.
"""

from __future__ import annotations

import os

import peft
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import peftkit
from peftkit.analysis.cost import cost_command, cost_report, format_cost_table
from tests.tiny_models import make_tiny_model

HEAD = 32 * 2 + 2
# Backbone biases: embeddings LayerNorm 32; per layer q,k,v,o 4·32 + LayerNorm 32 + intermediate 64
# + output 32 + LayerNorm 32 = 288; pooler 32.
BIASES = 32 + 2 * 288 + 32
# Every backbone weight: embeddings 100·32 + 64·32 + 2·32 + LayerNorm 64 = 5376; per layer
# 4·(32·32 + 32) + 64 + (32·64 + 64) + (64·32 + 32) + 64 = 8544; pooler 32·32 + 32 = 1056.
BACKBONE = 5376 + 2 * 8544 + 1056
QUERY_VALUE_MATRICES = 4 * 32 * 32  # query and value in both layers


def tiny():
    return make_tiny_model("bert", num_labels=2)


def adapter_bytes(directory) -> int:
    return sum(os.path.getsize(directory / name) for name in ("adapter_config.json", "adapter_model.safetensors"))


def test_bytes_per_task_count_every_file_a_task_needs_as_compare_does(tmp_path):
    """A served task needs its labels (peftkit_task.json) too; compare's "adapter bytes" counts the same files."""
    from peftkit.training.compare import _adapter_bytes

    directory = save_peftkit(tmp_path, "pasta", peftkit.PastaConfig(special_token_ids=[2, 3]))
    (directory / "peftkit_task.json").write_text('{"label_names": ["a", "b"]}')
    (directory / "notes.txt").write_text("not part of the task")
    report = cost_report(directory)
    assert report["bytes_per_task"] == adapter_bytes(directory) + os.path.getsize(directory / "peftkit_task.json")
    assert report["bytes_per_task"] == _adapter_bytes(directory)


def save_peftkit(tmp_path, name, config, model=None):
    peft_model = peftkit.get_peft_model(model if model is not None else tiny(), config)
    peft_model.save_pretrained(tmp_path / name)
    return tmp_path / name


def save_peft_lora(directory, seed=0):
    lora = peft.get_peft_model(tiny(), peft.LoraConfig(r=4, target_modules=["query", "value"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_()
    lora.save_pretrained(str(directory))
    return directory


def test_sanity_of_the_hand_computed_figures():
    model = tiny()
    assert sum(p.numel() for p in model.bert.parameters()) == BACKBONE
    assert sum(p.numel() for n, p in model.bert.named_parameters() if n.endswith(".bias")) == BIASES


def test_pasta_costs_its_tables_and_rewrites_nothing(tmp_path):
    directory = save_peftkit(tmp_path, "pasta", peftkit.PastaConfig(special_token_ids=[2, 3]))
    report = cost_report(directory, merged=True)
    assert report["method"] == "pasta"
    assert report["trainable_parameters"] == 2 * 3 * 32 + HEAD  # layers × slots × hidden + head
    assert report["head_parameters"] == HEAD
    assert report["backbone_parameters"] == BACKBONE
    assert report["trainable_percent"] == pytest.approx(100 * (192 + HEAD) / BACKBONE)
    assert report["bytes_per_task"] == adapter_bytes(directory)
    assert report["backbone_weights_rewritten_per_switch"] == 0
    assert report["merged"] is False and "cannot be merged" in report["notes"][0]


def test_peft_lora_unmerged_and_merged(tmp_path):
    directory = save_peft_lora(tmp_path / "lora")
    unmerged, merged = cost_report(directory), cost_report(directory, merged=True)
    assert unmerged["format"] == "peft" and unmerged["method"] == "lora"
    assert unmerged["trainable_parameters"] == 4 * (4 * 32 + 32 * 4)
    assert unmerged["backbone_weights_rewritten_per_switch"] == 0
    assert merged["backbone_weights_rewritten_per_switch"] == QUERY_VALUE_MATRICES
    assert merged["backbone_tensors_rewritten_per_switch"] == 4
    assert merged["bytes_per_task"] == adapter_bytes(directory)
    assert "README.md" in merged["files"]  # listed, but not part of what a task needs


def test_peft_ia3_merged_rewrites_its_targets_and_prompt_tuning_cannot_merge(tmp_path):
    """IA3 merges by scaling key and value (weight and bias) and the feed-forward output weight;
    prompt tuning's virtual tokens have nothing to merge into."""
    model = tiny()
    ia3 = peft.get_peft_model(model, peft.IA3Config(task_type="SEQ_CLS", target_modules=["key", "value", "output.dense"],
                                                    feedforward_modules=["output.dense"]))
    ia3.save_pretrained(str(tmp_path / "ia3"))
    unmerged = cost_report(tmp_path / "ia3")
    assert unmerged["method"] == "ia3" and unmerged["mergeable"] is True
    assert unmerged["backbone_weights_rewritten_per_switch"] == 0
    merged = cost_report(tmp_path / "ia3", merged=True, model=tiny())
    # per layer: key, value 32×32 + bias 32 each; the feed-forward output.dense 32×64, bias untouched.
    # The attention output projection ("attention.output.dense") matches "output.dense" too, and as
    # a feed-forward module keeps its bias: 32×32.
    per_layer = 2 * (32 * 32 + 32) + 32 * 64 + 32 * 32
    assert merged["merged"] is True and merged["backbone_weights_rewritten_per_switch"] == 2 * per_layer
    assert merged["backbone_tensors_rewritten_per_switch"] == 2 * 6

    prompt = peft.get_peft_model(tiny(), peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))
    prompt.save_pretrained(str(tmp_path / "prompt"))
    report = cost_report(tmp_path / "prompt", merged=True)
    assert report["mergeable"] is False and report["merged"] is False
    assert report["backbone_weights_rewritten_per_switch"] == 0 and "cannot be merged" in report["notes"][0]


def test_bitfit_rewrites_all_biases_and_full_rewrites_everything(tmp_path):
    bitfit = cost_report(save_peftkit(tmp_path, "bitfit", peftkit.BitFitConfig()))
    assert bitfit["trainable_parameters"] == BIASES + HEAD
    assert bitfit["method_parameters"] == BIASES
    assert bitfit["backbone_weights_rewritten_per_switch"] == BIASES
    full = cost_report(save_peftkit(tmp_path, "full", peftkit.FullFinetuneConfig()))
    assert full["backbone_weights_rewritten_per_switch"] == BACKBONE
    assert full["trainable_parameters"] == BACKBONE + HEAD


def test_linear_probe_merged_rewrites_nothing_without_building_a_model(tmp_path):
    report = cost_report(save_peftkit(tmp_path, "linear", peftkit.LinearProbeConfig()), merged=True)
    assert report["trainable_parameters"] == report["head_parameters"] == HEAD
    assert report["merged"] is True and report["backbone_weights_rewritten_per_switch"] == 0


def test_wegeft_rewrites_its_target_matrices_only_when_merged(tmp_path):
    model = AutoModelForSequenceClassification.from_config(tiny().config)
    model.save_pretrained(tmp_path / "base")  # so the adapter records a base model path
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    directory = save_peftkit(tmp_path, "wegeft", peftkit.WeGeFTConfig(rank=8, alpha=16.0), model=base)
    unmerged = cost_report(directory)
    assert unmerged["method_parameters"] == 2 * (32 * 8 + 8 * 32)  # one (φ, ψ) per module type
    assert unmerged["backbone_weights_rewritten_per_switch"] == 0
    merged = cost_report(directory, merged=True)  # builds the base model from its config
    assert merged["backbone_weights_rewritten_per_switch"] == QUERY_VALUE_MATRICES
    assert merged["backbone_tensors_rewritten_per_switch"] == 4
    assert cost_report(directory, merged=True, model=tiny())["backbone_weights_rewritten_per_switch"] == QUERY_VALUE_MATRICES


def test_lora_fusion_costs_coefficients_and_magnitudes_and_reports_the_shared_pool(tmp_path):
    pool = [save_peft_lora(tmp_path / f"pool{k}", seed=k) for k in range(3)]
    config = peftkit.LoraFusionConfig(pool=[str(p) for p in pool])
    directory = save_peftkit(tmp_path, "fusion", config)
    report = cost_report(directory)
    assert report["method_parameters"] == 3 * 2 + 4 * 32  # K × layers coefficients + magnitudes
    assert report["trainable_parameters"] == 3 * 2 + 4 * 32 + HEAD
    assert report["backbone_weights_rewritten_per_switch"] == 0
    assert report["shared_pool"] == {
        "adapters": 3,
        "parameters": 3 * 4 * (4 * 32 + 32 * 4),
        "bytes": sum(adapter_bytes(p) for p in pool),
    }
    merged = cost_report(directory, merged=True, model=tiny())
    assert merged["backbone_weights_rewritten_per_switch"] == QUERY_VALUE_MATRICES


def test_table_and_command_print_the_figures(tmp_path, capsys):
    directory = save_peft_lora(tmp_path / "lora")
    report = cost_command(str(directory), merged=True)
    printed = capsys.readouterr().out
    assert printed.strip() == format_cost_table([report])
    assert "| lora | lora | 1,024 |" in printed and "4,096 (merged)" in printed
    assert len(printed.strip().splitlines()) == 3


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(peftkit.errors.AdapterFileError, match="not an adapter directory"):
        cost_report(tmp_path)


@pytest.mark.parametrize(("method", "own"), [
    # per layer: key and value scale their 32 outputs; PEFT's "output.dense" matches both the
    # attention output (32 inputs) and the FFN output (64 inputs), scaled at their inputs
    ("ia3", 2 * (32 + 32 + 32 + 64)),
    ("prompt-tuning", 20 * 32),  # 20 virtual tokens of the embeddings' width
])
def test_peft_methods_count_their_own_tensors_apart_from_the_head(method, own, tmp_path):
    from peftkit import recipes

    model = tiny()
    config = recipes.build_method_config(method, model, {"kind": "text-classification"}, {})
    peftkit.get_peft_model(model, config).save_pretrained(str(tmp_path / method))  # peftkit records the backbone beside it
    report = cost_report(tmp_path / method)
    assert report["method"] == method.replace("-", "_") and report["format"] == "peft"
    assert (report["method_parameters"], report["head_parameters"]) == (own, HEAD)
    assert report["backbone_parameters"] == BACKBONE
    assert report["trainable_percent"] == pytest.approx(100 * (own + HEAD) / BACKBONE)

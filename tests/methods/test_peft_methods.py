"""PEFT's IA3, prompt tuning and P-tuning (and LoRA) pass through the path `peftkit train` uses:
recipes.build_method_config → peftkit.get_peft_model → save_adapter_with_task → PeftModel.from_pretrained.
Prefix tuning is refused wherever PEFT 0.21 cannot run it (see tests/test_recipes.py)."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import peftkit
from peftkit import recipes
from peftkit.errors import AdapterFileError, AdapterMismatchError
from peftkit.loading import save_adapter_with_task
from tests.test_cli import model_dir, sentiment_dir  # noqa: F401  (fixtures)
from tests.tiny_models import make_batch, make_tiny_model, save_tiny_bert_checkpoint

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEXT = {"kind": "text-classification", "label_names": ["a", "b", "c"]}
TOKENS = {"kind": "token-classification", "label_names": ["O", "B-PER", "I-PER"]}
# What PEFT trains for each method, by a piece of the parameter name.
PEFT_PARAMETERS = {"ia3": "ia3_l", "prompt-tuning": "prompt_encoder", "p-tuning": "prompt_encoder"}
METHODS = sorted(PEFT_PARAMETERS)


def adapt(method: str, model=None, task_info=TEXT, options=None):
    """As `peftkit train` does: the recipe's config for the model and task, then get_peft_model."""
    model = model if model is not None else make_tiny_model("bert")
    config = recipes.build_method_config(method, model, task_info, options)
    return peftkit.get_peft_model(model, config, backbone_dropout=recipes.backbone_dropout(method, options))


def train_steps(model, labels, steps: int = 3, lr: float = 5e-2) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        model(**make_batch("bert"), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_a_step_trains_only_pefts_parameters_and_the_head(method):
    model = adapt(method)
    assert isinstance(model, peft.PeftModel)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    own = {name for name in trainable if PEFT_PARAMETERS[method] in name}
    head = {name for name in trainable if ".modules_to_save." in name and ".classifier." in name}
    assert own and head and trainable == own | head, sorted(trainable - own - head)

    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    model.train()
    model(**make_batch("bert"), labels=torch.tensor([0, 2])).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (name in trainable), name  # gradients only where it trains
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2).step()
    changed = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    assert changed <= trainable
    assert changed & own and changed & head  # the method and the head both moved


@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_gives_identical_logits_and_records_the_backbone(method, tmp_path):
    model = adapt(method)
    train_steps(model, torch.tensor([0, 2]))
    batch = make_batch("bert")
    with torch.no_grad():
        expected = model(**batch).logits
    save_adapter_with_task(model, tmp_path, TEXT)
    assert {"adapter_config.json", "adapter_model.safetensors", "peftkit_task.json"} <= {p.name for p in tmp_path.iterdir()}
    options = json.loads((tmp_path / "peftkit_options.json").read_text())
    assert options["base_model_identity"]["model_type"] == "bert" and options["base_model_identity"]["num_layers"] == 2
    assert json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"]  # the head travels with it

    loaded = peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)
    assert isinstance(loaded, peft.PeftModel) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)
    plain = peft.PeftModel.from_pretrained(make_tiny_model("bert"), str(tmp_path)).eval()  # PEFT ignores peftkit's files
    with torch.no_grad():
        assert torch.equal(plain(**batch).logits, expected)


@pytest.mark.parametrize("method", METHODS)
def test_an_adapter_for_another_backbone_is_refused(method, tmp_path):
    model = adapt(method)
    model.save_pretrained(str(tmp_path))  # PEFT's own save, from Python: peftkit still records the backbone
    same_shapes = make_tiny_model("bert", seed=1)  # PEFT alone would load onto it without a word
    with pytest.raises(AdapterMismatchError, match="another backbone.*fingerprint"):
        peftkit.PeftModel.from_pretrained(same_shapes, tmp_path)
    wider = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=3))
    with pytest.raises(AdapterMismatchError, match="hidden_size is 32 but this model's is 48"):
        peftkit.PeftModel.from_pretrained(wider, tmp_path)


def test_a_corrupt_recorded_backbone_is_a_clear_error(tmp_path):
    adapt("ia3").save_pretrained(str(tmp_path))
    options = json.loads((tmp_path / "peftkit_options.json").read_text())
    (tmp_path / "peftkit_options.json").write_text(json.dumps({**options, "base_model_identity": "bert"}))
    with pytest.raises(AdapterFileError, match="base_model_identity must be a JSON object"):
        peftkit.PeftModel.from_pretrained(make_tiny_model("bert"), tmp_path)


def test_ia3_scales_pefts_default_modules_and_trains_token_classification():
    model = adapt("ia3", make_tiny_model("bert", token_classification=True), TOKENS)
    config = model.peft_config["default"]
    assert set(config.target_modules) == {"key", "value", "output.dense"} and set(config.feedforward_modules) == {"output.dense"}
    assert config.task_type == "TOKEN_CLS"
    labels = torch.tensor([[0, 1, 2, 0, 0, 1, 2, 0], [0, 1, 0, 0, -100, -100, -100, -100]])
    before = model(**make_batch("bert")).logits
    assert before.shape == (2, 8, 3)  # one logit row per token: IA3 leaves the sequence alone
    train_steps(model, labels)
    assert not torch.equal(model(**make_batch("bert")).logits, before)


def test_prompt_tuning_widths_follow_the_word_embeddings():
    """ELECTRA's word embeddings (16) are narrower than its layers (32): PEFT alone would take
    hidden_size for the virtual tokens and fail at the first forward."""
    for method in ("prompt-tuning", "p-tuning"):
        model = adapt(method, make_tiny_model("electra"))
        assert model.peft_config["default"].token_dim == 16
        assert model(**make_batch("electra")).logits.shape == (2, 3)
    distilbert = adapt("prompt-tuning", make_tiny_model("distilbert"))  # PEFT cannot read dim/n_heads itself
    assert distilbert.peft_config["default"].token_dim == 32
    assert distilbert(**make_batch("distilbert")).logits.shape == (2, 3)


def test_method_options_override_the_defaults():
    model = adapt("prompt-tuning", options={"num_virtual_tokens": 5, "backbone_dropout": False})
    assert model.peft_config["default"].num_virtual_tokens == 5
    assert recipes.build_method_config("p-tuning", make_tiny_model(), TEXT, {}).num_virtual_tokens == recipes.NUM_VIRTUAL_TOKENS
    assert all(m.p == 0.0 for m in model.get_base_model().bert.encoder.modules() if isinstance(m, torch.nn.Dropout))


def test_the_server_refuses_a_peft_adapter_it_cannot_mix_by_name(tmp_path):
    from peftkit.serving.multi_task import load_task_adapter

    save_adapter_with_task(adapt("ia3"), tmp_path, TEXT)
    with pytest.raises(AdapterMismatchError, match="PEFT IA3 adapter; PEFT mixes only plain LoRA"):
        load_task_adapter(make_tiny_model("bert").bert, "topic", tmp_path)


@pytest.mark.parametrize("method", ["ia3", "prompt-tuning"])
def test_peftkit_train_eval_and_predict_take_pefts_methods(method, model_dir, sentiment_dir, tmp_path, capsys):
    from peftkit.cli import EVAL_METRICS_FILE, main, predict_command
    from tests.test_cli import train_args

    output = tmp_path / method
    assert main(train_args(model_dir, sentiment_dir, output, "--method", method, "--method-options", '{"num_virtual_tokens": 4}'
                           if method == "prompt-tuning" else "{}")) == 0
    assert f"{method} on " in capsys.readouterr().out
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["peft_type"] == {"ia3": "IA3", "prompt-tuning": "PROMPT_TUNING"}[method]
    assert config["base_model_name_or_path"] == str(model_dir.resolve()) and config["modules_to_save"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["learning_rate"] == recipes.recipe(method)["learning_rate"]
    # eval rebuilds the base model the adapter records and reproduces the best epoch's score
    assert main(["eval", str(output)]) == 0
    assert json.loads((output / EVAL_METRICS_FILE).read_text())["accuracy"] == pytest.approx(metrics["best_metric"])
    result = predict_command(str(output), text="the movie was great")
    assert result["label"] in ("neg", "pos") and sum(result["probabilities"].values()) == pytest.approx(1.0)
    other = save_tiny_bert_checkpoint(tmp_path / "other-bert", initializer_range=0.02)
    with pytest.raises(AdapterMismatchError, match="another backbone"):
        predict_command(str(output), text="the movie was great", model=str(other))

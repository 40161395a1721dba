"""run_kernel end to end on a tiny saved masked LM and a small CSV task."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from peftkit.analysis.kernel_run import few_shot_indices, run_kernel
from peftkit.analysis.ntk import EmpiricalNTK
from peftkit.data import TaskConfig
from peftkit.errors import DataError, PeftkitError
from tests.tiny_models import make_tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

POSITIVE = ["the movie was great", "great actor", "a good plot", "good good movie", "the actor was great", "great plot"]
NEGATIVE = ["the movie was terrible", "bad actor", "a bad plot", "terrible terrible movie", "the actor was bad", "bad plot"]


@pytest.fixture
def tiny_run(tmp_path, bert_tokenizer):
    """A saved tiny BERT masked LM + tokenizer, and a CSV sentiment task whose labels are words."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    model_dir = tmp_path / "model"
    BertForMaskedLM(config).save_pretrained(model_dir)
    bert_tokenizer.save_pretrained(model_dir)
    rows = [(text, "great") for text in POSITIVE] + [(text, "terrible") for text in NEGATIVE]
    data = tmp_path / "sentiment.csv"
    data.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows * 2))
    return str(model_dir), TaskConfig(task=str(data), max_length=16, validation_fraction=0.25)


def test_prompt_kernel_run_writes_results_and_reuses_its_kernel(tiny_run, tmp_path):
    model_dir, task = tiny_run
    out = tmp_path / "run"
    results = run_kernel(model_dir, task, kernel="sgd", parameters="biases", num_train=8, num_eval=6,
                         chunk_size=3, output_dir=out, finetune_steps=2, progress=False)
    saved = json.loads((out / "kernel_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert (out / "kernel_plot.png").read_bytes()[:4] == b"\x89PNG"
    biases = sum(p.numel() for n, p in AutoModelForMaskedLM.from_pretrained(model_dir).named_parameters() if n.endswith("bias"))
    assert results["num_kernel_parameters"] == biases
    assert results["binary"] and results["num_outputs"] == 1 and results["label_words"] == ["great", "terrible"]
    assert (results["num_train"], results["num_eval"]) == (8, 6)
    for key in ("kernel_accuracy", "f0_accuracy", "finetune_accuracy", "majority_baseline"):
        assert 0.0 <= results[key] <= 1.0
    assert results["finetune_source"].startswith("computed") and not results["kernel_reused"]
    ntk = EmpiricalNTK.load(out / "kernels.safetensors")
    assert ntk.train_train.shape == (8, 1, 8, 1) and ntk.eval_train.shape == (6, 1, 8, 1)

    # same model, data and kernel: the saved kernel is reused, whatever the solver
    again = run_kernel(model_dir, task, kernel="sgd", parameters="biases", num_train=8, num_eval=6, solver="lstsq",
                       output_dir=out, finetune_accuracy=0.5, progress=False)
    assert again["kernel_reused"] and again["finetune_source"] == "given" and again["finetune_accuracy"] == 0.5
    other = run_kernel(model_dir, task, kernel="signgd", parameters="biases", num_train=8, num_eval=6,
                       output_dir=out, progress=False)
    assert not other["kernel_reused"] and other["finetune_accuracy"] is None


def test_pasta_kernel_uses_only_the_method_parameters(tiny_run, tmp_path):
    model_dir, task = tiny_run
    prompt = run_kernel(model_dir, task, method="pasta", kernel="asymmetric-signgd", num_train=6, num_eval=4,
                        output_dir=tmp_path / "prompt", progress=False)
    # 2 layers x 2 slots ([CLS], [SEP]) x hidden 32; the pretrained MLM head is not trained
    assert prompt["parameters"] == "trainable" and prompt["num_kernel_parameters"] == 2 * 2 * 32
    assert prompt["method_config"]["num_special_tokens"] == 2
    cls = run_kernel(model_dir, task, method="pasta", formulation="cls", num_train=6, num_eval=4,
                     output_dir=tmp_path / "cls", progress=False)
    # the [CLS] formulation trains a new head with the method: it is in the kernel, probe-initialised
    assert cls["num_kernel_parameters"] == 2 * 2 * 32 + (32 * 2 + 2)
    assert cls["head_init"] == "linear-probe" and cls["linear_probe_train_accuracy"] is not None
    assert cls["template"] is None


def test_bad_settings_are_refused(tiny_run, tmp_path):
    model_dir, task = tiny_run
    with pytest.raises(PeftkitError, match="formulation"):
        run_kernel(model_dir, task, formulation="regression", output_dir=tmp_path)
    with pytest.raises(PeftkitError, match="label words"):
        run_kernel(model_dir, task, label_words=["great"], num_train=4, num_eval=2, output_dir=tmp_path, progress=False)
    conll = tmp_path / "ner.conll"
    conll.write_text("john B-PER\nlives O\n\nparis B-LOC\n\n" * 4)
    with pytest.raises(DataError, match="text-classification"):
        run_kernel(model_dir, TaskConfig(task=str(conll)), output_dir=tmp_path)


def test_few_shot_indices_are_balanced_and_seeded():
    labels = [0] * 10 + [1] * 3 + [2] * 7
    chosen = few_shot_indices(labels, 9, seed=1, balanced=True)
    assert sorted(labels[i] for i in chosen) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert chosen == few_shot_indices(labels, 9, seed=1, balanced=True)
    assert chosen != few_shot_indices(labels, 9, seed=2, balanced=True)
    assert len(few_shot_indices(labels, 50, seed=0, balanced=True)) == 20


def test_a_trained_classification_head_is_kept(tiny_run, tmp_path, bert_tokenizer):
    _, task = tiny_run
    model = make_tiny_model("bert", num_labels=2)
    model_dir = tmp_path / "classifier"
    model.save_pretrained(model_dir)
    bert_tokenizer.save_pretrained(model_dir)
    results = run_kernel(str(model_dir), task, formulation="cls", parameters="biases", num_train=4, num_eval=4,
                         output_dir=tmp_path / "run", progress=False)
    assert results["linear_probe_train_accuracy"] is None
    assert any("kept" in note for note in results["notes"])


def test_peftkit_kernel_command_runs_on_a_method_and_writes_its_results(tiny_run, tmp_path):
    from peftkit.cli import main

    model_dir, task = tiny_run
    out = tmp_path / "cli-run"
    code = main(["kernel", "--model", model_dir, "--task", task.task, "--method", "pasta", "--kernel", "signgd",
                 "--num-train", "6", "--num-eval", "4", "--max-length", "16", "--output", str(out)])
    assert code == 0
    results = json.loads((out / "kernel_results.json").read_text())
    # PASTA on a 2-layer, 32-wide model: the kernel covers only its (layers x slots x hidden) table
    assert results["num_kernel_parameters"] == 2 * 2 * 32
    assert (results["num_train"], results["num_eval"]) == (6, 4)
    assert (out / "kernel_plot.png").is_file()


def test_causal_kernel_differentiates_the_function_icl_scores(tmp_path):
    """On a causal LM, f = the label words' next-token logits after the ICL template: their
    differences are ICL's zero-shot log-likelihood differences (one piece of verbalizer code)."""
    from peftkit.analysis.prompting import PromptOutput, causal_label_word_ids, encode_causal_prompt
    from peftkit.methods.icl import IclConfig, InContextClassifier
    from tests.tiny_models import make_byte_level_tokenizer, save_tiny_causal_lm

    model_dir = save_tiny_causal_lm(tmp_path / "causal")
    tokenizer = make_byte_level_tokenizer()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    template = IclConfig.template
    words = ["great", "terrible"]  # first tokens differ
    example = encode_causal_prompt(tokenizer, template, "the movie was good", max_length=64)
    classifier = InContextClassifier(model, tokenizer, IclConfig(num_demonstrations=0), words, ["x"], [0])
    assert example["input_ids"][0].tolist() == classifier.start_ids + classifier.example_ids("the movie was good")
    with torch.no_grad():
        logits = PromptOutput(model, causal_label_word_ids(tokenizer, template, words))(**example)[0].double()
    icl_scores = classifier.label_scores(["the movie was good"])[0][0]
    first_tokens = [tokens[0] for tokens in classifier.verbalizers]
    with torch.no_grad():
        full = model(input_ids=example["input_ids"]).logits[0, -1].double().log_softmax(-1)
    assert torch.allclose(full[first_tokens] - full[first_tokens].max(), logits - logits.max(), atol=1e-5)
    if all(len(tokens) == 1 for tokens in classifier.verbalizers):  # then ICL's score is exactly this log-softmax
        assert torch.allclose(icl_scores, full[first_tokens], atol=1e-5)
    else:  # ICL adds the later tokens' log-probabilities to the first token's
        assert torch.all(icl_scores <= full[first_tokens] + 1e-9)
    truncated = encode_causal_prompt(tokenizer, template, "great movie " * 50, max_length=30)
    assert truncated["input_ids"].shape[1] == 30 and truncated["mask_position"].item() == 29
    with pytest.raises(PeftkitError, match="begin differently"):
        causal_label_word_ids(tokenizer, template, ["positive", "post"])


def test_causal_kernel_run_on_a_tiny_causal_lm(tmp_path):
    from tests.tiny_models import save_tiny_causal_lm

    model_dir = save_tiny_causal_lm(tmp_path / "causal")
    rows = [(text, "great") for text in POSITIVE] + [(text, "terrible") for text in NEGATIVE]
    data = tmp_path / "sentiment.csv"
    data.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows * 2))
    task = TaskConfig(task=str(data), max_length=24, validation_fraction=0.25)
    out = tmp_path / "run"
    results = run_kernel(str(model_dir), task, formulation="causal", kernel="sgd", parameters="all", num_train=8, num_eval=6,
                         chunk_size=4, output_dir=out, finetune_steps=2, progress=False)
    assert results["formulation"] == "causal" and results["template"] == "Text: {text}\nCategory: {label}"
    assert results["binary"] and results["num_outputs"] == 1 and results["notes"] == []
    from transformers import AutoModelForCausalLM

    distinct = {id(p): p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters()}
    assert results["num_kernel_parameters"] == sum(distinct.values())
    for key in ("kernel_accuracy", "f0_accuracy", "finetune_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    ntk = EmpiricalNTK.load(out / "kernels.safetensors")
    assert ntk.train_train.shape == (8, 1, 8, 1)
    assert torch.allclose(ntk.train_train.squeeze(), ntk.train_train.squeeze().T, atol=1e-8)  # a Gram matrix

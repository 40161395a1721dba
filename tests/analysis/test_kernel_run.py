"""run_kernel end to end on a tiny saved masked LM and a small CSV task."""

from __future__ import annotations

import json

import numpy as np
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


def test_peftkit_kernel_command_runs_on_a_method_and_writes_its_results(tiny_run, tmp_path, capsys):
    from peftkit.cli import main

    model_dir, task = tiny_run
    out = tmp_path / "cli-run"
    code = main(["kernel", "--model", model_dir, "--task", task.task, "--method", "pasta", "--kernel", "signgd",
                 "--num-train", "6", "--num-eval", "4", "--max-length", "16", "--output", str(out)])
    assert code == 0
    results = json.loads((out / "kernel_results.json").read_text())
    # PASTA on a 2-layer, 32-wide model: the kernel covers only its (layers x slots x hidden) table
    assert results["num_kernel_parameters"] == 2 * 2 * 32
    assert results["solver"] == "logistic"  # the default outside the causal formulation
    assert (results["num_train"], results["num_eval"]) == (6, 4)
    assert (out / "kernel_plot.png").is_file()
    printed = capsys.readouterr().out  # the result is on screen, not only in the JSON
    assert f"kernel (logistic) {results['kernel_accuracy']:.4f}" in printed and "majority class" in printed
    assert str(out / "kernel_results.json") in printed


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


# -- LoRA on a causal LM: the kernel Malladi et al. compare with LoRA fine-tuning ---------------------------------

TOPICS = {"terrible": ["a terrible plot", "the actor was terrible", "terrible terrible movie", "so terrible", "terrible draw"],
          "actor": ["the actor was great", "a great actor", "actor of the year", "an actor rose", "actor and plot"],
          "movie": ["the movie was long", "a movie about shares", "movie of the match", "one movie", "movie merger"]}


@pytest.fixture
def causal_run(tmp_path):
    """A saved tiny Llama causal LM and a CSV task whose label names begin with distinct tokens."""
    from tests.tiny_models import save_tiny_causal_lm

    model_dir = save_tiny_causal_lm(tmp_path / "causal")
    data = tmp_path / "topics.csv"
    data.write_text("text,label\n" + "".join(f"{text},{label}\n" for label, texts in TOPICS.items() for text in texts))
    return str(model_dir), TaskConfig(task=str(data), max_length=24, validation_fraction=0.25)


def _lora_parameter_count(config, rank: int = 8) -> int:
    # q_proj: hidden -> heads * head_dim; v_proj: hidden -> kv_heads * head_dim; LoRA adds A (r x in) and B (out x r)
    head_dim = config.hidden_size // config.num_attention_heads
    q_out, v_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = rank * config.hidden_size * 2 + q_out * rank + v_out * rank
    return config.num_hidden_layers * per_layer


def test_causal_lora_kernel_is_over_the_lora_parameters_and_f0_is_icl(causal_run, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from peftkit.analysis.kernel_run import few_shot_indices
    from peftkit.data import load_task
    from peftkit.methods.icl import IclConfig, InContextClassifier

    model_dir, task = causal_run
    out = tmp_path / "run"
    results = run_kernel(model_dir, task, method="lora", formulation="causal", num_train=6, num_eval=4, chunk_size=4,
                         output_dir=out, finetune_steps=2, finetune_learning_rate=1e-2, progress=False)
    config = AutoConfig.from_pretrained(model_dir)
    assert results["parameters"] == "trainable"
    assert results["num_kernel_parameters"] == _lora_parameter_count(config)  # no head, no embedding, no base weight
    assert results["method_config"]["task_type"] == "CAUSAL_LM" and results["method_config"]["modules_to_save"] is None
    assert sorted(results["method_config"]["target_modules"]) == ["q_proj", "v_proj"]
    assert results["finetune_source"] == "computed: 2 Adam steps at lr 0.01, batch 8" and results["finetune_seconds"] >= 0
    assert not results["binary"] and results["num_outputs"] == 3  # one logit per label word
    ntk = EmpiricalNTK.load(out / "kernels.safetensors")
    assert ntk.train_train.shape == (6, 3, 6, 3) and ntk.eval_train.shape == (4, 3, 6, 3)
    assert all("lora_A" in name or "lora_B" in name for name in ntk.metadata["parameter_names"])

    # f0 is what ICL scores: the untrained model's logits of ICL's verbalizer first tokens after ICL's prompt
    # (LoRA starts as the identity, B = 0, so wrapping changed nothing)
    loaded = load_task(task)
    chosen = loaded.validation.select(few_shot_indices(loaded.validation["label"], 4, 0, balanced=False))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    classifier = InContextClassifier(model, AutoTokenizer.from_pretrained(model_dir), IclConfig(num_demonstrations=0),
                                     list(loaded.label_names), ["x"], [0])
    first_tokens = [tokens[0] for tokens in classifier.verbalizers]
    with torch.no_grad():
        icl_logits = torch.stack([
            model(input_ids=torch.tensor([classifier.start_ids + classifier.example_ids(text)])).logits[0, -1, first_tokens]
            for text in chosen["text"]
        ]).double()
    assert torch.allclose(ntk.eval_outputs, icl_logits, atol=1e-5)
    assert results["f0_accuracy"] == float((icl_logits.argmax(1).numpy() == np.asarray(chosen["label"])).mean())


def _wrapped_causal_lora(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftkit.analysis.kernel_run import wrap_with_method
    from peftkit.analysis.prompting import PromptOutput, causal_label_word_ids, encode_causal_prompt
    from peftkit.methods.icl import IclConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    wrapped, _ = wrap_with_method(AutoModelForCausalLM.from_pretrained(model_dir), "lora", {}, tokenizer, "causal")
    output = PromptOutput(wrapped, causal_label_word_ids(tokenizer, IclConfig.template, list(TOPICS)))
    labels = [index for index, texts in enumerate(TOPICS.values()) for _ in texts]
    examples = [encode_causal_prompt(tokenizer, IclConfig.template, text, max_length=24) for texts in TOPICS.values() for text in texts]
    return output, examples, np.asarray(labels), tokenizer.pad_token_id


def test_the_lora_kernel_at_initialisation_is_the_kernel_over_b(causal_run):
    """B = 0 at LoRA's start, so ∂f/∂A = 0: the kernel over A and B equals the kernel over B alone."""
    from peftkit.analysis.ntk import empirical_ntk

    output, examples, _, _ = _wrapped_causal_lora(causal_run[0])
    names = [name for name, p in output.named_parameters() if p.requires_grad]
    b_names = [name for name in names if "lora_B" in name]
    assert b_names and len(b_names) * 2 == len(names)
    both = empirical_ntk(output, examples[:4], examples[4:6], parameters="trainable", progress=False)
    only_b = empirical_ntk(output, examples[:4], examples[4:6], parameters=b_names, progress=False)
    assert torch.allclose(both.train_train, only_b.train_train) and torch.allclose(both.eval_train, only_b.eval_train)
    assert both.train_train.abs().max() > 0


def test_the_causal_short_finetune_trains_only_the_lora_parameters(causal_run):
    from peftkit.analysis.kernel_run import short_finetune

    output, examples, labels, pad_token_id = _wrapped_causal_lora(causal_run[0])
    before = {name: p.detach().clone() for name, p in output.named_parameters()}
    flags = {name: p.requires_grad for name, p in output.named_parameters()}
    accuracy = short_finetune(output, "trainable", examples, labels, examples[:3], labels[:3], steps=3, learning_rate=1e-2,
                              pad_token_id=pad_token_id)
    assert 0.0 <= accuracy <= 1.0
    changed = {name for name, p in output.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)
    assert any("lora_B" in name for name in changed)  # B left zero: the adapter now changes f
    assert {name: p.requires_grad for name, p in output.named_parameters()} == flags


def test_kernel_combinations_that_cannot_work_are_refused(causal_run, tiny_run, tmp_path):
    from peftkit.errors import MethodConfigError

    model_dir, task = causal_run
    with pytest.raises(PeftkitError, match="supports --method lora"):
        run_kernel(model_dir, task, method="pasta", formulation="causal", num_train=3, num_eval=2, output_dir=tmp_path, progress=False)
    with pytest.raises(PeftkitError, match="no kernel"):
        run_kernel(model_dir, task, method="icl", formulation="causal", num_train=3, num_eval=2, output_dir=tmp_path, progress=False)
    with pytest.raises(MethodConfigError, match="modules_to_save"):
        run_kernel(model_dir, task, method="lora", formulation="causal", method_options={"modules_to_save": ["lm_head"]},
                   num_train=3, num_eval=2, output_dir=tmp_path, progress=False)
    masked_lm_dir, masked_task = tiny_run
    with pytest.raises(PeftkitError, match="trains only a task head"):
        run_kernel(masked_lm_dir, masked_task, method="linear", num_train=4, num_eval=2, output_dir=tmp_path, progress=False)


def test_peftkit_kernel_command_runs_causal_lora(causal_run, tmp_path):
    from peftkit.cli import main

    model_dir, task = causal_run
    out = tmp_path / "cli-causal"
    code = main(["kernel", "--model", model_dir, "--task", task.task, "--formulation", "causal", "--method", "lora",
                 "--num-train", "6", "--num-eval", "3", "--max-length", "24", "--finetune-steps", "1",
                 "--finetune-learning-rate", "0.003", "--output", str(out)])
    assert code == 0
    results = json.loads((out / "kernel_results.json").read_text())
    assert results["method"] == "lora" and results["formulation"] == "causal"
    assert results["finetune_source"] == "computed: 1 Adam steps at lr 0.003, batch 8"
    # the logistic solver underfits causal kernels (benchmarks/results/kernel_causal_bbc_news.md):
    # the causal formulation solves by least squares unless --solver says otherwise
    assert results["solver"] == "lstsq"

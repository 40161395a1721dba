"""Empirical NTK: equals gradient dot products taken with plain autograd, over the right parameters."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import peftkit
from peftkit.analysis.ntk import EmpiricalNTK, cached_ntk, empirical_ntk, examples_fingerprint, select_parameters, trace_kernel
from peftkit.analysis.prompting import ClassifierOutput, PromptOutput, encode_classification, encode_prompt, label_word_ids
from peftkit.errors import PeftkitError
from tests.tiny_models import make_tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SENTENCES = ["the movie was great", "a bad plot", "the actor was good good good", "terrible", "a movie", "the plot was bad"]


def tiny_mlm(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return BertForMaskedLM(config).double().eval()


@pytest.fixture
def prompt_setup(bert_tokenizer):
    """A float64 tiny masked LM, f = [logit(terrible), logit(great)] at [MASK], 4 train + 2 eval prompts."""
    output = PromptOutput(tiny_mlm(), label_word_ids(bert_tokenizer, ["terrible", "great"]))
    examples = [encode_prompt(bert_tokenizer, "{sentence} It was [MASK].", s) for s in SENTENCES]
    return output, examples[:4], examples[4:]


def autograd_gradients(output, examples, names) -> torch.Tensor:
    """[examples, C, P]: ∇f_c by a plain loop of torch.autograd.grad over the named parameters."""
    params = dict(output.named_parameters())
    rows = []
    for example in examples:
        outputs = output(**example)[0]
        rows.append(torch.stack([
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(outputs[c], [params[n] for n in names], retain_graph=True)])
            for c in range(len(outputs))
        ]))
    return torch.stack(rows).double()


def explicit_kernel(rows: torch.Tensor, columns: torch.Tensor, kernel: str) -> torch.Tensor:
    if kernel == "signgd":
        rows = rows.sign()
    if kernel != "sgd":
        columns = columns.sign()
    return torch.einsum("iap,jbp->iajb", rows, columns)


@pytest.mark.parametrize("kernel", ["sgd", "signgd", "asymmetric-signgd"])
def test_kernel_equals_autograd_dot_products(prompt_setup, kernel):
    output, train, evaluation = prompt_setup
    ntk = empirical_ntk(output, train, evaluation, kernel=kernel, chunk_size=3, progress=False)
    names = list(select_parameters(output, "all"))
    train_grads, eval_grads = autograd_gradients(output, train, names), autograd_gradients(output, evaluation, names)
    assert ntk.num_parameters == train_grads.shape[2]
    assert ntk.train_train.shape == (4, 2, 4, 2) and ntk.eval_train.shape == (2, 2, 4, 2)
    assert ntk.train_train.dtype == torch.float64
    torch.testing.assert_close(ntk.train_train, explicit_kernel(train_grads, train_grads, kernel), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ntk.eval_train, explicit_kernel(eval_grads, train_grads, kernel), rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        f0 = torch.cat([output(**e) for e in evaluation])
    torch.testing.assert_close(ntk.eval_outputs, f0)


@pytest.mark.parametrize("kernel", ["sgd", "signgd"])
def test_symmetric_kernels_are_symmetric_psd(prompt_setup, kernel):
    output, train, _ = prompt_setup
    ntk = empirical_ntk(output, train, kernel=kernel, chunk_size=2, progress=False)
    matrix = ntk.train_train.reshape(8, 8)
    torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=0)
    eigenvalues = torch.linalg.eigvalsh(matrix)
    assert eigenvalues.min() >= -1e-8 * eigenvalues.max()
    assert eigenvalues.max() > 0


def test_signgd_entries_are_integers_bounded_by_parameter_count(prompt_setup):
    output, train, evaluation = prompt_setup
    ntk = empirical_ntk(output, train, evaluation, kernel="signgd", parameters="biases", progress=False)
    for block in (ntk.train_train, ntk.eval_train):
        assert torch.equal(block, block.round())
        assert block.abs().max() <= ntk.num_parameters
    # the diagonal counts the parameters with a non-zero gradient: at most all of them, and some
    diagonal = torch.einsum("icic->ic", ntk.train_train)
    assert (diagonal > 0).all() and (diagonal <= ntk.num_parameters).all()


def test_chunked_and_unchunked_agree_with_and_without_the_gradient_cache(prompt_setup):
    output, train, evaluation = prompt_setup
    whole = empirical_ntk(output, train, evaluation, kernel="asymmetric-signgd", chunk_size=len(train), progress=False)
    assert whole.metadata["gradient_passes"] == len(train) + len(evaluation)
    for chunk_size, cache in ((1, 2 << 30), (3, 0), (1, 0)):
        chunked = empirical_ntk(output, train, evaluation, kernel="asymmetric-signgd", chunk_size=chunk_size,
                                gradient_cache_bytes=cache, progress=False)
        torch.testing.assert_close(chunked.train_train, whole.train_train, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(chunked.eval_train, whole.eval_train, rtol=1e-12, atol=1e-12)
    assert chunked.metadata["train_gradients_cached"] is False
    assert chunked.metadata["gradient_passes"] > len(train) + len(evaluation)  # recomputed without a cache


def test_method_parameters_give_the_kernel_of_exactly_those_parameters(bert_tokenizer):
    """PASTA-wrapped [CLS] model: "trainable" = PASTA tables + classifier, and nothing else."""
    model = make_tiny_model("bert", num_labels=2).double()
    wrapped = peftkit.get_peft_model(model, peftkit.PastaConfig(num_special_tokens=2, init="normal"), tokenizer=bert_tokenizer)
    output = ClassifierOutput(wrapped, binary=True)
    examples = [encode_classification(bert_tokenizer, s) for s in SENTENCES[:4]]
    ntk = empirical_ntk(output, examples, parameters="trainable", progress=False)
    trainable = sorted(n for n, p in output.named_parameters() if p.requires_grad)
    assert sorted(ntk.metadata["parameter_names"]) == trainable
    assert any("special_token_embeddings" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert ntk.num_parameters == 2 * 2 * 32 + (32 * 2 + 2)  # 2 layers x 2 slots x hidden, + head
    grads = autograd_gradients(output, examples, trainable)
    torch.testing.assert_close(ntk.train_train, explicit_kernel(grads, grads, "sgd"), rtol=1e-9, atol=1e-9)
    # the same names given explicitly give the same kernel; all parameters give another one
    explicit = empirical_ntk(output, examples, parameters=trainable, progress=False)
    torch.testing.assert_close(explicit.train_train, ntk.train_train, rtol=1e-12, atol=1e-12)
    everything = empirical_ntk(output, examples, parameters="all", progress=False)
    assert everything.num_parameters > 100 * ntk.num_parameters
    assert not torch.allclose(everything.train_train, ntk.train_train)


def test_parameter_subsets(prompt_setup):
    output, _, _ = prompt_setup
    biases = select_parameters(output, "biases")
    assert biases and all(name.endswith(".bias") for name in biases)
    no_embeddings = select_parameters(output, "no-embeddings")
    assert not any("word_embeddings" in n or "position_embeddings" in n or "token_type_embeddings" in n for n in no_embeddings)
    assert "model.bert.embeddings.LayerNorm.weight" in no_embeddings
    everything = select_parameters(output, "all")
    # the MLM decoder is tied to the word embeddings: one tensor, counted once
    assert sum(p.numel() for p in everything.values()) == sum(p.numel() for p in output.model.parameters())
    output.requires_grad_(False)
    with pytest.raises(PeftkitError, match="get_peft_model"):
        select_parameters(output, "trainable")
    with pytest.raises(PeftkitError, match="no-embeddings"):
        select_parameters(output, "embeddings-only")
    with pytest.raises(PeftkitError, match="no parameter"):
        select_parameters(output, ["model.not.a.weight"])


def test_model_mode_is_restored_and_dropout_is_off_during_the_kernel(prompt_setup):
    output, train, _ = prompt_setup
    output.train()
    first = empirical_ntk(output, train[:2], progress=False)
    second = empirical_ntk(output, train[:2], progress=False)
    assert output.training
    torch.testing.assert_close(first.train_train, second.train_train, rtol=0, atol=0)


def test_save_load_and_reuse(prompt_setup, tmp_path):
    output, train, evaluation = prompt_setup
    calls = []

    def compute() -> EmpiricalNTK:
        calls.append(1)
        return empirical_ntk(output, train, evaluation, kernel="signgd", parameters="biases", progress=False)

    spec = {"kernel": "signgd", "examples": examples_fingerprint(train + evaluation)}
    path = tmp_path / "kernels.safetensors"
    first, reused = cached_ntk(path, spec, compute)
    assert not reused and path.is_file()
    again, reused = cached_ntk(path, spec, compute)
    assert reused and len(calls) == 1
    for name in ("train_train", "eval_train", "train_outputs", "eval_outputs"):
        torch.testing.assert_close(getattr(again, name), getattr(first, name), rtol=0, atol=0)
    assert (again.kernel, again.parameters, again.num_parameters) == ("signgd", "biases", first.num_parameters)
    _, reused = cached_ntk(path, {**spec, "kernel": "sgd"}, compute)  # another spec: recomputed
    assert not reused and len(calls) == 2
    path.write_bytes(b"not a kernel")
    with pytest.raises(PeftkitError, match="delete it"):
        EmpiricalNTK.load(path)


def test_trace_kernel_sums_matching_outputs():
    kernel = torch.arange(2 * 3 * 4 * 3, dtype=torch.float64).reshape(2, 3, 4, 3)
    expected = sum(kernel[:, c, :, c] for c in range(3))
    torch.testing.assert_close(trace_kernel(kernel), expected)


def test_bad_arguments_are_refused(prompt_setup):
    output, train, _ = prompt_setup
    with pytest.raises(PeftkitError, match="asymmetric-signgd"):
        empirical_ntk(output, train, kernel="adam")
    with pytest.raises(PeftkitError, match="at least one"):
        empirical_ntk(output, [])

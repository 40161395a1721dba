"""Empirical neural tangent kernel of a model's outputs (Malladi et al., ICML 2023).

For an output function f(x; θ) with C outputs and a subset θ_S of the parameters,

    sgd:                K(x, x') = <∇_S f(x), ∇_S f(x')>
    signgd:             K(x, x') = <sgn ∇_S f(x), sgn ∇_S f(x')>
    asymmetric-signgd:  K(x, ξ)  = <∇_S f(x), sgn ∇_S f(ξ)>      (x evaluated, ξ a training example)

one (C × C) block per pair of examples, so kernels are stored as [rows, C, train, C] tensors,
the layout of the official code (princeton-nlp/LM-Kernel-FT). Fine-tuning θ_S with SGD (or
SignGD / Adam) in the kernel regime behaves like kernel regression with that kernel.

How it is computed: one example at a time, ``torch.func.vjp`` of the outputs with respect
to the selected tensors only (``functional_call`` swaps them in; everything else is a
constant, so the backward pass skips weight gradients of frozen tensors), pulled back once
per output. Not vmapped over examples: Hugging Face attention masks and PASTA's
special-token positions use data-dependent control flow that vmap cannot batch. Gradients
of a chunk of ``chunk_size`` examples are stacked and the Gram blocks between chunks are
accumulated in float64 over partial products of at most ``_COLUMNS_PER_PRODUCT`` parameters
each, so memory stays at two chunks of gradients plus the gradients of the training chunks
that fit in ``gradient_cache_bytes`` (the others are recomputed when needed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call, vjp
from tqdm.auto import tqdm

from peftkit.errors import PeftkitError
from peftkit.files import atomic_write

KERNELS = ("sgd", "signgd", "asymmetric-signgd")
PARAMETER_SUBSETS = ("all", "no-embeddings", "biases", "trainable")
# Parameters per partial Gram product; partial products are summed in float64.
_COLUMNS_PER_PRODUCT = 1 << 20
_METADATA_KEY = "peftkit_ntk"

Example = dict[str, torch.Tensor]  # model inputs of one example, batch dimension 1


def select_parameters(model: nn.Module, parameters: str | Iterable[str] = "all") -> dict[str, nn.Parameter]:
    """The parameters the kernel differentiates, by name.

    "all"; "no-embeddings" (all but the tensors of ``nn.Embedding`` modules: word, position and
    token-type tables; the official code drops every name containing "embed", which also
    drops the embedding LayerNorm); "biases" (BitFit's subset); "trainable" (those that
    require grad: a peftkit/PEFT-wrapped model's method parameters); or explicit names.
    Tied tensors (an MLM decoder tied to the word embeddings) appear once.
    """
    named = dict(model.named_parameters())
    if isinstance(parameters, str):
        if parameters == "all":
            selected = named
        elif parameters == "no-embeddings":
            embedding_tensors = {
                id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()
            }
            selected = {name: p for name, p in named.items() if id(p) not in embedding_tensors}
        elif parameters == "biases":
            selected = {name: p for name, p in named.items() if name.rsplit(".", 1)[-1] == "bias"}
        elif parameters == "trainable":
            selected = {name: p for name, p in named.items() if p.requires_grad}
        else:
            raise PeftkitError(
                f"unknown parameter subset {parameters!r}; use one of {', '.join(PARAMETER_SUBSETS)} "
                "or a list of parameter names."
            )
    else:
        wanted = list(parameters)
        unknown = [name for name in wanted if name not in named]
        if unknown:
            raise PeftkitError(
                f"the model has no parameter(s) {unknown[:5]}; names look like {list(named)[:3]}."
            )
        selected = {name: named[name] for name in wanted}
    if not selected:
        hint = (
            " Nothing requires grad: wrap the model with peftkit.get_peft_model (or PEFT) first."
            if parameters == "trainable"
            else ""
        )
        raise PeftkitError(f"the parameter subset {parameters!r} selects no parameters of {type(model).__name__}.{hint}")
    return selected


def examples_fingerprint(examples: Sequence[Example]) -> str:
    """A short hash of the examples' inputs, so a saved kernel is reused only for the same data."""
    digest = hashlib.sha256()
    for example in examples:
        for key in sorted(example):
            digest.update(key.encode())
            digest.update(example[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def trace_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """[rows, C, cols, C] -> [rows, cols]: the sum over outputs of K_cc, one kernel for all classes."""
    return torch.einsum("icjc->ij", kernel)


@dataclasses.dataclass
class EmpiricalNTK:
    """Kernels between examples plus the outputs f0 at the current parameters."""

    train_train: torch.Tensor  # [N, C, N, C] float64: rows and columns are the training examples
    eval_train: torch.Tensor  # [M, C, N, C] float64: rows are evaluation examples (M may be 0)
    train_outputs: torch.Tensor  # [N, C] f0 on the training examples
    eval_outputs: torch.Tensor  # [M, C]
    kernel: str
    parameters: str
    num_parameters: int
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return self.train_train.shape[1]

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file; the description goes in its JSON metadata."""
        tensors = {
            "train_train": self.train_train,
            "eval_train": self.eval_train,
            "train_outputs": self.train_outputs,
            "eval_outputs": self.eval_outputs,
        }
        tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        description = {
            "kernel": self.kernel,
            "parameters": self.parameters,
            "num_parameters": self.num_parameters,
            "metadata": self.metadata,
        }
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={_METADATA_KEY: json.dumps(description)}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmpiricalNTK":
        try:
            with safe_open(str(path), framework="pt") as handle:
                description = json.loads((handle.metadata() or {})[_METADATA_KEY])
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            raise PeftkitError(
                f"{path} is not a kernel file written by peftkit ({error}); delete it to recompute."
            ) from None
        return cls(**tensors, **description)


def cached_ntk(path: str | os.PathLike, spec: dict[str, Any], compute: Callable[[], EmpiricalNTK]) -> tuple[EmpiricalNTK, bool]:
    """Reuse the kernels saved at ``path`` when they were computed for ``spec``; else compute and save.

    ``spec`` (JSON-able: model, examples fingerprint, kernel, parameters, ...) is stored in the
    file's metadata; returns the kernels and whether they came from disk.
    """
    spec = json.loads(json.dumps(spec))  # tuples -> lists, as they come back from the file
    path = Path(path)
    if path.is_file():
        saved = EmpiricalNTK.load(path)
        if saved.metadata.get("spec") == spec:
            return saved, True
    ntk = compute()
    ntk.metadata["spec"] = spec
    ntk.save(path)
    return ntk, False


def _example_outputs(output_model: nn.Module, example: Example) -> torch.Tensor:
    return output_model(**example)[0]


def _chunk_gradients(output_model: nn.Module, params: dict[str, torch.Tensor], examples: Sequence[Example],
                     *, signs: bool = False) -> list[torch.Tensor]:
    """Per-example gradients of a chunk (or their signs): one [numel, len(examples) * C] matrix per
    parameter tensor, column example * C + c holding ∇f_c(example).

    Parameters run down the rows so that a slice of parameters is contiguous, which makes the
    Gram products below three times faster than with one row per example."""
    matrices: list[torch.Tensor] = []
    for index, example in enumerate(examples):

        def outputs_of(selected: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(output_model, selected, args=(), kwargs=example)[0]

        outputs, pullback = vjp(outputs_of, params)
        num_outputs = len(outputs)
        if not matrices:
            matrices = [p.new_empty(p.numel(), len(examples) * num_outputs) for p in params.values()]
        # One pullback per output through the same forward. (jacrev would vmap them, but CPU SDPA's
        # backward has no batching rule and its per-output fallback is slower than this loop.)
        for output_index, basis in enumerate(torch.eye(num_outputs, dtype=outputs.dtype)):
            gradients = pullback(basis)[0]
            for matrix, name in zip(matrices, params):
                matrix[:, index * num_outputs + output_index] = gradients[name].reshape(-1)
    if signs:
        for matrix in matrices:
            matrix.sign_()
    return matrices


def _gram_block(rows: list[torch.Tensor], columns: list[torch.Tensor], *, sign_columns: bool = False) -> torch.Tensor:
    """Σ over parameters of row_gradsᵀ · column_grads, summed in float64.

    Each product covers at most ``_COLUMNS_PER_PRODUCT`` parameters in the gradients' dtype, and
    the partial products are added in float64: converting whole gradients to float64 would cost
    more than the products (the conversion is memory-bound). Sign kernels stay exact integers:
    a float32 partial sum of at most 2^20 terms of ±1 is exact.
    """
    block = torch.zeros(rows[0].shape[1], columns[0].shape[1], dtype=torch.float64)
    for row_grads, column_grads in zip(rows, columns):
        for start in range(0, row_grads.shape[0], _COLUMNS_PER_PRODUCT):
            row_slice = row_grads[start : start + _COLUMNS_PER_PRODUCT]
            column_slice = column_grads[start : start + _COLUMNS_PER_PRODUCT]
            if sign_columns:
                column_slice = column_slice.sign()
            block += (row_slice.T @ column_slice).double()
    return block


def _chunks(examples: Sequence[Example], chunk_size: int) -> list[Sequence[Example]]:
    return [examples[start : start + chunk_size] for start in range(0, len(examples), chunk_size)]


def empirical_ntk(
    output_model: nn.Module,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example] = (),
    *,
    parameters: str | Iterable[str] = "all",
    kernel: str = "sgd",
    chunk_size: int = 8,
    gradient_cache_bytes: int = 2 << 30,
    progress: bool = True,
) -> EmpiricalNTK:
    """Train×train and eval×train kernels of ``output_model`` over a parameter subset.

    ``output_model(**example)`` must return the outputs f as a [1, C] tensor (see
    ``peftkit.analysis.prompting``); each example is a dict of model inputs with batch size 1.
    The model runs in eval mode (no dropout); every submodule is left in the mode it was in.
    """
    if kernel not in KERNELS:
        raise PeftkitError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}.")
    if not train_examples:
        raise PeftkitError("the kernel needs at least one training example.")
    if chunk_size < 1:
        raise PeftkitError(f"chunk_size must be at least 1, not {chunk_size}.")
    selected = select_parameters(output_model, parameters)
    params = {name: p.detach() for name, p in selected.items()}
    num_parameters = sum(p.numel() for p in params.values())
    symmetric = kernel != "asymmetric-signgd"
    # signgd: both sides are sign(∇), taken once per gradient; asymmetric-signgd: the training
    # side of the update is sign(∇) (the kernel's columns), the evaluated side plain ∇.
    signs, sign_columns = kernel == "signgd", kernel == "asymmetric-signgd"
    train_chunks, eval_chunks = _chunks(train_examples, chunk_size), _chunks(eval_examples, chunk_size)
    starts = [0]
    for chunk in train_chunks:
        starts.append(starts[-1] + len(chunk))

    modes = {module: module.training for module in output_model.modules()}
    output_model.eval()
    try:
        # Only vjp differentiates (w.r.t. the selected tensors); no autograd graph otherwise.
        with torch.no_grad():
            train_outputs = torch.stack([_example_outputs(output_model, e) for e in train_examples]).double()
            eval_outputs = torch.stack([_example_outputs(output_model, e) for e in eval_examples]).double() \
                if eval_examples else train_outputs.new_zeros(0, train_outputs.shape[1])
            num_outputs = train_outputs.shape[1]
            bytes_per_example = num_outputs * num_parameters * next(iter(params.values())).element_size()
            cache_train = len(train_examples) * bytes_per_example <= gradient_cache_bytes
            cached: dict[int, list[torch.Tensor]] = {}
            passes = 0

            def train_gradients(index: int) -> list[torch.Tensor]:
                nonlocal passes
                if index in cached:
                    return cached[index]
                gradients = _chunk_gradients(output_model, params, train_chunks[index], signs=signs)
                passes += len(train_chunks[index])
                if cache_train:
                    cached[index] = gradients
                return gradients

            plan = [
                ("train", i, j)
                for i in range(len(train_chunks))
                for j in (range(i, len(train_chunks)) if symmetric else range(len(train_chunks)))
            ] + [("eval", e, j) for e in range(len(eval_chunks)) for j in range(len(train_chunks))]
            train_train = torch.zeros(len(train_examples), num_outputs, len(train_examples), num_outputs, dtype=torch.float64)
            eval_train = torch.zeros(len(eval_examples), num_outputs, len(train_examples), num_outputs, dtype=torch.float64)
            bar = tqdm(plan, desc=f"{kernel} kernel over {num_parameters:,} parameters", unit="block", disable=not progress)
            row_key, row_gradients = None, None
            for side, row, column in bar:
                if (side, row) != row_key:
                    row_key, row_gradients = (side, row), None  # release the previous row chunk first
                    if side == "train":
                        row_gradients = train_gradients(row)
                    else:
                        row_gradients = _chunk_gradients(output_model, params, eval_chunks[row], signs=signs)
                        passes += len(eval_chunks[row])
                column_gradients = row_gradients if (side, row) == ("train", column) else train_gradients(column)
                block = _gram_block(row_gradients, column_gradients, sign_columns=sign_columns)
                columns = slice(starts[column], starts[column + 1])
                if side == "train":
                    rows = slice(starts[row], starts[row + 1])
                    block = block.reshape(rows.stop - rows.start, num_outputs, -1, num_outputs)
                    train_train[rows, :, columns] = block
                    if symmetric and row != column:
                        train_train[columns, :, rows] = block.permute(2, 3, 0, 1)
                else:
                    rows = slice(row * chunk_size, row * chunk_size + len(eval_chunks[row]))
                    eval_train[rows, :, columns] = block.reshape(rows.stop - rows.start, num_outputs, -1, num_outputs)
            bar.close()
    finally:
        for module, training in modes.items():  # each submodule back to its own mode
            module.train(training)
    return EmpiricalNTK(
        train_train=train_train,
        eval_train=eval_train,
        train_outputs=train_outputs,
        eval_outputs=eval_outputs,
        kernel=kernel,
        parameters=parameters if isinstance(parameters, str) else "explicit",
        num_parameters=num_parameters,
        metadata={
            "parameter_names": list(params),
            "chunk_size": chunk_size,
            "gradient_passes": passes,
            "train_gradients_cached": cache_train,
        },
    )

"""Analysis: the empirical NTK of a model on a task (the kernel view of fine-tuning, Malladi et
al., ICML 2023) for all parameters or only a method's, kernel solvers, and cost reports
(``peftkit.analysis.cost``).

    output = PromptOutput(mlm, label_word_ids(tokenizer, ["terrible", "great"]), binary=True)
    ntk = empirical_ntk(output, train_examples, eval_examples, parameters="trainable", kernel="sgd")
    solution = solve_kernel(ntk.train_train, train_labels, ntk.eval_train, eval_labels)

``run_kernel`` does all of it for a task and writes results and a plot (``peftkit kernel``).
"""

from peftkit.analysis.kernel_run import run_kernel
from peftkit.analysis.kernel_solvers import SOLVERS, KernelSolution, solve_kernel
from peftkit.analysis.ntk import (
    KERNELS,
    PARAMETER_SUBSETS,
    EmpiricalNTK,
    cached_ntk,
    empirical_ntk,
    examples_fingerprint,
    select_parameters,
    trace_kernel,
)
from peftkit.analysis.prompting import (
    ClassifierOutput,
    PromptOutput,
    encode_classification,
    encode_prompt,
    label_word_ids,
    linear_probe_head,
)

__all__ = [
    "KERNELS",
    "PARAMETER_SUBSETS",
    "SOLVERS",
    "ClassifierOutput",
    "EmpiricalNTK",
    "KernelSolution",
    "PromptOutput",
    "cached_ntk",
    "empirical_ntk",
    "encode_classification",
    "encode_prompt",
    "examples_fingerprint",
    "label_word_ids",
    "linear_probe_head",
    "run_kernel",
    "select_parameters",
    "solve_kernel",
    "trace_kernel",
]

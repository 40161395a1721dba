"""Predict with a kernel instead of fine-tuning: least squares, logistic regression or an SVM.

Kernels come as [rows, C, train, C] tensors (``peftkit.analysis.ntk``). C = 1 means a
binary task whose single output is a logit difference, fitted against labels ±1; C > 1
means C classes. As in the official code (princeton-nlp/LM-Kernel-FT, ``kernel_solvers.py``):

* ``lstsq``: solve (K + ridge·‖K‖₂·I) α = Y; with several outputs the whole (N·C)×(N·C)
  system against one-hot targets, i.e. kernel regression with the full multi-output kernel.
  ``subtract_f0`` fits Y − f0 and adds f0 back (the model's outputs before fine-tuning).
* ``logistic`` (the default) and ``svm``: scikit-learn with the kernel rows as features /
  a precomputed kernel. With several outputs they use the trace kernel Σ_c K_cc (the
  official code offers them for binary tasks only). The kernel is divided by its largest
  entry first: a constant factor only moves the best regularisation constant, and lbfgs
  converges on unit-scale features.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from peftkit.errors import PeftkitError

SOLVERS = ("logistic", "lstsq", "svm")


@dataclasses.dataclass
class KernelSolution:
    solver: str
    eval_scores: np.ndarray  # [M, C]: the predicted outputs f (binary: a margin, > 0 means class 1)
    eval_predictions: np.ndarray  # [M] class indices
    accuracy: float | None  # on the evaluation examples, when their labels were given
    train_accuracy: float

    def to_dict(self) -> dict:
        return {"solver": self.solver, "accuracy": self.accuracy, "train_accuracy": self.train_accuracy}


def _as_four_dims(kernel: torch.Tensor | np.ndarray) -> torch.Tensor:
    kernel = torch.as_tensor(kernel, dtype=torch.float64)
    if kernel.dim() == 2:  # a plain [rows, train] kernel: one output
        kernel = kernel[:, None, :, None]
    if kernel.dim() != 4 or kernel.shape[1] != kernel.shape[3]:
        raise PeftkitError(f"a kernel must be [rows, C, train, C] or [rows, train], not {tuple(kernel.shape)}.")
    return kernel


def _predictions(scores: torch.Tensor) -> np.ndarray:
    return (scores[:, 0] > 0).long().numpy() if scores.shape[1] == 1 else scores.argmax(1).numpy()


def _targets(labels: np.ndarray, num_outputs: int) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long)
    if num_outputs == 1:
        return (2.0 * labels - 1.0).double()[:, None]  # {0, 1} -> {-1, +1}
    return torch.nn.functional.one_hot(labels, num_outputs).double()


def _solve_lstsq(train_kernel, train_targets, eval_kernel, ridge, train_f0, eval_f0):
    rows, outputs = train_kernel.shape[:2]
    flat_train = train_kernel.reshape(rows * outputs, rows * outputs)
    if ridge > 0:
        flat_train = flat_train + ridge * torch.linalg.matrix_norm(flat_train, ord=2) * torch.eye(rows * outputs, dtype=torch.float64)
    residual = train_targets - (train_f0 if train_f0 is not None else 0.0)
    coefficients = torch.linalg.lstsq(flat_train, residual.reshape(-1, 1), driver="gelsd").solution  # α
    def predict(kernel, f0):
        scores = (kernel.reshape(kernel.shape[0] * outputs, -1) @ coefficients).reshape(-1, outputs)
        return scores + (f0 if f0 is not None else 0.0)
    return predict(train_kernel, train_f0), predict(eval_kernel, eval_f0)


def _solve_sklearn(solver, train_kernel, train_labels, eval_kernel):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.svm import SVC

    if train_kernel.shape[1] > 1:
        train_matrix, eval_matrix = (torch.einsum("icjc->ij", k) for k in (train_kernel, eval_kernel))
    else:
        train_matrix, eval_matrix = train_kernel[:, 0, :, 0], eval_kernel[:, 0, :, 0]
    scale = train_matrix.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    train_matrix, eval_matrix = (train_matrix / scale).numpy(), (eval_matrix / scale).numpy()
    smallest_class = np.bincount(train_labels).min(initial=0) if len(np.unique(train_labels)) > 1 else 0
    if solver == "svm":
        model = SVC(kernel="precomputed")
    elif smallest_class >= 2:
        # The official solver: logistic regression with its C chosen by stratified cross-validation.
        model = LogisticRegressionCV(
            Cs=10, cv=min(5, int(smallest_class)), l1_ratios=(0.0,), max_iter=10000, random_state=0,
            use_legacy_attributes=False,
        )
    else:
        model = LogisticRegression(max_iter=10000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # "the least populated class has ..." on few-shot data
        model.fit(train_matrix, train_labels)
    def scores(matrix):
        if len(matrix) == 0:
            return torch.zeros(0, train_kernel.shape[1], dtype=torch.float64)
        values = np.asarray(model.decision_function(matrix), dtype=np.float64)
        return torch.as_tensor(values.reshape(len(matrix), -1))
    return scores(train_matrix), scores(eval_matrix)


def solve_kernel(
    train_kernel: torch.Tensor | np.ndarray,
    train_labels,
    eval_kernel: torch.Tensor | np.ndarray,
    eval_labels=None,
    *,
    solver: str = "logistic",
    ridge: float = 0.0,
    subtract_f0: bool = False,
    train_outputs: torch.Tensor | None = None,
    eval_outputs: torch.Tensor | None = None,
) -> KernelSolution:
    """Fit on the train×train kernel and predict the eval×train rows; accuracy if labels given.

    ``train_outputs``/``eval_outputs`` are f0 ([N, C], [M, C]), used when ``subtract_f0``.
    """
    if solver not in SOLVERS:
        raise PeftkitError(f"unknown kernel solver {solver!r}; use one of {', '.join(SOLVERS)}.")
    train_kernel, eval_kernel = _as_four_dims(train_kernel), _as_four_dims(eval_kernel)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    rows, outputs = train_kernel.shape[:2]
    if train_kernel.shape[2:] != (rows, outputs) or eval_kernel.shape[1:] != (outputs, rows, outputs):
        raise PeftkitError(
            f"kernel shapes do not fit: train {tuple(train_kernel.shape)}, eval {tuple(eval_kernel.shape)} "
            "(expected [N, C, N, C] and [M, C, N, C])."
        )
    if len(train_labels) != rows:
        raise PeftkitError(f"{len(train_labels)} training labels for a kernel over {rows} examples.")
    num_classes = 2 if outputs == 1 else outputs
    if train_labels.min(initial=0) < 0 or train_labels.max(initial=0) >= num_classes:
        raise PeftkitError(f"labels must lie in 0..{num_classes - 1} for a kernel with {outputs} output(s).")
    if subtract_f0:
        if solver != "lstsq":
            raise PeftkitError("subtract_f0 (fit y - f0, add f0 back) works with the lstsq solver only.")
        if train_outputs is None or eval_outputs is None:
            raise PeftkitError("subtract_f0 needs train_outputs and eval_outputs (f0).")
    if solver == "lstsq":
        f0 = (torch.as_tensor(train_outputs).double(), torch.as_tensor(eval_outputs).double()) if subtract_f0 else (None, None)
        train_scores, eval_scores = _solve_lstsq(train_kernel, _targets(train_labels, outputs), eval_kernel, ridge, *f0)
    else:
        if ridge > 0:
            raise PeftkitError(f"ridge applies to the lstsq solver; {solver} has its own regularisation.")
        train_scores, eval_scores = _solve_sklearn(solver, train_kernel, train_labels, eval_kernel)
        if outputs > 1 and train_scores.shape[1] != outputs:
            raise PeftkitError(f"the training labels cover {train_scores.shape[1]} of the {outputs} classes.")
    eval_predictions = _predictions(eval_scores)
    accuracy = None
    if eval_labels is not None:
        accuracy = float((eval_predictions == np.asarray(eval_labels)).mean()) if len(eval_predictions) else None
    return KernelSolution(
        solver=solver,
        eval_scores=eval_scores.numpy(),
        eval_predictions=eval_predictions,
        accuracy=accuracy,
        train_accuracy=float((_predictions(train_scores) == train_labels).mean()),
    )

"""Kernel solvers: recover labels on separable toy kernels; f0 and ridge do what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftkit.analysis.kernel_solvers import SOLVERS, solve_kernel
from peftkit.errors import PeftkitError


def separable_points(num_classes: int, per_class: int, seed: int = 0):
    """Clusters around orthogonal centres: the linear kernel separates them, with margin."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    centres = 3.0 * np.eye(max(num_classes, 4))[:num_classes]
    points = centres[labels] + 0.3 * rng.normal(size=(len(labels), centres.shape[1]))
    order = rng.permutation(len(labels))
    return points[order], labels[order]


@pytest.mark.parametrize("solver", SOLVERS)
def test_binary_separable_kernel_is_solved(solver):
    points, labels = separable_points(2, 12)
    kernel = points @ points.T
    # a binary kernel is one output: the [N, N] form and the [N, 1, N, 1] form are the same thing
    solution = solve_kernel(kernel[:16, :16], labels[:16], kernel[16:, :16][:, None, :, None], labels[16:], solver=solver)
    assert solution.accuracy == 1.0 and solution.train_accuracy == 1.0
    assert solution.eval_scores.shape == (8, 1)
    np.testing.assert_array_equal(solution.eval_predictions, (solution.eval_scores[:, 0] > 0).astype(int))


@pytest.mark.parametrize("solver", SOLVERS)
def test_multiclass_separable_kernel_is_solved(solver):
    points, labels = separable_points(3, 10)
    # the kernel of a 3-output model whose outputs do not interact: K_cd = k δ_cd
    kernel = np.einsum("ij,cd->icjd", points @ points.T, np.eye(3))
    solution = solve_kernel(kernel[:21, :, :21], labels[:21], kernel[21:, :, :21], labels[21:], solver=solver)
    assert solution.accuracy == 1.0
    assert solution.eval_scores.shape == (9, 3)


def test_lstsq_interpolates_and_f0_is_added_back():
    points, labels = separable_points(2, 6)
    kernel = torch.as_tensor(points @ points.T + np.eye(12))  # full rank: exact interpolation
    f0_train, f0_eval = torch.full((12, 1), 5.0, dtype=torch.float64), torch.full((3, 1), 5.0, dtype=torch.float64)
    zero_eval = torch.zeros(3, 12, dtype=torch.float64)  # eval rows the kernel knows nothing about
    solution = solve_kernel(kernel, labels, zero_eval, solver="lstsq", subtract_f0=True,
                            train_outputs=f0_train, eval_outputs=f0_eval)
    np.testing.assert_allclose(solution.eval_scores, 5.0)  # only f0 is left
    assert solution.train_accuracy == 1.0  # y - f0 fitted exactly, f0 added back: y again
    without = solve_kernel(kernel, labels, zero_eval, solver="lstsq")
    np.testing.assert_allclose(without.eval_scores, 0.0)


def test_ridge_shrinks_the_fit():
    points, labels = separable_points(2, 8)
    kernel = points @ points.T
    scores = [
        np.abs(solve_kernel(kernel, labels, kernel, solver="lstsq", ridge=ridge).eval_scores).mean()
        for ridge in (0.0, 0.1, 10.0)
    ]
    assert scores[0] > scores[1] > scores[2]


def test_kernel_scale_does_not_change_sklearn_predictions():
    points, labels = separable_points(2, 10, seed=3)
    kernel = points @ points.T
    small = solve_kernel(kernel[:14, :14], labels[:14], kernel[14:, :14], labels[14:], solver="logistic")
    large = solve_kernel(1e6 * kernel[:14, :14], labels[:14], 1e6 * kernel[14:, :14], labels[14:], solver="logistic")
    np.testing.assert_array_equal(small.eval_predictions, large.eval_predictions)


def test_misuse_is_refused():
    kernel = np.eye(4)
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(PeftkitError, match="lstsq"):
        solve_kernel(kernel, labels, kernel, solver="logistic", subtract_f0=True,
                     train_outputs=torch.zeros(4, 1), eval_outputs=torch.zeros(4, 1))
    with pytest.raises(PeftkitError, match="unknown kernel solver"):
        solve_kernel(kernel, labels, kernel, solver="ridge")
    with pytest.raises(PeftkitError, match="training labels"):
        solve_kernel(kernel, labels[:3], kernel)
    with pytest.raises(PeftkitError, match="0..1"):
        solve_kernel(kernel, np.array([0, 1, 2, 1]), kernel)
    with pytest.raises(PeftkitError, match="do not fit"):
        solve_kernel(kernel, labels, np.eye(3))

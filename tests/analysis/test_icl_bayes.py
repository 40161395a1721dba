"""The Bayesian-model-averaging experiment: closed forms, the prompt layout, a short pretraining."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from peftkit.analysis.icl_bayes import (
    IclBayesConfig,
    InContextRegressor,
    LinearPromptDataset,
    LinearTaskPrior,
    fit_power_law,
    least_squares_predictions,
    posterior_mean_predictions,
    run_icl_bayes,
    sample_prompts,
)
from peftkit.cli import main
from peftkit.errors import PeftkitError

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_posterior_mean_equals_the_closed_form_of_the_gaussian_posterior():
    prior = LinearTaskPrior(dim=3, num_points=6, noise_std=0.7, prior_std=1.3)
    xs, ys = sample_prompts(prior, 4, torch.Generator().manual_seed(0))
    predicted = posterior_mean_predictions(xs, ys, prior.noise_std, prior.prior_std)
    for n in range(4):
        for t in range(6):
            X, y, x = xs[n, :t].double().numpy(), ys[n, :t].double().numpy(), xs[n, t].double().numpy()
            # Posterior of z given (X, y): the kernel (Woodbury) form, independent of the code's ridge form:
            # E[z | X, y] = τ² Xᵀ (τ² X Xᵀ + σ² I)⁻¹ y
            tau2, sigma2 = prior.prior_std**2, prior.noise_std**2
            mean = tau2 * X.T @ np.linalg.solve(tau2 * X @ X.T + sigma2 * np.eye(t), y) if t else np.zeros(3)
            assert predicted[n, t].item() == pytest.approx(float(x @ mean), abs=1e-9)


def test_least_squares_is_ordinary_least_squares_once_determined():
    prior = LinearTaskPrior(dim=2, num_points=7, noise_std=0.3)
    xs, ys = sample_prompts(prior, 3, torch.Generator().manual_seed(1))
    predicted = least_squares_predictions(xs, ys)
    for n in range(3):
        for t in range(2, 7):
            solution, *_ = np.linalg.lstsq(xs[n, :t].double().numpy(), ys[n, :t].double().numpy(), rcond=None)
            assert predicted[n, t].item() == pytest.approx(float(xs[n, t].double().numpy() @ solution), abs=1e-8)
    # noiseless prompts: the posterior mean interpolates, and equals least squares at t ≥ d
    noiseless = LinearTaskPrior(dim=2, num_points=5, noise_std=0.0)
    xs, ys = sample_prompts(noiseless, 3, torch.Generator().manual_seed(2))
    assert torch.allclose(posterior_mean_predictions(xs, ys, 0.0, 1.0)[:, 2:], ys[:, 2:].double(), atol=1e-6)


def test_prompts_are_a_function_of_seed_and_index():
    prior = LinearTaskPrior(dim=2, num_points=4)
    first, again = LinearPromptDataset(prior, 10, seed=5), LinearPromptDataset(prior, 10, seed=5)
    assert torch.equal(first[7]["xs"], again[7]["xs"]) and torch.equal(first[7]["labels"], again[7]["labels"])
    assert not torch.equal(first[7]["xs"], first[6]["xs"])


def test_a_prediction_sees_only_the_pairs_before_it():
    model = InContextRegressor(dim=2, num_points=5, hidden_size=16, num_layers=2, num_heads=2).eval()
    xs, ys = sample_prompts(LinearTaskPrior(dim=2, num_points=5), 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(xs, ys).logits
        changed = ys.clone()
        changed[:, 2:] += 10.0  # y_2, y_3, y_4 change: predictions 0..2 must not
        after = model(xs, changed).logits
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert not torch.allclose(before[:, 3:], after[:, 3:])
    with pytest.raises(PeftkitError, match="pretrained with"):
        model(torch.zeros(1, 5, 3))


def test_fit_recovers_a_known_power_law():
    t = np.arange(3, 40, dtype=float)
    fit = fit_power_law(t, 2.0 * t**-1.0 + 0.05)
    assert fit["b"] == pytest.approx(1.0, abs=1e-3) and fit["c"] == pytest.approx(0.05, abs=1e-3)


def test_a_short_pretraining_beats_least_squares_at_small_t_and_learns_in_context(tmp_path):
    """d = 2: at t = d least squares interpolates the noise and its error explodes, while the
    transformer, like the posterior mean, shrinks towards the prior; and the transformer's error
    falls with t (it uses the examples), ending well below the prior-only error τ²d + σ²."""
    config = IclBayesConfig(
        prior=LinearTaskPrior(dim=2, num_points=8, noise_std=0.5), hidden_size=32, num_layers=2, num_heads=2,
        train_steps=300, batch_size=64, learning_rate=3e-3, eval_prompts=500,
        mis_specified=(("noise 0", 0.0, 1.0),),
    )
    result = run_icl_bayes(config, tmp_path / "run")
    curves = result["in_distribution"]
    transformer, least_squares, bayes = (np.asarray(curves[name]) for name in ("transformer", "least_squares", "posterior_mean"))
    assert transformer[2] < least_squares[2] and transformer[3] < least_squares[3]
    prior_only = 2 * 1.0 + 0.25
    assert transformer[7] < 0.7 * prior_only
    assert transformer[7] < transformer[0]
    assert np.all(bayes[1:] <= transformer[1:] + 0.05)  # nothing beats the Bayes predictor (up to sampling noise)
    saved = json.loads((tmp_path / "run" / "icl_bayes.json").read_text())
    assert saved["mis_specified"][0]["name"] == "noise 0"
    assert (tmp_path / "run" / "icl_bayes.png").stat().st_size > 0
    assert "posterior mean" in (tmp_path / "run" / "icl_bayes.md").read_text()
    # the saved model, measured again without pretraining, reproduces the measured curve
    again = run_icl_bayes(config, tmp_path / "again", pretrained=tmp_path / "run" / "pretraining")
    assert again["parameters"] == saved["parameters"] and again["train_steps_done"] == 300
    assert np.allclose(again["in_distribution"]["transformer"], transformer, atol=1e-9)
    with pytest.raises(PeftkitError, match="same --dim"):
        run_icl_bayes(IclBayesConfig(prior=LinearTaskPrior(dim=3, num_points=8)), tmp_path / "bad", pretrained=tmp_path / "run" / "pretraining")


def test_icl_bayes_command_runs_and_refuses_bad_settings(tmp_path, capsys):
    assert main(["icl-bayes", "--output", str(tmp_path / "a"), "--dim", "2", "--num-points", "4", "--hidden-size", "16",
                 "--num-layers", "1", "--num-heads", "2", "--train-steps", "3", "--eval-prompts", "50"]) == 0
    assert "posterior mean" in capsys.readouterr().out
    assert main(["icl-bayes", "--output", str(tmp_path / "b"), "--noise-std", "-1", "--train-steps", "1"]) == 2
    assert "noise_std must be" in capsys.readouterr().err

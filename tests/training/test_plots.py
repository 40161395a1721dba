"""The learning-curve figure."""

import numpy as np

from peftkit.training.plots import plot_learning_curve, smooth


def test_smoothing_is_bias_corrected_and_follows_a_trend():
    assert np.allclose(smooth([2.0, 2.0, 2.0]), 2.0)  # no pull towards zero at the start
    trend = smooth(list(np.linspace(1.0, 0.0, 50)))
    assert trend[0] == 1.0 and np.all(np.diff(trend) < 0) and trend[-1] > 0.0


def test_plot_writes_a_png_with_and_without_epochs(tmp_path):
    history = {
        "steps": [{"step": s, "loss": 1.0 / s} for s in range(1, 21)],
        "epochs": [{"epoch": 1, "step": 10, "accuracy": 0.6}, {"epoch": 2, "step": 20, "accuracy": 0.8}],
    }
    plot_learning_curve(history, tmp_path / "curve.png", primary_metric="accuracy", title="tiny")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_learning_curve({"steps": [], "epochs": []}, tmp_path / "empty.png", primary_metric="f1")
    assert (tmp_path / "empty.png").stat().st_size > 1000

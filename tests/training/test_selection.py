"""Honest budgets: the grid point with the best dev score wins; mean/std come from the kept runs only."""

from __future__ import annotations

import numpy as np
import pytest

from peftkit.errors import TrainingError
from peftkit.training.selection import grid_points, mean_and_std, select_and_repeat

# A fake training run: dev and reported scores depend on the learning rate and the seed, and
# the reported score deliberately disagrees with dev, so choosing on it would pick another lr.
DEV = {1e-3: 0.60, 1e-2: 0.80, 1e-1: 0.70}
REPORTED = {1e-3: 0.95, 1e-2: 0.50, 1e-1: 0.90}


def fake_run(settings, seed):
    lr = settings["learning_rate"]
    return {"dev_metric": DEV[lr] + 0.01 * seed, "dev_loss": 1.0, "reported_metric": REPORTED[lr] + 0.02 * seed}


def test_grid_points_are_every_combination_in_order():
    assert grid_points({"learning_rate": [1, 2], "method_options": [{"p": 5}]}) == [
        {"learning_rate": 1, "method_options": {"p": 5}},
        {"learning_rate": 2, "method_options": {"p": 5}},
    ]
    with pytest.raises(TrainingError, match="grid for 'learning_rate' is empty"):
        grid_points({"learning_rate": []})


def test_the_best_dev_score_is_chosen_never_the_reported_one():
    calls = []
    result = select_and_repeat(lambda s, seed: calls.append((s["learning_rate"], seed)) or fake_run(s, seed),
                               grid_points({"learning_rate": [1e-3, 1e-2, 1e-1]}), [5, 6, 7])
    assert result["chosen"] == {"learning_rate": 1e-2}  # best dev (0.80), though its reported score is the worst
    # the whole grid at the first seed, then the winner at the other seeds: g + n - 1 runs
    assert calls == [(1e-3, 5), (1e-2, 5), (1e-1, 5), (1e-2, 6), (1e-2, 7)]
    first_seed = [run for run in result["runs"] if run["seed"] == 5]
    winner = max(first_seed, key=lambda run: run["dev_metric"])
    assert winner["selected"] and winner["settings"] == result["chosen"]
    assert [run["selected"] for run in first_seed] == [False, True, False]


def test_mean_and_std_are_over_the_kept_runs_only():
    result = select_and_repeat(fake_run, grid_points({"learning_rate": [1e-3, 1e-2, 1e-1]}), [0, 1, 2])
    kept = [run for run in result["runs"] if run["kept"]]
    assert kept == result["kept"] and [run["seed"] for run in kept] == [0, 1, 2]
    assert all(run["settings"] == {"learning_rate": 1e-2} for run in kept)
    expected = [0.50, 0.52, 0.54]
    assert [run["reported_metric"] for run in kept] == pytest.approx(expected)
    assert result["mean"] == pytest.approx(np.mean(expected))
    assert result["std"] == pytest.approx(np.std(expected, ddof=1))
    assert len(result["runs"]) == 5 and sum(not run["kept"] for run in result["runs"]) == 2


def test_ties_on_dev_go_to_the_lower_dev_loss_then_the_earlier_point():
    losses = {1: 0.9, 2: 0.4, 3: 0.4}
    result = select_and_repeat(
        lambda s, seed: {"dev_metric": 0.5, "dev_loss": losses[s["learning_rate"]], "reported_metric": 0.1 * s["learning_rate"]},
        grid_points({"learning_rate": [1, 2, 3]}), [0],
    )
    assert result["chosen"] == {"learning_rate": 2}
    assert result["std"] is None and result["mean"] == pytest.approx(0.2)


def test_single_values_and_bad_seeds():
    assert mean_and_std([0.5]) == (0.5, None)
    with pytest.raises(TrainingError, match="no seeds"):
        select_and_repeat(fake_run, [{"learning_rate": 1e-2}], [])
    with pytest.raises(TrainingError, match="repeat"):
        select_and_repeat(fake_run, [{"learning_rate": 1e-2}], [1, 1])

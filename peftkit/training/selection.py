"""Honest budgets: choose a method's settings on a dev split, then repeat over seeds.

A comparison is only fair if every method gets the same chance to find its own learning
rate (and whatever else its recipe says matters), and if that choice never looks at the
split the comparison reports. The procedure here, shared by ``peftkit compare`` and the
benchmarks, is:

1. every point of the method's small grid trains once, at the first seed, on the training
   data minus a dev split carved from it, stopping early on the dev split;
2. the point with the best dev score wins (ties: lower dev loss, then the earlier point);
3. the winner trains again at every further seed (each seed carves its own dev split);
4. the reported figure is the mean ± sample standard deviation, over those seeds, of the
   metric on the reported split, measured once per run after training, on the adapter
   that scored best on dev.

Only the runs at the chosen point are kept for the mean; the grid's other runs are
returned too, so a reader can see what the choice was made from. Choosing once, at the
first seed, rather than at every seed is a budget decision: a grid of g points and n seeds
costs g + n − 1 runs instead of g · n.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import numpy as np

from peftkit.errors import TrainingError

Settings = dict[str, Any]
RunResult = dict[str, Any]  # holds "dev_metric", "reported_metric" and optionally "dev_loss"


def grid_points(grid: dict[str, list[Any]]) -> list[Settings]:
    """Every combination of a grid, in order: {"lr": [1, 2], "p": [5]} → [{lr 1, p 5}, {lr 2, p 5}].

    Raises TrainingError for an empty grid dimension (it would silently yield no run)."""
    for name, values in grid.items():
        if not values:
            raise TrainingError(f"the selection grid for {name!r} is empty; give at least one value.")
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def _selection_key(run: RunResult) -> tuple[float, float]:
    dev_loss = run.get("dev_loss")
    return (run["dev_metric"], -(dev_loss if dev_loss is not None and math.isfinite(dev_loss) else math.inf))


def mean_and_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1); the std is None for a single value."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def select_and_repeat(
    run: Callable[[Settings, int], RunResult],
    grid: list[Settings],
    seeds: list[int],
    *,
    on_run: Callable[[RunResult], None] | None = None,
) -> dict[str, Any]:
    """Choose the grid point with the best dev score at ``seeds[0]``, then run it at the other seeds.

    ``run(settings, seed)`` trains once and returns at least ``dev_metric`` (higher is better)
    and ``reported_metric``; ``dev_loss`` breaks ties. ``on_run`` sees each result as it
    arrives (e.g. to save progress). Returns ``{"chosen", "runs", "kept", "mean", "std"}``:
    every run, tagged with its settings, seed, ``selected`` and ``kept``; ``mean``/``std`` are
    over the kept runs' ``reported_metric``.
    """
    if not grid:
        raise TrainingError("the selection grid is empty; give at least one setting to train with.")
    if not seeds:
        raise TrainingError("no seeds to run; give --seeds 1 or more.")
    if len(set(seeds)) != len(seeds):
        raise TrainingError(f"the seeds {seeds} repeat; each run needs its own seed.")
    runs: list[RunResult] = []

    def record(settings: Settings, seed: int) -> RunResult:
        result = {**run(dict(settings), seed), "settings": dict(settings), "seed": seed, "selected": False, "kept": False}
        runs.append(result)
        if on_run is not None:
            on_run(result)
        return result

    first = [record(settings, seeds[0]) for settings in grid]
    best = max(range(len(first)), key=lambda index: (_selection_key(first[index]), -index))
    chosen = grid[best]
    for result in first:
        result["selected"] = result is first[best]
    kept = [first[best]] + [record(chosen, seed) for seed in seeds[1:]]
    for result in kept:
        result["selected"] = result["kept"] = True
    mean, std = mean_and_std([result["reported_metric"] for result in kept])
    return {"chosen": dict(chosen), "runs": runs, "kept": kept, "mean": mean, "std": std}

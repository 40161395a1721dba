"""The learning-curve figure: training loss per step and the validation metric per epoch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from peftkit.files import atomic_write


def smooth(values: list[float], weight: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing), so the
    first points are not dragged towards zero."""
    smoothed, average = [], 0.0
    for index, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**index))
    return np.asarray(smoothed)


def plot_learning_curve(history: dict[str, Any], path: str | os.PathLike, *, primary_metric: str, title: str = "") -> None:
    """Left: training loss per optimizer step (raw, faint; smoothed, solid). Right: the
    validation metric at the end of each epoch, against the same step axis."""
    steps = [record["step"] for record in history["steps"]]
    losses = [record["loss"] for record in history["steps"]]
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, metric_axes = figure.subplots(1, 2)
    if steps:
        loss_axes.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=1, label="per step")
        loss_axes.plot(steps, smooth(losses), color="tab:blue", linewidth=2, label="smoothed")
        loss_axes.legend()
    loss_axes.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    loss_axes.grid(alpha=0.3)

    epochs = [record for record in history["epochs"] if primary_metric in record]
    if epochs:
        metric_axes.plot(
            [record["step"] for record in epochs],
            [record[primary_metric] for record in epochs],
            marker="o",
            color="tab:orange",
        )
        for record in epochs:
            metric_axes.annotate(
                f"epoch {record['epoch']}\n{record[primary_metric]:.3f}",
                (record["step"], record[primary_metric]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
    metric_axes.margins(x=0.08, y=0.2)  # room for the labels above the points
    metric_axes.set(xlabel="optimizer step", ylabel=f"validation {primary_metric}", title=f"validation {primary_metric}")
    metric_axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))

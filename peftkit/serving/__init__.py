"""Serving: one frozen backbone, many adapters, rows of different tasks in one forward pass."""

from peftkit.serving.multi_task import MultiTaskModel, TaskPrediction, load_task_adapter

__all__ = ["MultiTaskModel", "TaskPrediction", "load_task_adapter"]

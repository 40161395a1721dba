"""One training loop for every method (on Accelerate), resumable checkpoints, learning curves."""

from peftkit.training.checkpoint import CHECKPOINT_DIR, find_checkpoint, load_checkpoint, save_checkpoint
from peftkit.training.loop import LEARNING_CURVE_FILE, METRICS_FILE, TrainingConfig, evaluate, train
from peftkit.training.plots import plot_learning_curve

__all__ = [
    "CHECKPOINT_DIR",
    "LEARNING_CURVE_FILE",
    "METRICS_FILE",
    "TrainingConfig",
    "evaluate",
    "find_checkpoint",
    "load_checkpoint",
    "plot_learning_curve",
    "save_checkpoint",
    "train",
]

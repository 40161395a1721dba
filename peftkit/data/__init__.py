"""Tasks and their data: text classification, token classification (NER), image classification.

``load_task(TaskConfig(task="bbc-news"))`` -> ``Task``; ``encode_task`` / ``make_collator`` /
``compute_metrics`` turn it into what the training loop consumes.  Importing this package
imports every module in it; each kind and each shipped dataset registers itself in
``peftkit.data.tasks``, so adding one touches only its own file.
"""

import importlib
import pkgutil

from peftkit.data.tasks import (
    BUILTIN_TASKS,
    IMAGE_CLASSIFICATION,
    TASK_KINDS,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    BuiltinTask,
    Task,
    TaskConfig,
    TaskKind,
    auto_model_class,
    builtin_task_names,
    carve_dev_split,
    classification_metrics,
    compute_metrics,
    encode_task,
    load_task,
    majority_baseline,
    make_collator,
    primary_metric,
    register_builtin_task,
    register_task_kind,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "tasks":
        importlib.import_module(f"{__name__}.{_module.name}")

from peftkit.data.token_classification import IGNORE_INDEX, decode_entities, word_predictions  # noqa: E402

__all__ = [
    "BUILTIN_TASKS",
    "IGNORE_INDEX",
    "IMAGE_CLASSIFICATION",
    "TASK_KINDS",
    "TEXT_CLASSIFICATION",
    "TOKEN_CLASSIFICATION",
    "BuiltinTask",
    "Task",
    "TaskConfig",
    "TaskKind",
    "auto_model_class",
    "builtin_task_names",
    "carve_dev_split",
    "classification_metrics",
    "compute_metrics",
    "decode_entities",
    "encode_task",
    "load_task",
    "majority_baseline",
    "make_collator",
    "primary_metric",
    "register_builtin_task",
    "register_task_kind",
    "word_predictions",
]

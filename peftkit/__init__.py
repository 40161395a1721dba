"""peftkit: parameter-efficient fine-tuning of pretrained Transformers around PASTA.

Every registered method config is importable from here by its class name
(``peftkit.PastaConfig``, ``peftkit.WeGeFTConfig``, ...).
"""

from peftkit import errors
from peftkit.auto import (
    AutoPeftModel,
    AutoPeftModelForImageClassification,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
)
from peftkit.methods import config_classes, get_method, method_names
from peftkit.peft_model import PeftModel, get_peft_model

__version__ = "0.1.0"

globals().update(config_classes())

__all__ = [
    "AutoPeftModel",
    "AutoPeftModelForImageClassification",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "PeftModel",
    "errors",
    "get_method",
    "get_peft_model",
    "method_names",
    *config_classes(),
]

"""peftkit: parameter-efficient fine-tuning of pretrained Transformers around PASTA."""

from peftkit import errors
from peftkit.methods import PastaConfig, get_method, method_names
from peftkit.peft_model import PeftModel, get_peft_model

__version__ = "0.1.0"

__all__ = [
    "PastaConfig",
    "PeftModel",
    "errors",
    "get_method",
    "get_peft_model",
    "method_names",
]

"""What every method module provides: a config dataclass and an adapter that attaches it.

A method's adapter is an ``nn.Module`` built as ``Adapter(model, config, tokenizer=...)``.
Before it is built, ``PeftModel`` freezes the whole model and unfreezes the task head; the
adapter then creates its own parameters (or unfreezes the backbone weights it trains, for
BitFit and full fine-tuning). Whatever requires grad afterwards is what trains and what is
saved, so save/load never needs to know which method it is handling.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar

from torch import nn

from peftkit.errors import MethodConfigError


@dataclasses.dataclass
class MethodConfig:
    """Base of every method config; ``method_name`` is the registry key (``--method``)."""

    method_name: ClassVar[str] = ""

    @property
    def peft_type(self) -> str:
        return self.method_name.upper().replace("-", "_")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MethodConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise MethodConfigError(
                f"{cls.__name__} has no field(s) {', '.join(unknown)}; "
                f"its fields are {', '.join(sorted(names))}."
            )
        return cls(**values)


class MethodAdapter(nn.Module):
    """Base of every method's attached state. Subclasses create parameters and hooks in
    ``__init__`` and undo hooks in ``detach``."""

    #: True when ``merge`` can fold the method into the backbone's weights.
    mergeable: ClassVar[bool] = False
    #: True when the method changes backbone weights in place (BitFit, full fine-tuning): a
    #: task switch must then rewrite those weights.
    rewrites_backbone_weights: ClassVar[bool] = False

    def __init__(self, model: nn.Module, config: MethodConfig, tokenizer=None):
        super().__init__()
        self.config = config

    def forward_context(self, inputs: dict[str, Any]) -> contextlib.AbstractContextManager:
        """Called by ``PeftModel.forward`` with the model inputs, around the backbone call;
        methods that need per-batch state (PASTA's special-token positions) set it here."""
        return contextlib.nullcontext()

    def extra_loss(self):
        """A term the method adds to the task loss (LoRA fusion's L1 on its coefficients); None if none."""
        return None

    def merge(self, model: nn.Module) -> nn.Module:
        raise MethodConfigError(
            f"{type(self).__name__} cannot be merged into the backbone's weights; "
            "keep it as an adapter (it costs no extra weights at inference)."
        )

    def detach(self, model: nn.Module) -> None:
        """Remove hooks and injected modules, leaving ``model`` as it was."""

"""What every method module provides: a config dataclass and an adapter that attaches it.

A method's adapter is an ``nn.Module`` built as ``Adapter(model, config, tokenizer=...)``.
Before it is built, ``PeftModel`` freezes the whole model and unfreezes the task head; the
adapter then creates its own parameters (or unfreezes the backbone weights it trains, for
BitFit and full fine-tuning). Whatever requires grad afterwards is what trains and what is
saved, so save/load never needs to know which method it is handling.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import types
import typing
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
        """The config from JSON-like values (an adapter file, ``--method-options``).

        Raises:
            MethodConfigError: a name that is not a field, or a value whose type is not the
                field's declared type (checked from the dataclass annotations, for every method).
        """
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise MethodConfigError(
                f"{cls.__name__} has no field(s) {', '.join(unknown)}; "
                f"its fields are {', '.join(sorted(names))}."
            )
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if not _matches(value, hints[name]):
                default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
                example = "" if default in (None, dataclasses.MISSING) else f" (its default is {default!r})"
                raise MethodConfigError(
                    f"{cls.__name__}.{name} must be {_describe(hints[name])}, not {value!r} "
                    f"({type(value).__name__}){example}."
                )
        return cls(**values)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON-like value fits a field annotation (int for float is fine, bool for int is not)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and all(_matches(item, args[0]) for item in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    """An annotation in words: "an int", "a list of int, or null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [arm for arm in args if arm is not type(None)]
        described = " or ".join(_describe(arm) for arm in arms)
        return f"{described}, or null" if len(arms) < len(args) else described
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}" if args else "a list"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    name = {bool: "true or false", str: "a string", int: "an int", float: "a number"}.get(hint)
    return name or getattr(hint, "__name__", str(hint))


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

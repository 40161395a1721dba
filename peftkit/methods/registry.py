"""Method registry: name → (config class, adapter class).

PEFT 0.21's method list is a closed enum, so peftkit keeps its own registry with PEFT's
file layout; PEFT's own configs (``peft.LoraConfig``) bypass it and go straight to PEFT.
Adding a method is its own module plus one ``register_method`` call at its bottom.
"""

from __future__ import annotations

import dataclasses

from peftkit.errors import MethodConfigError
from peftkit.methods.base import MethodAdapter, MethodConfig


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    config_class: type[MethodConfig]
    adapter_class: type[MethodAdapter]


_METHODS: dict[str, MethodSpec] = {}


def register_method(config_class: type[MethodConfig], adapter_class: type[MethodAdapter]) -> None:
    name = config_class.method_name
    if not name:
        raise MethodConfigError(f"{config_class.__name__} needs a non-empty method_name")
    _METHODS[name] = MethodSpec(name, config_class, adapter_class)


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    key = name.lower().replace("_", "-")
    for spec in _METHODS.values():
        if key in (spec.name, spec.config_class().peft_type.lower().replace("_", "-")):
            return spec
    raise MethodConfigError(
        f"unknown method {name!r}; peftkit knows {', '.join(method_names())} "
        "(and PEFT's own configs such as peft.LoraConfig, passed through)."
    )


def spec_for_config(config: MethodConfig) -> MethodSpec:
    for spec in _METHODS.values():
        if type(config) is spec.config_class:
            return spec
    raise MethodConfigError(
        f"{type(config).__name__} is not a registered peftkit method config; "
        f"use one of {', '.join(s.config_class.__name__ for s in _METHODS.values())} "
        "or a PEFT config (peft.LoraConfig)."
    )


def config_classes() -> dict[str, type[MethodConfig]]:
    """Every registered config class by its class name (``PastaConfig`` → class)."""
    return {spec.config_class.__name__: spec.config_class for spec in _METHODS.values()}

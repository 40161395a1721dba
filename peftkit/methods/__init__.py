"""One module per method: a config dataclass plus the adapter that attaches it.

Importing this package imports every module in it, and each registers itself with
``peftkit.methods.registry`` at its bottom, so adding a method touches only its own file.
"""

import importlib
import pkgutil

from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.registry import config_classes, get_method, method_names, register_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MethodAdapter", "MethodConfig", "config_classes", "get_method", "method_names", "register_method"]

"""One module per method: a config dataclass plus the adapter that attaches it.

Importing this package registers every method with ``peftkit.methods.registry``.
"""

from peftkit.methods.base import MethodAdapter, MethodConfig
from peftkit.methods.pasta import PastaAdapter, PastaConfig
from peftkit.methods.registry import get_method, method_names, register_method

__all__ = [
    "MethodAdapter",
    "MethodConfig",
    "PastaAdapter",
    "PastaConfig",
    "get_method",
    "method_names",
    "register_method",
]

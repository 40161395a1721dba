"""Tests of the benchmark scripts under benchmarks/, on tiny models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(script: str, module_name: str | None = None) -> ModuleType:
    """Import ``benchmarks/<script>.py`` (a script, not a package) as ``module_name`` (default: the
    script's name). It is registered in sys.modules before it runs: dataclasses and pickling look
    their module up while the file executes."""
    name = module_name or script
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

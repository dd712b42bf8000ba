"""Loading a test's helper module by file path, once per test session.

Test directories mirror the package names (`tests/nvcf_sidecar/...`), so they cannot be packages
of their own; their helper modules (stand-ins, servers) are imported through this instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["load_module"]


def load_module(path: Path) -> ModuleType:
    """Import the module at `path` under its file name and return it (cached in sys.modules)."""
    name = path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load a module from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]

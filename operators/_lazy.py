"""Lazy re-exports for the package `__init__` files.

`import operators.processing.samples` (the wire decoder does) runs every parent `__init__`; eager re-exports
there would load scipy, the alarm verifier and the whole state layer for it, and would cycle
(`processing.alarms` needs `state.context`, which needs `processing.quality`). A name is imported on first use
instead, and then cached on the package.
"""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable, Callable, list[str]]:
    """Module-level `__getattr__`, `__dir__` and `__all__` for `package` (PEP 562).

    Parameters
    ----------
    package : the package's `__name__`.
    exports : module path -> the public names it gives the package, e.g.
        {"operators.processing.samples": ["fill_nonfinite", "grid_ns"]}.

    Returns
    -------
    (__getattr__, __dir__, __all__) to assign in the package's `__init__`.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)

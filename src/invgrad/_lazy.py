"""Lazy package exports (PEP 562): a name is imported from its module on first use, so importing a torch-free
module of a package (e.g. ``invgrad.data.catalog`` while planning) does not import torch through the package."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to its module (relative, e.g.
    ``".sources"``); a name that is a module of the package itself maps to ``""``."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        value = (
            importlib.import_module(f".{name}", package)
            if module == ""
            else getattr(importlib.import_module(module, package), name)
        )
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__

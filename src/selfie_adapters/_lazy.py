"""Lazy re-exports for a package ``__init__``: a public name is imported from its module on first use.

So ``import selfie_adapters`` (and the CLI, which imports light submodules) starts without torch or
transformers. The table is the one list of public names; a name not in it raises AttributeError
naming the close ones, so a typo never passes silently.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names live in ``exports`` (name → module,
    relative to the package), e.g. ``__getattr__, __dir__ = lazy_exports(__name__, {"Adapter": ".adapters"})``."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            close = difflib.get_close_matches(name, exports, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; see {package}.__all__"
            raise AttributeError(f"module {package!r} has no attribute {name!r}{hint}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__

"""Names a package imports on first use (PEP 562), so that importing the package stays light.

``ddcontrol.tracking`` keeps torch out of the numpy problem layer this way (the tracker is loaded
when first named); ``ddcontrol.score`` can keep its training loop out the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, lazy: dict[str, str], public: list[str]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``.

    ``lazy`` maps a name to the module that defines it: the first access imports that module and
    binds the name in the package (later accesses do not come here). ``public`` is the
    package's ``__all__``, listed by ``dir()`` before anything is loaded.
    """
    def __getattr__(name: str) -> Any:
        if name in lazy:
            value = getattr(import_module(lazy[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(public))

    return __getattr__, __dir__

"""Old keyword spellings, accepted for one release with a ``DeprecationWarning``.

One vocabulary (issue 18): ``t_ini`` is the measured past that conditions a plan (it was
``past_length`` in places), ``length`` a trajectory's number of samples, ``horizon`` the planning
horizon. :func:`renamed_keywords` keeps the old keyword of a function working meanwhile.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from ddcontrol.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

#: What each new name means, appended to the warning.
MEANINGS = {"t_ini": "T_ini, the measured past that conditions a plan",
            "length": "a trajectory's number of samples; 'steps' counts optimisation steps"}


def warn_renamed(where: str, old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old=`` of ``where`` is deprecated in favour of ``new=``."""
    meaning = MEANINGS.get(new)
    warnings.warn(f"{where}: {old}= is deprecated, use {new}=" + (f" ({meaning})" if meaning
                                                                else ""),
                  DeprecationWarning, stacklevel=stacklevel)


def warn_renamed_attribute(owner: str, old: str, new: str) -> None:
    """Warn that attribute ``owner.old`` is deprecated in favour of ``owner.new``."""
    warnings.warn(f"{owner}.{old} is deprecated, use .{new}", DeprecationWarning, stacklevel=3)


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Decorator: accept each old keyword ``old=new`` of ``renames`` under its new name.

    A call with the old keyword warns (``DeprecationWarning``, attributed to the caller) and runs
    as if the new one had been given; both at once raise ``ConfigurationError``.
    """
    def decorate(func: F) -> F:
        where = func.__qualname__.replace(".__init__", "")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ConfigurationError(f"{where}: pass {new}= only ({old}= is its "
                                                 "deprecated name)")
                    warn_renamed(where, old, new)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate

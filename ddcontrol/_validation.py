"""Small checks shared by the public functions of ddcontrol (shapes, finiteness, positivity)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError


def as_finite_array(value: Any, name: str, *, ndim: int | None = None,
                    dtype: Any = np.float64) -> np.ndarray:
    """Return ``value`` as a numpy array, raising if it is not finite or has the wrong rank."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like of numbers, got {type(value).__name__}") from exc
    if ndim is not None and arr.ndim != ndim:
        raise DimensionError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name} contains NaN or inf")
    return arr


def check_positive_int(value: Any, name: str, *, allow_zero: bool = False) -> int:
    """Return ``value`` as int, raising ``ConfigurationError`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as float, raising ``ConfigurationError`` unless it is finite and positive."""
    try:
        val = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from exc
    if not np.isfinite(val) or val < 0 or (val == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be finite and {bound}, got {value!r}")
    return val


def check_device(device: Any, name: str = "device") -> Any:
    """Return ``device`` as a ``torch.device``, raising ``ConfigurationError`` unless it is cpu or
    an available CUDA device (``"cuda"``, ``"cuda:N"``)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} must be cpu or cuda (or cuda:N), got {device!r}"
                                 ) from exc
    if dev.type not in ("cpu", "cuda"):
        raise ConfigurationError(f"{name} must be cpu or cuda (or cuda:N), got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(f"{name} {str(device)!r} requested but CUDA is not available "
                                     "(no GPU, or a CPU-only torch build); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigurationError(f"{name} {str(device)!r}: only {torch.cuda.device_count()} "
                                     "CUDA device(s)")
    return dev

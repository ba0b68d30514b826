"""Exception types raised at ddcontrol's public boundaries.

Each subclasses the builtin exception a caller would naturally catch (``ValueError`` or
``TypeError``), so ``except ValueError`` keeps working, while the specific type names the problem.
"""

from __future__ import annotations

__all__ = [
    "DDControlError",
    "DimensionError",
    "NonFiniteError",
    "DataFormatError",
    "CheckpointError",
    "UnknownNameError",
    "ConfigurationError",
]


class DDControlError(Exception):
    """Base class of every exception raised by ddcontrol on purpose."""


class DimensionError(DDControlError, ValueError):
    """An array has the wrong shape, or two arrays disagree on a dimension."""


class NonFiniteError(DDControlError, ValueError):
    """An array that must be finite contains NaN or inf."""


class DataFormatError(DDControlError, ValueError):
    """A dataset file is missing, unreadable, truncated, of another format version, or corrupt."""


class CheckpointError(DDControlError, ValueError):
    """A checkpoint is missing, corrupt, or does not match the data it is used with."""


class UnknownNameError(DDControlError, ValueError):
    """A name (environment id, excitation, architecture, reference, solver...) is not known."""


class ConfigurationError(DDControlError, ValueError):
    """A parameter value is out of its valid range (negative count, non-positive step...)."""

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
    "WriteError",
    "TrainingInterrupted",
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


class WriteError(DDControlError, OSError):
    """An output file or folder cannot be written (its parent is a file, no permission, disk
    full...), or the output path names a folder where a file is expected."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (SIGINT) after saving a consistent checkpoint.

    A ``KeyboardInterrupt``, so ``except KeyboardInterrupt`` keeps working. ``step`` is the last
    completed step and ``checkpoint`` the file saved (None without an output folder).
    """

    def __init__(self, step: int, checkpoint: str | None) -> None:
        self.step, self.checkpoint = int(step), checkpoint
        where = (f"checkpoint saved to {checkpoint}; continue with resume=True" if checkpoint
                 else "nothing saved (no output folder)")
        super().__init__(f"training interrupted at step {self.step}; {where}")

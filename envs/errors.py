"""Exceptions raised by the simulators; each subclasses ``ValueError``."""

from __future__ import annotations


class EnvError(ValueError):
    """Base class of the simulators' own errors."""


class InvalidActionError(EnvError):
    """An action has the wrong shape or contains NaN/inf."""


class InvalidStateError(EnvError):
    """An initial state passed to ``reset(options={"state": ...})`` is malformed."""


class EnvConfigurationError(EnvError):
    """A simulator parameter is inconsistent (matrix dimensions, unknown output or preset name)."""

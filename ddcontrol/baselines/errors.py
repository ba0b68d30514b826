"""Exceptions specific to the baseline controllers."""

from __future__ import annotations

from ddcontrol.errors import ConfigurationError, DDControlError

__all__ = ["NotApplicableError", "InsufficientExcitationError", "SolverFailedError"]


class NotApplicableError(ConfigurationError):
    """The controller cannot be used on this system, for a structural reason given in the message.

    Raised, for example, by LQR when the (linearised or identified) model is not stabilisable:
    the unicycle linearised at rest cannot move sideways, so no constant gain stabilises it.
    """


class InsufficientExcitationError(ConfigurationError):
    """The data are not rich enough (not persistently exciting) for a data-driven controller."""


class SolverFailedError(DDControlError, RuntimeError):
    """An optimisation solver (OSQP, Clarabel, …) returned no usable solution."""

"""Reference tracking on the behaviour manifold: problems, the DenoisingTracker, references.

The problem definition (:class:`TrackingProblem`, references, cost weights) is numpy only; the
torch side (:class:`DenoisingTracker`, :class:`WindowCost`) is imported on first use (PEP 562),
so that the numpy/cvxpy baselines can use the problem without loading torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import REFERENCES, Reference, make_reference

_LAZY = {"DenoisingTracker": "ddcontrol.tracking.tracker",
         "PlanResult": "ddcontrol.tracking.tracker",
         "BatchPlanResult": "ddcontrol.tracking.batch",
         "plan_batch": "ddcontrol.tracking.batch",
         "WindowCost": "ddcontrol.tracking.window_cost",
         "FramedWindowCost": "ddcontrol.tracking.window_cost"}

__all__ = ["TrackingProblem", "WindowCost", "FramedWindowCost", "DenoisingTracker", "PlanResult",
           "BatchPlanResult", "plan_batch", "Reference", "REFERENCES", "make_reference"]


def __getattr__(name: str) -> Any:
    """Import the torch-based names on first access."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

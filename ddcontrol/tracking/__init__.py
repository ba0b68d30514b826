"""Reference tracking on the behaviour manifold: problems, the DenoisingTracker, references.

The problem definition (:class:`TrackingProblem`, references, cost weights) and the controller
interface (:class:`Controller`) are numpy only; the torch side (:class:`DenoisingTracker` and its
pieces, :class:`WindowCost`) is imported on first use (PEP 562), so that the numpy/cvxpy
baselines can use the problem without loading torch.
"""

from __future__ import annotations

from ddcontrol._lazy import lazy_names
from ddcontrol.tracking.controller import Controller
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import REFERENCES, Reference, make_reference

_LAZY = {"DenoisingTracker": "ddcontrol.tracking.tracker",
         "PlanResult": "ddcontrol.tracking.tracker",
         "TrackerConfig": "ddcontrol.tracking.config",
         "BatchPlanResult": "ddcontrol.tracking.batch",
         "plan_batch": "ddcontrol.tracking.batch",
         "WindowCost": "ddcontrol.tracking.window_cost",
         "FramedWindowCost": "ddcontrol.tracking.window_cost"}

__all__ = ["TrackingProblem", "Controller", "WindowCost", "FramedWindowCost", "DenoisingTracker",
           "TrackerConfig", "PlanResult", "BatchPlanResult", "plan_batch", "Reference",
           "REFERENCES", "make_reference"]

__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)

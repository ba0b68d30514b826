"""Reference tracking on the behaviour manifold: problems, the DenoisingTracker, references."""

from ddcontrol.tracking.problem import TrackingProblem, WindowCost
from ddcontrol.tracking.tracker import DenoisingTracker, PlanResult

__all__ = ["TrackingProblem", "WindowCost", "DenoisingTracker", "PlanResult"]

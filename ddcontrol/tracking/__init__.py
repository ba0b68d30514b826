"""Reference tracking on the behaviour manifold: problems, the DenoisingTracker, references."""

from ddcontrol.tracking.problem import TrackingProblem, WindowCost
from ddcontrol.tracking.reference import REFERENCES, Reference, make_reference
from ddcontrol.tracking.tracker import DenoisingTracker, PlanResult

__all__ = ["TrackingProblem", "WindowCost", "DenoisingTracker", "PlanResult", "Reference",
           "REFERENCES", "make_reference"]

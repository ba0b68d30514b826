"""What a solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

__all__ = ["SolverResult", "STOP_REASONS"]

# Per-element stop codes (0 = still running), in the order reported when several apply.
STOP_REASONS = ("running", "min_gradient_norm", "min_step_size", "diverged", "max_iterations",
                "max_time")


@dataclass
class SolverResult:
    """Outcome of a batched solve.

    Attributes
    ----------
    point : Tensor, shape (B, *event_shape)
        Projected (and clamped) point per problem where it stopped; for a diverged problem, its
        best finite iterate.
    cost : Tensor, shape (B,)
        Cost at ``point``.
    iterations : int
        Iterations run (each = one denoiser forward + one VJP; evaluations = iterations + 1).
    stop_reason : str
        Why the loop ended: "max_iterations", "max_time", or, when every problem stopped on its
        own, their reason(s) ("min_gradient_norm", "min_step_size", "diverged"), comma-joined.
    stop_reasons : list of str
        Per problem.
    stop_iterations : ndarray of int, shape (B,)
        Iteration at which each problem stopped (a multiple of ``check_every`` or the last).
    history : dict of str to ndarray
        ``cost``, ``rgrad_norm`` (‖Riemannian gradient‖), ``dist`` (‖v(y) − y‖ of the evaluated
        iterate y), each (iterations + 1, B) float64, row 0 at the initial point, forward-filled
        after a problem stopped; ``sigma`` (iterations + 1,). Empty if history was off.
    wall_time_s : float
        Wall-clock time of ``run`` in seconds.
    best_point, best_cost : Tensor
        Lowest-cost finite iterate per problem among those seen at the stopping checks (every
        ``check_every`` iterations and the last), shapes as ``point`` / ``cost``.
    solver : str
        Name of the solver.
    """

    point: Tensor
    cost: Tensor
    iterations: int
    stop_reason: str
    stop_reasons: list[str]
    stop_iterations: np.ndarray
    history: dict[str, np.ndarray] = field(repr=False)
    wall_time_s: float
    best_point: Tensor = field(repr=False)
    best_cost: Tensor = field(repr=False)
    solver: str = ""

    @property
    def converged(self) -> np.ndarray:
        """Boolean (B,): problems stopped by a gradient-norm or step-size criterion."""
        return np.array([r in ("min_gradient_norm", "min_step_size") for r in self.stop_reasons])

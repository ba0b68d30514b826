"""Replay verification: what the true simulator does with planned inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddcontrol.tracking.problem import TrackingProblem
from envs.dynamics import Dynamics

# A replay whose true cost exceeds the predicted cost by this factor, with outputs this far off,
# is flagged: the plan left the behaviour the model knows (typically: a reference that needs
# inputs or states the data never contained).
DRIFT_COST_RATIO = 1.5
DRIFT_DEVIATION = 0.1


@dataclass
class ReplayResult:
    """Planned inputs run through the true simulator.

    Attributes
    ----------
    outputs : ndarray (N, p)
        True outputs y_true, physical units.
    states : ndarray (N + 1, n_x)
        True states.
    true_cost, predicted_cost : float
        Tracking cost of (u, y_true) and of (u, y_predicted).
    manifold_deviation : float
        ‖y_predicted − y_true‖ / ‖y_true‖ (Frobenius norms over the horizon, all outputs).
    drifted : bool
        True when the true cost is more than ``DRIFT_COST_RATIO`` times the predicted one and the
        deviation exceeds ``DRIFT_DEVIATION``: the prediction is not to be trusted.
    """

    outputs: np.ndarray
    states: np.ndarray
    true_cost: float
    predicted_cost: float
    manifold_deviation: float
    drifted: bool


def replay(problem: TrackingProblem, dynamics: Dynamics, x0: np.ndarray, inputs: np.ndarray,
           predicted_outputs: np.ndarray, *, u_prev: np.ndarray | None = None, start: int = 0
           ) -> ReplayResult:
    """Run ``inputs`` (N, m) from the true state ``x0`` (n_x,) and compare with the prediction.

    ``start`` is the reference index of the first planned step; ``u_prev`` (m,) the input held
    before it (matters only with a feedthrough).
    """
    u = np.asarray(inputs, dtype=np.float64)[None]
    y_true, x_true = dynamics.simulate(np.asarray(x0, dtype=np.float64)[None], u,
                                       u_prev=None if u_prev is None else np.asarray(u_prev)[None])
    y_true, x_true = y_true[0], x_true[0]
    y_pred = np.asarray(predicted_outputs, dtype=np.float64)
    true_cost = float(problem.cost(u[0], y_true, start))
    pred_cost = float(problem.cost(u[0], y_pred, start))
    deviation = float(np.linalg.norm(y_pred - y_true) / max(np.linalg.norm(y_true), 1e-12))
    drifted = bool(true_cost > DRIFT_COST_RATIO * pred_cost and deviation > DRIFT_DEVIATION)
    return ReplayResult(y_true, x_true, true_cost, pred_cost, deviation, drifted)

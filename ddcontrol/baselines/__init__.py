"""Baseline controllers every data-driven tracker is compared with.

==================  ==========================================================================
name                controller
==================  ==========================================================================
``"oracle"``        :class:`LinearOracle` (exact QP) / :class:`ShootingOracle` (nonlinear MPC);
                    knows the model and reads ``info["state"]``: the lower bound, on purpose
``"lqr"``           :class:`LQRTracker` on the true or linearised model, Kalman filter
``"lqr-id"``        :class:`LQRTracker` on a least-squares ARX model (measurable I/O state)
``"deepc"``         :class:`DeePC`, Hankel-matrix predictive control (cvxpy + OSQP)
``"best-window"``   replay of the least-cost training window (:func:`best_window`)
==================  ==========================================================================

All are :class:`Controller` s: ``reset(obs, info)``, then ``act(obs, info) -> u`` once per sample.
Build one by name with :func:`make_baseline`.
"""

from ddcontrol.baselines.best_window import BestWindow, best_window, window_costs
from ddcontrol.baselines.deepc import DeePC
from ddcontrol.baselines.errors import (
    InsufficientExcitationError,
    NotApplicableError,
    SolverFailedError,
)
from ddcontrol.baselines.hankel import check_persistency, persistency_rank, window_columns
from ddcontrol.baselines.lqr import LQRTracker, lqr_tracking_gain
from ddcontrol.baselines.model import AffineModel, is_stabilizable, linearize
from ddcontrol.baselines.observer import ARXStateBuilder, KalmanObserver
from ddcontrol.baselines.oracle import LinearOracle, ShootingOracle, condense, make_oracle
from ddcontrol.baselines.policy import Controller, OpenLoopController
from ddcontrol.baselines.registry import BASELINES, make_baseline
from ddcontrol.baselines.sysid import ARXModel, fit_arx

__all__ = [
    "Controller",
    "OpenLoopController",
    "LQRTracker",
    "lqr_tracking_gain",
    "DeePC",
    "LinearOracle",
    "ShootingOracle",
    "make_oracle",
    "condense",
    "BestWindow",
    "best_window",
    "window_costs",
    "AffineModel",
    "linearize",
    "is_stabilizable",
    "ARXModel",
    "fit_arx",
    "KalmanObserver",
    "ARXStateBuilder",
    "window_columns",
    "persistency_rank",
    "check_persistency",
    "BASELINES",
    "make_baseline",
    "NotApplicableError",
    "InsufficientExcitationError",
    "SolverFailedError",
]

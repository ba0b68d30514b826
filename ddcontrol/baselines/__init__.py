"""Baseline controllers every data-driven tracker is compared with.

=====================  ==========================================================================
name                   controller
=====================  ==========================================================================
``"oracle"``           :class:`LinearOracle` (exact QP) / :class:`CasadiOracle` (NMPC on IPOPT,
                       when CasADi is installed) / :class:`ShootingOracle` (otherwise); knows the
                       model and reads ``info["state"]``: the lower bound, on purpose
``"oracle-casadi"``    :class:`CasadiOracle` on any system (needs the ``baselines`` extra)
``"oracle-shooting"``  :class:`ShootingOracle` on any system: the dependency-free cross-check
``"lqr"``              :class:`LQRTracker` on the true or linearised model, Kalman filter
``"lqr-id"``           :class:`LQRTracker` on a least-squares ARX model (measurable I/O state)
``"deepc"``            :class:`DeePC`, Hankel-matrix predictive control (cvxpy + OSQP)
``"deepc-tuned"``      :class:`DeePC` with its regularisation chosen on held-out data
                       (:func:`tune_deepc`)
``"koopman"``          :class:`KoopmanMPC`, linear MPC on an EDMD model (:func:`select_edmd`)
``"sindy"``            :class:`~ddcontrol.baselines.sindy.SINDyMPC`, NMPC (CasADi) on a sparse
                       SINDy-with-control model (:func:`~ddcontrol.baselines.sindy.select_sindy`)
``"best-window"``      replay of the least-cost training window (:func:`best_window`)
=====================  ==========================================================================

The data-driven ones are identified from exactly the training data, with their
hyper-parameters chosen on held-out trajectories of it (never on test references). The CasADi
ones need the ``baselines`` extra (``pip install 'ddcontrol[baselines]'``).

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
from ddcontrol.baselines.koopman import EDMDModel, KoopmanMPC, fit_edmd, select_edmd
from ddcontrol.baselines.lqr import LQRTracker, lqr_tracking_gain
from ddcontrol.baselines.model import AffineModel, is_stabilizable, linearize
from ddcontrol.baselines.nmpc import CasadiOracle, casadi_available, casadi_model
from ddcontrol.baselines.observer import ARXStateBuilder, KalmanObserver
from ddcontrol.baselines.oracle import LinearOracle, ShootingOracle, condense, make_oracle
from ddcontrol.baselines.policy import Controller, OpenLoopController
from ddcontrol.baselines.registry import BASELINES, make_baseline, tuned_deepc
from ddcontrol.baselines.sysid import ARXModel, fit_arx
from ddcontrol.baselines.tuning import DeePCTuning, tune_deepc

__all__ = [
    "Controller",
    "OpenLoopController",
    "LQRTracker",
    "lqr_tracking_gain",
    "DeePC",
    "tune_deepc",
    "tuned_deepc",
    "DeePCTuning",
    "KoopmanMPC",
    "EDMDModel",
    "fit_edmd",
    "select_edmd",
    "CasadiOracle",
    "casadi_available",
    "casadi_model",
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

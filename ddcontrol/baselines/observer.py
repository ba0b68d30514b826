"""State estimators for output-feedback LQR: a steady-state Kalman filter and the ARX I/O state.

An estimator is told each measurement ``y_k`` (``update``) and then the applied input ``u_k``
(``predict``); ``update`` returns the current estimate ``x̂_{k|k}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import solve_discrete_are

from ddcontrol.baselines.model import AffineModel
from ddcontrol.baselines.sysid import ARXModel

__all__ = ["KalmanObserver", "ARXStateBuilder"]


class KalmanObserver:
    """Steady-state Kalman filter of an :class:`AffineModel` (predictor-corrector form).

    Parameters
    ----------
    model : AffineModel
    process_cov : float or ndarray, shape (n, n)
        Process noise covariance W (a scalar means W = w·I). Small values trust the model.
    measurement_cov : float or ndarray, shape (p, p)
        Measurement noise covariance V.
    x_init : ndarray, shape (n,), optional
        Prior mean of the initial state (default: zeros, e.g. the operating point).

    Notes
    -----
    ``x̂_{k|k} = x̂_{k|k-1} + M (y_k − C x̂_{k|k-1} − d)`` with ``M = P Cᵀ (C P Cᵀ + V)⁻¹`` and P the
    stabilising solution of the filter Riccati equation; then
    ``x̂_{k+1|k} = A x̂_{k|k} + B u_k + c``. The first update starts from ``x_init``.
    """

    def __init__(self, model: AffineModel, process_cov: Any = 1e-4, measurement_cov: Any = 1e-4,
                 x_init: np.ndarray | None = None) -> None:
        self.model = model
        n, p = model.state_dim, model.output_dim
        W = np.asarray(process_cov, float) * (np.eye(n) if np.ndim(process_cov) == 0 else 1.0)
        V = np.asarray(measurement_cov, float) * (np.eye(p) if np.ndim(measurement_cov) == 0
                                                  else 1.0)
        P = solve_discrete_are(model.A.T, model.C.T, W, V)
        self.M = P @ model.C.T @ np.linalg.inv(model.C @ P @ model.C.T + V)
        self.x_init = np.zeros(n) if x_init is None else np.asarray(x_init, float)
        self.reset()

    def reset(self) -> None:
        self.x_pred = self.x_init.copy()

    def update(self, y: np.ndarray) -> np.ndarray:
        """Correct with the measurement ``y_k``; returns ``x̂_{k|k}``."""
        m = self.model
        self.x_filt = self.x_pred + self.M @ (y - m.C @ self.x_pred - m.d)
        return self.x_filt

    def predict(self, u: np.ndarray) -> None:
        """Propagate through the applied input ``u_k``."""
        m = self.model
        self.x_pred = m.A @ self.x_filt + m.B @ u + m.c


class ARXStateBuilder:
    """The exact measurable state ξ_k of an :class:`ARXModel` realisation, from I/O history.

    Before ``lag`` outputs have been measured, the missing past is filled with the first output
    and zero inputs (as if the system had been at rest there): an approximation for the first
    ``lag - 1`` samples only.
    """

    def __init__(self, arx: ARXModel) -> None:
        self.arx = arx
        self.reset()

    def reset(self) -> None:
        self.y_hist: list[np.ndarray] = []
        self.u_hist: list[np.ndarray] = []

    def update(self, y: np.ndarray) -> np.ndarray:
        lag, m = self.arx.lag, self.arx.input_dim
        self.y_hist.append(np.asarray(y, float))
        ys = self.y_hist[-lag:]
        ys = [ys[0]] * (lag - len(ys)) + ys
        us = self.u_hist[-(lag - 1):] if lag > 1 else []
        us = [np.zeros(m)] * (lag - 1 - len(us)) + us
        return self.arx.state(np.reshape(us, (lag - 1, m)), np.stack(ys))

    def predict(self, u: np.ndarray) -> None:
        self.u_hist.append(np.asarray(u, float))

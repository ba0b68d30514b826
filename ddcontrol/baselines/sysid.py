"""Least-squares ARX identification and its non-minimal (measurable) state-space realisation.

Model, with the datasets' sampling convention (``y_k`` measured before ``u_k`` is applied)::

    y_k = Σ_{i=1}^{lag} (A_i y_{k-i} + B_i u_{k-i}) + b

For an observable LTI system of order n this is exact (noise-free data) as soon as ``lag`` is at
least the observability index (≤ n). Its realisation with state

    ξ_k = (y_k, y_{k-1}, …, y_{k-lag+1}, u_{k-1}, …, u_{k-lag+1})

is built from measurements only, so LQR state feedback on ξ needs no observer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ddcontrol._validation import as_finite_array, check_positive_float, check_positive_int
from ddcontrol.baselines.model import AffineModel
from ddcontrol.errors import ConfigurationError, DimensionError

__all__ = ["ARXModel", "fit_arx"]


@dataclass(frozen=True)
class ARXModel:
    """An identified ARX model.

    Attributes
    ----------
    Ay : ndarray, shape (lag, p, p)
        ``Ay[i-1] = A_i``, weights of ``y_{k-i}``.
    Bu : ndarray, shape (lag, p, m)
        ``Bu[i-1] = B_i``, weights of ``u_{k-i}``.
    bias : ndarray, shape (p,)
        Constant term ``b`` (zero unless fitted with ``bias=True``).
    dt : float
        Sampling time in seconds.
    """

    Ay: np.ndarray
    Bu: np.ndarray
    bias: np.ndarray
    dt: float = 1.0

    @property
    def lag(self) -> int:
        return int(self.Ay.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.Ay.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.Bu.shape[2])

    @property
    def state_dim(self) -> int:
        """Dimension of the non-minimal state ξ: ``lag·p + (lag-1)·m``."""
        return self.lag * self.output_dim + (self.lag - 1) * self.input_dim

    def predict(self, u: Any, y: Any) -> np.ndarray:
        """One-step-ahead predictions along trajectories.

        Parameters
        ----------
        u : array_like, shape (N, T, m)
        y : array_like, shape (N, T, p)

        Returns
        -------
        ndarray, shape (N, T - lag, p)
            Prediction of ``y[:, lag:]`` from the measured past.
        """
        u, y = _check_uy(u, y, self.input_dim, self.output_dim)
        phi, _ = _regressors(u, y, self.lag)
        return phi @ self._theta()

    def _theta(self) -> np.ndarray:
        # Stacked coefficients matching _regressors' column order, bias last.
        rows = [self.Ay[i].T for i in range(self.lag)] + [self.Bu[i].T for i in range(self.lag)]
        return np.vstack(rows + [self.bias[None, :]])

    def to_state_space(self) -> AffineModel:
        """The realisation on ξ (see the module docstring); ``y_k = [I 0 … 0] ξ_k``."""
        lag, p, m = self.lag, self.output_dim, self.input_dim
        nx = self.state_dim
        A = np.zeros((nx, nx))
        B = np.zeros((nx, m))
        c = np.zeros(nx)
        uo = lag * p  # offset of the input blocks in ξ
        for i in range(lag):
            A[:p, i * p:(i + 1) * p] = self.Ay[i]
        for i in range(1, lag):
            A[:p, uo + (i - 1) * m: uo + i * m] = self.Bu[i]
        B[:p] = self.Bu[0]
        c[:p] = self.bias
        for i in range(1, lag):  # y_{k-i+1} moves one block down
            A[i * p:(i + 1) * p, (i - 1) * p:i * p] = np.eye(p)
        if lag > 1:
            B[uo:uo + m] = np.eye(m)  # u_k becomes the newest past input
            for i in range(1, lag - 1):
                A[uo + i * m: uo + (i + 1) * m, uo + (i - 1) * m: uo + i * m] = np.eye(m)
        C = np.zeros((p, nx))
        C[:, :p] = np.eye(p)
        return AffineModel(A, B, C, c, np.zeros(p), self.dt)

    def state(self, past_inputs: Any, past_outputs: Any) -> np.ndarray:
        """ξ_k from ``u_{k-lag+1..k-1}`` (lag-1, m) and ``y_{k-lag+1..k}`` (lag, p), oldest first."""
        u = np.asarray(past_inputs, dtype=np.float64).reshape(self.lag - 1, self.input_dim)
        y = np.asarray(past_outputs, dtype=np.float64).reshape(self.lag, self.output_dim)
        return np.concatenate([y[::-1].reshape(-1), u[::-1].reshape(-1)])


def _check_uy(u: Any, y: Any, m: int | None = None, p: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    u = as_finite_array(u, "u")
    y = as_finite_array(y, "y")
    u = u[None] if u.ndim == 2 else u
    y = y[None] if y.ndim == 2 else y
    if u.ndim != 3 or y.ndim != 3 or u.shape[:2] != y.shape[:2]:
        raise DimensionError(f"u and y must be (N, T, m) and (N, T, p) with equal N, T; got "
                             f"{u.shape} and {y.shape}")
    if (m is not None and u.shape[2] != m) or (p is not None and y.shape[2] != p):
        raise DimensionError(f"model has m={m}, p={p}; data have {u.shape[2]}, {y.shape[2]}")
    return u, y


def _regressors(u: np.ndarray, y: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(y_{k-1}, …, y_{k-lag}, u_{k-1}, …, u_{k-lag}, 1)`` and targets ``y_k``, k >= lag."""
    T = u.shape[1]
    if T <= lag:
        raise ConfigurationError(f"trajectories of {T} samples are too short for lag {lag}")
    cols = [y[:, lag - i:T - i] for i in range(1, lag + 1)]
    cols += [u[:, lag - i:T - i] for i in range(1, lag + 1)]
    cols.append(np.ones(y[:, lag:].shape[:2] + (1,)))
    return np.concatenate(cols, axis=-1), y[:, lag:]


def fit_arx(u: Any, y: Any, lag: int, *, bias: bool = False, ridge: float = 0.0,
            dt: float = 1.0) -> ARXModel:
    """Fit an ARX model by (ridge-regularised) least squares on every trajectory.

    Parameters
    ----------
    u : array_like, shape (N, T, m) or (T, m)
        Inputs.
    y : array_like, shape (N, T, p) or (T, p)
        Outputs, ``y[:, k]`` measured before ``u[:, k]``.
    lag : int
        Number of past samples (model order) per channel.
    bias : bool
        Fit the constant ``b`` (useful for nonlinear data around a nonzero mean).
    ridge : float
        Tikhonov weight on the coefficients (0: minimum-norm least squares).
    dt : float
        Sampling time stored with the model (s).

    Returns
    -------
    ARXModel
    """
    lag = check_positive_int(lag, "lag")
    ridge = check_positive_float(ridge, "ridge", allow_zero=True)
    u, y = _check_uy(u, y)
    phi, target = _regressors(u, y, lag)
    if not bias:
        phi = phi[..., :-1]
    phi = phi.reshape(-1, phi.shape[-1])
    target = target.reshape(-1, target.shape[-1])
    if phi.shape[0] < phi.shape[1]:
        raise ConfigurationError(f"{phi.shape[0]} regression rows for {phi.shape[1]} unknowns: "
                                 "collect more data or lower the lag")
    if ridge > 0:
        lhs = phi.T @ phi + ridge * np.eye(phi.shape[1])
        theta = np.linalg.solve(lhs, phi.T @ target)
    else:
        theta = np.linalg.lstsq(phi, target, rcond=None)[0]
    p, m = y.shape[2], u.shape[2]
    Ay = np.stack([theta[i * p:(i + 1) * p].T for i in range(lag)])
    off = lag * p
    Bu = np.stack([theta[off + i * m: off + (i + 1) * m].T for i in range(lag)])
    b = theta[-1] if bias else np.zeros(p)
    return ARXModel(Ay, Bu, b, float(dt))

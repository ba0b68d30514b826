"""LQR reference tracking: steady-state feedforward, optional integral action, output feedback.

Two flavours share one controller class:

* ``"lqr"`` (:meth:`LQRTracker.from_dynamics`): the true model (exact for linear systems, the
  torch-autograd linearisation at an operating point for nonlinear ones) with a steady-state
  Kalman filter for the state.
* ``"lqr-id"`` (:meth:`LQRTracker.from_data`): a least-squares ARX model identified from the
  dataset, realised on the measurable I/O state ξ (:mod:`ddcontrol.baselines.sysid`), so the
  state feedback is implementable from measurements alone.

Control law at sample k, with the reference target ``r_k`` of the tracked outputs::

    (x_ss, u_ss) = steady state whose tracked outputs best match r_k (Q-weighted least squares)
    u_k = u_ss − K_x (x̂_k − x_ss) − K_z z_k,     z_{k+1} = z_k + (y_k − r_k)   (integral, optional)

with ``K, S, E = control.dlqr(A, B, Cᵀ Q C, R)`` on the (integrator-augmented) model.

Not applicable (raises :class:`~ddcontrol.baselines.errors.NotApplicableError`) when the model is
not stabilisable: the unicycle linearised at rest cannot move sideways (its lateral position is
an uncontrollable mode at λ = 1), so no constant gain stabilises it; tracking its figure-eight
would need a time-varying LQR along the reference, which is not provided here.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from scipy.linalg import null_space

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.baselines.errors import NotApplicableError
from ddcontrol.baselines.model import AffineModel, is_stabilizable, linearize
from ddcontrol.baselines.observer import ARXStateBuilder, KalmanObserver
from ddcontrol.baselines.policy import Controller
from ddcontrol.baselines.sysid import fit_arx
from ddcontrol.errors import DimensionError
from ddcontrol.tracking.cost import psd_sqrt
from ddcontrol.tracking.reference import Reference
from envs.dynamics import Dynamics

__all__ = ["LQRTracker", "lqr_tracking_gain"]


class StateEstimator(Protocol):
    def reset(self) -> None: ...
    def update(self, y: np.ndarray) -> np.ndarray: ...
    def predict(self, u: np.ndarray) -> None: ...


def lqr_tracking_gain(model: AffineModel, channels: tuple[int, ...], Q: np.ndarray,
                      R: np.ndarray, integral_weight: float = 0.0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LQR gain on the tracked outputs, optionally with integrators of the tracking error.

    Parameters
    ----------
    model : AffineModel
        ``(A, B, C)`` are used; offsets do not change the gain.
    channels : tuple of int
        Tracked output indices (rows of C).
    Q : ndarray, shape (p_tracked, p_tracked)
        Output weight; the state weight is ``C_tᵀ Q C_t`` plus a 1e-9 ridge, so that every
        state is detectable in the cost (non-minimal realisations need it).
    R : ndarray, shape (m, m)
        Input weight (positive definite).
    integral_weight : float
        Weight ``q_i`` of the integrator states (cost ``q_i zᵀ Q z``); 0 disables them.

    Returns
    -------
    K : ndarray, shape (m, n) or (m, n + p_tracked)
        State feedback ``u = −K x`` (integrator columns last).
    S : ndarray
        Solution of the discrete algebraic Riccati equation.
    E : ndarray
        Closed-loop eigenvalues.

    Raises
    ------
    NotApplicableError
        The (augmented) model is not stabilisable.
    """
    import control

    A, B = model.A, model.B
    Ct = model.C[list(channels)]
    n, pt = A.shape[0], Ct.shape[0]
    Qx = Ct.T @ Q @ Ct
    if integral_weight > 0:
        A = np.block([[A, np.zeros((n, pt))], [Ct, np.eye(pt)]])
        B = np.vstack([B, np.zeros((pt, B.shape[1]))])
        Qx = np.block([[Qx, np.zeros((n, pt))], [np.zeros((pt, n)), integral_weight * Q]])
    if not is_stabilizable(A, B):
        why = ("integral action on more tracked outputs than inputs, or a transmission zero at 1"
               if integral_weight > 0 and is_stabilizable(model.A, model.B)
               else "an unstable or marginally stable mode is uncontrollable")
        raise NotApplicableError(f"LQR: the model is not stabilisable ({why}); eigenvalues "
                                 f"{np.round(np.linalg.eigvals(model.A), 4)}")
    Qx = Qx + 1e-9 * max(1.0, np.trace(Qx)) * np.eye(Qx.shape[0])
    K, S, E = control.dlqr(A, B, Qx, R)
    return np.asarray(K), np.asarray(S), np.asarray(E)


class LQRTracker(Controller):
    """Infinite-horizon LQR tracking controller on an affine model (see the module docstring).

    Parameters
    ----------
    model : AffineModel
        The model the gain is designed on.
    reference : Reference
    Q, R : weights on the tracked outputs and the inputs.
    input_low, input_high : array_like, shape (m,)
        Actuator limits (actions are clipped; the integrator stops while saturated).
    estimator : KalmanObserver or ARXStateBuilder
        Gives ``x̂_k`` from the measurements.
    integral_weight : float
        Weight of the integral states (0: feedforward only).
    name : str, optional
        Label; default ``"lqr"``.

    Attributes
    ----------
    K, S, E : ndarray
        Gain, Riccati solution and closed-loop eigenvalues (``control.dlqr`` convention).
    """

    name = "lqr"

    def __init__(self, model: AffineModel, reference: Reference, Q: Any, R: Any,
                 input_low: Any, input_high: Any, *, estimator: StateEstimator,
                 integral_weight: float = 0.0, name: str | None = None) -> None:
        super().__init__(reference, Q, R, input_low, input_high)
        if model.input_dim != self.input_dim or model.output_dim != self.output_dim:
            raise DimensionError(f"model has m={model.input_dim}, p={model.output_dim}; "
                                 f"controller has m={self.input_dim}, p={self.output_dim}")
        if name is not None:
            self.name = name
        self.model = model
        self.estimator = estimator
        self.integral_weight = check_positive_float(integral_weight, "integral_weight",
                                                    allow_zero=True)
        self.K, self.S, self.E = lqr_tracking_gain(model, reference.channels, self.Q, self.R,
                                                   self.integral_weight)
        self._prepare_steady_state()

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_dynamics(cls, dynamics: Dynamics, reference: Reference, Q: Any, R: Any, *,
                      x_op: Any | None = None, u_op: Any | None = None,
                      integral_weight: float = 0.0, process_cov: Any = 1e-4,
                      measurement_cov: Any = 1e-4) -> LQRTracker:
        """``"lqr"``: LQR on the true model, linearised at ``(x_op, u_op)`` (default: origin).

        The Kalman filter starts at ``x_op``. Raises ``NotApplicableError`` when the
        linearisation is not stabilisable (the unicycle).
        """
        model = linearize(dynamics, x_op, u_op)
        x_init = np.zeros(model.state_dim)
        if x_op is not None and model.state_dim == dynamics.state_dim:
            x_init = np.asarray(x_op, float)
        observer = KalmanObserver(model, process_cov, measurement_cov, x_init)
        return cls(model, reference, Q, R, dynamics.input_low, dynamics.input_high,
                   estimator=observer, integral_weight=integral_weight, name="lqr")

    @classmethod
    def from_data(cls, data: Any, reference: Reference, Q: Any, R: Any, *, lag: int = 4,
                  bias: bool = False, ridge: float = 0.0, integral_weight: float = 0.0,
                  input_low: Any | None = None, input_high: Any | None = None) -> LQRTracker:
        """``"lqr-id"``: LQR on an ARX model of order ``lag`` fitted to ``data``.

        Parameters
        ----------
        data : TrajectoryDataset
            Its ``u`` (N, T, m), ``y`` (N, T, p), ``dt`` and input limits (metadata) are used.
        lag, bias, ridge
            See :func:`~ddcontrol.baselines.sysid.fit_arx`.
        input_low, input_high : array_like, optional
            Actuator limits; default: the dataset's metadata (else unbounded).
        """
        lag = check_positive_int(lag, "lag")
        arx = fit_arx(data.u, data.y, lag, bias=bias, ridge=ridge, dt=data.dt)
        data_low, data_high = data.input_bounds
        low = data_low if input_low is None else input_low
        high = data_high if input_high is None else input_high
        ctrl = cls(arx.to_state_space(), reference, Q, R, low, high,
                   estimator=ARXStateBuilder(arx), integral_weight=integral_weight,
                   name="lqr-id")
        ctrl.arx = arx
        return ctrl

    # -- steady-state targets -------------------------------------------------------------------
    def _prepare_steady_state(self) -> None:
        # Equilibria (x, u) solve [A − I, B] (x, u) = −c: a particular one plus a null-space
        # combination θ, chosen to fit the tracked outputs in the Q-weighted least-squares sense.
        m = self.model
        n = m.state_dim
        M = np.hstack([m.A - np.eye(n), m.B])
        z_p = np.linalg.lstsq(M, -m.c, rcond=None)[0]
        N = null_space(M)
        Ct = m.C[list(self.reference.channels)]
        dt_ = m.d[list(self.reference.channels)]
        Qh = psd_sqrt(self.Q)
        G = np.linalg.pinv(Qh @ Ct @ N[:n]) @ Qh if N.size else np.zeros((0, Ct.shape[0]))
        self._ss_offset = z_p - (N @ G @ (dt_ + Ct @ z_p[:n]) if N.size else 0.0)
        self._ss_gain = N @ G if N.size else np.zeros((n + m.input_dim, Ct.shape[0]))

    def steady_state(self, r: Any) -> tuple[np.ndarray, np.ndarray]:
        """Steady state ``(x_ss (n,), u_ss (m,))`` of the model best matching targets ``r``."""
        z = self._ss_offset + self._ss_gain @ np.asarray(r, float)
        n = self.model.state_dim
        return z[:n], z[n:]

    # -- loop -------------------------------------------------------------------------------------
    def _reset(self, y0: np.ndarray, info: dict[str, Any] | None) -> None:
        self.estimator.reset()
        self.z = np.zeros(self.reference.tracked_dim)

    def _act(self, y: np.ndarray, info: dict[str, Any] | None) -> np.ndarray:
        x_hat = self.estimator.update(y)
        r = self.reference.window(self.k, 1)[0]
        x_ss, u_ss = self.steady_state(r)
        n = self.model.state_dim
        u = u_ss - self.K[:, :n] @ (x_hat - x_ss)
        if self.integral_weight > 0:
            u = u - self.K[:, n:] @ self.z
        u_applied = np.clip(u, self.input_low, self.input_high)
        if self.integral_weight > 0 and np.allclose(u_applied, u):
            # Conditional integration: no wind-up while the actuator saturates.
            self.z = self.z + (self.reference.select(y) - r)
        self.estimator.predict(u_applied)
        return u_applied

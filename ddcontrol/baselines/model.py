"""Affine state-space models for the model-based baselines, and linearisation of any Dynamics.

Every linear model used by LQR (true, linearised or identified) is an :class:`AffineModel` in the
system's absolute coordinates, so steady-state targets and offsets need no bookkeeping of
operating points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ddcontrol._validation import as_finite_array
from ddcontrol.errors import ConfigurationError, DimensionError
from envs.dynamics import Dynamics, LinearDynamics

__all__ = ["AffineModel", "linearize", "is_stabilizable"]


@dataclass(frozen=True)
class AffineModel:
    """``x_{k+1} = A x_k + B u_k + c``, ``y_k = C x_k + d`` (sampled every ``dt`` seconds).

    Attributes
    ----------
    A : ndarray, shape (n, n)
    B : ndarray, shape (n, m)
    C : ndarray, shape (p, n)
    c : ndarray, shape (n,)
        State offset (nonzero for a linearisation away from the origin or an affine ARX fit).
    d : ndarray, shape (p,)
        Output offset.
    dt : float
        Sampling time in seconds.
    """

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    c: np.ndarray
    d: np.ndarray
    dt: float = 1.0

    def __post_init__(self) -> None:
        A = as_finite_array(self.A, "A", ndim=2)
        B = as_finite_array(self.B, "B", ndim=2)
        C = as_finite_array(self.C, "C", ndim=2)
        c = as_finite_array(self.c, "c", ndim=1)
        d = as_finite_array(self.d, "d", ndim=1)
        n = A.shape[0]
        if A.shape != (n, n) or B.shape[0] != n or C.shape[1] != n or c.shape != (n,) \
                or d.shape != (C.shape[0],):
            raise DimensionError(f"inconsistent model shapes: A {A.shape}, B {B.shape}, "
                                 f"C {C.shape}, c {c.shape}, d {d.shape}")
        for key, val in (("A", A), ("B", B), ("C", C), ("c", c), ("d", d)):
            object.__setattr__(self, key, val)

    @property
    def state_dim(self) -> int:
        return int(self.A.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.B.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.C.shape[0])

    @classmethod
    def from_linear_dynamics(cls, dyn: LinearDynamics) -> AffineModel:
        """The model of a :class:`LinearDynamics`.

        A feedthrough ``y_k = C x_k + D u_{k-1}`` is absorbed by appending ``u_{k-1}`` to the state,
        so the returned model is strictly proper in the usual sense.
        """
        A, B, C, D = dyn.A, dyn.B, dyn.C, dyn.D
        n, m = B.shape
        zeros = np.zeros
        if D is None or not np.any(D):
            return cls(A, B, C, zeros(n), zeros(C.shape[0]), dyn.dt)
        A_aug = np.block([[A, zeros((n, m))], [zeros((m, n)), zeros((m, m))]])
        B_aug = np.vstack([B, np.eye(m)])
        return cls(A_aug, B_aug, np.hstack([C, D]), zeros(n + m), zeros(C.shape[0]), dyn.dt)


def linearize(dynamics: Dynamics, x_op: Any | None = None, u_op: Any | None = None,
              *, require_equilibrium: bool = False) -> AffineModel:
    """First-order model of ``dynamics`` around ``(x_op, u_op)`` by torch autograd.

    Parameters
    ----------
    dynamics : Dynamics
        Any batched dynamics whose ``step``/``output`` accept torch tensors.
    x_op : array_like, shape (n,), optional
        Operating state (default: zeros).
    u_op : array_like, shape (m,), optional
        Operating input (default: zeros).
    require_equilibrium : bool
        Raise unless ``step(x_op, u_op) == x_op`` (to 1e-9).

    Returns
    -------
    AffineModel
        ``A = ∂step/∂x``, ``B = ∂step/∂u``, ``C = ∂output/∂x`` at the operating point, with offsets
        ``c = step(x_op, u_op) - A x_op - B u_op`` and ``d = output(x_op) - C x_op`` so the model
        is exact at the operating point in absolute coordinates. For a :class:`LinearDynamics`
        the exact model is returned (see :meth:`AffineModel.from_linear_dynamics`).

    Notes
    -----
    An output that depends on the previously held input (a nonzero ∂output/∂u_prev) is only
    supported for :class:`LinearDynamics`; other systems raise ``ConfigurationError``.
    """
    import torch

    if isinstance(dynamics, LinearDynamics):
        return AffineModel.from_linear_dynamics(dynamics)
    n, m = dynamics.state_dim, dynamics.input_dim
    x0 = np.zeros(n) if x_op is None else as_finite_array(x_op, "x_op").reshape(-1)
    u0 = np.zeros(m) if u_op is None else as_finite_array(u_op, "u_op").reshape(-1)
    if x0.shape != (n,) or u0.shape != (m,):
        raise DimensionError(f"operating point must be x ({n},) and u ({m},), got {x0.shape} "
                             f"and {u0.shape}")
    xt = torch.as_tensor(x0, dtype=torch.float64)
    ut = torch.as_tensor(u0, dtype=torch.float64)
    A, B = torch.autograd.functional.jacobian(lambda x, u: dynamics.step(x, u), (xt, ut))
    C, D = torch.autograd.functional.jacobian(lambda x, u: dynamics.output(x, u), (xt, ut))
    if torch.any(D != 0):
        raise ConfigurationError("linearize: outputs depending on the previous input are only "
                                 "supported for LinearDynamics")
    with torch.no_grad():
        f0 = dynamics.step(xt, ut).numpy()
        h0 = dynamics.output(xt, ut).numpy()
    if require_equilibrium and not np.allclose(f0, x0, atol=1e-9):
        raise ConfigurationError(f"({x0}, {u0}) is not an equilibrium: step gives {f0}")
    A, B, C = A.numpy(), B.numpy(), C.numpy()
    return AffineModel(A, B, C, f0 - A @ x0 - B @ u0, h0 - C @ x0, dynamics.dt)


def is_stabilizable(A: np.ndarray, B: np.ndarray, tol: float = 1e-7) -> bool:
    """PBH test: ``rank [A - λI, B] = n`` for every eigenvalue with ``|λ| >= 1 - tol``."""
    n = A.shape[0]
    for lam in np.linalg.eigvals(A):
        if abs(lam) >= 1.0 - tol:
            M = np.hstack([A - lam * np.eye(n), B])
            s = np.linalg.svd(M, compute_uv=False)
            if s[-1] <= tol * max(1.0, s[0]):
                return False
    return True

"""The finite-horizon tracking cost shared by every controller, solver and metric.

    f(u, y) = Σ_k u_kᵀ R u_k + (y_k − r_k)ᵀ Q (y_k − r_k),   k = 0 .. N-1,

on the tracked output channels, with the window convention of the datasets: ``y_k`` is measured
*before* ``u_k`` is applied, so ``y_0`` is fixed by the past and ``u_{N-1}`` affects no output of
the horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ddcontrol._validation import as_finite_array
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.tracking.reference import Reference

__all__ = ["tracking_cost", "weight_matrix", "psd_sqrt"]


def weight_matrix(weight: Any, dim: int, name: str = "weight") -> np.ndarray:
    """A symmetric positive semidefinite (dim, dim) matrix from a scalar, a diagonal or a matrix.

    Raises
    ------
    DimensionError
        ``weight`` is neither a scalar, a (dim,) diagonal nor a (dim, dim) matrix.
    NonFiniteError
        It contains NaN or inf.
    ConfigurationError
        It is not symmetric positive semidefinite.
    """
    w = as_finite_array(weight, name)
    if w.ndim == 0:
        w = w * np.eye(dim)
    elif w.ndim == 1:
        if w.shape != (dim,):
            raise DimensionError(f"{name} diagonal must have {dim} entries, got {w.shape}")
        w = np.diag(w)
    elif w.shape != (dim, dim):
        raise DimensionError(f"{name} must be a scalar, ({dim},) or ({dim}, {dim}), got {w.shape}")
    if not np.allclose(w, w.T, atol=1e-12 * max(1.0, np.abs(w).max(initial=0.0))):
        raise ConfigurationError(f"{name} must be symmetric")
    w = 0.5 * (w + w.T)
    if dim and np.linalg.eigvalsh(w).min() < -1e-10 * max(1.0, np.abs(w).max()):
        raise ConfigurationError(f"{name} must be positive semidefinite")
    return w


def psd_sqrt(W: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semidefinite weight (negative eigenvalues from
    round-off clipped to 0), so that ``xᵀ W x = ‖psd_sqrt(W) x‖²``."""
    w, V = np.linalg.eigh(W)
    return V @ np.diag(np.sqrt(np.maximum(w, 0.0))) @ V.T


def tracking_cost(u: Any, y: Any, reference: Reference | Any, Q: Any, R: Any,
                  channels: Sequence[int] | None = None) -> np.ndarray:
    """Tracking cost of (batches of) input and output sequences.

    Parameters
    ----------
    u : array_like, shape (..., N, m)
        Inputs.
    y : array_like, shape (..., N, p) or (..., N, p_tracked)
        Outputs: all p measured outputs when the tracked ``channels`` are known (from a
        :class:`Reference` or the argument), else only the tracked ones.
    reference : Reference or array_like, shape (N, p_tracked) or (..., N, p_tracked)
        Targets; a :class:`Reference` contributes its first N samples (held past its end).
    Q : float or array_like, shape (p_tracked,) or (p_tracked, p_tracked)
        Output weight.
    R : float or array_like, shape (m,) or (m, m)
        Input weight.
    channels : sequence of int, optional
        Tracked output indices, when ``reference`` is an array and ``y`` holds every output.

    Returns
    -------
    ndarray, shape (...)
        f(u, y) for each leading index; ``inf`` where ``y`` is not finite (a diverged replay).

    Raises
    ------
    DimensionError
        Shapes disagree.
    NonFiniteError
        ``u``, the reference or a weight contains NaN or inf.
    """
    u = as_finite_array(u, "u")
    # Outputs may be non-finite: a diverged replay gets an infinite cost rather than an error.
    y = np.asarray(y, dtype=np.float64)
    if u.ndim < 2 or y.ndim < 2:
        raise DimensionError(f"u and y must be (..., N, channels), got {u.shape} and {y.shape}")
    horizon = u.shape[-2]
    if y.shape[-2] != horizon:
        raise DimensionError(f"u has {horizon} samples, y has {y.shape[-2]}")
    if isinstance(reference, Reference):
        channels = reference.channels if channels is None else channels
        r = reference.window(0, horizon)
        if y.shape[-1] == reference.output_dim:
            y = y[..., list(channels)]
    else:
        r = as_finite_array(reference, "reference")
        if channels is not None:
            y = y[..., list(channels)]
    if r.ndim < 2 or r.shape[-2] != horizon or r.shape[-1] != y.shape[-1]:
        raise DimensionError(f"reference must be (..., {horizon}, {y.shape[-1]}), got {r.shape}")
    Qm = weight_matrix(Q, y.shape[-1], "Q")
    Rm = weight_matrix(R, u.shape[-1], "R")
    e = y - r
    with np.errstate(invalid="ignore", over="ignore"):
        out = (np.einsum("...ki,ij,...kj->...", e, Qm, e)
               + np.einsum("...ki,ij,...kj->...", u, Rm, u))
    return np.where(np.isfinite(out), out, np.inf)

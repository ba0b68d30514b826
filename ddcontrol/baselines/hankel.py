"""Block-Hankel (mosaic) data matrices and the persistency-of-excitation check.

With several trajectories, the depth-L Hankel matrices of each are concatenated column-wise (a
*mosaic* Hankel matrix, van Waarde et al. 2020): every column is one length-L window
``(u_0 … u_{L-1}, y_0 … y_{L-1})`` of one trajectory, so no window straddles two trajectories.
Willems' fundamental lemma: if the input mosaic Hankel of depth ``L + n`` has full row rank, the
columns of the depth-L Hankel of (u, y) span every length-L trajectory of an LTI system of order n.
"""

from __future__ import annotations

import warnings

import numpy as np

from ddcontrol.baselines.errors import InsufficientExcitationError
from ddcontrol.errors import ConfigurationError

__all__ = ["window_columns", "persistency_rank", "check_persistency"]


def window_columns(signal: np.ndarray, depth: int, stride: int = 1) -> np.ndarray:
    """Mosaic Hankel matrix of a batch of trajectories.

    Parameters
    ----------
    signal : ndarray, shape (N, T, c)
        N trajectories of T samples of c channels.
    depth : int
        Window length L (block rows).
    stride : int
        Step between window starts within a trajectory (1: full Hankel, L: page matrix).

    Returns
    -------
    ndarray, shape (L * c, N * S)
        Column ``i * S + j`` is trajectory i from sample ``j * stride``, flattened time-major
        (``c`` entries of sample 0, then sample 1, …).
    """
    n, T, c = signal.shape
    if depth < 1 or depth > T:
        raise ConfigurationError(f"Hankel depth {depth} must be in [1, {T}] (trajectory length)")
    starts = np.arange(0, T - depth + 1, stride)
    idx = starts[:, None] + np.arange(depth)[None, :]
    win = signal[:, idx]  # (N, S, L, c)
    return win.reshape(n * starts.size, depth * c).T


def persistency_rank(u: np.ndarray, depth: int, max_columns: int = 20000, seed: int = 0
                     ) -> tuple[int, int]:
    """Numerical rank of the depth-``depth`` input mosaic Hankel and its full rank ``depth·m``.

    At most ``max_columns`` columns (a random subset) enter the SVD, which keeps the check cheap
    on large datasets; a subset's rank can only underestimate the full matrix's.
    """
    H = window_columns(u, depth)
    if H.shape[1] > max_columns:
        keep = np.random.default_rng(seed).choice(H.shape[1], max_columns, replace=False)
        H = H[:, keep]
    s = np.linalg.svd(H, compute_uv=False)
    tol = max(H.shape) * np.finfo(float).eps * (s[0] if s.size else 0.0)
    return int(np.sum(s > max(tol, 1e-10 * (s[0] if s.size else 0.0)))), depth * u.shape[2]


def check_persistency(u: np.ndarray, depth: int, on_failure: str = "raise") -> bool:
    """Check that inputs (N, T, m) are persistently exciting of order ``depth``.

    Parameters
    ----------
    on_failure : {"raise", "warn", "ignore"}
        What to do when the input Hankel is rank deficient (or the trajectories are too short
        to form a window of ``depth`` samples).

    Returns
    -------
    bool
        Whether the check passed.

    Raises
    ------
    InsufficientExcitationError
        With ``on_failure="raise"``, when the check fails.
    """
    if on_failure not in ("raise", "warn", "ignore"):
        raise ConfigurationError(f"on_failure must be 'raise', 'warn' or 'ignore', got "
                                 f"{on_failure!r}")
    T = u.shape[1]
    if depth > T:
        msg = (f"trajectories of {T} samples cannot show persistency of excitation of order "
               f"{depth}; collect longer trajectories")
        ok = False
    else:
        rank, full = persistency_rank(u, depth)
        ok = rank == full
        msg = (f"inputs are not persistently exciting of order {depth}: input Hankel rank {rank} "
               f"< {full}; collect more or richer data, or lower T_ini / horizon / order")
    if not ok and on_failure == "raise":
        raise InsufficientExcitationError(msg)
    if not ok and on_failure == "warn":
        warnings.warn(msg, stacklevel=3)
    return ok

"""The open-loop baseline of the paper: the training window of least tracking cost.

Every length-N window ``(u_0 … u_{N-1}, y_0 … y_{N-1})`` of every trajectory is scored with the
shared tracking cost against the first N reference samples; the best window's inputs are what a
"pick the best demonstration" strategy would replay, and the natural initialisation of the
manifold solvers. Vectorised over windows, in chunks of trajectories to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ddcontrol._validation import check_positive_int
from ddcontrol.baselines.policy import OpenLoopController
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.tracking.cost import tracking_cost
from ddcontrol.tracking.reference import Reference

__all__ = ["BestWindow", "best_window", "window_costs"]


@dataclass(frozen=True)
class BestWindow:
    """The least-cost training window.

    Attributes
    ----------
    u : ndarray, shape (N, m)
        Its inputs.
    y : ndarray, shape (N, p)
        Its measured outputs.
    cost : float
        Its tracking cost.
    trajectory, start : int
        Where it is in the dataset: ``data.u[trajectory, start:start + N]``.
    x0 : ndarray, shape (n_x,)
        True state at its start (for replay verification only).
    u_prev : ndarray, shape (m,)
        Input held before it (zero at a trajectory's start).
    """

    u: np.ndarray
    y: np.ndarray
    cost: float
    trajectory: int
    start: int
    x0: np.ndarray
    u_prev: np.ndarray

    def controller(self, reference: Reference, Q: Any, R: Any, input_low: Any,
                   input_high: Any) -> OpenLoopController:
        """An open-loop controller replaying ``u`` (then the centre of the input box)."""
        return OpenLoopController(self.u, reference, Q, R, input_low, input_high,
                                  name="best-window")


def window_costs(data: Any, reference: Reference, Q: Any, R: Any, length: int | None = None,
                 stride: int = 1, chunk: int = 256) -> np.ndarray:
    """Tracking cost of every window, shape (N_traj, S) for starts ``0, stride, 2·stride, …``.

    Parameters
    ----------
    data : TrajectoryDataset
    reference : Reference
        Its first ``length`` samples are the targets (held past its end).
    length : int, optional
        Window length N (default: the reference length, capped at the trajectory length).
    chunk : int
        Trajectories scored at once (memory ~ chunk · S · N · (m + p) floats).
    """
    if data.output_dim != reference.output_dim:
        raise DimensionError(f"data have {data.output_dim} outputs, the reference is for "
                             f"{reference.output_dim}")
    length = min(reference.steps, data.length) if length is None else check_positive_int(
        length, "length")
    if length > data.length:
        raise ConfigurationError(f"window length {length} exceeds the trajectory length "
                                 f"{data.length}")
    stride = check_positive_int(stride, "stride")
    chunk = check_positive_int(chunk, "chunk")
    starts = np.arange(0, data.length - length + 1, stride)
    idx = starts[:, None] + np.arange(length)[None, :]
    r = reference.window(0, length)
    costs = np.empty((data.num_trajectories, starts.size))
    for i in range(0, data.num_trajectories, chunk):
        u = data.u[i:i + chunk][:, idx]  # (c, S, N, m)
        y = data.y[i:i + chunk][:, idx][..., list(reference.channels)]
        costs[i:i + chunk] = tracking_cost(u, y, r, Q, R)
    return costs


def best_window(data: Any, reference: Reference, Q: Any, R: Any, length: int | None = None,
                stride: int = 1) -> BestWindow:
    """The dataset window of least tracking cost (see :func:`window_costs`).

    Returns
    -------
    BestWindow
    """
    costs = window_costs(data, reference, Q, R, length, stride)
    length = min(reference.steps, data.length) if length is None else length
    traj, j = np.unravel_index(int(np.argmin(costs)), costs.shape)
    start = int(j * stride)
    sl = slice(start, start + length)
    u_prev = data.u[traj, start - 1] if start > 0 else np.zeros(data.input_dim)
    return BestWindow(u=data.u[traj, sl].copy(), y=data.y[traj, sl].copy(),
                      cost=float(costs[traj, j]), trajectory=int(traj), start=start,
                      x0=data.x[traj, start].copy(), u_prev=u_prev.copy())

"""The common controller interface: Gymnasium-loop usable, output feedback, timed.

Loop (the only contract the comparison harness relies on)::

    obs, info = env.reset(seed=0)
    ctrl.reset(obs, info)
    for k in range(steps):
        action = ctrl.act(obs, info)        # u_k from y_k (and, for oracles only, info)
        obs, _, terminated, truncated, info = env.step(action)

``act`` is called once per sample, so its call count is the time index ``k`` into the reference.
Controllers see the measured outputs only; the model-based oracle alone reads ``info["state"]``.

The base class lives with the problem definition (numpy only), below both the baselines
(:mod:`ddcontrol.baselines`, which re-export it from :mod:`ddcontrol.baselines.policy`) and the
DenoisingTracker's receding-horizon policy (:mod:`ddcontrol.tracking.receding`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ddcontrol._validation import as_finite_array
from ddcontrol.errors import DimensionError
from ddcontrol.tracking.cost import weight_matrix
from ddcontrol.tracking.reference import Reference

__all__ = ["Controller"]


class Controller(ABC):
    """Base class of every controller (the baselines and the DenoisingTracker).

    Parameters
    ----------
    reference : Reference
        Targets of the tracked outputs over the whole episode; sample ``k`` is the target of
        ``y_k`` (held at its last value past the end).
    Q : float or array_like, shape (p_tracked,) or (p_tracked, p_tracked)
        Weight on the tracking error of the tracked outputs.
    R : float or array_like, shape (m,) or (m, m)
        Weight on the inputs.
    input_low, input_high : array_like, shape (m,)
        Actuator limits; every action is clipped to them.

    Attributes
    ----------
    name : str
        Short label used in tables ("lqr", "deepc", ...).
    last_solve_time_s : float
        Wall-clock seconds spent in the last :meth:`act`.
    k : int
        Number of actions taken since :meth:`reset` (the current time index).
    inputs, outputs : list of ndarray
        Applied inputs ``u_0 .. u_{k-1}`` and measured outputs ``y_0 .. y_{k-1}`` since reset.
    """

    name: str = "controller"
    #: Whether :meth:`act` needs the true state in ``info["state"]`` (oracles only).
    uses_state: bool = False

    def __init__(self, reference: Reference, Q: Any, R: Any, input_low: Any, input_high: Any
                 ) -> None:
        if not isinstance(reference, Reference):
            raise TypeError(f"reference must be a ddcontrol Reference, got "
                            f"{type(reference).__name__} (see tracking.reference.as_reference)")
        self.reference = reference
        self.input_low = np.asarray(input_low, dtype=np.float64).reshape(-1)
        self.input_high = np.asarray(input_high, dtype=np.float64).reshape(-1)
        if self.input_low.shape != self.input_high.shape or np.any(
                self.input_low > self.input_high):
            raise DimensionError(f"input bounds must be two (m,) arrays with low <= high, got "
                                 f"{self.input_low} and {self.input_high}")
        self.Q = weight_matrix(Q, reference.tracked_dim, "Q")
        self.R = weight_matrix(R, self.input_dim, "R")
        self.last_solve_time_s = 0.0
        self.k = 0
        self.inputs: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []

    @property
    def input_dim(self) -> int:
        return int(self.input_low.shape[0])

    @property
    def output_dim(self) -> int:
        return self.reference.output_dim

    @property
    def input_centre(self) -> np.ndarray:
        """Centre of the input box (0 along unbounded directions): the neutral input."""
        finite = np.isfinite(self.input_low) & np.isfinite(self.input_high)
        centre = np.where(finite, 0.5 * (np.where(finite, self.input_low, 0.0)
                                         + np.where(finite, self.input_high, 0.0)), 0.0)
        return np.clip(centre, self.input_low, self.input_high)

    def reset(self, observation: Any, info: dict[str, Any] | None = None) -> None:
        """Start an episode at time 0 from the first measurement ``y_0`` (and env ``info``)."""
        self._check_observation(observation)
        self.k = 0
        self.inputs, self.outputs = [], []
        self.last_solve_time_s = 0.0
        self._reset(np.asarray(observation, dtype=np.float64), info)

    def act(self, observation: Any, info: dict[str, Any] | None = None) -> np.ndarray:
        """Input ``u_k`` (m,) from the current measurement ``y_k`` (p,), clipped to the limits."""
        y = self._check_observation(observation)
        start = time.perf_counter()
        u = np.asarray(self._act(y, info), dtype=np.float64).reshape(self.input_dim)
        self.last_solve_time_s = time.perf_counter() - start
        u = np.clip(u, self.input_low, self.input_high)
        self.outputs.append(y)
        self.inputs.append(u)
        self.k += 1
        return u

    def _reset(self, y0: np.ndarray, info: dict[str, Any] | None) -> None:
        """Subclass hook: prepare for an episode starting with measurement ``y0``."""
        return None

    @abstractmethod
    def _act(self, y: np.ndarray, info: dict[str, Any] | None) -> np.ndarray:
        """Subclass hook: input at time ``self.k`` given the measurement ``y`` (= y_k)."""

    def _check_observation(self, observation: Any) -> np.ndarray:
        y = as_finite_array(observation, "observation").reshape(-1)
        if y.shape != (self.output_dim,):
            raise DimensionError(f"observation must have shape ({self.output_dim},), got "
                                 f"{np.shape(observation)}")
        return y

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, m={self.input_dim}, p={self.output_dim})"

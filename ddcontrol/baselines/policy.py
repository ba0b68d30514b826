"""The controller interface of the baselines: :class:`Controller` (defined with the problem, in
:mod:`ddcontrol.tracking.controller`, and shared with the DenoisingTracker; its docstring has
the loop) and :class:`OpenLoopController`, which replays a fixed input sequence."""

from __future__ import annotations

from typing import Any

import numpy as np

from ddcontrol._validation import as_finite_array
from ddcontrol.errors import DimensionError
from ddcontrol.tracking.controller import Controller
from ddcontrol.tracking.reference import Reference

__all__ = ["Controller", "OpenLoopController"]


class OpenLoopController(Controller):
    """Replays a fixed input sequence (e.g. the best training window), ignoring measurements.

    Parameters
    ----------
    inputs : array_like, shape (T, m)
        Inputs ``u_0 .. u_{T-1}``; after the last one the last input is held (``hold_last``) or
        the centre of the input box is applied.
    """

    name = "open-loop"

    def __init__(self, inputs: Any, reference: Reference, Q: Any, R: Any, input_low: Any,
                 input_high: Any, *, hold_last: bool = False, name: str | None = None) -> None:
        super().__init__(reference, Q, R, input_low, input_high)
        self.plan = as_finite_array(inputs, "inputs", ndim=2)
        if self.plan.shape[1] != self.input_dim or self.plan.shape[0] < 1:
            raise DimensionError(f"inputs must have shape (T, {self.input_dim}), got "
                                 f"{self.plan.shape}")
        self.hold_last = hold_last
        if name is not None:
            self.name = name

    def _act(self, y: np.ndarray, info: dict[str, Any] | None) -> np.ndarray:
        if self.k < self.plan.shape[0]:
            return self.plan[self.k]
        return self.plan[-1] if self.hold_last else self.input_centre

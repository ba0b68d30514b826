"""Linear time-invariant systems: any (A, B, C, D), a python-control StateSpace, or a preset."""

from __future__ import annotations

from typing import Any

from envs.base import SimulatorEnv
from envs.dynamics import LinearDynamics, linear_preset


class LinearSystemEnv(SimulatorEnv):
    """
    ## Description
    A discrete-time LTI system ``x_{k+1} = A x_k + B u_k + w_k``, ``y_k = C x_k + D u_{k-1} + v_k``
    with optional Gaussian process noise ``w`` and measurement noise ``v``. Give the matrices
    (``A, B, C, D`` and ``dt``), a python-control ``StateSpace`` as ``sys`` (continuous ones are
    discretised with a zero-order hold at ``dt``), or a ``preset`` name:

    * ``"mass-spring-damper"`` (default): m = 1 kg, k = 1 N/m, c = 0.5 N·s/m, force input (N,
      limit ±5), position output (m), dt = 0.1 s.
    * ``"coupled-masses"``: two masses joined by springs, two force inputs, two position outputs
      (a 2x2 MIMO system), dt = 0.1 s.

    ## Action Space
    ``Box(-input_limit, input_limit, (m,), float64)``; saturated.

    ## Observation Space
    ``Box(-inf, inf, (p,), float64)``: the measured output. The state is in ``info["state"]``.

    ## Starting State
    Each state uniform in ±``initial_state_scale`` (default 1), or ``reset(options={"state": s})``.

    ## Arguments
    ``preset``, ``A, B, C, D``, ``sys``, ``dt``, ``input_limit``, ``process_noise_std``,
    ``measurement_noise_std``, ``initial_state_scale``, ``render_mode``; preset parameters
    (e.g. ``mass``, ``stiffness``, ``damping``) are forwarded to the preset.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, preset: str | None = None, sys: Any = None, render_mode: str | None = None,
                 **params: Any) -> None:
        if sys is not None:
            dynamics = LinearDynamics.from_statespace(sys, dt=params.pop("dt", None), **params)
        elif "A" in params:
            dynamics = LinearDynamics(**params)
        else:
            dynamics = linear_preset(preset or "mass-spring-damper", **params)
        super().__init__(dynamics, render_mode=render_mode)

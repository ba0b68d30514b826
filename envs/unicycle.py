"""Unicycle with acceleration inputs (the paper's second nonlinear benchmark)."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.base import SimulatorEnv
from envs.dynamics import UnicycleDynamics


class UnicycleEnv(SimulatorEnv):
    """
    ## Description
    A unicycle (kinematic car) driven by its forward and angular accelerations:
    ẋ = v cos θ, ẏ = v sin θ, θ̇ = ω, ω̇ = u2, v̇ = u1. Integrated with RK4 and sampled every
    ``dt = 0.05`` s.

    ## Action Space
    ``Box([-10, -5], [10, 5], (2,), float64)``: forward acceleration u1 (m/s²) and angular
    acceleration u2 (rad/s²). Actions outside the box are saturated.

    ## Observation Space
    ``Box(-inf, inf, (p,), float64)``: by default the full state ``(x, y, θ, ω, v)`` in
    (m, m, rad, rad/s, m/s); ``outputs=("x", "y")`` measures the position only. The full state is
    in ``info["state"]``.

    ## Starting State
    Position uniform in ±1 m, heading uniform in ±π, turn rate in ±1 rad/s, speed in [0, 5] m/s,
    or ``reset(options={"state": s})``.

    ## Arguments
    ``outputs`` (subset of ``("x", "y", "theta", "omega", "v")``), ``dt=0.05`` (s),
    ``max_accel=10``, ``max_angular_accel=5``, ``render_mode="rgb_array"`` or None.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, render_mode: str | None = None, **params: Any) -> None:
        if "outputs" in params:
            params["outputs"] = tuple(params["outputs"])
        super().__init__(UnicycleDynamics(**params), render_mode=render_mode)

    def _draw(self, fig: Any) -> None:
        ax = fig.add_subplot(111)
        states = np.array(self._states)
        ax.plot(states[:, 0], states[:, 1], color="tab:blue", lw=1.5)
        x, y, th = self.state[0], self.state[1], self.state[2]
        span = max(np.ptp(states[:, 0]), np.ptp(states[:, 1]), 2.0)
        ax.arrow(x, y, 0.08 * span * np.cos(th), 0.08 * span * np.sin(th),
                 width=0.01 * span, color="tab:red")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x [m]")
        ax.set_ylabel("y [m]")
        ax.set_title(f"t = {self._t * self.dt:.2f} s", fontsize=9)
        ax.grid(alpha=0.3)

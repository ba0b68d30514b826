"""Double pendulum actuated at the first joint (the paper's nonlinear benchmark)."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.base import SimulatorEnv
from envs.dynamics import DoublePendulumDynamics


class DoublePendulumEnv(SimulatorEnv):
    """
    ## Description
    A planar double pendulum of two massless rods with point masses at their ends, hanging from a
    fixed pivot, with a motor torque on the first joint only. Integrated with RK4 (4 sub-steps)
    and sampled every ``dt = 0.1`` s.

    Equations of motion (absolute angles θ1, θ2 from the downward vertical, Δ = θ1 − θ2):

        (m1+m2) l1² θ̈1 + m2 l1 l2 cos Δ θ̈2 = τ − d1 θ̇1 − m2 l1 l2 sin Δ θ̇2² − (m1+m2) g l1 sin θ1
        m2 l1 l2 cos Δ θ̈1 + m2 l2² θ̈2 = −d2 θ̇2 + m2 l1 l2 sin Δ θ̇1² − m2 g l2 sin θ2

    ## Action Space
    ``Box(-max_torque, max_torque, (1,), float64)``: torque τ on joint 1 in N·m (default ±1).
    Actions outside the box are saturated.

    ## Observation Space
    ``Box(-inf, inf, (2,), float64)``: the measured angles ``(θ1, θ2)`` in rad. The full state
    ``(θ1, ω1, θ2, ω2)`` is in ``info["state"]``.

    ## Starting State
    Angles and rates uniform in ±0.5 (rad, rad/s), or ``reset(options={"state": s})``.

    ## Arguments
    ``m1=1, m2=0.5`` (kg), ``l1=1, l2=0.5`` (m), ``d1=d2=0.1`` (N·m·s/rad), ``g=1`` (m/s²),
    ``dt=0.1`` (s), ``max_torque=1`` (N·m), ``render_mode="rgb_array"`` or None.

    ## Version History
    * v0: initial version.
    """

    def __init__(self, render_mode: str | None = None, **params: Any) -> None:
        super().__init__(DoublePendulumDynamics(**params), render_mode=render_mode)

    def _draw(self, fig: Any) -> None:
        d = self.dynamics
        ax = fig.add_subplot(111)
        th1, th2 = self.state[0], self.state[2]
        p1 = np.array([d.l1 * np.sin(th1), -d.l1 * np.cos(th1)])
        p2 = p1 + np.array([d.l2 * np.sin(th2), -d.l2 * np.cos(th2)])
        # Faded trace of the tip over the episode.
        states = np.array(self._states)
        tip = np.stack([d.l1 * np.sin(states[:, 0]) + d.l2 * np.sin(states[:, 2]),
                        -d.l1 * np.cos(states[:, 0]) - d.l2 * np.cos(states[:, 2])], axis=1)
        ax.plot(tip[:, 0], tip[:, 1], color="0.7", lw=1)
        ax.plot([0, p1[0], p2[0]], [0, p1[1], p2[1]], "-o", color="tab:blue", lw=3, ms=8)
        ax.plot(0, 0, "ks", ms=6)
        reach = 1.1 * (d.l1 + d.l2)
        ax.set_xlim(-reach, reach)
        ax.set_ylim(-reach, reach)
        ax.set_aspect("equal")
        ax.set_title(f"t = {self._t * self.dt:.1f} s", fontsize=9)
        ax.grid(alpha=0.3)

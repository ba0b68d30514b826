"""The refinement after a plan's solve: the predicted outputs made the model's response to exactly
the inputs that will be applied.

A solve ends with inputs that are clipped into their bounds afterwards and outputs that the
solver moved along with them. :class:`Refinement` pins the measured past and every (clipped)
future input, and pulls the window onto the manifold with Gauss-Newton steps only
(:class:`~ddcontrol.solvers.conditioned.ConditionedDRGD` on a zero cost), with σ annealed
geometrically from ``sigma_start`` to ``refine_sigma`` over its first half. A tracker with the
system defaults starts at the larger of 0.3 and the plan's σ, with the plan's damping, and ends
at the plan's σ: the outputs a solve leaves were pulled towards the reference, often beyond the
data, where the learned pull at a small σ is weak and a refinement begun there stops near its
start; begun at a large σ it is first pulled towards the data. On the double pendulum's 120
finite-horizon plans of ``benchmarks/bench_trust.py --refinement system`` (σ 0.05, 30
iterations) that took the references scaled beyond the data from a replay deviation of 0.111 /
0.140 (90th percentile / worst) to 0.080 / 0.085, the unreachable steps' from 0.039 / 0.047 to
0.030 / 0.042, and left the in-range plans unchanged; with damping 1e-3 instead, the unicycle's
plans beyond its data ran away (worst deviation 70-876 against 2-45). An exact
denoiser predicts best at small σ, a learned one often does not (its held-out conditioned
prediction error grows at the smallest σ; see :class:`~ddcontrol.tracking.tracker.DenoisingTracker`
``refine_sigma``); on the double pendulum's paper benchmark, σ = 0.1, ending at 0.02 halved the
replay deviation ‖y* − y_true‖ / ‖y_true‖ from 0.013 to 0.007.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddcontrol.manifold import BehaviorManifold
from ddcontrol.solvers import Problem
from ddcontrol.solvers.conditioned import ConditionedDRGD

__all__ = ["Refinement"]


class Refinement:
    """Gauss-Newton refinement of plan windows with pinned past and inputs.

    Parameters
    ----------
    denoiser : callable
        ``D(x, σ)`` on normalised windows.
    sigma : float
        The plan's σ (normalised units).
    refine_sigma : float
        σ at the end of the refinement (normalised units).
    iterations : int
        Gauss-Newton iterations (0: the refinement is off).
    t_ini, input_dim : int
        T_ini and m: the future inputs are rows ``t_ini:`` of channels ``:m``.
    lower, upper : Tensor (L, C)
        The input bounds in normalised units (±inf elsewhere), into which the inputs are
        clipped before they are pinned.
    damping : float
        Tikhonov damping of the Gauss-Newton solves (:class:`ConditionedDRGD`).
    sigma_start : float, optional
        σ at the start if above ``sigma`` (normalised units; default and below it: ``sigma``).
        σ anneals geometrically from the start to ``refine_sigma`` over the first half of the
        iterations when they differ.
    """

    def __init__(self, denoiser: Any, sigma: float, refine_sigma: float, iterations: int,
                 t_ini: int, input_dim: int, lower: Tensor, upper: Tensor,
                 damping: float = 1e-3, sigma_start: float | None = None) -> None:
        self.denoiser, self.sigma, self.refine_sigma = denoiser, sigma, refine_sigma
        self.sigma_start = sigma if sigma_start is None else max(sigma, sigma_start)
        self.damping = damping
        self.iterations, self.t_ini, self.m = iterations, t_ini, input_dim
        self.lower, self.upper = lower, upper

    def __call__(self, x: Tensor, measured: Tensor | None) -> Tensor:
        """Refine windows ``x`` (B, L, C) with the normalised measured block (T_ini + 1, C),
        or one per window (B, T_ini + 1, C), NaN where not measured."""
        t, m = self.t_ini, self.m
        mask = torch.zeros(x.shape[1:], dtype=torch.bool, device=x.device)
        values = x.clone()
        values[:, t:, :m] = torch.clamp(values[:, t:, :m], self.lower[t:, :m],
                                        self.upper[t:, :m])
        mask[t:, :m] = True
        if measured is not None:
            rows = measured.shape[-2]
            known = ~torch.isnan(measured)
            mask[:rows] |= known if measured.ndim == 2 else known[0]
            values[:, :rows] = torch.where(known, measured, values[:, :rows])
        anneal = {}
        if self.refine_sigma != self.sigma_start:
            anneal = {"sigma_start": self.sigma_start,
                      "anneal_iterations": self.iterations // 2}
        zero = lambda z: torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)  # noqa: E731
        problem = Problem(BehaviorManifold(self.denoiser, self.refine_sigma), zero,
                          torch.zeros_like)
        solver = ConditionedDRGD(mask, values, step_size=1.0, max_iterations=self.iterations,
                                 min_gradient_norm=0.0, record_history=False,
                                 damping=self.damping, **anneal)
        out = solver.run(problem, initial_point=x).point
        out[:, mask] = values[:, mask]
        return out

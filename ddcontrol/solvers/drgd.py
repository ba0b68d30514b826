"""Denoising Riemannian gradient descent (DRGD): x ← v(x − γ v'(x)ᵀ ∇f(x))."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.errors import ConfigurationError
from ddcontrol.solvers.base import Evaluation, Solver, _column, _Context

__all__ = ["DRGD"]


class DRGD(Solver):
    """Denoising Riemannian gradient descent, batched, with fixed or Armijo step sizes.

    Parameters
    ----------
    step_size : float
        Step γ (units of x² per unit of cost); the initial step when ``line_search``.
    line_search : bool
        Armijo backtracking on f∘v with one step size per problem, see Notes.
    armijo_c, shrink, grow : float
        Sufficient-decrease constant in (0, 1), and step factors (0 < shrink < 1 <= grow).
    max_step : float, optional
        Cap on the Armijo step (default 10·step_size): large steps put the pre-image far off
        the manifold, where a trained denoiser is least accurate, and let the search trade
        tangential progress for the normal-offset effect described in Notes.
    max_backtracks : int
        After this many consecutive rejections a trial is accepted anyway (see Notes).
    exact_vjp : bool
        False (default): the projection's forward at the new pre-image y = p − γd keeps its graph
        and doubles as the next VJP, so the next direction is v'(y)ᵀ∇f(v(y)) instead of
        v'(v(y))ᵀ∇f(v(y)) — one forward + one backward per iteration. Both Jacobians approximate
        the tangent projector at v(y) to O(σ|log σ|³ + γ‖d‖·curvature), and they coincide for
        linear manifolds; this form equals the DLF Euler step with h·η = 1. True evaluates the
        Jacobian at the projected point exactly as in the paper, at the price of a second forward.
    **criteria
        Stopping criteria and loop options of :class:`~ddcontrol.solvers.base.Solver`.

    Notes
    -----
    The line search stays free of host syncs by trying one step per iteration (rejected trials
    count as iterations, one forward + backward each). From the base point p with Euclidean
    gradient g and direction d, the trial p⁺ = clamp(v(p − γd)) is accepted if
    f(p⁺) ≤ f(p) − c·max(⟨g, p − p⁺⟩, 0) — Armijo along the projection arc (Bertsekas), whose
    predicted decrease uses the realised move and so ignores the normal part of d that the
    projection removes (‖d‖² does not vanish on curved manifolds at σ > 0). Accepted: γ ← γ·grow,
    else the problem stays at p and γ ← γ·shrink. v is not exactly idempotent at σ > 0, so the
    cost of p = v(y) depends slightly on how far off the manifold y was; a base reached by a long
    step can look better than any short step from it (f(v(p)) > f(p) by O(σ²·γ‖d‖·‖∇f‖)).
    Accepting after ``max_backtracks`` rejections, and restarting from γ = step_size, keeps
    such a stale base from freezing the search. The same effect makes
    γ cycle near a solution on a curved manifold, moving p along the normal by O(σ²·γ·‖∇f‖)
    (which sets the cost only to that accuracy): the direction converges, its
    displacement settles at that level, so stop Armijo runs by ``max_iterations`` or a
    ``min_step_size`` above it. On linear manifolds none of this arises.
    """

    name = "DRGD"

    def __init__(self, step_size: float = 0.1, *, line_search: bool = False,
                 armijo_c: float = 1e-4, shrink: float = 0.5, grow: float = 1.5,
                 max_step: float | None = None, max_backtracks: int = 10,
                 exact_vjp: bool = False, **criteria: Any) -> None:
        super().__init__(**criteria)
        self.step_size = check_positive_float(step_size, "step_size")
        self.line_search = bool(line_search)
        self.armijo_c = check_positive_float(armijo_c, "armijo_c")
        self.shrink = check_positive_float(shrink, "shrink")
        self.grow = check_positive_float(grow, "grow")
        if not (self.armijo_c < 1 and self.shrink < 1 <= self.grow):
            raise ConfigurationError("need 0 < armijo_c < 1 and 0 < shrink < 1 <= grow")
        self.max_step = (10.0 * self.step_size if max_step is None
                         else check_positive_float(max_step, "max_step"))
        self.max_backtracks = check_positive_int(max_backtracks, "max_backtracks")
        self.exact_vjp = bool(exact_vjp)
        if self.line_search:
            self.name = "DRGD-Armijo"

    def _start(self, ctx: _Context, x0: Tensor) -> dict[str, Any]:
        y = self._project(ctx, x0, ctx.problem.manifold.sigma) if self.exact_vjp else x0
        state: dict[str, Any] = {"y": y}
        if self.line_search:
            b, kw = x0.shape[0], {"dtype": x0.dtype, "device": x0.device}
            state.update(gamma=torch.full((b,), self.step_size, **kw), p=x0,
                         f=torch.full((b,), torch.inf, **kw), d=torch.zeros_like(x0),
                         g=torch.zeros_like(x0), rejects=torch.zeros(b, **kw))
        return state

    def _evaluate(self, ctx: _Context, y: Tensor, sigma: float, check: bool = False
                  ) -> Evaluation:
        if not self.exact_vjp:
            return super()._evaluate(ctx, y, sigma, check)
        # Exact mode: y is the (already projected) point; cost and gradient are taken there,
        # and v(y) only serves the VJP and the manifold-distance record ‖v(y) − y‖.
        lin = ctx.problem.manifold.linearize(y, sigma, check=check)
        f, g = ctx.problem.cost_and_egrad(y)
        return Evaluation(y, self._clamp(ctx, lin.point), f, g, lin)

    def _iterate(self, ctx: _Context, state: dict[str, Any], ev: Evaluation, k: int,
                 sigma: float) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        # In exact mode the evaluated pre-image is already a projected point.
        p = ev.y if self.exact_vjp else ev.point
        d = ev.lin.vjp(ev.egrad)
        if not self.line_search:
            y = torch.add(p, d, alpha=-self.step_size)
            state["y"] = self._project(ctx, y, sigma) if self.exact_vjp else y
            return p, ev.cost, d, None
        y, step = self._armijo(ctx, state, ev, p, d, k)
        state["y"] = self._project(ctx, y, sigma) if self.exact_vjp else y
        return state["p"], state["f"], state["d"], step

    def _armijo(self, ctx: _Context, state: dict[str, Any], ev: Evaluation, p: Tensor,
                d: Tensor, k: int) -> tuple[Tensor, Tensor]:
        gamma, old_p, f_b = state["gamma"], state["p"], state["f"]
        # ‖d‖² of the box-feasible part: outward components at active bounds are clamped away.
        d_in = self._mask(ctx, d, p) if ctx.lower is not None or ctx.upper is not None else d
        dd = (d_in * d_in).reshape(p.shape[0], -1).sum(dim=1)
        if k == 0:
            accept = torch.ones_like(ev.cost, dtype=torch.bool)
        else:
            pred = ((old_p - p) * state["g"]).reshape(p.shape[0], -1).sum(dim=1)
            # Within a few ulps of f the cost test is rounding noise; there a trial is accepted
            # if the gradient norm does not grow (else γ random-walks above 2/L at the floor).
            slack = (16 * torch.finfo(f_b.dtype).eps) * f_b.abs()
            forced = state["rejects"] >= self.max_backtracks
            accept = ((ev.cost <= f_b - self.armijo_c * pred.clamp_min(0.0) - slack)
                      | ((ev.cost <= f_b + slack) & (dd <= state["dd"])) | forced)
        col = _column(accept, p)
        state["p"] = p = torch.where(col, p, old_p)
        state["f"] = torch.where(accept, ev.cost, f_b)
        state["d"] = d = torch.where(col, d, state["d"])
        state["g"] = torch.where(col, ev.egrad, state["g"])
        state["dd"] = dd if k == 0 else torch.where(accept, dd, state["dd"])
        state["rejects"] = torch.where(accept, 0.0, state["rejects"] + 1.0)
        if k > 0:
            gamma = (gamma * torch.where(accept, self.grow, self.shrink)).clamp_max(self.max_step)
            # After a forced acceptance restart from the nominal step: the shrunken γ would
            # stay below the staleness floor and collapse further, and restarting from the last
            # accepted (often large) γ re-enters the normal-offset cycle described in Notes.
            state["gamma"] = gamma = torch.where(forced, self.step_size, gamma)
        y = p - _column(gamma, d) * d
        # Step measure: the accepted move, or after a rejection the next trial's size γ‖d‖,
        # which shrinks geometrically while no step is accepted.
        return y, torch.where(col, p - old_p, y - p)

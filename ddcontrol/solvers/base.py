"""The shared solver loop: evaluation, stopping criteria, history, best iterate, σ annealing.

Every solver here evaluates the denoiser once per iteration at a pre-image y, keeping the graph:
p = clamp(v(y)), (f, g) = (f(p), ∇f(p)), and one VJP v'(y)ᵀu. The subclass chooses u and the next
y. No host synchronisation happens inside the loop except every ``check_every`` iterations, where
the stopping criteria are evaluated; the history lives on the device in a preallocated tensor,
filled in blocks (one batched reduction per check or per 32 iterations, not a few small kernels
per iteration), and is copied to the host once at the end.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError
from ddcontrol.manifold import Linearization
from ddcontrol.solvers.problem import Problem
from ddcontrol.solvers.result import STOP_REASONS, SolverResult

__all__ = ["Solver", "Evaluation"]

_GRAD, _STEP, _DIVERGED, _MAXITER, _MAXTIME = 1, 2, 3, 4, 5
_FLUSH = 32  # iterations of history kept as tensors before they are reduced to norms


def _norms(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


def _column(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a (B,) tensor to (B, 1, ..., 1) to broadcast against ``like``."""
    return t.reshape((-1,) + (1,) * (like.ndim - 1))


@dataclass
class Evaluation:
    """One denoiser evaluation, everything shaped (B, *event_shape) except ``cost`` (B,).

    ``y`` the evaluated pre-image, ``point`` = clamp(v(y)), ``cost`` and ``egrad`` = f and ∇f at
    the solver's current point (``point``, or ``y`` for exact-VJP DRGD whose y is already
    projected), and ``lin`` the linearisation giving v'(y)ᵀu (its graph is freed by the first
    VJP).
    """

    y: Tensor
    point: Tensor
    cost: Tensor
    egrad: Tensor
    lin: Linearization


@dataclass
class _Context:
    problem: Problem
    lower: Tensor | None
    upper: Tensor | None


class Solver(abc.ABC):
    """Base class: stopping criteria in the constructor, ``run(problem, initial_point=...)``.

    Parameters
    ----------
    max_iterations : int
        Iterations (denoiser forward + VJP each) before stopping with "max_iterations".
    min_gradient_norm : float
        A problem stops when ‖v'ᵀ∇f‖ < this (units of cost per unit of x); 0 disables. On a
        curved manifold this does not reach 0 at the solution: v' is only approximately a
        tangent projector, and keeps a normal part of order σ²‖∇f‖ (exact denoiser; the
        network's error for a trained one). Use ``min_step_size`` there.
    min_step_size : float
        A problem stops when the displacement of its projected point over the last iteration is
        below this (units of x); for Armijo DRGD, its last accepted move. 0 disables.
    max_time : float
        Seconds the run may take: it stops with "max_time" after the iteration past which one
        more, as long as the longest so far of its kind (:meth:`_iteration_kind`), would end
        beyond it (host clock only, checked every iteration).
    check_every : int
        Stopping criteria that need device values (gradient norm, step, divergence) are checked
        every ``check_every`` iterations and at the last one: the only host synchronisations of
        the loop. Problems that meet a criterion are frozen (their reported point, cost and
        history stop changing) at that check. 1 checks every iteration (slower on GPU).
    divergence_factor : float
        A problem diverges when its cost or point is non-finite, or ‖p‖ + ‖v(y) − y‖ exceeds
        ``divergence_factor · (‖x0‖ + 1)``; it then returns its best finite iterate.
    sigma_start : float, optional
        σ annealing: use σ_k = σ_start·(σ/σ_start)^(k/anneal_iterations) for the first
        ``anneal_iterations`` iterations, then the manifold's σ. Convergence criteria are
        ignored while annealing.
    anneal_iterations : int
        Length of the annealing phase.
    record_history : bool
        Record cost, gradient norm and manifold distance per iteration.
    """

    name = "Solver"

    def __init__(self, *, max_iterations: int = 1000, min_gradient_norm: float = 1e-6,
                 min_step_size: float = 0.0, max_time: float = math.inf, check_every: int = 25,
                 divergence_factor: float = 1e3, sigma_start: float | None = None,
                 anneal_iterations: int = 0, record_history: bool = True) -> None:
        self.max_iterations = check_positive_int(max_iterations, "max_iterations", allow_zero=True)
        self.min_gradient_norm = check_positive_float(min_gradient_norm, "min_gradient_norm",
                                                      allow_zero=True)
        self.min_step_size = check_positive_float(min_step_size, "min_step_size", allow_zero=True)
        if not (isinstance(max_time, (int, float)) and max_time > 0):
            raise ConfigurationError(f"max_time must be > 0, got {max_time!r}")
        self.max_time = float(max_time)
        self.check_every = check_positive_int(check_every, "check_every")
        self.divergence_factor = check_positive_float(divergence_factor, "divergence_factor")
        self.sigma_start = (None if sigma_start is None
                            else check_positive_float(sigma_start, "sigma_start"))
        self.anneal_iterations = check_positive_int(anneal_iterations, "anneal_iterations",
                                                    allow_zero=True)
        self.record_history = bool(record_history)

    # -- hooks ---------------------------------------------------------------------------------
    def _start(self, ctx: _Context, x0: Tensor) -> dict[str, Any]:
        """Initial method state; must contain ``y``, the first pre-image to evaluate."""
        return {"y": x0}

    def _iteration_kind(self, k: int) -> int:
        """Which kind iteration ``k`` is, for the time budget, numbered by cost (a higher kind
        is costlier, e.g. an iteration that computes Jacobian rows): the run stops when the
        next iteration would end past ``max_time`` if it took as long as the longest so far of
        its kind. Before one of its kind has run, it is predicted by the longest of any kind,
        except that the first iteration of a kind cheaper than every kind that has run is taken
        while time is left (the first iteration, which also pays the run's setup and any load
        of the moment, would otherwise stand for all the cheap ones)."""
        return 0

    @abc.abstractmethod
    def _iterate(self, ctx: _Context, state: dict[str, Any], ev: Evaluation, k: int,
                 sigma: float) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Consume an evaluation, set ``state['y']`` to the next pre-image.

        Returns the reported (point, cost, rgrad, step) of this iteration: the point and cost
        the solver stands on, its Riemannian gradient estimate (unmasked), and the step size
        measure, or None for the default: the displacement of the point since the last
        iteration (which, unlike ‖v'ᵀ∇f‖, vanishes at a solution at any σ).
        """

    # -- shared pieces -------------------------------------------------------------------------
    def _evaluate(self, ctx: _Context, y: Tensor, sigma: float, check: bool = False
                  ) -> Evaluation:
        lin = ctx.problem.manifold.linearize(y, sigma, check=check)
        p = self._clamp(ctx, lin.point)
        f, g = ctx.problem.cost_and_egrad(p)
        return Evaluation(y, p, f, g, lin)

    @staticmethod
    def _clamp(ctx: _Context, p: Tensor) -> Tensor:
        if ctx.lower is None and ctx.upper is None:
            return p
        return torch.clamp(p, min=ctx.lower, max=ctx.upper)

    @staticmethod
    def _mask(ctx: _Context, d: Tensor, p: Tensor) -> Tensor:
        """Zero gradient components pushing out of the box at an active bound (step is −γd).

        Only for the stationarity measure: the steps themselves use the unmasked direction and
        are clamped after projection (projected gradient), because a masked step would sit on
        the bound where v's shrinkage pulls the point back inside, and flip-flop.
        """
        if ctx.lower is not None:
            d = torch.where((p <= ctx.lower) & (d > 0), 0.0, d)
        if ctx.upper is not None:
            d = torch.where((p >= ctx.upper) & (d < 0), 0.0, d)
        return d

    def _project(self, ctx: _Context, y: Tensor, sigma: float) -> Tensor:
        """clamp(v(y)) without a graph (for the methods that need an extra projection)."""
        return self._clamp(ctx, ctx.problem.manifold.denoiser(y, sigma))

    def _sigmas(self, manifold_sigma: float) -> list[float]:
        n = self.max_iterations + 1
        if self.sigma_start is None or self.anneal_iterations == 0:
            return [manifold_sigma] * n
        ratio = manifold_sigma / self.sigma_start
        return [self.sigma_start * ratio ** min(k / self.anneal_iterations, 1.0) for k in range(n)]

    # -- the loop ------------------------------------------------------------------------------
    def run(self, problem: Problem, *, initial_point: Tensor) -> SolverResult:
        """Minimise ``problem`` from ``initial_point`` of shape (B, *event_shape).

        Never raises on divergence: a diverging problem stops with reason "diverged" and its best
        finite iterate. Raises ``TypeError`` / ``DimensionError`` / ``NonFiniteError`` on bad
        inputs and ``ConfigurationError`` on inconsistent bounds.
        """
        t0 = time.perf_counter()
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
        x0 = self._check_initial(initial_point)
        lower, upper = problem.bounds_like(x0)
        ctx = _Context(problem, lower, upper)
        with torch.no_grad():
            return self._loop(ctx, x0, t0)

    @staticmethod
    def _check_initial(x0: object) -> Tensor:
        if not isinstance(x0, Tensor):
            raise TypeError(f"initial_point must be a torch.Tensor, got {type(x0).__name__}")
        if not x0.is_floating_point():
            raise TypeError(f"initial_point must be floating point, got {x0.dtype}")
        if x0.ndim < 2 or x0.shape[0] == 0:
            raise DimensionError("initial_point must have shape (B, *event_shape) with B >= 1, "
                                 f"got {tuple(x0.shape)}")
        if not bool(torch.isfinite(x0).all()):
            raise NonFiniteError("initial_point contains NaN or inf")
        return x0.detach()

    def _stats(self, ctx: _Context, items: list[tuple[Tensor, Tensor, Tensor, Tensor]]
               ) -> Tensor:
        """History rows (n, 3, B): cost, ‖rgrad‖ (box-masked) and ‖p − y‖ of n iterations."""
        f = torch.stack([it[0] for it in items])
        r = torch.stack([it[1] for it in items])
        p = torch.stack([it[2] for it in items])
        y = torch.stack([it[3] for it in items])
        if ctx.lower is not None or ctx.upper is not None:
            r = self._mask(ctx, r, p)  # the bounds broadcast over the leading (n, B)
        n, b = f.shape
        return torch.stack((f, torch.linalg.vector_norm(r.reshape(n, b, -1), dim=2),
                            torch.linalg.vector_norm((p - y).reshape(n, b, -1), dim=2)), dim=1)

    def _loop(self, ctx: _Context, x0: Tensor, t0: float) -> SolverResult:
        b, dev, dtype = x0.shape[0], x0.device, x0.dtype
        n_max = self.max_iterations
        sigmas = self._sigmas(ctx.problem.manifold.sigma)
        anneal_end = self.anneal_iterations if self.sigma_start is not None else 0
        hist = (torch.empty((n_max + 1, 3, b), dtype=dtype, device=dev)
                if self.record_history else None)
        # History is computed in blocks: the iterations' tensors are kept (references, no
        # copies) and reduced to norms at the next check or every _FLUSH iterations, so an
        # iteration adds no kernel launches of its own besides the method's update.
        pending: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        radius = self.divergence_factor * (_norms(x0) + 1.0)
        status = torch.zeros(b, dtype=torch.int8, device=dev)
        stop_iter = torch.full((b,), n_max, dtype=torch.int64, device=dev)
        best_f = torch.full((b,), math.inf, dtype=dtype, device=dev)
        best_p = x0.clone()
        out_p, out_f = x0.clone(), torch.full((b,), math.nan, dtype=dtype, device=dev)
        out_best_p, out_best_f = best_p.clone(), best_f.clone()

        state = self._start(ctx, x0)
        k, loop_reason, prev_p = 0, "max_iterations", x0
        t_iter = t0  # end of the previous iteration (host clock)
        longest: dict[int, float] = {}  # the longest iteration so far of each kind (seconds)
        for k in range(n_max + 1):
            sigma = sigmas[k]
            if k == 0:
                ev = self._evaluate(ctx, state["y"], sigma, check=True)
                ctx.problem.check_outputs(ev.point, ev.cost, ev.egrad)
            else:
                ev = self._evaluate(ctx, state["y"], sigma)
            p, f, rgrad, step = self._iterate(ctx, state, ev, k, sigma)
            # Stop before an iteration that would end past the budget if it took as long as
            # the longest one so far of its kind: a real-time step must not overrun by one
            # iteration, and iterations differ (chord iterations are cheaper than those
            # refreshing the rows; the first also pays the run's setup).
            now = time.perf_counter()
            kind = self._iteration_kind(k)
            longest[kind] = max(longest.get(kind, 0.0), now - t_iter)
            upcoming = longest.get(nxt := self._iteration_kind(k + 1))
            if upcoming is None:
                upcoming = 0.0 if all(nxt < j for j in longest) else max(longest.values())
            timed_out = now - t0 + upcoming > self.max_time
            t_iter = now
            last = k == n_max or timed_out
            is_check = last or k % self.check_every == 0
            if hist is not None:
                pending.append((f, rgrad, p, ev.y))
                if is_check or len(pending) >= _FLUSH:
                    hist[k + 1 - len(pending): k + 1] = self._stats(ctx, pending)
                    pending = []
            if not is_check:
                prev_p = p  # a reference, not a copy: p is a fresh tensor every iteration
                continue
            # -- check: the loop's only host synchronisation ----------------------------------
            stats = hist[k] if hist is not None else self._stats(ctx, [(f, rgrad, p, ev.y)])[0]
            gnorm, dist = stats[1], stats[2]
            # The best iterate is tracked at checks only: it is what a diverged problem
            # returns, and divergence is detected at checks anyway.
            better = f < best_f  # NaN compares False, so never "better"
            best_f = torch.where(better, f, best_f)
            best_p = torch.where(_column(better, p), p, best_p)
            code = torch.zeros_like(status)
            if k >= anneal_end:
                if self.min_gradient_norm > 0:
                    code = torch.where(gnorm < self.min_gradient_norm, _GRAD, code)
                if self.min_step_size > 0 and k > 0:
                    step_norm = _norms(p - prev_p if step is None else step)
                    code = torch.where(step_norm < self.min_step_size, _STEP, code)
            bad = ~torch.isfinite(f) | ~((_norms(p) + dist) <= radius)
            code = torch.where(bad, _DIVERGED, code).to(torch.int8)
            if last:
                code = torch.where(code == 0, _MAXTIME if timed_out else _MAXITER, code)
            newly = (status == 0) & (code != 0)
            status = torch.where(newly, code, status)
            stop_iter = torch.where(newly, k, stop_iter)
            diverged = _column(newly & bad, p)
            keep = _column(newly, p)
            out_p = torch.where(keep, torch.where(diverged, best_p, p), out_p)
            out_f = torch.where(newly, torch.where(bad, best_f, f), out_f)
            out_best_p = torch.where(keep, best_p, out_best_p)
            out_best_f = torch.where(newly, best_f, out_best_f)
            if last:
                loop_reason = "max_time" if timed_out else "max_iterations"
                break
            if not bool((status == 0).any()):
                loop_reason = ""
                break
            prev_p = p

        return self._result(k, loop_reason, status, stop_iter, out_p, out_f, out_best_p,
                            out_best_f, hist, sigmas, t0)

    def _result(self, k: int, loop_reason: str, status: Tensor, stop_iter: Tensor, out_p: Tensor,
                out_f: Tensor, best_p: Tensor, best_f: Tensor, hist: Tensor | None,
                sigmas: list[float], t0: float) -> SolverResult:
        codes = status.cpu().tolist()
        reasons = [STOP_REASONS[c] for c in codes]
        if not loop_reason:
            loop_reason = ", ".join(STOP_REASONS[c] for c in sorted(set(codes)))
        stops = stop_iter.cpu().numpy()
        history: dict[str, np.ndarray] = {}
        if hist is not None:
            h = hist[: k + 1].to("cpu", torch.float64).numpy().copy()
            rows = np.arange(k + 1)[:, None]
            # Forward-fill each problem's columns after the iteration it stopped at.
            idx = np.minimum(rows, stops[None, :])
            h = h[idx, :, np.arange(h.shape[2])[None, :]]  # (k+1, B, 3)
            history = {"cost": h[:, :, 0], "rgrad_norm": h[:, :, 1], "dist": h[:, :, 2],
                       "sigma": np.asarray(sigmas[: k + 1])}
        return SolverResult(point=out_p, cost=out_f, iterations=k, stop_reason=loop_reason,
                            stop_reasons=reasons, stop_iterations=stops, history=history,
                            wall_time_s=time.perf_counter() - t0, best_point=best_p,
                            best_cost=best_f, solver=self.name)

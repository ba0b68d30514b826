"""Guided diffusion as a solver: sampling from the denoiser with look-ahead-loss gradient guidance.

The seed papers' other route to optimisation with a diffusion model (Guo et al. 2024, "Gradient
guidance for diffusion models: an optimization perspective"; Permenter & Yuan 2024, "Interpreting
and improving diffusion models from an optimization perspective"): instead of DRGD's iterations at
one small σ, *sample* along a decreasing noise schedule σ_0 > … > σ_n = σ (the manifold's), and
steer every denoising step toward low cost with the gradient of the **look-ahead loss**, the cost
at the denoised prediction:

    g(x, σ) = ∇_x f(D(x, σ)) = D'(x, σ)ᵀ ∇f(D(x, σ))         (one forward + one VJP),
    D_g(x, σ) = clamp(D(x, σ) − γ g(x, σ))                      (guided prediction),

then an EDM step of the probability-flow ODE with the guided prediction (Karras et al. 2022):
``d = (x − D_g)/σ_k``, ``x ← x + (σ_{k+1} − σ_k) d`` (``"euler"``, DDIM), with Heun's correction
(``"heun"``, one more evaluation per level) or the ancestral (stochastic) split of the step
(``"ancestral"``). Because D'ᵀ maps any vector into the data's tangent space, the guidance keeps
the samples on the learned manifold (Guo et al.'s Gloss: on a linear subspace, exactly in it),
unlike naive guidance with ∇f(x).

Conditioning on the measured past (**inpainting**): the pinned coordinates ``x[mask]`` are
replaced by the measurements noised to the current level, ``values + σ_k ε`` (fresh ε per level),
before each denoiser call ("replacement"); replacement alone leaves the prediction inconsistent
with the measurements (the free coordinates do not follow), so each guided prediction also takes
ConditionedDRGD's step: the guidance restricted to tangent directions that keep the pinned
coordinates, and a damped Gauss-Newton correction along the rows of D' at the pinned coordinates
that makes the prediction match them (k extra VJP cotangents in the same backward pass, k pinned
coordinates). Every prediction and the final point carry the measurements exactly.

Start: ``x_0 = initial_point + σ_0 ε`` (SDEdit): the denoisers here are trained for σ ≤ 1
(normalised units), so sampling starts from a candidate window or the previous plan, not from pure
noise. Schedule: Karras' ρ-schedule from ``sigma_max`` to the problem manifold's σ in
``max_iterations`` steps (``max_iterations + 1`` levels); the result is the last level's
projection ``clamp(D(x, σ))`` without a guidance step (with the pinned-coordinate correction).

:class:`GuidedDiffusion` is a :class:`~ddcontrol.solvers.base.Solver` (same ``run(problem,
initial_point=...)``, same :class:`~ddcontrol.solvers.result.SolverResult`, history per level,
time limit); :func:`guided_plan` runs it for a tracking window with a measured past and returns the
best of several samples.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError
from ddcontrol.manifold import Linearization
from ddcontrol.solvers.base import Evaluation, Solver, _Context
from ddcontrol.solvers.conditioned import damped_pinv
from ddcontrol.solvers.problem import Problem
from ddcontrol.solvers.result import SolverResult

__all__ = ["GuidedDiffusion", "guided_plan", "karras_sigmas", "SAMPLERS"]

SAMPLERS = ("euler", "heun", "ancestral")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min`` (Karras et al. 2022, eq. 5)."""
    if n == 1:
        return [float(sigma_min)]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [float((hi + i / (n - 1) * (lo - hi)) ** rho) for i in range(n)]


class GuidedDiffusion(Solver):
    """Sampling with look-ahead-loss gradient guidance (see the module docstring).

    Parameters
    ----------
    step_size : float
        Guidance strength γ (units of x² per unit of cost, like DRGD's step: ≈ 1/L of the
        cost's gradient). 0 samples without guidance.
    sigma_max : float
        First noise level σ_0 (normalised units; at most the denoiser's training range).
    rho : float
        Exponent of the Karras schedule (7: dense levels near σ).
    sampler : {"euler", "heun", "ancestral"}
    mask : Tensor of bool, shape event_shape, optional
        Pinned (measured) coordinates, inpainted at every level.
    values : Tensor, shape event_shape or (B, *event_shape), optional
        Their values (entries outside ``mask`` ignored).
    damping : float
        Tikhonov damping of the pinned-coordinate least squares (as in
        :class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`: 1e-3 for exact denoisers,
        ~0.05-0.2 for trained ones).
    seed : int, optional
        Seeds the sampling noise (a fresh ``torch.Generator`` per run: reproducible).
    **criteria
        Of :class:`~ddcontrol.solvers.base.Solver`: ``max_iterations`` (= schedule steps,
        default 20), ``max_time``, ``record_history``, … ``min_gradient_norm`` defaults to 0
        here (a sampler runs its schedule to the end). ``sigma_start`` (DRGD's annealing start)
        is accepted as ``sigma_max``, and ``anneal_iterations`` is ignored, so a caller can
        build it with the other solvers' keywords.
    """

    name = "GuidedDiffusion"

    def __init__(self, step_size: float = 0.1, *, sigma_max: float = 1.0, rho: float = 7.0,
                 sampler: str = "euler", mask: Tensor | None = None, values: Tensor | None = None,
                 damping: float = 1e-3, seed: int | None = 0, **criteria: Any) -> None:
        criteria.setdefault("max_iterations", 20)
        criteria.setdefault("min_gradient_norm", 0.0)
        criteria.setdefault("check_every", max(1, criteria["max_iterations"]))
        # The DRGD solvers' σ annealing (sigma_start, anneal_iterations) maps onto the schedule:
        # a sigma_start given by a caller that builds every solver alike is the top level.
        sigma_start = criteria.pop("sigma_start", None)
        criteria.pop("anneal_iterations", None)
        if sigma_start is not None:
            sigma_max = sigma_start
        super().__init__(**criteria)
        self.step_size = check_positive_float(step_size, "step_size", allow_zero=True)
        self.sigma_max = check_positive_float(sigma_max, "sigma_max")
        self.rho = check_positive_float(rho, "rho")
        if sampler not in SAMPLERS:
            raise ConfigurationError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.sampler = sampler
        if (mask is None) != (values is None):
            raise ConfigurationError("pass both mask and values, or neither")
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError("mask must be a boolean torch.Tensor of the event shape")
            if not isinstance(values, Tensor) or values.shape[-mask.ndim:] != mask.shape:
                raise DimensionError(f"values must end in the mask's shape {tuple(mask.shape)}")
            if not bool(torch.isfinite(values[..., mask]).all()):
                raise NonFiniteError("pinned values contain NaN or inf")
        self.mask, self.values = mask, values
        self.damping = check_positive_float(damping, "damping")
        self._index = (mask.reshape(-1).nonzero().squeeze(1) if mask is not None
                       else torch.zeros(0, dtype=torch.long))
        self.seed = seed

    # -- schedule and noise --------------------------------------------------------------------
    def _sigmas(self, manifold_sigma: float) -> list[float]:
        top = max(self.sigma_max, manifold_sigma)
        return karras_sigmas(self.max_iterations + 1, manifold_sigma, top, self.rho)

    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self._gen, dtype=like.dtype,
                           device=self._gen_device).to(like.device)

    def _pin(self, x: Tensor, sigma: float) -> Tensor:
        """``x`` with the pinned coordinates set to the measurements noised to level σ."""
        if self.mask is None:
            return x
        vals = self.values.to(device=x.device, dtype=x.dtype).expand_as(x)
        target = vals + sigma * self._noise(x) if sigma > 0 else vals
        return torch.where(self.mask.to(x.device), target, x)

    # -- solver hooks ----------------------------------------------------------------------------
    def _start(self, ctx: _Context, x0: Tensor) -> dict[str, Any]:
        if self.mask is not None and tuple(x0.shape[1:]) != tuple(self.mask.shape):
            raise DimensionError(f"points of shape {tuple(x0.shape[1:])} do not match the mask "
                                 f"{tuple(self.mask.shape)}")
        self._gen_device = "cpu"
        self._gen = torch.Generator(device=self._gen_device)
        if self.seed is None:
            self._gen.seed()
        else:
            self._gen.manual_seed(int(self.seed))
        self._levels = self._sigmas(ctx.problem.manifold.sigma)
        s0 = self._levels[0]
        return {"y": self._pin(x0 + s0 * self._noise(x0), s0)}

    def _evaluate(self, ctx: _Context, y: Tensor, sigma: float, check: bool = False
                  ) -> Evaluation:
        if self.mask is None:
            return super()._evaluate(ctx, y, sigma, check)
        # One forward over k + 1 copies: the VJP cotangents are ∇f and one unit vector per
        # pinned coordinate (the rows of D' there), as in ConditionedDRGD.
        copies = self._index.numel() + 1
        with torch.enable_grad():
            yr = y.detach().repeat_interleave(copies, dim=0).requires_grad_(True)
            out = ctx.problem.manifold.denoiser(yr, sigma)
        if check and (out.shape != yr.shape or not bool(torch.isfinite(out[::copies]).all())):
            raise NonFiniteError(f"denoiser returned shape {tuple(out.shape)} for input "
                                 f"{tuple(yr.shape)}, or non-finite values at the first level")
        p = self._clamp(ctx, out[::copies].detach())
        f, g = ctx.problem.cost_and_egrad(p)
        return Evaluation(y.detach(), p, f, g, Linearization(yr, out))

    def _guided(self, ctx: _Context, ev: Evaluation, guide: bool = True
                ) -> tuple[Tensor, Tensor]:
        """Guided prediction and the guidance direction (both shaped like the point).

        Unconditioned: ``clamp(D − γ D'ᵀ∇f)``. Conditioned: the guidance restricted to the
        tangent directions that keep the pinned coordinates, plus the damped Gauss-Newton
        correction along the rows R = E D' that makes the prediction match the measurements
        (ConditionedDRGD's step, applied to the prediction), then the clean values pinned.
        """
        p = ev.point
        gamma = self.step_size if guide else 0.0
        if self.mask is None:
            if not gamma:
                return p, torch.zeros_like(p)
            grad = ev.lin.vjp(ev.egrad)
            return self._clamp(ctx, p - gamma * grad), grad
        b, idx = p.shape[0], self._index.to(p.device)
        n_pin, d = idx.numel(), p[0].numel()
        cot = torch.zeros(b, n_pin + 1, d, dtype=p.dtype, device=p.device)
        cot[:, 0] = ev.egrad.reshape(b, d)
        cot[:, 1 + torch.arange(n_pin, device=p.device), idx] = 1.0
        jac = ev.lin.vjp(cot.reshape(ev.lin.output.shape)).reshape(b, n_pin + 1, d)
        rows = jac[:, 1:]  # (B, k, d): e_iᵀ D'(y)
        gram_t = rows[:, :, idx].transpose(1, 2)  # E Rᵀ
        pinv = damped_pinv(gram_t, self.damping)

        def along_rows(t: Tensor) -> Tensor:
            lam = (pinv @ t.unsqueeze(-1)).squeeze(-1)
            return (rows.transpose(1, 2) @ lam.unsqueeze(-1)).squeeze(-1)

        grad = jac[:, 0] - along_rows(jac[:, 0][:, idx])
        vals = self.values.to(device=p.device, dtype=p.dtype).expand_as(p).reshape(b, d)
        pf = p.reshape(b, d)
        move = gamma * grad + along_rows(pf[:, idx] - vals[:, idx])
        out = self._clamp(ctx, (pf - move).reshape(p.shape))
        return self._pin(out, 0.0), grad.reshape(p.shape)

    def _iterate(self, ctx: _Context, state: dict[str, Any], ev: Evaluation, k: int,
                 sigma: float) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        levels = self._levels
        # The last level returns the projection itself: a guidance step there would leave the
        # manifold by a tangent step (exactly on it only where the manifold is flat).
        p, grad = self._guided(ctx, ev, guide=k + 1 < len(levels))
        if self.mask is not None or self.step_size:
            f = ctx.problem.cost(p).detach()  # the reported point is the guided prediction
        else:
            f = ev.cost
        if k + 1 < len(levels):
            y, s_next = ev.y, levels[k + 1]
            d = (y - p) / sigma
            if self.sampler == "ancestral":
                up = min(s_next, math.sqrt(max(s_next ** 2 * (sigma ** 2 - s_next ** 2), 0.0))
                         / sigma)
                down = math.sqrt(max(s_next ** 2 - up ** 2, 0.0))
                y_next = y + (down - sigma) * d + up * self._noise(y)
            else:
                y_next = y + (s_next - sigma) * d
                if self.sampler == "heun":
                    ev2 = self._evaluate(ctx, self._pin(y_next, s_next), s_next)
                    p2, _ = self._guided(ctx, ev2)
                    d2 = (ev2.y - p2) / s_next
                    y_next = y + (s_next - sigma) * 0.5 * (d + d2)
            state["y"] = self._pin(y_next, s_next)
        return p, f, grad, None

    def run(self, problem: Problem, *, initial_point: Tensor) -> SolverResult:
        """Sample from ``initial_point`` (B, *event_shape) down the schedule; see the class."""
        return super().run(problem, initial_point=initial_point)


def guided_plan(problem: Problem, initial_point: Tensor, *, mask: Tensor | None = None,
                values: Tensor | None = None, num_samples: int = 8, steps: int = 20,
                step_size: float = 0.1, sigma_max: float = 1.0, sampler: str = "euler",
                damping: float = 1e-3, seed: int | None = 0, max_time: float = math.inf,
                record_history: bool = False, event_ndim: int = 2
                ) -> tuple[Tensor, SolverResult]:
    """Plan one window by guided sampling: the lowest-cost of ``num_samples`` samples.

    Parameters
    ----------
    problem : Problem
        Manifold (the trained denoiser and the final σ), cost and box bounds of the window, in
        the model's normalised units (what :class:`~ddcontrol.tracking.DenoisingTracker` builds).
    initial_point : Tensor, shape (L, C) or (B, L, C)
        Where sampling starts (SDEdit): the best candidate window(s) or the shifted previous
        plan; repeated to ``num_samples`` samples (cycling through the B given).
    mask, values : optional
        Measured coordinates and their values (normalised), inpainted at every level.
    num_samples : int
        Independent samples (batched: one denoiser call per level for all of them).
    steps, step_size, sigma_max, sampler, damping, seed, max_time, record_history
        Of :class:`GuidedDiffusion` (``steps`` = ``max_iterations``).
    event_ndim : int
        Dimensions of one point (2 for (L, C) windows; the mask's when given): an
        ``initial_point`` with that many dimensions is a single start.

    Returns
    -------
    window : Tensor, shape (L, C)
        The lowest-cost final sample (measured coordinates exactly their values).
    result : SolverResult
        Of all samples.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    if mask is not None:
        event_ndim = mask.ndim
    x0 = initial_point[None] if initial_point.ndim == event_ndim else initial_point
    reps = -(-num_samples // x0.shape[0])
    x0 = x0.repeat((reps,) + (1,) * (x0.ndim - 1))[:num_samples]
    solver = GuidedDiffusion(step_size, sigma_max=sigma_max, sampler=sampler, mask=mask,
                             values=values, seed=seed, max_iterations=steps, max_time=max_time,
                             record_history=record_history)
    result = solver.run(problem, initial_point=x0)
    best = int(torch.argmin(torch.nan_to_num(result.cost, nan=torch.inf)))
    return result.point[best], result

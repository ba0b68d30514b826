"""DRGD with pinned coordinates: optimisation on the manifold slice {x ∈ M : x_i = c_i, i ∈ I}.

Conditioning a trajectory window on measured data (DeePC's "T_ini" block) pins some coordinates
of the point. Clamping them after each projection leaves the point off the manifold, and a penalty
makes the problem stiff; here the slice M ∩ {x_I = c_I} is treated as the manifold itself:

* the Riemannian gradient is the tangent gradient t = v'(y)ᵀ∇f with the components that would
  move the pinned coordinates removed: δ = t − Rᵀλ, where R = E v'(y) are the Jacobian's rows at
  the pinned coordinates (E selects them) and λ solves (E Rᵀ) λ = E t in the least-squares sense;
* a Gauss-Newton correction along the same rows, −Rᵀμ with (E Rᵀ) μ = E p − c, pulls the pinned
  coordinates onto their values (for noisy measurements: the least-squares fit on the manifold).

All VJPs of one iteration come from one backward pass over a batch of ``k + 1`` copies of the
point (k pinned coordinates), so an iteration costs one forward and one backward at ``B (k + 1)``.
With ``jacobian_every = J > 1`` the k pinned rows (and the small k × k solve) are refreshed every
J iterations only and reused in between (a chord method): the other iterations cost one forward
and one backward at ``B`` (or ``2B`` with momentum). Warm-started receding-horizon solves, whose
point moves little between iterations, use this to stay within a sampling period.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.errors import DimensionError, NonFiniteError
from ddcontrol.manifold import Linearization
from ddcontrol.solvers.base import Evaluation, Solver, _Context

__all__ = ["ConditionedDRGD"]


class ConditionedDRGD(Solver):
    """DRGD on the slice of the manifold where ``x[mask] = values`` (see module docstring).

    Parameters
    ----------
    mask : Tensor of bool, shape event_shape
        The pinned coordinates.
    values : Tensor, shape event_shape (or (B, *event_shape))
        Their values (entries outside ``mask`` are ignored).
    step_size : float
        γ, units of x² per unit of cost (≈ 1/L of the cost's gradient).
    momentum : float
        Heavy-ball momentum on the constrained tangent direction (0 = plain DRGD).
    damping : float
        Tikhonov damping λ of the least-squares solves, ``(GᵀG + λ²I)⁻¹Gᵀ`` with ``G = E Rᵀ``
        (entries of a projector's Jacobian are at most 1, so λ is relative). Pinned coordinates
        that are redundant on the manifold (outputs implied by the inputs and the state) make
        ``G`` singular, and a learned Jacobian is noisy there: 1e-3 suits exact denoisers, a
        trained one wants ~0.05-0.2.
    max_step : float, optional
        Trust radius: the norm of one iteration's move (units of x) is capped at this.
    jacobian_every : int
        Recompute the pinned coordinates' Jacobian rows every this many iterations (1: every
        iteration, exact); in between the last ones are reused.
    **criteria
        Stopping criteria of :class:`~ddcontrol.solvers.base.Solver`.
    """

    name = "ConditionedDRGD"

    def __init__(self, mask: Tensor, values: Tensor, step_size: float = 0.1, *,
                 momentum: float = 0.0, damping: float = 1e-3, max_step: float | None = None,
                 jacobian_every: int = 1, **criteria: Any) -> None:
        super().__init__(**criteria)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a boolean torch.Tensor of the event shape")
        if not isinstance(values, Tensor) or values.shape[-mask.ndim:] != mask.shape:
            raise DimensionError(f"values must end in the mask's shape {tuple(mask.shape)}")
        if not bool(torch.isfinite(values[..., mask]).all()):
            raise NonFiniteError("pinned values contain NaN or inf")
        self.mask, self.values = mask, values
        self.index = mask.reshape(-1).nonzero().squeeze(1)
        self.step_size = check_positive_float(step_size, "step_size")
        self.momentum = check_positive_float(momentum, "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise DimensionError(f"momentum must be in [0, 1), got {momentum}")
        self.damping = check_positive_float(damping, "damping")
        self.max_step = None if max_step is None else check_positive_float(max_step, "max_step")
        self.jacobian_every = check_positive_int(jacobian_every, "jacobian_every")
        self._refresh = True

    def _start(self, ctx: _Context, x0: Tensor) -> dict[str, Any]:
        if x0.shape[1:] != self.mask.shape:
            raise DimensionError(f"points of shape {tuple(x0.shape[1:])} do not match the mask "
                                 f"{tuple(self.mask.shape)}")
        values = self.values.to(device=x0.device, dtype=x0.dtype)
        target = values.reshape(-1, self.mask.numel())[:, self.index.to(x0.device)]
        self._refresh = True  # the first evaluation of a run always computes the rows
        return {"y": x0, "m": torch.zeros_like(x0), "target": target,
                "index": self.index.to(x0.device), "rows": None, "pinv": None}

    def _evaluate(self, ctx: _Context, y: Tensor, sigma: float, check: bool = False
                  ) -> Evaluation:
        # One forward over k + 1 (or k + 2 with momentum) copies: the VJP cotangents are ∇f (and
        # the momentum) and one unit vector per pinned coordinate.
        copies = (self.index.numel() if self._refresh else 0) + (2 if self.momentum else 1)
        with torch.enable_grad():
            yr = y.detach().repeat_interleave(copies, dim=0).requires_grad_(True)
            out = ctx.problem.manifold.denoiser(yr, sigma)
        if check and (out.shape != yr.shape or not bool(torch.isfinite(out[::copies]).all())):
            raise NonFiniteError(f"denoiser returned shape {tuple(out.shape)} for input "
                                 f"{tuple(yr.shape)}, or non-finite values at the initial point")
        lin = Linearization(yr, out)
        p = self._clamp(ctx, out[::copies].detach())
        f, g = ctx.problem.cost_and_egrad(p)
        return Evaluation(y.detach(), p, f, g, lin)

    def _iterate(self, ctx: _Context, state: dict[str, Any], ev: Evaluation, k: int,
                 sigma: float) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        p, b, idx = ev.point, ev.point.shape[0], state["index"]
        n_pin, d = idx.numel(), p[0].numel()
        extra = 1 if self.momentum else 0
        fresh = self._refresh
        n_rows = n_pin if fresh else 0
        cot = torch.zeros(b, n_rows + 1 + extra, d, dtype=p.dtype, device=p.device)
        cot[:, 0] = ev.egrad.reshape(b, d)
        if extra:
            cot[:, 1] = state["m"].reshape(b, d)
        cot[:, 1 + extra + torch.arange(n_rows, device=p.device), idx[:n_rows]] = 1.0
        jac = ev.lin.vjp(cot.reshape(ev.lin.output.shape)).reshape(b, -1, d)
        self._refresh = (k + 1) % self.jacobian_every == 0
        if fresh:
            rows = jac[:, 1 + extra:]  # (B, k, d): e_iᵀ v'(y)
            if n_pin == 0:  # nothing pinned: DRGD with bound masking and a trust region
                rows = torch.zeros(b, 1, d, dtype=p.dtype, device=p.device)
                idx = torch.zeros(1, dtype=torch.long, device=p.device)
            gram_t = rows[:, :, idx].transpose(1, 2)  # E Rᵀ, (B, k, k)
            # Tikhonov-damped least squares (Levenberg-Marquardt): a learned Jacobian is noisy
            # in the directions the pinned coordinates barely move, and an undamped inverse
            # turns that noise into huge corrections.
            eye = torch.eye(idx.numel(), dtype=p.dtype, device=p.device)
            gt = gram_t.transpose(1, 2)
            pinv = torch.linalg.solve(gt @ gram_t + self.damping ** 2 * eye, gt)
            state["rows"], state["pinv"], state["row_index"] = rows, pinv, idx
        rows, pinv, idx = state["rows"], state["pinv"], state["row_index"]

        def constrained(t: Tensor) -> Tensor:
            lam = (pinv @ t[:, idx].unsqueeze(-1)).squeeze(-1)
            return t - (rows.transpose(1, 2) @ lam.unsqueeze(-1)).squeeze(-1)

        delta = constrained(jac[:, 0])
        if extra:
            # The previous momentum, transported to this point's constrained tangent space.
            delta = delta + self.momentum * constrained(jac[:, 1])
        if ctx.lower is not None or ctx.upper is not None:
            # No push (nor momentum) through an active bound: without this the clamp after each
            # projection and the step balance at a point off the manifold.
            delta = self._mask(ctx, delta.reshape(p.shape), p).reshape(b, d)
        if extra:
            state["m"] = delta.reshape(p.shape)
        pf = p.reshape(b, d)
        err = (pf[:, idx] - state["target"]) if state["target"].numel() else torch.zeros(
            b, 1, dtype=p.dtype, device=p.device)
        mu = (pinv @ err.unsqueeze(-1)).squeeze(-1)
        correction = (rows.transpose(1, 2) @ mu.unsqueeze(-1)).squeeze(-1)
        move = self.step_size * delta + correction
        if self.max_step is not None:
            # Trust region: a learned denoiser is only reliable within a few training σ of the
            # manifold, so one iteration may not carry the point further than ``max_step``.
            norm = torch.linalg.vector_norm(move, dim=1, keepdim=True)
            move = move * torch.clamp(self.max_step / norm.clamp_min(1e-30), max=1.0)
        state["y"] = (pf - move).reshape(p.shape)
        rgrad = constrained(jac[:, 0]).reshape(p.shape)
        return p, ev.cost, rgrad, None

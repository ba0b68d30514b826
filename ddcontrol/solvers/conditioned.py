"""DRGD with pinned coordinates: optimisation on the manifold slice {x ∈ M : x_i = c_i, i ∈ I}.

Conditioning a trajectory window on measured data (DeePC's "T_ini" block) pins some coordinates
of the point. Clamping them after each projection leaves the point off the manifold, and a penalty
makes the problem stiff; here the slice M ∩ {x_I = c_I} is treated as the manifold itself:

* the Riemannian gradient is the tangent gradient t = v'(y)ᵀ∇f with the components that would
  move the pinned coordinates removed: δ = t − Rᵀλ, where R = E v'(y) are the Jacobian's rows at
  the pinned coordinates (E selects them) and λ solves (E Rᵀ) λ = E t in the least-squares sense;
* a Gauss-Newton correction along the same rows, −Rᵀμ with (E Rᵀ) μ = E p − c, pulls the pinned
  coordinates onto their values (for noisy measurements: the least-squares fit on the manifold).

All VJPs of one iteration share one forward at the batch size B: the ``k + 1`` cotangents (∇f
and one unit vector per pinned coordinate; ``k + 2`` with momentum) go through one backward pass
vectorised over them (``torch.func.vmap``), so nothing of the network but its backward is
repeated per pinned coordinate. A denoiser whose operations cannot be vectorised gets a loop of
backward passes over the same graph instead (detected at the first iteration; same numbers).
With ``jacobian_every = J > 1`` the k pinned rows, and with them the damped pseudo-inverse of the
k × k block G = E Rᵀ, are computed every J iterations only (a chord method). In between, two
forms (``chord``):

* ``"exact"``: only that small inverse is reused; the directions stay exact, because
  Rᵀλ = v'(y)ᵀ(Eᵀλ) is one more VJP with the cotangent Eᵀλ. Such an iteration costs one forward
  and two small backward passes (∇f, momentum and the pull's Eᵀμ; then the two Eᵀλ).
* ``"reused"``: the rows themselves are reused too: λ and μ still come from this iteration's
  exact VJPs (its pinned components of v'(y)ᵀ∇f and the pinned coordinates' error), and Rᵀλ,
  Rᵀμ from the last rows, as in the iteration that computed them. One forward and one backward
  over ∇f and the momentum. Where the Jacobian barely moves between refreshes (a warm-started
  receding-horizon step) the iterates are those of ``"exact"`` to a few digits: the unicycle's
  closed loops (9 runs, 5 iterations per step) cost 0.9992-1.0013x ``"exact"``'s, at one
  backward pass instead of two per iteration.

From :data:`ROWS_MIN` rows (pinned coordinates x batch) on, a linearization that has the rows
themselves (``rows``: the σ-frozen residual MLP,
:meth:`~ddcontrol.score.frozen.FrozenResidualMLP.rows`) computes them in a pass of their own,
without the unit cotangents' products on zeros (the output and skip layers become gathers), and
with ``row_dtype=torch.bfloat16`` with its hidden layers' products in bfloat16: 2.6-3.5x faster
on a CPU with native bfloat16 products, with the same closed loops (the unicycle's to 5
digits); the gradient's own VJP stays in the network's dtype. Fewer rows ride with the
gradient's backward pass, where a second pass's per-operation overhead would cost more.

Either chord costs far less than one backward over k + 2 cotangents, whose matrix products dominate
once k is a few dozen (about 40 for the unicycle's measured past). Warm-started
receding-horizon solves use this to stay within a sampling period. An iteration
synchronises with the device only at the base class's checks (every ``check_every`` iterations).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.errors import DimensionError, NonFiniteError, UnknownNameError
from ddcontrol.manifold import Linearization
from ddcontrol.solvers.base import Evaluation, Solver, _Context

__all__ = ["ConditionedDRGD", "damped_pinv", "CHOLESKY_MIN_DAMPING_EPS", "CHORDS", "ROWS_MIN",
           "AUTO_ROW_DAMPING", "check_row_dtype", "fast_row_dtype"]

#: The forms of the iterations between two refreshes of the pinned rows (module docstring).
CHORDS = ("exact", "reused")
#: Fewest pinned rows (coordinates x batch) computed by the linearization's own ``rows``; below,
#: they ride with the gradient's backward pass (one pass over 40 rows at batch 1 costs less than
#: two passes' per-operation overhead; from 128 rows on the separate pass in bfloat16 is
#: 1.35-2x faster per iteration: ``benchmarks/bench_iteration.py``).
ROWS_MIN = 128
#: Least damping at which ``row_dtype="auto"`` takes bfloat16 rows: the damped inverse
#: amplifies their rounding by up to 1/(2 damping). At 0.05 (the unicycle, the double pendulum)
#: the plans are those of float32 rows (the unicycle's batched plans' costs within 0.05 %); at
#: the linear systems' 0.01, single mass-spring-damper plans moved by up to 30 %.
AUTO_ROW_DAMPING = 0.05


def check_row_dtype(value: Any) -> torch.dtype | str | None:
    """A pinned rows' precision: "auto", None or a floating torch dtype (also by name, e.g.
    "bfloat16", for options read from a command line or JSON); raises UnknownNameError."""
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        value = getattr(torch, value, None) if value.isidentifier() else None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise UnknownNameError(f"row_dtype must be 'auto', None or a floating torch dtype "
                               f"(e.g. 'bfloat16'), got {value!r}")
    return value


def fast_row_dtype(device: torch.device | str) -> torch.dtype | None:
    """``torch.bfloat16`` where its matrix products are native and fast, else None (the
    network's own dtype): CUDA devices of compute capability 8.0 or more, CPUs with AVX512-BF16
    or AMX. Elsewhere bfloat16 products are emulated and slower than float32."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else None
        if device.type == "cpu":
            fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
            return torch.bfloat16 if fast else None
    except (AttributeError, RuntimeError):  # a torch without these probes: stay exact
        return None
    return None


CHOLESKY_MIN_DAMPING_EPS = 256.0
""":func:`damped_pinv` factorises by Cholesky where λ² ≥ this x the dtype's machine epsilon
(float32: λ ≥ 0.0055), by LU below: with λ = 1e-3 in float32, GᵀG + λ²I of a rank-deficient
block is positive definite by less than its rounding, and Cholesky failed on 338 of 1,280
random 40 x 40 blocks of rank 20 (none from λ = 0.01 on, at k = 11-100, with LU's accuracy)."""


def damped_pinv(gram_t: Tensor, damping: float) -> Tensor:
    """The Tikhonov-damped pseudo-inverse ``(GᵀG + λ²I)⁻¹Gᵀ`` of a batch of k × k blocks
    ``gram_t`` = G (B, k, k), λ = ``damping``.

    GᵀG + λ²I is symmetric positive definite: where λ is large enough for the dtype
    (:data:`CHOLESKY_MIN_DAMPING_EPS`) it is factorised by Cholesky, L Lᵀ, and the product is
    two triangular solves from the right, Pᵀ = G L⁻ᵀ L⁻¹, 1.3-1.8x faster on CPU than the LU
    solve (pinned rows 32-40, batch 1-64), which remains below that λ.

    A problem of the batch whose block is not finite, or so large that the factorisation would
    overflow (its denoiser output diverged), gets NaN, which the solver's checks then report as
    diverged, and the others their exact inverse: one bad block must not stop the others (for
    such a matrix LAPACK's LU returns invalid pivots and torch rejects the whole batch, on CPU
    from k of about 200 on, e.g. the σ selection of a 100-step window with 225 pinned
    coordinates; the Cholesky path factorises each block on its own and never raises).
    """
    lhs = gram_t.transpose(1, 2) @ gram_t
    lhs.diagonal(dim1=1, dim2=2).add_(damping ** 2)
    # Finite but huge entries (a diverging denoiser in float32) count as bad: their
    # factorisation's products would overflow. NaN compares false, so it is caught too.
    bad = ~(lhs.abs() < torch.finfo(lhs.dtype).max ** 0.5).flatten(1).all(dim=1)
    if damping ** 2 >= CHOLESKY_MIN_DAMPING_EPS * torch.finfo(lhs.dtype).eps:
        chol, info = torch.linalg.cholesky_ex(lhs)
        # Z Lᵀ = G, then Pᵀ L = Z.
        z = torch.linalg.solve_triangular(chol.transpose(1, 2), gram_t, upper=True, left=False)
        pinv = torch.linalg.solve_triangular(chol, z, upper=False, left=False).transpose(1, 2)
        bad = bad | (info != 0)  # no host sync
    else:
        eye = torch.eye(gram_t.shape[-1], dtype=lhs.dtype, device=lhs.device)
        bad3 = bad[:, None, None]
        pinv = torch.linalg.solve(torch.where(bad3, eye, lhs),
                                  torch.where(bad3, 0.0, gram_t.transpose(1, 2)))
    return torch.where(bad[:, None, None], torch.nan, pinv)


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
        Recompute the pinned coordinates' Jacobian rows (and the inverse of their k × k block)
        every this many iterations (1: every iteration); in between the last inverse is reused
        with exact directions (module docstring).
    chord : "exact" | "reused"
        How the iterations between two refreshes use the last rows (module docstring):
        ``"exact"`` reuses only the inverse of their k × k block and keeps exact directions with
        a second small backward pass; ``"reused"`` reuses the rows as well (one backward pass).
    row_dtype : torch.dtype | "auto" | None
        Precision of the products that compute the k pinned rows (a dtype also by name, e.g.
        "bfloat16": :func:`check_row_dtype`), for a denoiser with explicit rows (a residual MLP
        at a fixed σ: :meth:`~ddcontrol.score.frozen.FrozenResidualMLP.rows`; others ignore
        it) and batches of at least :data:`ROWS_MIN` rows (fewer ride with the gradient's
        backward pass in the network's dtype): None, the network's dtype; ``torch.bfloat16``,
        operands rounded to bfloat16 and accumulated in float32; ``"auto"``, bfloat16 where it
        is fast (:func:`fast_row_dtype`), the points are not float64 and ``damping`` is at
        least :data:`AUTO_ROW_DAMPING`. The rows only shape the directions and the pull (the
        gradient's own VJP stays exact), like the chord's reused rows: a relative error of
        about 2⁻⁸ in their network part.
    final_gradient : bool
        Compute the Riemannian gradient at the last iterate (its norm ends the history, and
        ``min_gradient_norm`` may stop there). False skips that iteration's backward pass, whose
        step is never taken, and reports NaN for it: for solves that only need the point (a
        receding-horizon step, a few iterations each).
    **criteria
        Stopping criteria of :class:`~ddcontrol.solvers.base.Solver`.
    """

    name = "ConditionedDRGD"

    def __init__(self, mask: Tensor, values: Tensor, step_size: float = 0.1, *,
                 momentum: float = 0.0, damping: float = 1e-3, max_step: float | None = None,
                 jacobian_every: int = 1, chord: str = "exact", final_gradient: bool = True,
                 row_dtype: torch.dtype | str | None = None, **criteria: Any) -> None:
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
        if chord not in CHORDS:
            raise UnknownNameError(f"chord must be one of {CHORDS}, got {chord!r}")
        self.chord = chord
        self.final_gradient = bool(final_gradient)
        self.row_dtype = check_row_dtype(row_dtype)

    def _start(self, ctx: _Context, x0: Tensor) -> dict[str, Any]:
        if x0.shape[1:] != self.mask.shape:
            raise DimensionError(f"points of shape {tuple(x0.shape[1:])} do not match the mask "
                                 f"{tuple(self.mask.shape)}")
        b, d = x0.shape[0], self.mask.numel()
        values = self.values.to(device=x0.device, dtype=x0.dtype)
        index = self.index.to(x0.device)
        target = values.reshape(-1, d)[:, index]
        n_pin, lead = index.numel(), 2 if self.momentum else 1
        # The cotangents of every iteration, allocated once: slot 0 takes ∇f, slot 1 the
        # momentum, and the others hold the fixed unit vectors e_i of the pinned coordinates.
        cot = torch.zeros(lead + n_pin, b, d, dtype=x0.dtype, device=x0.device)
        slots = torch.arange(lead, lead + n_pin, device=x0.device)
        cot[slots, :, index] = 1.0
        # Chord iterations: Eᵀμ rides with ∇f (and the momentum); the Eᵀλ go in a second pass.
        # ("reused": the rows' own products, as in the refreshing iterations.)
        chord = (torch.zeros(lead + 1, b, d, dtype=x0.dtype, device=x0.device)
                 if self.jacobian_every > 1 and n_pin and self.chord == "exact" else None)
        back = (torch.zeros(lead, b, d, dtype=x0.dtype, device=x0.device)
                if chord is not None else None)
        row_dtype = self.row_dtype
        if row_dtype == "auto":
            # A float64 solve is asked for its precision; a lightly damped one amplifies the
            # rows' rounding by up to 1/(2 damping) (the damped inverse's largest gain).
            exact = x0.dtype == torch.float64 or self.damping < AUTO_ROW_DAMPING
            row_dtype = None if exact else fast_row_dtype(x0.device)
        return {"y": x0, "m": torch.zeros_like(x0), "target": target, "index": index,
                "cot": cot.reshape(lead + n_pin, *x0.shape), "rows": None,
                "pinv": None, "vectorize": None, "chord": chord, "back": back,
                "row_dtype": row_dtype}

    def _evaluate(self, ctx: _Context, y: Tensor, sigma: float, check: bool = False
                  ) -> Evaluation:
        lin = ctx.problem.manifold.linearize(y, sigma, check=check)
        if check and not bool(torch.isfinite(lin.output).all()):
            raise NonFiniteError("denoiser returned non-finite values at the initial point")
        p = self._clamp(ctx, lin.point)
        f, g = ctx.problem.cost_and_egrad(p)
        return Evaluation(lin.x.detach(), p, f, g, lin)

    def _iteration_kind(self, k: int) -> int:
        """1 for an iteration that computes the pinned rows (every ``jacobian_every``-th, not
        the last), 0 for the others (much cheaper once k is a few dozen)."""
        return int(self.index.numel() > 0 and k % self.jacobian_every == 0
                   and k < self.max_iterations)

    @staticmethod
    def _vjps(lin: Linearization, cot: Tensor, state: dict[str, Any], retain: bool = False
              ) -> Tensor:
        """v'(y)ᵀ of every cotangent in ``cot`` (n, B, ...): one vectorised backward if the
        denoiser supports it (tried at the first iteration, keeping the graph for a fallback),
        else a loop of backward passes. ``retain`` keeps the graph for another call."""
        if state["vectorize"] is None:
            try:
                out = lin.vjps(cot, vectorize=True, retain_graph=True)
            except RuntimeError:
                state["vectorize"] = False
            else:
                state["vectorize"] = True
                return out
        return lin.vjps(cot, vectorize=state["vectorize"], retain_graph=retain)

    def _chord(self, ev: Evaluation, state: dict[str, Any], err: Tensor, lead: int
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Tangent direction, momentum and pull with the last k × k inverse and exact rows:
        Rᵀc = v'(y)ᵀ(Eᵀc) (module docstring). Returns (t_c, the transported momentum or t_c,
        the pull Rᵀμ), each (B, d)."""
        idx, pinv = state["index"], state["pinv"]
        cot, back = state["chord"], state["back"]
        b = err.shape[0]
        cot[0].view(b, -1).copy_(ev.egrad.reshape(b, -1))
        if lead == 2:
            cot[1].view(b, -1).copy_(state["m"].reshape(b, -1))
        cot[lead][:, idx] = (pinv @ err.unsqueeze(-1)).squeeze(-1)  # Eᵀμ
        jac = self._vjps(ev.lin, cot.view(lead + 1, *ev.point.shape), state,
                         retain=True).reshape(lead + 1, b, -1)
        lam = pinv @ jac[:lead, :, idx].permute(1, 2, 0)  # (B, k, lead)
        back[:, :, idx] = lam.permute(2, 0, 1)
        rt = self._vjps(ev.lin, back.view(lead, *ev.point.shape), state).reshape(lead, b, -1)
        t_c = jac[0] - rt[0]
        moved = jac[1] - rt[1] if lead == 2 else t_c
        return t_c, moved, jac[lead]

    def _iterate(self, ctx: _Context, state: dict[str, Any], ev: Evaluation, k: int,
                 sigma: float) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        p, b, idx = ev.point, ev.point.shape[0], state["index"]
        if k == self.max_iterations and not self.final_gradient:
            return p, ev.cost, torch.full_like(p, torch.nan), None
        n_pin, d = idx.numel(), p[0].numel()
        lead = 2 if self.momentum else 1
        # The rows are computed at the iterations of kind 1 (every jacobian_every-th, not the
        # last: its step is never taken, and the previous rows serve for its reported
        # gradient), and whenever there are none yet.
        fresh = bool(self._iteration_kind(k)) or state["rows"] is None
        pf = p.reshape(b, d)
        if n_pin and not fresh and state["chord"] is not None:
            t_c, moved, correction = self._chord(ev, state, pf[:, idx] - state["target"], lead)
            delta = t_c + self.momentum * moved if lead == 2 else t_c
            return self._finish(ctx, state, p, ev, t_c, delta, correction, lead)
        cot = state["cot"]
        cot[0].copy_(ev.egrad)
        if lead == 2:
            cot[1].copy_(state["m"])
        explicit = fresh and n_pin * b >= ROWS_MIN and hasattr(ev.lin, "rows")
        n = cot.shape[0] if fresh and not explicit else lead
        jac = self._vjps(ev.lin, cot[:n], state).reshape(n, b, d)
        if n_pin == 0:  # nothing pinned: DRGD with bound masking and a trust region
            t_c = jac[0].clone()  # the backward may hand back the cotangent buffer itself
            delta = t_c + self.momentum * jac[1] if lead == 2 else t_c
            correction = None
        else:
            if fresh:
                # (B, k, d): e_iᵀ v'(y); without the unit cotangents' products on zeros where
                # the linearization has the rows themselves.
                rows = (ev.lin.rows(idx, state["row_dtype"]).reshape(n_pin, b, d)
                        if explicit else jac[lead:]).transpose(0, 1)
                gram_t = rows[:, :, idx].transpose(1, 2)  # E Rᵀ, (B, k, k)
                # Tikhonov-damped least squares (Levenberg-Marquardt): a learned Jacobian is
                # noisy in the directions the pinned coordinates barely move, and an undamped
                # inverse turns that noise into huge corrections.
                pinv = damped_pinv(gram_t, self.damping)
                state["rows"], state["pinv"] = rows, pinv
            rows, pinv = state["rows"], state["pinv"]
            # All k × k solves of the iteration in one product: the multipliers λ of the
            # tangent direction (and of the momentum) and the Gauss-Newton pull μ, then Rᵀ of
            # each of them in another.
            err = pf[:, idx] - state["target"]
            rhs = torch.cat((jac[:lead, :, idx].permute(1, 2, 0), err.unsqueeze(-1)), dim=2)
            back = rows.transpose(1, 2) @ (pinv @ rhs)  # (B, d, lead + 1)
            t_c = jac[0] - back[:, :, 0]  # the tangent direction with the pinned part removed
            # With momentum: the previous momentum, transported to this point's constrained
            # tangent space.
            delta = t_c + self.momentum * (jac[1] - back[:, :, 1]) if lead == 2 else t_c
            correction = back[:, :, lead]
        return self._finish(ctx, state, p, ev, t_c, delta, correction, lead)

    def _finish(self, ctx: _Context, state: dict[str, Any], p: Tensor, ev: Evaluation,
                t_c: Tensor, delta: Tensor, correction: Tensor | None, lead: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Bounds, momentum, step, pull and trust region: the next pre-image."""
        b, d = p.shape[0], p[0].numel()
        pf = p.reshape(b, d)
        if ctx.lower is not None or ctx.upper is not None:
            # No push (nor momentum) through an active bound: without this the clamp after each
            # projection and the step balance at a point off the manifold.
            delta = self._mask(ctx, delta.reshape(p.shape), p).reshape(b, d)
        if lead == 2:
            state["m"] = delta.reshape(p.shape)
        move = self.step_size * delta
        if correction is not None:
            move = move + correction
        if self.max_step is not None:
            # Trust region: a learned denoiser is only reliable within a few training σ of the
            # manifold, so one iteration may not carry the point further than ``max_step``.
            norm = torch.linalg.vector_norm(move, dim=1, keepdim=True)
            move = move * torch.clamp(self.max_step / norm.clamp_min(1e-30), max=1.0)
        state["y"] = (pf - move).reshape(p.shape)
        return p, ev.cost, t_c.reshape(p.shape), None

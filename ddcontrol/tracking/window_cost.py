"""The tracking cost on normalised trajectory windows (torch): the form the manifold solvers minimise.

:meth:`ddcontrol.tracking.problem.TrackingProblem.window_cost` builds a :class:`WindowCost`: the
batched cost of windows ``x`` (B, L, m + p) with an analytic gradient and the Lipschitz constant
of that gradient. :class:`FramedWindowCost` evaluates it on windows held in a symmetry's canonical
frame. The problem definition itself (:mod:`ddcontrol.tracking.problem`) imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._deprecation import renamed_keywords
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import DimensionError

if TYPE_CHECKING:
    from ddcontrol.tracking.problem import TrackingProblem

__all__ = ["WindowCost", "FramedWindowCost"]


def _affine_quadratic(x: Tensor, t_ini: int, a: Tensor, b: Tensor, weight: Tensor
                      ) -> tuple[Tensor, Tensor]:
    """``f = Σ_t z_t W z_tᵀ`` over the future samples of windows x (B, L, C), with residuals
    ``z_t = x_t A + b_t`` (A (C, k) or (B, C, k), b (N_h, k) or (B, N_h, k)), and its gradient
    ``2 z W Aᵀ`` (shape of x, zero on the past block; W symmetric). A handful of operations:
    at batch 1 their count, not their arithmetic, is what an iteration pays for."""
    xf = x.detach()[:, t_ini:]
    z = xf @ a + b
    zw = z @ weight
    f = (z * zw).sum(dim=(-1, -2))
    g = torch.zeros_like(x)
    g[:, t_ini:] = (2.0 * zw) @ a.transpose(-1, -2)
    return f, g


class WindowCost:
    """Batched tracking cost of normalised windows ``x`` (B, T_ini + N_h, m + p), and its gradient.

    Only the last N_h steps (the future block) are costed; the past block is conditioning. The
    gradient is analytic (the cost is quadratic), so a solver needs no backward pass through it.
    """

    @renamed_keywords(past_length="t_ini")
    def __init__(self, problem: TrackingProblem, normalizer: Normalizer, t_ini: int,
                 start: int, dtype: torch.dtype, device: Any) -> None:
        m, p = problem.input_dim, problem.output_dim
        if normalizer.channels != m + p or normalizer.input_dim != m:
            raise DimensionError(f"normaliser has {normalizer.channels} channels "
                                 f"({normalizer.input_dim} inputs); the problem needs {m + p} "
                                 f"({m} inputs)")
        # ``past_length``: the attribute's older name, still read by callers.
        self.problem, self.t_ini, self.m = problem, int(t_ini), m
        self.past_length = self.t_ini
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        self.mean, self.std = as_t(normalizer.mean), as_t(normalizer.std)
        cols = [m + c for c in problem.channels]
        # Tracked channels that are consecutive (the usual case) are a slice: a view, where an
        # index tensor costs a gather (and a scatter in the gradient) at every evaluation.
        self.y_idx: slice | Tensor = (
            slice(cols[0], cols[-1] + 1) if cols and cols == list(range(cols[0], cols[-1] + 1))
            else torch.as_tensor(cols, device=device))
        self.Q, self.R = as_t(problem.Q_matrix), as_t(problem.R_matrix)
        # The costed channels (inputs, then tracked outputs) and their weight blockdiag(R, Q):
        # value_and_egrad works on them alone.
        self._costed = list(range(m)) + cols
        k = len(self._costed)
        #: blockdiag(R, Q) (k, k): the weight of the costed residuals of :meth:`affine`.
        self.weight = torch.zeros(k, k, dtype=dtype, device=device)
        self.weight[:m, :m], self.weight[m:, m:] = self.R, self.Q
        self._affine_key: Any = None
        self.set_start(start)

    def set_start(self, start: int) -> None:
        """Move the reference so that the future block begins at step ``start``."""
        self.start = int(start)
        self.ref = torch.as_tensor(self.problem.reference_values(self.start, self.problem.horizon),
                                   dtype=self.mean.dtype, device=self.mean.device)

    def _future(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w = x[:, self.t_ini:] * self.std + self.mean
        return w[..., : self.m], w[..., self.y_idx] - self.ref

    def __call__(self, x: Tensor) -> Tensor:
        """Cost (B,) of normalised windows x (B, L, C)."""
        u, e = self._future(x)
        return ((e @ self.Q) * e).sum(dim=(-1, -2)) + ((u @ self.R) * u).sum(dim=(-1, -2))

    def egrad(self, x: Tensor) -> Tensor:
        """Euclidean gradient w.r.t. the normalised window, shape of x (detached)."""
        return self.value_and_egrad(x)[1]

    def value_and_egrad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Cost (B,) and gradient (shape of x) in one evaluation: the solvers need both at every
        iteration (:func:`_affine_quadratic`)."""
        a, b = self.affine()
        return _affine_quadratic(x, self.t_ini, a, b, self.weight)

    def affine(self) -> tuple[Tensor, Tensor]:
        """The costed residuals as an affine map of a normalised future sample: ``z_t = x_t A +
        b_t``, A (C, k) and b (N_h, k) or (B, N_h, k), k = m + tracked outputs; the cost is
        Σ_t z_t blockdiag(R, Q) z_tᵀ. Recomputed when the reference changes."""
        key = self.ref
        if self._affine_key is not key:
            costed = self._costed
            a = torch.diag(self.std)[:, costed]
            b = self.mean[costed].expand(*self.ref.shape[:-1], len(costed)).clone()
            b[..., self.m:] -= self.ref
            self._affine, self._affine_key = (a, b), key
        return self._affine

    def lipschitz(self) -> float:
        """Lipschitz constant of the gradient in normalised coordinates (largest Hessian eigenvalue
        of the quadratic, ignoring the manifold)."""
        s_u, s_y = self.std[: self.m], self.std[self.y_idx]
        hu = torch.linalg.eigvalsh(2.0 * self.R * torch.outer(s_u, s_u)).max()
        hy = torch.linalg.eigvalsh(2.0 * self.Q * torch.outer(s_y, s_y)).max()
        return float(torch.maximum(hu, hy))


class FramedWindowCost:
    """The tracking cost of windows held in a symmetry's canonical frame.

    A model with a symmetry (:mod:`ddcontrol.symmetry`) works on canonical windows ``x̃``
    (normalised); the reference and ``Q`` stay in world units. For the frame ``g`` fixed by the
    measured past, the cost is ``f(N(g · N⁻¹(x̃)))`` with ``N`` the normalisation: an affine map
    of ``x̃`` followed by the quadratic :class:`WindowCost`, so its gradient is one cheap
    vector-Jacobian product of that map (no network pass).
    """

    def __init__(self, cost: WindowCost, symmetry: Any, normalizer: Normalizer) -> None:
        self.cost, self.symmetry, self.normalizer = cost, symmetry, normalizer
        # The frame map's linear part has a norm bounded independently of g: the step size needs
        # no per-plan Jacobian.
        self._lip_factor = symmetry.gain(normalizer) ** 2
        self.t_ini, self.m = cost.t_ini, cost.m
        self.past_length = self.t_ini
        self.set_frame(None)

    @property
    def start(self) -> int:
        return self.cost.start

    def set_start(self, start: int) -> None:
        self.cost.set_start(start)

    def set_frame(self, g: Any) -> None:
        """The world frame of the windows: group element (k,) or (B, k); None → identity."""
        mean = self.cost.mean
        g = np.asarray(self.symmetry.identity_element() if g is None else g, dtype=float)
        self.g = torch.as_tensor(g, dtype=mean.dtype, device=mean.device)
        # The frame map acts on every sample of a window alike and is affine in it (a rotation
        # and a shift in normalised units): w_t = x_t M + b. Its matrix and offset, read off
        # the map at 0 and at the unit vectors (as samples of one probe window), make each
        # evaluation one product instead of the symmetry's own arithmetic and autograd. The
        # probe is a few samples: numpy in float64, then one copy to the device (a step's
        # plan sets its frame once, and torch's per-operation overhead would dominate).
        c = mean.shape[0]
        probe = np.broadcast_to(np.concatenate([np.zeros((1, c)), np.eye(c)]),
                                (*g.shape[:-1], c + 1, c))
        n = self.normalizer
        out = np.asarray(n.normalize(self.symmetry.act(g, n.denormalize(probe))), dtype=float)
        out = torch.as_tensor(out, dtype=mean.dtype, device=mean.device)
        self._offset = out[..., :1, :]  # (..., 1, C)
        self._matrix = out[..., 1:, :] - self._offset  # (..., C, C): row j is the image of e_j
        self._affine_key: Any = None

    def to_world(self, x: Tensor) -> Tensor:
        """Normalised canonical windows (B, L, C) → normalised world windows."""
        return x @ self._matrix + self._offset

    def __call__(self, x: Tensor) -> Tensor:
        return self.cost(self.to_world(x))

    def egrad(self, x: Tensor) -> Tensor:
        """Euclidean gradient w.r.t. the canonical normalised window (detached)."""
        return self.value_and_egrad(x)[1]

    def value_and_egrad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Cost (B,) and gradient w.r.t. the canonical window in one evaluation: the frame map
        composed with the world cost's affine residuals (:func:`_affine_quadratic`)."""
        world = self.cost.affine()  # the same object until the reference moves
        if self._affine_key is not world:  # (set_frame resets the key)
            # x_t M + o in normalised world units, then the world cost's x_t A + b.
            a, b = world
            self._affine = (self._matrix @ a, self._offset @ a + b)
            self._affine_key = world
        return _affine_quadratic(x, self.t_ini, *self._affine, self.cost.weight)

    def lipschitz(self) -> float:
        """The world cost's constant times ‖A‖², A the linear part of the frame map in normalised
        units (bounded over every frame by :meth:`WindowSymmetry.gain`)."""
        return self.cost.lipschitz() * self._lip_factor

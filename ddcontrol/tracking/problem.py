"""The finite-horizon tracking problem, in physical units, and its form on normalised windows.

A :class:`TrackingProblem` is data: reference, horizon, weights, bounds. :meth:`window_cost` turns it
into the batched cost of a normalised trajectory window ``x`` (B, L, m + p) — the form the manifold
solvers minimise — with an analytic gradient (no extra backward pass) and the Lipschitz constant
of that gradient (the natural step size is its inverse).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._validation import as_finite_array, check_positive_int
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import DimensionError
from ddcontrol.tracking.cost import weight_matrix
from ddcontrol.tracking.reference import Reference, as_reference

ReferenceLike = Reference | np.ndarray | Callable[[float], Any]


@dataclass
class TrackingProblem:
    """Track a reference with the outputs ``y[:, channels]`` over a horizon of ``N_h`` steps.

    Cost (physical units): ``f(u, y) = Σ_k u_kᵀ R u_k + (y_k[ch] − r_k)ᵀ Q (y_k[ch] − r_k)``,
    ``k = 0..N_h−1``, with ``y_k`` measured before ``u_k`` is applied (the datasets' convention).

    Parameters
    ----------
    reference : Reference, ndarray (T, q) or callable
        A :class:`~ddcontrol.tracking.reference.Reference` (it brings its channels, output count
        and dt), an array of targets of the tracked channels at steps ``0..T−1`` (held at its last
        value beyond its end), or a function of time in seconds returning (q,).
    horizon : int
        N_h, the planning horizon in steps.
    input_dim : int
        m.
    output_dim : int, optional
        p (taken from a Reference when omitted).
    dt : float
        Sampling time in seconds (to evaluate callable references).
    channels : sequence of int, optional
        Indices of the tracked outputs (default: the Reference's, else all p).
    Q, R : scalar, (q,)/(m,) diagonal, or matrix
        Output and input weights (default 1 and 0.01).
    input_low, input_high : (m,), optional
        Input bounds in physical units (default: none).
    """

    reference: ReferenceLike
    horizon: int
    input_dim: int
    output_dim: int | None = None
    dt: float = 1.0
    channels: Sequence[int] | None = None
    Q: Any = 1.0
    R: Any = 0.01
    input_low: Any = None
    input_high: Any = None
    _Q: np.ndarray = field(init=False, repr=False)
    _R: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.horizon = check_positive_int(self.horizon, "horizon")
        self.input_dim = check_positive_int(self.input_dim, "input_dim")
        if isinstance(self.reference, Reference):
            ref = self.reference
            if self.output_dim is not None and self.output_dim != ref.output_dim:
                raise DimensionError(f"output_dim={self.output_dim} but the reference is for "
                                     f"{ref.output_dim} outputs")
            if self.channels is not None and tuple(self.channels) != ref.channels:
                raise DimensionError(f"channels {tuple(self.channels)} disagree with the "
                                     f"reference's {ref.channels}")
            self.output_dim, self.channels, self.dt = ref.output_dim, ref.channels, ref.dt
        if self.output_dim is None:
            raise DimensionError("output_dim is required unless the reference is a Reference")
        self.output_dim = check_positive_int(self.output_dim, "output_dim")
        if callable(self.reference):
            ch = list(range(self.output_dim)) if self.channels is None else list(self.channels)
            probe = as_finite_array(self.reference(0.0), "reference(0)").reshape(-1)
            if probe.shape != (len(ch),):
                raise DimensionError(f"reference(t) must return {len(ch)} values, got "
                                     f"{probe.shape}")
            as_reference(np.zeros((1, len(ch))), self.output_dim, ch, self.dt)  # checks channels
        elif not isinstance(self.reference, Reference):
            arr = as_finite_array(self.reference, "reference")
            if arr.ndim == 1:
                arr = arr[:, None]
            self.reference = as_reference(arr, self.output_dim, self.channels, self.dt)
        if isinstance(self.reference, Reference):
            self.channels = self.reference.channels
            if self.reference.steps < self.horizon:
                raise DimensionError(f"the reference has {self.reference.steps} samples, fewer "
                                     f"than the horizon {self.horizon}")
        self.channels = [int(c) for c in (self.channels if self.channels is not None
                                          else range(self.output_dim))]
        self._Q = weight_matrix(self.Q, len(self.channels), "Q")
        self._R = weight_matrix(self.R, self.input_dim, "R")
        for name in ("input_low", "input_high"):
            value = getattr(self, name)
            if value is not None:
                arr = np.broadcast_to(np.asarray(value, dtype=float), (self.input_dim,)).copy()
                if np.any(np.isnan(arr)):
                    raise DimensionError(f"{name} contains NaN")
                setattr(self, name, arr)

    @classmethod
    def for_dataset(cls, data: Any, reference: Reference, horizon: int, *, Q: Any = 1.0,
                    R: Any = 0.01) -> TrackingProblem:
        """The problem for the system a dataset came from (input bounds from its metadata);
        works for data collected from any environment, without a ddcontrol simulator."""
        meta = data.metadata
        return cls(reference, horizon, data.input_dim, Q=Q, R=R,
                   input_low=meta.get("input_low"), input_high=meta.get("input_high"))

    @classmethod
    def for_env(cls, env_id: str, reference: Reference, horizon: int, *, Q: Any = 1.0,
                R: Any = 0.01, env_kwargs: dict[str, Any] | None = None) -> TrackingProblem:
        """The problem for a registered environment: its input count and actuator limits."""
        from ddcontrol.data.collect import make_dynamics

        dyn = make_dynamics(env_id, env_kwargs)
        return cls(reference, horizon, dyn.input_dim, Q=Q, R=R, input_low=dyn.input_low,
                   input_high=dyn.input_high)

    @property
    def tracked_dim(self) -> int:
        return len(self.channels)

    @property
    def Q_matrix(self) -> np.ndarray:
        return self._Q

    @property
    def R_matrix(self) -> np.ndarray:
        return self._R

    def reference_values(self, start: int, steps: int) -> np.ndarray:
        """Reference at steps ``start .. start + steps − 1``, shape (steps, q)."""
        if isinstance(self.reference, Reference):
            return self.reference.window(start, steps)
        return np.stack([np.asarray(self.reference((start + k) * self.dt), float).reshape(-1)
                         for k in range(steps)])

    def cost(self, u: Any, y: Any, start: int = 0) -> Any:
        """Tracking cost of plans, batched, numpy or torch.

        Parameters
        ----------
        u : (..., N, m) inputs; y : (..., N, p) outputs, physical units; N ≤ any length.
        start : step index of the first sample (selects the reference).

        Returns
        -------
        (...,) cost.
        """
        n = u.shape[-2]
        if u.shape[-1] != self.input_dim or y.shape[-1] != self.output_dim or y.shape[-2] != n:
            raise DimensionError(f"u (..., N, {self.input_dim}) and y (..., N, {self.output_dim})"
                                 f" expected, got {tuple(u.shape)} and {tuple(y.shape)}")
        ref, Q, R = self.reference_values(start, n), self._Q, self._R
        if isinstance(u, Tensor):
            ref, Q, R = (torch.as_tensor(a, dtype=u.dtype, device=u.device) for a in (ref, Q, R))
        e = y[..., self.channels] - ref
        return ((e @ Q) * e).sum(axis=(-1, -2)) + ((u @ R) * u).sum(axis=(-1, -2))

    def window_cost(self, normalizer: Normalizer, past_length: int = 0, start: int = 0,
                    dtype: torch.dtype = torch.float32, device: Any = "cpu") -> WindowCost:
        """The cost as a function of normalised windows of length ``past_length + horizon``."""
        return WindowCost(self, normalizer, past_length, start, dtype, device)


class WindowCost:
    """Batched tracking cost of normalised windows ``x`` (B, T_ini + N_h, m + p), and its gradient.

    Only the last N_h steps (the future block) are costed; the past block is conditioning. The
    gradient is analytic (the cost is quadratic), so a solver needs no backward pass through it.
    """

    def __init__(self, problem: TrackingProblem, normalizer: Normalizer, past_length: int,
                 start: int, dtype: torch.dtype, device: Any) -> None:
        m, p = problem.input_dim, problem.output_dim
        if normalizer.channels != m + p or normalizer.input_dim != m:
            raise DimensionError(f"normaliser has {normalizer.channels} channels "
                                 f"({normalizer.input_dim} inputs); the problem needs {m + p} "
                                 f"({m} inputs)")
        self.problem, self.past_length, self.m = problem, int(past_length), m
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        self.mean, self.std = as_t(normalizer.mean), as_t(normalizer.std)
        self.y_idx = torch.as_tensor([m + c for c in problem.channels], device=device)
        self.Q, self.R = as_t(problem.Q_matrix), as_t(problem.R_matrix)
        self.set_start(start)

    def set_start(self, start: int) -> None:
        """Move the reference so that the future block begins at step ``start``."""
        self.start = int(start)
        self.ref = torch.as_tensor(self.problem.reference_values(self.start, self.problem.horizon),
                                   dtype=self.mean.dtype, device=self.mean.device)

    def _future(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w = x[:, self.past_length:] * self.std + self.mean
        return w[..., : self.m], w[..., self.y_idx] - self.ref

    def __call__(self, x: Tensor) -> Tensor:
        """Cost (B,) of normalised windows x (B, L, C)."""
        u, e = self._future(x)
        return ((e @ self.Q) * e).sum(dim=(-1, -2)) + ((u @ self.R) * u).sum(dim=(-1, -2))

    def egrad(self, x: Tensor) -> Tensor:
        """Euclidean gradient w.r.t. the normalised window, shape of x (detached)."""
        u, e = self._future(x.detach())
        g = torch.zeros_like(x)
        fut = g[:, self.past_length:]
        fut[..., : self.m] = 2.0 * (u @ self.R) * self.std[: self.m]
        fut[..., self.y_idx] = 2.0 * (e @ self.Q) * self.std[self.y_idx]
        return g

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
        self.past_length, self.m = cost.past_length, cost.m
        self.set_frame(None)

    @property
    def start(self) -> int:
        return self.cost.start

    def set_start(self, start: int) -> None:
        self.cost.set_start(start)

    def set_frame(self, g: Any) -> None:
        """The world frame of the windows: group element (k,) or (B, k); None → identity."""
        mean = self.cost.mean
        if g is None:
            g = self.symmetry.identity_element()
        self.g = torch.as_tensor(np.asarray(g, dtype=float), dtype=mean.dtype,
                                 device=mean.device)
        self._lip_factor: float | None = None

    def to_world(self, x: Tensor) -> Tensor:
        """Normalised canonical windows (B, L, C) → normalised world windows."""
        n = self.normalizer
        return n.normalize(self.symmetry.act(self.g, n.denormalize(x)))

    def __call__(self, x: Tensor) -> Tensor:
        return self.cost(self.to_world(x))

    def egrad(self, x: Tensor) -> Tensor:
        """Euclidean gradient w.r.t. the canonical normalised window (detached)."""
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            w = self.to_world(xx)
            (grad,) = torch.autograd.grad(w, xx, self.cost.egrad(w))
        return grad

    def lipschitz(self) -> float:
        """The world cost's constant times ‖A‖², A the linear part of the frame map (one sample)."""
        if self._lip_factor is None:
            z = torch.zeros(1, 1, self.normalizer.channels, dtype=self.cost.mean.dtype,
                            device=self.cost.mean.device)
            g0 = self.g if self.g.ndim == 1 else self.g[0]
            saved, self.g = self.g, g0
            jac = torch.autograd.functional.jacobian(lambda v: self.to_world(v).reshape(-1), z)
            self.g = saved
            self._lip_factor = float(torch.linalg.matrix_norm(jac.reshape(z.numel(), -1), 2)) ** 2
        return self.cost.lipschitz() * self._lip_factor

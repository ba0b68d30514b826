"""The optimisation problem: a batched cost on the behaviour manifold, with optional box bounds."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError
from ddcontrol.manifold import BehaviorManifold

__all__ = ["Problem"]

CostFn = Callable[[Tensor], Tensor]


class Problem:
    """Minimise ``cost(x)`` over points ``x`` of ``manifold``, optionally inside a box.

    Parameters
    ----------
    manifold : BehaviorManifold
        The constraint set, through its denoiser.
    cost : callable
        Batched, differentiable cost: ``(B, *event_shape) -> (B,)``; one independent problem per
        batch element (so its gradient is the gradient of ``cost(x).sum()``).
    egrad : callable, optional
        Euclidean gradient ``(B, *event_shape) -> (B, *event_shape)``; autograd of ``cost`` if
        omitted. Supplying it saves one backward pass per iteration. A cost object with a
        method ``value_and_egrad(x) -> (cost, egrad)``, given with its own ``egrad`` (or
        without one), is evaluated through that method: one call for both at every iteration.
    lower, upper : Tensor or float, optional
        Box bounds broadcastable to ``event_shape`` (±inf allowed), same units as x. Solvers clamp
        every projected point into the box, so returned points always satisfy them.
    """

    def __init__(self, manifold: BehaviorManifold, cost: CostFn, egrad: CostFn | None = None, *,
                 lower: Tensor | float | None = None,
                 upper: Tensor | float | None = None) -> None:
        if not isinstance(manifold, BehaviorManifold):
            raise TypeError(f"manifold must be a BehaviorManifold, got {type(manifold).__name__}")
        if not callable(cost):
            raise TypeError("cost must be callable")
        if egrad is not None and not callable(egrad):
            raise TypeError("egrad must be callable or None")
        self.manifold = manifold
        self.cost = cost
        self.egrad = egrad
        fused = getattr(cost, "value_and_egrad", None)
        self._fused = fused if callable(fused) and (
            egrad is None or egrad == getattr(cost, "egrad", None)) else None
        self.lower = self._as_bound(lower, "lower")
        self.upper = self._as_bound(upper, "upper")

    @staticmethod
    def _as_bound(value: Tensor | float | None, name: str) -> Tensor | None:
        if value is None:
            return None
        bound = torch.as_tensor(value).detach()
        if not bound.is_floating_point():
            bound = bound.to(torch.get_default_dtype())
        if bool(torch.isnan(bound).any()):
            raise NonFiniteError(f"{name} contains NaN")
        return bound

    def bounds_like(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Bounds on x's device and dtype, broadcast to ``x.shape[1:]``; None where unbounded.

        Raises ``DimensionError`` if a bound does not broadcast to the event shape and
        ``ConfigurationError`` if lower > upper anywhere.
        """
        event = tuple(x.shape[1:])
        out: list[Tensor | None] = []
        for name, bound, inf in (("lower", self.lower, -torch.inf), ("upper", self.upper, torch.inf)):
            if bound is None:
                out.append(None)
                continue
            # By hand: torch.broadcast_shapes takes milliseconds, and this runs at every solve.
            shape = tuple(bound.shape)
            if len(shape) > len(event) or any(
                    s not in (1, e) for s, e in zip(reversed(shape), reversed(event))):
                raise DimensionError(f"{name} of shape {tuple(bound.shape)} does not broadcast to "
                                     f"the event shape {event}")
            b = bound.to(device=x.device, dtype=x.dtype).expand(event).contiguous()
            out.append(None if bool((b == inf).all()) else b)
        lo, hi = out
        if lo is not None and hi is not None and bool((lo > hi).any()):
            raise ConfigurationError("lower must be <= upper everywhere")
        return lo, hi

    def cost_and_egrad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Cost (B,) and Euclidean gradient (shape of x) at ``x``, both detached."""
        if self._fused is not None:
            with torch.no_grad():
                return self._fused(x)
        if self.egrad is not None:
            with torch.no_grad():
                return self.cost(x), self.egrad(x)
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            f = self.cost(xg)
            if f.requires_grad:
                (g,) = torch.autograd.grad(f.sum(), xg, allow_unused=True)
            else:
                g = None
        return f.detach(), torch.zeros_like(x) if g is None else g

    def check_outputs(self, x: Tensor, f: Tensor, g: Tensor) -> None:
        """Raise ``DimensionError`` unless cost is (B,) and egrad has x's shape (no device sync)."""
        if f.shape != (x.shape[0],):
            raise DimensionError(f"cost must return shape ({x.shape[0]},), got {tuple(f.shape)}")
        if g.shape != x.shape:
            raise DimensionError(f"egrad must return shape {tuple(x.shape)}, got {tuple(g.shape)}")

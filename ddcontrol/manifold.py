"""The behaviour manifold as seen through a denoiser: projection, tangent VJP, landing direction.

With v(x) = D(x, σ), v is an approximate nearest-point projection onto the data manifold and
v'(x) an approximate tangent projector (error O(σ |log σ|³)). Names follow geoopt
(``projx``, ``proju``, ``egrad2rgrad``, ``retr``); the optimisers live in :mod:`ddcontrol.solvers`.

Every derivative is taken w.r.t. the input only, by one vector-Jacobian product
(``torch.autograd.grad(outputs, inputs=x)``); the denoiser's parameters never receive gradients,
whether or not they have ``requires_grad=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError
from ddcontrol.score.base import Denoiser, SigmaLike, check_sigma

__all__ = ["BehaviorManifold", "Linearization"]


class Linearization:
    """A denoiser evaluated at ``x`` with its autograd graph kept.

    ``point`` is v(x) (detached) and :meth:`vjp` maps u to v'(x)ᵀu with one backward pass.
    Solvers build one per iteration so that a single forward serves both the projection and
    the next tangent VJP.
    """

    __slots__ = ("x", "output")

    def __init__(self, x: Tensor, output: Tensor) -> None:
        self.x = x
        self.output = output

    @property
    def point(self) -> Tensor:
        """v(x), detached, shape (B, *event_shape)."""
        return self.output.detach()

    def vjp(self, u: Tensor, retain_graph: bool = False) -> Tensor:
        """Return v'(x)ᵀ u, shape of ``x``; frees the graph unless ``retain_graph``."""
        (grad,) = torch.autograd.grad(self.output, self.x, grad_outputs=u,
                                      retain_graph=retain_graph)
        return grad

    def vjps(self, u: Tensor, *, vectorize: bool = True, retain_graph: bool = False) -> Tensor:
        """Return v'(x)ᵀ u_j for n cotangents at once, shape (n, *x.shape).

        Parameters
        ----------
        u : Tensor, shape (n, *output.shape)
            The cotangents, stacked along a new leading axis.
        vectorize : bool
            True: one backward pass vectorised over the n cotangents (``torch.func.vmap`` of
            ``torch.autograd.grad``), so the forward is shared and never repeated. False: a
            Python loop of n backward passes over the same graph (works for any differentiable
            denoiser, also one whose operations vmap does not support).
        retain_graph : bool
            Keep the graph for further VJPs (it is freed otherwise).
        """
        if u.ndim != self.output.ndim + 1 or u.shape[1:] != self.output.shape:
            raise DimensionError(f"cotangents must have shape (n, *{tuple(self.output.shape)}), "
                                 f"got {tuple(u.shape)}")
        if vectorize:
            # functorch's vmap, not ``is_grads_batched`` (torch's legacy vmap), which has no
            # batching rule for SiLU's backward and loops over the cotangents there.
            def vjp(v: Tensor) -> Tensor:
                (grad,) = torch.autograd.grad(self.output, self.x, grad_outputs=v,
                                              retain_graph=retain_graph)
                return grad

            return torch.func.vmap(vjp)(u)
        n = u.shape[0]
        if n == 0:
            return self.x.new_zeros((0, *self.x.shape))
        return torch.stack([self.vjp(u[j], retain_graph=retain_graph or j < n - 1)
                            for j in range(n)])


def _check_batch(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 2:
        raise DimensionError(f"{name} must have shape (B, *event_shape), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or inf")
    return x


class BehaviorManifold:
    """Manifold implicitly defined by a denoiser at noise level ``sigma``.

    Parameters
    ----------
    denoiser : Denoiser
        Callable ``D(x, sigma)`` on batches of shape (B, *event_shape) (a trained network or a
        closed-form denoiser). Put networks in ``eval()`` mode first: the manifold does not.
    sigma : float
        Noise level σ > 0 (units of x) at which v(x) = D(x, σ) is evaluated. Smaller σ means a
        sharper projection; the denoiser must have been trained down to it.

    Notes
    -----
    Public methods validate their inputs (which synchronises with the device); solvers call the
    unchecked :meth:`linearize` path instead. Every method accepts ``sigma=`` to override the
    manifold's σ for one call (σ annealing); a float or a tensor of shape (B,).
    """

    def __init__(self, denoiser: Denoiser, sigma: float) -> None:
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable D(x, sigma), got {type(denoiser).__name__}")
        check_sigma(sigma, 1)
        self.denoiser = denoiser
        self._sigma = float(sigma)

    @property
    def sigma(self) -> float:
        """Noise level σ of the projection (units of x)."""
        return self._sigma

    def __repr__(self) -> str:
        return f"BehaviorManifold(denoiser={type(self.denoiser).__name__}, sigma={self._sigma:g})"

    # -- the one primitive ---------------------------------------------------------------------
    def linearize(self, x: Tensor, sigma: SigmaLike | None = None, *,
                  check: bool = True) -> Linearization:
        """Evaluate v at ``x`` keeping the graph w.r.t. ``x`` only (no input checks, no sync).

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
        sigma : float or Tensor (B,), optional
            Overrides the manifold's σ.
        check : bool
            Check the output's shape and differentiability (host-side only; solvers do it on
            their first iteration and skip its ~10 µs afterwards).
        """
        s = self._sigma if sigma is None else sigma
        explicit = getattr(self.denoiser, "linearize", None)
        if explicit is not None:
            # A denoiser that writes out its own VJPs (the residual MLP at a fixed σ): same
            # numbers, a fraction of autograd's per-operation overhead at small batches.
            lin = explicit(x, s)
            if lin is not None:
                return lin
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.denoiser(xg, s)
        if not check:
            return Linearization(xg, out)
        if out.shape != xg.shape:
            raise DimensionError(f"denoiser returned shape {tuple(out.shape)} "
                                 f"for input {tuple(xg.shape)}")
        if out.grad_fn is None:
            raise ConfigurationError("denoiser output is not differentiable w.r.t. its input "
                                     "(called under no_grad, or detached inside?)")
        return Linearization(xg, out)

    # -- geoopt-style operations ---------------------------------------------------------------
    def projx(self, x: Tensor, sigma: SigmaLike | None = None) -> Tensor:
        """Approximate nearest-point projection v(x) = D(x, σ), shape of ``x``."""
        x = self._checked(x, "x", sigma)
        with torch.no_grad():
            out = self.denoiser(x, self._sigma if sigma is None else sigma)
        if out.shape != x.shape:
            raise DimensionError(f"denoiser returned shape {tuple(out.shape)} "
                                 f"for input {tuple(x.shape)}")
        return out

    def proju(self, x: Tensor, u: Tensor, sigma: SigmaLike | None = None) -> Tensor:
        """Tangent projection v'(x)ᵀ u by one vector-Jacobian product, shape of ``x``."""
        x = self._checked(x, "x", sigma)
        self._check_like(u, x, "u")
        return self.linearize(x, sigma).vjp(u.to(x.dtype))

    def egrad2rgrad(self, x: Tensor, egrad: Tensor, sigma: SigmaLike | None = None) -> Tensor:
        """Riemannian gradient v'(x)ᵀ ∇f(x) from the Euclidean gradient ``egrad``."""
        return self.proju(x, egrad, sigma)

    def retr(self, x: Tensor, u: Tensor, sigma: SigmaLike | None = None) -> Tensor:
        """Retraction by projection: v(x + u), shape of ``x``."""
        self._check_like(u, x, "u")
        return self.projx(x + u, sigma)

    def dist(self, x: Tensor, sigma: SigmaLike | None = None) -> Tensor:
        """Estimated distance to the manifold ‖v(x) − x‖ per batch element, shape (B,)."""
        p = self.projx(x, sigma)
        return torch.linalg.vector_norm((p - x).reshape(x.shape[0], -1), dim=1)

    def projx_and_vjp(self, x: Tensor, g_fn: Callable[[Tensor], Tensor],
                      sigma: SigmaLike | None = None) -> tuple[Tensor, Tensor]:
        """Landing evaluation in one forward and one backward pass.

        Parameters
        ----------
        x : Tensor, shape (B, *event_shape)
        g_fn : callable
            Maps p = v(x) to a vector g of the same shape, typically ∇f(p); it is detached.

        Returns
        -------
        p : Tensor
            v(x), detached.
        rgrad : Tensor
            v'(x)ᵀ g.
        """
        x = self._checked(x, "x", sigma)
        lin = self.linearize(x, sigma)
        p = lin.point
        g = g_fn(p)  # p is detached: g_fn may use autograd without reaching the denoiser
        self._check_like(g, x, "g_fn(p)")
        return p, lin.vjp(g.detach().to(x.dtype))

    def check_point_on_manifold(self, x: Tensor, atol: float = 1e-5, rtol: float = 1e-5,
                                sigma: SigmaLike | None = None) -> bool:
        """True if every element satisfies ‖v(x) − x‖ ≤ atol + rtol·‖x‖ (units of x)."""
        d = self.dist(x, sigma)
        scale = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
        return bool((d <= atol + rtol * scale).all())

    # -- helpers -------------------------------------------------------------------------------
    def _checked(self, x: Tensor, name: str, sigma: SigmaLike | None) -> Tensor:
        x = _check_batch(x, name)
        if sigma is not None:
            check_sigma(sigma, x.shape[0])
        return x

    @staticmethod
    def _check_like(u: object, x: Tensor, name: str) -> None:
        if not isinstance(u, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(u).__name__}")
        if u.shape != x.shape:
            raise DimensionError(f"{name} must have the shape of x {tuple(x.shape)}, "
                                 f"got {tuple(u.shape)}")

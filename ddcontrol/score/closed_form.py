"""Exact (closed-form) denoisers, for testing solvers before any network is trained.

Both are ``torch.nn.Module`` s whose data live in buffers, so ``.to(device)`` moves them, and both
follow the :class:`~ddcontrol.score.base.Denoiser` protocol ``D(x, sigma) -> Tensor``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.errors import DimensionError, NonFiniteError
from ddcontrol.score.base import SigmaLike

__all__ = ["EmpiricalDenoiser", "LinearGaussianDenoiser"]


def _check_data(data: Tensor, name: str, min_ndim: int = 2) -> None:
    if not isinstance(data, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(data).__name__}")
    if not data.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {data.dtype}")
    if data.ndim < min_ndim or data.shape[0] == 0:
        raise DimensionError(f"{name} must have shape (N, *event_shape) with N >= 1, "
                             f"got {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise NonFiniteError(f"{name} contains NaN or inf")


def _flat_batch(x: Tensor, event_shape: tuple[int, ...], cls: str) -> Tensor:
    if tuple(x.shape[1:]) != event_shape:
        raise DimensionError(f"{cls} expects x of shape (B, *{event_shape}), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _inv_two_var(sigma: SigmaLike, batch: int, ref: Tensor) -> Tensor | float:
    """1 / (2σ²) as a float or a ``(B, 1)`` column."""
    if isinstance(sigma, Tensor):
        s = sigma.to(device=ref.device, dtype=ref.dtype).reshape(-1, 1)
        return 0.5 / (s * s)
    return 0.5 / (float(sigma) ** 2)


class EmpiricalDenoiser(nn.Module):
    """Exact denoiser of the Gaussian-smoothed empirical distribution of ``data``.

    D(x, σ) = Σ_i softmax_i(−‖x − w_i‖² / 2σ²) w_i, computed by a streaming log-sum-exp over
    chunks of the N data points, so memory is O(B · chunk_size) whatever N is. Differentiable
    w.r.t. ``x`` (autograd through the chunks), per-sample ``sigma`` supported.

    Parameters
    ----------
    data : Tensor, shape (N, *event_shape)
        The clean samples w_i (e.g. ``(N, L, C)`` windows in normalised units).
    chunk_size : int
        Data points per chunk. 4096 keeps a batch of 64 windows of 100x7 under ~10 MB per chunk.

    Notes
    -----
    The squared distances are formed as ‖w‖² − 2⟨x, w⟩ (one matmul; ‖x‖² cancels in the softmax)
    on data centred on their mean. In float32 the logit error is about 1e-7·‖w‖²/σ², so for
    windows with ‖w‖² ~ 700 keep σ ≳ 0.02 or use float64. Call it with x in the dtype of the
    data (``.to(dtype)`` the module once), otherwise the data are cast on every call.
    """

    center: Tensor
    points: Tensor
    sq_norms: Tensor

    def __init__(self, data: Tensor, chunk_size: int = 4096) -> None:
        super().__init__()
        _check_data(data, "data")
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        self.event_shape: tuple[int, ...] = tuple(data.shape[1:])
        flat = data.detach().reshape(data.shape[0], -1)
        center = flat.mean(dim=0)
        # Centring shrinks ‖w‖ and so the cancellation error of the matmul form of ‖x − w‖².
        points = flat - center
        self.register_buffer("center", center)
        self.register_buffer("points", points)
        self.register_buffer("sq_norms", (points * points).sum(dim=1))

    @property
    def num_points(self) -> int:
        """Number of data points N."""
        return int(self.points.shape[0])

    def forward(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """Posterior mean, shape of ``x`` (B, *event_shape); ``sigma`` float or (B,)."""
        xf = _flat_batch(x, self.event_shape, type(self).__name__)
        points = self.points.to(xf.dtype)
        sq_norms = self.sq_norms.to(xf.dtype)
        xc = xf - self.center.to(xf.dtype)
        inv = _inv_two_var(sigma, xf.shape[0], xf)
        n, c = points.shape[0], self.chunk_size
        if n <= c:
            logits = (2.0 * (xc @ points.T) - sq_norms) * inv
            out = torch.softmax(logits, dim=1) @ points
        else:
            out = self._streamed(xc, points, sq_norms, inv)
        return (out + self.center.to(xf.dtype)).reshape(x.shape)

    def _streamed(self, xc: Tensor, points: Tensor, sq_norms: Tensor,
                  inv: Tensor | float) -> Tensor:
        b = xc.shape[0]
        run_max = torch.full((b, 1), -math.inf, dtype=xc.dtype, device=xc.device)
        run_sum = torch.zeros((b, 1), dtype=xc.dtype, device=xc.device)
        acc = torch.zeros_like(xc)
        for start in range(0, points.shape[0], self.chunk_size):
            w = points[start:start + self.chunk_size]
            logits = (2.0 * (xc @ w.T) - sq_norms[start:start + self.chunk_size]) * inv
            # The shift is a constant of the softmax, so detaching it leaves the value and the
            # gradient exact and keeps max() out of the graph.
            new_max = torch.maximum(run_max, logits.max(dim=1, keepdim=True).values.detach())
            rescale = torch.exp(run_max - new_max)
            weights = torch.exp(logits - new_max)
            run_sum = run_sum * rescale + weights.sum(dim=1, keepdim=True)
            acc = acc * rescale + weights @ w
            run_max = new_max
        return acc / run_sum


class LinearGaussianDenoiser(nn.Module):
    """Exact denoiser for Gaussian data on an affine subspace: x = mean + U z, z ~ N(0, diag(s²)).

    With Σ = U diag(s²) Uᵀ + τ² I the denoiser is linear,
    D(x, σ) = mean + Σ (Σ + σ² I)⁻¹ (x − mean); its Jacobian tends to the orthogonal projector
    onto span(U) as σ → 0 (when τ = 0). Event shapes are handled by flattening.

    Parameters
    ----------
    mean : Tensor, shape event_shape (e.g. (d,) or (L, C))
        Mean of the data.
    basis : Tensor, shape (d, k), d = prod(event_shape)
        Columns spanning the subspace (need not be orthonormal).
    scales : Tensor, shape (k,), optional
        Standard deviations s of z (same units as x); ones if omitted.
    isotropic_var : float
        Optional extra isotropic variance τ² (units of x squared); 0 gives a degenerate Gaussian.
    """

    mean: Tensor
    vectors: Tensor
    variances: Tensor

    def __init__(self, mean: Tensor, basis: Tensor, scales: Tensor | None = None,
                 isotropic_var: float = 0.0) -> None:
        super().__init__()
        _check_data(mean, "mean", min_ndim=1)
        _check_data(basis, "basis")
        self.event_shape: tuple[int, ...] = tuple(mean.shape)
        d = mean.numel()
        if basis.ndim != 2 or basis.shape[0] != d:
            raise DimensionError(f"basis must have shape ({d}, k), got {tuple(basis.shape)}")
        if scales is None:
            scales = torch.ones(basis.shape[1], dtype=basis.dtype, device=basis.device)
        _check_data(scales, "scales", min_ndim=1)
        if scales.shape != (basis.shape[1],):
            raise DimensionError(f"scales must have shape ({basis.shape[1]},), "
                                 f"got {tuple(scales.shape)}")
        self.isotropic_var = check_positive_float(isotropic_var, "isotropic_var", allow_zero=True)
        # Orthonormal eigenvectors of U diag(s²) Uᵀ from the SVD of U diag(s).
        vecs, sv, _ = torch.linalg.svd(basis * scales, full_matrices=False)
        keep = sv > sv.max() * max(basis.shape) * torch.finfo(sv.dtype).eps
        self.register_buffer("mean", mean.detach().reshape(-1).clone())
        self.register_buffer("vectors", vecs[:, keep].contiguous())
        self.register_buffer("variances", (sv[keep] ** 2).contiguous())

    @classmethod
    def from_covariance(cls, mean: Tensor, covariance: Tensor, rank: int | None = None,
                        isotropic_var: float = 0.0) -> LinearGaussianDenoiser:
        """Build from a (d, d) covariance, keeping its top ``rank`` (default: numerical) modes."""
        _check_data(covariance, "covariance")
        d = mean.numel()
        if covariance.shape != (d, d):
            raise DimensionError(f"covariance must have shape ({d}, {d}), "
                                 f"got {tuple(covariance.shape)}")
        evals, evecs = torch.linalg.eigh(0.5 * (covariance + covariance.T))
        evals, evecs = evals.flip(0), evecs.flip(1)
        k = cls._rank(evals, d, rank)  # eigenvalues: the tolerance is relative to their scale
        return cls(mean, evecs[:, :k], evals[:k].clamp_min(0).sqrt(), isotropic_var)

    @classmethod
    def from_samples(cls, data: Tensor, rank: int | None = None,
                     isotropic_var: float = 0.0) -> LinearGaussianDenoiser:
        """Fit by PCA to ``data`` of shape (N, *event_shape); ``rank`` None = numerical rank."""
        _check_data(data, "data")
        n = data.shape[0]
        flat = data.detach().reshape(n, -1)
        mean = flat.mean(dim=0)
        _, sv, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        k = cls._rank(sv, max(n, flat.shape[1]), rank)
        scales = sv[:k] / math.sqrt(max(n - 1, 1))
        return cls(mean.reshape(data.shape[1:]), vh[:k].T, scales, isotropic_var)

    @staticmethod
    def _rank(singular: Tensor, size: int, rank: int | None) -> int:
        if rank is not None:
            rank = check_positive_int(rank, "rank")
            if rank > singular.numel():
                raise DimensionError(f"rank {rank} exceeds the {singular.numel()} available modes")
            return rank
        tol = singular.max() * size * torch.finfo(singular.dtype).eps
        return max(int((singular > tol).sum()), 1)

    @property
    def rank(self) -> int:
        """Dimension k of the subspace."""
        return int(self.vectors.shape[1])

    def projector(self) -> Tensor:
        """Orthogonal projector onto the subspace, shape (d, d): the σ → 0 limit of D'."""
        return self.vectors @ self.vectors.T

    def covariance(self) -> Tensor:
        """Data covariance Σ, shape (d, d), units of x squared."""
        eye = torch.eye(self.mean.numel(), dtype=self.mean.dtype, device=self.mean.device)
        return (self.vectors * self.variances) @ self.vectors.T + self.isotropic_var * eye

    def forward(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """Posterior mean, shape of ``x`` (B, *event_shape); ``sigma`` float or (B,)."""
        xf = _flat_batch(x, self.event_shape, type(self).__name__)
        vecs = self.vectors.to(xf.dtype)
        lam = self.variances.to(xf.dtype) + self.isotropic_var
        if isinstance(sigma, Tensor):
            var = sigma.to(device=xf.device, dtype=xf.dtype).reshape(-1, 1) ** 2
        else:
            var = float(sigma) ** 2
        z = xf - self.mean.to(xf.dtype)
        coef = z @ vecs
        out = (coef * (lam / (lam + var))) @ vecs.T
        if self.isotropic_var > 0:
            # Off the subspace the prior is N(0, τ²): shrink that component by τ²/(τ²+σ²).
            out = out + (z - coef @ vecs.T) * (self.isotropic_var / (self.isotropic_var + var))
        return (out + self.mean.to(xf.dtype)).reshape(x.shape)

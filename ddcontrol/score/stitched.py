"""A denoiser of long windows stitched from a denoiser of short ones.

A model of W-step windows knows the system's behaviour over W steps; a plan over L > W steps
lies on the behaviour manifold when every W-step stretch of it does. :class:`StitchedDenoiser`
treats the long window's density as the product of its stretches' (offsets ``0 = o_0 < … <
o_{n−1} = L − W``, at most ``stride`` apart), so its score is the sum of theirs:

    D_L(x, σ) = x + (1/c) Σ_k P_kᵀ (D_W(P_k x, σ) − P_k x),

with ``P_k`` the k-th stretch and ``c`` the largest number of stretches covering one step. For
exact projectors onto the stretches' behaviours, D_L = I − (1/c) Σ_k P_kᵀ (I − Π_k) P_k is
symmetric with eigenvalues in [0, 1], and 1 exactly on the trajectories all of whose stretches
are behaviours: its powers converge to the orthogonal projector onto the long behaviour (fast
when the stretches overlap by more than the system's lag), and its Jacobian is symmetric, as the
conditioned solver's Gauss-Newton pull on a pinned past assumes (a per-step average of the
stretches' estimates is not symmetric, and there the pull did not hold the past). ``passes``
applies the map several times per call. Everything is differentiable w.r.t. ``x``, so the
solvers' vector-Jacobian products work unchanged.

With a window symmetry (:mod:`ddcontrol.symmetry`), the short model's windows are canonical:
each stretch is mapped to its own canonical frame (its first sample) before the short
denoiser and back after it, so the long window can be in any frame.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from ddcontrol._validation import check_positive_int
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.score.base import SigmaLike
from ddcontrol.symmetry import Identity, WindowSymmetry

__all__ = ["StitchedDenoiser", "stitch_offsets", "stitched_model"]


def stitch_offsets(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the W-step stretches that cover L steps, at most ``stride`` apart, the first
    at 0 and the last at L − W (evenly spread between)."""
    if window < 1 or length < window:
        raise ConfigurationError(f"cannot stitch windows of {window} steps into {length}")
    if not 1 <= stride <= window:
        raise ConfigurationError(f"stride must be in [1, {window}] (the stretches must "
                                 f"overlap or touch), got {stride}")
    span = length - window
    if span == 0:
        return [0]
    n = math.ceil(span / stride) + 1  # n − 1 ≤ span gaps, so the rounded offsets are distinct
    return [round(k * span / (n - 1)) for k in range(n)]


class StitchedDenoiser(nn.Module):
    """``D_L(x, σ)`` on (B, L, C) windows from a denoiser of (B', W, C) windows.

    Parameters
    ----------
    denoiser : callable
        ``D(x, σ)`` on normalised W-step windows (a ``BehaviorDenoiser`` or a closed form).
    window : int
        W, the short denoiser's window length (steps).
    length : int
        L ≥ W, the stitched window length (steps).
    stride : int, optional
        Largest step between consecutive stretches (default W // 3: every sample is covered by
        about three stretches away from the ends).
    symmetry : WindowSymmetry, optional
        The group action whose canonical frame the short denoiser's windows are in.
    normalizer : Normalizer, optional
        The per-channel normalisation of both denoisers' windows (required with a symmetry,
        which acts on physical units).
    passes : int
        Averaging passes per call (D_L composed with itself): one averaged pass leaves a
        disagreement between overlapping stretches that each further pass shrinks
        geometrically, the faster the more the stretches overlap beyond the system's lag.

    Notes
    -----
    One pass moves a step covered by fewer than ``c`` stretches (the ends) only part of the way
    to the stretches' estimates; on the coupled masses (lag 2), 26-step plans from 20-step
    windows reach the constrained optimum to 0.3 % with 10 passes, and 15-step windows need
    more (``tests/test_stitched.py``).
    """

    def __init__(self, denoiser: Any, window: int, length: int, *, stride: int | None = None,
                 symmetry: WindowSymmetry | None = None,
                 normalizer: Normalizer | None = None, passes: int = 1) -> None:
        super().__init__()
        self.passes = check_positive_int(passes, "passes")
        self.inner = denoiser
        self.window = check_positive_int(window, "window")
        self.length = check_positive_int(length, "length")
        self.stride = (max(1, self.window // 3) if stride is None
                       else check_positive_int(stride, "stride"))
        self.offsets = stitch_offsets(self.length, self.window, self.stride)
        self.symmetry = Identity() if symmetry is None else symmetry
        if not self.symmetry.is_identity and normalizer is None:
            raise ConfigurationError("a stitched denoiser with a symmetry needs the normalizer "
                                     "(the symmetry acts on physical units)")
        self.normalizer = normalizer
        index = torch.tensor([[o + i for i in range(self.window)] for o in self.offsets])
        coverage = torch.bincount(index.reshape(-1), minlength=self.length)
        self.scale = 1.0 / int(coverage.max())
        self.register_buffer("index", index, persistent=False)

    @property
    def window_length(self) -> int:
        """L, the length of the windows this denoiser takes."""
        return self.length

    def _to_canonical(self, w: Tensor) -> tuple[Tensor, Any]:
        canonical, g = self.symmetry.canonicalize(self.normalizer.denormalize(w))
        return self.normalizer.normalize(canonical), g

    def _to_world(self, g: Any, w: Tensor) -> Tensor:
        n = self.normalizer
        return n.normalize(self.symmetry.act(g, n.denormalize(w)))

    def forward(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """Stitched posterior-mean estimate, shape and dtype of ``x`` (B, L, C)."""
        if x.ndim != 3 or x.shape[1] != self.length:
            raise DimensionError(f"{type(self).__name__} takes windows (B, {self.length}, C), "
                                 f"got {tuple(x.shape)}")
        for _ in range(self.passes):
            x = self._average(x, sigma)
        return x

    def _average(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        b, _, c = x.shape
        k = len(self.offsets)
        stretches = x[:, self.index].reshape(b * k, self.window, c)
        if isinstance(sigma, Tensor) and sigma.numel() > 1:
            sigma = sigma.reshape(b, 1).expand(b, k).reshape(-1)
        if self.symmetry.is_identity:
            out = self.inner(stretches, sigma)
        else:
            canonical, g = self._to_canonical(stretches)
            out = self._to_world(g, self.inner(canonical, sigma))
        residual = (out - stretches).reshape(b, k * self.window, c)
        return x.index_add(1, self.index.reshape(-1), residual, alpha=self.scale)

    def extra_repr(self) -> str:
        return (f"window={self.window}, length={self.length}, offsets={self.offsets}, "
                f"symmetry={self.symmetry!r}")


def stitched_model(model: Any, length: int, stride: int | None = None, passes: int = 1) -> Any:
    """A copy of a ``TrainedModel`` of W-step windows that denoises L-step windows by stitching
    (:class:`StitchedDenoiser`); same normaliser, symmetry, metadata and stored σ. Use it where
    a plan needs a longer window than the model was trained on (a finite horizon longer than
    W − T_ini)."""
    den = StitchedDenoiser(model.denoiser, model.window_length, int(length), stride=stride,
                           symmetry=model.symmetry, normalizer=model.normalizer,
                           passes=passes)
    return dataclasses.replace(model, denoiser=den, window_length=int(length),
                               metadata={**model.metadata, "stitched": {
                                   "window": model.window_length, "length": int(length),
                                   "offsets": den.offsets, "passes": den.passes}})

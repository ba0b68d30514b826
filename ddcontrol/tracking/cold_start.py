"""The cold start of a plan: the training windows that best fit its problem and measured past.

A plan with no warm start begins at candidate windows (normalised training windows of the
model's length): each is scored by the solve's own cost, plus
``PAST_MISMATCH_WEIGHT ·`` its squared mismatch with the measured block, and the ``num_starts``
best are the starts, with the measured entries written in. :class:`ColdStart` runs that search for
one problem or K at once (a score per candidate and problem); the scores come from
:func:`cost_scorer` (each problem's cost function, the single plan's rule) or, for K problems
whose frames act on every sample by an affine map, :func:`affine_scorer` (the same scores in
float64 from per-candidate moments: a few matrix products instead of K passes over the
candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._validation import as_finite_array
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.tracking.measured import PAST_MISMATCH_WEIGHT, past_mismatch, write_measured

if TYPE_CHECKING:
    from ddcontrol.tracking.tracker import DenoisingTracker

__all__ = ["ColdStart", "cost_scorer", "frame_maps", "affine_scorer"]

# Candidate windows scored per chunk (bounds the memory of a search).
_CHUNK = 4096

Scorer = Callable[[Tensor], Tensor]


class ColdStart:
    """The cold-start search over candidate windows.

    Parameters
    ----------
    candidates : ndarray (M, L, C), optional
        Normalised training windows of the plan window's shape ``shape``; None: no cold starts
        (every plan then needs a warm start).
    num_starts : int
        Starts per problem (the best-scored ones).
    shape : (L, C)
    dtype, device : where the candidates are kept.
    """

    def __init__(self, candidates: np.ndarray | None, num_starts: int, shape: tuple[int, int],
                 dtype: torch.dtype, device: Any) -> None:
        self.num_starts = num_starts
        self.candidates: Tensor | None = None
        if candidates is not None:
            cand = as_finite_array(candidates, "candidates", ndim=3)
            if cand.shape[1:] != tuple(shape):
                raise DimensionError(f"candidates must be (M, {shape[0]}, {shape[1]}) "
                                     f"normalised windows, got {cand.shape}")
            self.candidates = torch.as_tensor(cand, dtype=dtype, device=device)

    def require(self) -> Tensor:
        """The candidates; raises ``ConfigurationError`` where there are none."""
        if self.candidates is None:
            raise ConfigurationError("a cold start needs candidate windows (pass candidates= or "
                                     "build with from_model(..., dataset=...)) or initial_point=")
        return self.candidates

    def search(self, score: Scorer, measured: Tensor | None, num_starts: int | None = None
               ) -> Tensor:
        """The starts (K · S, L, C), problem-major: each problem's S best candidates under
        ``score`` (candidates (Mc, L, C) → scores (Mc, K)), their measured entries set to
        ``measured`` (K, T_ini + 1, C) (NaN: not measured)."""
        cand = self.require()
        with torch.no_grad():
            idx = self._best(cand, score, self.num_starts if num_starts is None else num_starts)
        x0 = cand[idx].clone()  # (K, S, L, C)
        if measured is not None:
            write_measured(x0, measured[:, None])
        return x0.reshape(-1, *x0.shape[2:])

    @staticmethod
    def _best(cand: Tensor, score: Scorer, num_starts: int) -> Tensor:
        """Indices (K, S) of the S best-scored candidates of each problem, chunk by chunk."""
        best_s = best_i = None
        for lo in range(0, len(cand), _CHUNK):
            s = score(cand[lo:lo + _CHUNK])  # (Mc, K)
            s, i = torch.topk(s, min(num_starts, len(s)), dim=0, largest=False)
            i = i + lo
            if best_s is not None:
                s, j = torch.topk(torch.cat([best_s, s]), min(num_starts, len(best_s) + len(s)),
                                  dim=0, largest=False)
                i = torch.gather(torch.cat([best_i, i]), 0, j)
            best_s, best_i = s, i
        return best_i.T


def cost_scorer(costs: Sequence[Scorer], measured: Tensor | None) -> Scorer:
    """Scores (Mc, K) of candidates: ``costs[k]`` (problem k's solve cost) plus
    ``PAST_MISMATCH_WEIGHT ·`` the squared mismatch with ``measured[k]`` (K, T_ini + 1, C)."""
    def score(xc: Tensor) -> Tensor:
        out = []
        for k, f in enumerate(costs):
            s = f(xc)
            if measured is not None:
                s = s + past_mismatch(xc, measured[k])
            out.append(s)
        return torch.stack(out, dim=1)

    return score


def frame_maps(tracker: DenoisingTracker, frames: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-problem affine maps ``w ↦ A w + b`` (physical units, per sample) of the symmetry's
    action, or None if the action is not of that form (then the search scores each problem
    with its own cost)."""
    c = tracker.m + tracker.p
    k = len(frames)
    if tracker.symmetry.is_identity:
        return np.tile(np.eye(c), (k, 1, 1)), np.zeros((k, c))
    probe = np.zeros((k, c + 1, c))
    probe[:, 1:] = np.eye(c)
    out = np.asarray(tracker.symmetry.act(frames, probe), dtype=float)
    b = out[:, 0]
    a = np.swapaxes(out[:, 1:] - b[:, None], 1, 2)  # a[:, :, j] = g · e_j − g · 0
    # Check on windows of data-like magnitude that the action is this map (and the same at
    # every time step).
    n = tracker.normalizer
    w = np.random.default_rng(0).normal(size=(k, 3, c)) * n.std + n.mean
    moved = np.asarray(tracker.symmetry.act(frames, w), dtype=float)
    scale = 1.0 + np.abs(moved).max()
    if not np.allclose(moved, np.einsum("kcd,ktd->ktc", a, w) + b[:, None], rtol=0.0,
                       atol=1e-9 * scale):
        return None
    return a, b


def affine_scorer(tracker: DenoisingTracker, maps: tuple[np.ndarray, np.ndarray],
                  refs: np.ndarray, measured: Tensor | None) -> Callable[[Tensor], Tensor]:
    """Scores (Mc, K) of candidate windows under :func:`cost_scorer`'s rule (the cost of the
    candidate moved into each problem's frame, plus the weighted past mismatch, plus the solve's
    own past penalty), float64, from per-candidate moments: the cost of an affine image of a
    window is a quadratic form of it, so K problems cost a few matrix products."""
    dev, f64 = tracker.candidates.device, torch.float64
    as64 = lambda a: torch.as_tensor(np.asarray(a), dtype=f64, device=dev)  # noqa: E731
    t, m = tracker.t_ini, tracker.m
    prob = tracker.problem
    sel = list(range(m)) + [m + ch for ch in prob.channels]
    q = len(prob.channels)
    weight = torch.zeros(m + q, m + q, dtype=f64, device=dev)
    weight[:m, :m], weight[m:, m:] = as64(prob.R_matrix), as64(prob.Q_matrix)
    a, b = as64(maps[0]), as64(maps[1])
    bk = a[:, sel]  # (K, m + q, C): the costed channels of g · w
    d = b[:, sel][:, None, :].repeat(1, prob.horizon, 1)  # (K, N, m + q)
    d[..., m:] -= as64(refs)
    kk = len(refs)
    gram = torch.einsum("ksc,st,ktd->kcd", bk, weight, bk).reshape(kk, -1).T  # (C², K)
    lin = torch.einsum("ksc,st,knt->knc", bk, weight, d).reshape(kk, -1).T  # (N·C, K)
    const = torch.einsum("kns,st,knt->k", d, weight, d)
    mean, std = as64(tracker.normalizer.mean), as64(tracker.normalizer.std)
    if measured is not None:
        # The cold start's mismatch weight, and the solve cost's own past term (the
        # conditioning's: none under clamping).
        coef = PAST_MISMATCH_WEIGHT + tracker.conditioner.past_weight
        known = (~torch.isnan(measured[0])).to(f64).reshape(-1)
        rows = measured.shape[1]
        target = (torch.nan_to_num(measured).to(f64).reshape(kk, -1) * known)
        target_sq = (target * target).sum(1)

    def score(xc: Tensor) -> Tensor:
        xc = xc.to(f64)
        fut = xc[:, t:] * std + mean  # (Mc, N, C) physical, canonical
        moments = torch.einsum("mnc,mnd->mcd", fut, fut).reshape(len(xc), -1)
        out = moments @ gram + 2.0 * fut.reshape(len(xc), -1) @ lin + const
        if measured is not None:
            xp = xc[:, :rows].reshape(len(xc), -1) * known
            out = out + coef * ((xp * xp).sum(1)[:, None] - 2.0 * xp @ target.T + target_sq)
        return out

    return score

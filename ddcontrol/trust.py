"""How far to trust a plan, from the model and its data alone (no simulator).

A plan is a normalised window ``x`` (B, L, m + p) whose future outputs are the model's prediction
y* for the planned inputs. On a real plant nothing tells whether y* is what the system will do;
:class:`TrustEstimator` measures, from the denoiser D, a sample of its training windows and the
plan only:

``sigma_shift``
    ‖[D(x, σ_p) − x]_{y, future}‖ / ‖y*‖ in physical units at a probe σ_p (0.2) above the
    planning σ: how far the model itself moves the predicted outputs once it may pull them
    towards where its data are (the disagreement of the prediction across σ). On the data it
    is of the order of the replay deviation (mass-spring-damper: 0.014 against 0.009).
``support``
    Nearest-neighbour distance of the whole window to a subsample of training windows, divided
    by the ``quantile`` (0.99) of the same distance for held-out windows (1 = as far as the
    farthest percent of real, unseen windows).
``local_support``
    The same ratio for snippets of ``snippet`` consecutive samples (u, y), maximised over the
    window: an output level, a speed or an input-output pairing the data never showed makes
    one snippet far from every training snippet, whatever the rest of the window does.
``residual``
    RMS of D(x, σ_r) − x over the window at σ_r = 0.02 (normalised units). Solvers end on the
    learned manifold, so it is small for most plans, in range or not (AUROC 0.59-0.92).
``sensitivity``
    ‖Δy*‖ / ‖y*‖ for a perturbation of the measured past of ``noise_std`` through D(·, σ_r);
    zero without a past block (not calibrated: the benchmark plans have T_ini = 0).
``reprediction``
    ‖y_re − y*‖ / ‖y*‖ where y_re is the model's own prediction for the plan's past and inputs
    (the plan's outputs are not used): a conditioned solve (``repredict_iterations``, 40,
    Gauss-Newton pulls at ``repredict_sigma`` with ``repredict_damping``, σ annealed from 0.3;
    the measured current output pinned with the past when the plan pinned it) from two starts,
    a neutral one (the data mean, or a hold of the last past output) and the outputs of the
    training window nearest to the plan's pinned coordinates; the smaller of the two
    disagreements counts. A solve that stalls short of the manifold (its fixed-point residual
    above twice the plan's, or 0.02) is no prediction and is left out; NaN when both stall
    (outputs far outside the data: 28 of the 120 mass-spring-damper plans, none on the
    nonlinear systems).

The estimated deviation is the larger of the reprediction and the σ-disagreement, in units of
the replay deviation::

    estimated = max(reprediction, sigma_shift) + sensitivity   (sigma_shift + sensitivity where
                                                                the reprediction is NaN)

and ``ood = estimated > threshold`` (0.1, the replay-side drift level: nothing fitted). The two
see different failures. The reprediction sees a plan whose outputs the cost pulled away from
what the model predicts for its inputs (the model's prediction was not pulled, and is what the
system does as far as the model knows). The σ-shift sees a plan where the model's own prediction
is unsure: the prediction for the same window moves once the model may pull at a larger σ,
while the reprediction, made at the planning σ, can agree with a plan that is wrong for both.
On ``benchmarks/bench_trust.py`` (120 plans per system, labels from replay) the unicycle's
in-range plans that drift with a reprediction of 0.001-0.002 have σ-shifts of 0.14-0.22 (its
good plans at most 0.055), and the coupled masses' one drifting plan (deviation 0.108) has a
reprediction of 0.053 and a σ-shift of 0.42. The maximum rather than the sum: on the double
pendulum the σ-shift alone ranks plans poorly (AUROC 0.80-0.85; good plans up to 0.15), and the
sum flagged 11 of its 97 good plans where the maximum flags 2. The support terms are measured
and reported but do not enter the estimate when the reprediction is computed: on the linear
systems the models extrapolate correctly, and the support excess flagged 20-26 % of their good
plans. (The estimate before this was the reprediction alone, from 20 pulls: the 40 pulls now
are where its solves stop moving; see the benchmark's docstring for both.) A plan refined at
its own σ (the tracker's finite-horizon refinement on every system but the unicycle) has the
model's own prediction for its outputs, so the reprediction agrees with it by construction and
only the σ-shift can flag a wrong one: on such plans of the double pendulum
(``bench_trust.py --refinement system``) three of five drifting plans went unflagged.

Without the reprediction (``repredict=False``, the tracker's receding-horizon steps) the
estimate is the cheaper::

    estimated = sigma_shift + sensitivity + excess_scale · max(0, max(support, local_support) − 1)

``repredict_floor`` (the held-out 99th percentile of the conditioned prediction's true error) is
still available as a property, for reference.

The reprediction costs a conditioned solve of twice the batch (both starts at once; about twice
the tracker's refinement);
``TrustEstimator(..., repredict_iterations=0)`` or ``estimator(plan, repredict=False)`` leaves it
out (the tracker does so in its receding-horizon steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._deprecation import renamed_keywords
from ddcontrol._validation import as_finite_array, check_positive_float, check_positive_int
from ddcontrol.errors import ConfigurationError, DDControlError, DimensionError
from ddcontrol.score.sigma import conditioned_prediction

__all__ = ["TrustReport", "TrustEstimator", "nearest_distance", "farthest_nearest",
           "NEAREST_TILE", "NEAREST_BLOCK", "DEFAULT_THRESHOLD",
           "ON_OOD_POLICIES", "OutOfDistributionError"]

DEFAULT_THRESHOLD = 0.1
"""Estimated deviation above which a plan is flagged (the replay-side drift level)."""

ON_OOD_POLICIES = ("warn", "hold", "fallback", "raise", "escalate")
"""What a closed-loop tracker does at a flagged step (see ``DenoisingTracker(on_ood=...)``)."""


class OutOfDistributionError(DDControlError, RuntimeError):
    """A plan was flagged out of the data's distribution under the policy ``on_ood="raise"``."""


@dataclass
class TrustReport:
    """Model-intrinsic confidence of a batch of plans (every field has shape (B,)).

    Attributes
    ----------
    estimated_deviation : ndarray
        Estimate of ‖y* − y_true‖ / ‖y_true‖ over the future block (dimensionless).
    ood : ndarray of bool
        ``estimated_deviation > threshold``.
    residual, sigma_shift, reprediction, support, local_support, sensitivity : ndarray
        The measurements it is built from (see the module docstring).
    threshold : float
    """

    estimated_deviation: np.ndarray
    ood: np.ndarray
    residual: np.ndarray
    sigma_shift: np.ndarray
    reprediction: np.ndarray
    support: np.ndarray
    local_support: np.ndarray
    sensitivity: np.ndarray
    threshold: float

    def item(self, i: int = 0) -> dict[str, Any]:
        """Plan ``i`` as a JSON-ready dict."""
        out: dict[str, Any] = {"threshold": self.threshold}
        for name in ("estimated_deviation", "residual", "sigma_shift", "reprediction",
                     "support", "local_support", "sensitivity"):
            out[name] = float(getattr(self, name)[i])
        out["ood"] = bool(self.ood[i])
        return out


NEAREST_TILE = 1 << 20
"""Distances (queries x pool points) :func:`nearest_distance` computes per matrix product with a
precomputed pool: 4 MB of float32, which stay in the cache for the minimum that follows. The
snippets of 64 plans of the mass-spring-damper against 20,000 training snippets (1,792 x 20,000
distances, 9 coordinates) took 285 ms in one product and 25-30 ms in blocks (2-core EPYC, one
thread); a single plan's 28 snippets 2.0 and 0.4 ms."""


def nearest_distance(queries: Tensor, pool: Tensor, chunk: int = 4096,
                     exclude_self: bool = False, pool_sq: Tensor | None = None) -> Tensor:
    """Euclidean distance from each query (Q, D) to its nearest point of ``pool`` (N, D); (Q,).

    ``exclude_self`` (queries = pool) ignores zero distances of a point to itself. With
    ``pool_sq`` (N,), the pool's squared norms computed once, the distances come from matrix
    products, ‖q‖² + ‖p‖² − 2 q·p (queries against a fixed pool, as for every plan), a block of
    queries at a time whose distances stay in the cache (:data:`NEAREST_TILE`).
    """
    if pool_sq is not None and not exclude_self:
        rows = max(1, NEAREST_TILE // max(pool.shape[0], 1))
        pool_t = pool.t()
        d2 = torch.cat([torch.addmm(pool_sq, queries[s:s + rows], pool_t, alpha=-2.0
                                    ).amin(dim=1) for s in range(0, max(queries.shape[0], 1), rows)])
        return (d2 + (queries * queries).sum(dim=1)).clamp_min(0.0).sqrt()
    best = torch.full((queries.shape[0],), torch.inf, dtype=queries.dtype,
                      device=queries.device)
    for start in range(0, pool.shape[0], chunk):
        d = torch.cdist(queries, pool[start:start + chunk])
        if exclude_self:
            rows = torch.arange(queries.shape[0], device=queries.device)
            cols = rows - start
            ok = (cols >= 0) & (cols < d.shape[1])
            d[rows[ok], cols[ok]] = torch.inf
        best = torch.minimum(best, d.min(dim=1).values)
    return best


NEAREST_BLOCK = 4096
"""Pool points per block of :func:`farthest_nearest` (the first block bounds every query)."""


def farthest_nearest(queries: Tensor, pool: Tensor, pool_sq: Tensor, seeds: int = 2,
                     block: int | None = None) -> Tensor:
    """For each group of queries (B, S, D), the largest distance of one of its queries to its
    nearest point of ``pool`` (N, D): max_s min_p ‖q_bs − p‖, (B,), the directed Hausdorff
    distance from the group to the pool. Exact: equal to :func:`nearest_distance` with
    ``pool_sq`` maximised over each group, to the round-off of the distances (their matrix
    products have other shapes), but most queries are settled by part of the pool.

    ``pool_sq`` (N,) are the pool's squared norms. The pool's rows should be in random order
    (its blocks of ``block`` rows are then random samples of it). The distances to the first
    block bound every query's nearest distance from above; the ``seeds`` queries of each group
    with the largest bounds are searched in the whole pool, and the largest of their exact
    distances bounds the group's answer from below; every other query is searched block by
    block only while its bound is above that: the queries of one plan's snippets are mostly
    near the data, so on 64 warm unicycle plans (2,752 snippets, 20,000 pool points, blocks of
    about 4,000) a quarter was left after the first block and a twelfth at the last, and the
    search took 16-17 ms against 35-51 ms for the full one (one thread).
    """
    b, s, d = queries.shape
    n = pool.shape[0]
    block = NEAREST_BLOCK if block is None else block
    flat = queries.reshape(-1, d)
    if n <= block or s <= seeds:
        return nearest_distance(flat, pool, pool_sq=pool_sq).reshape(b, s).amax(1)
    bound = nearest_distance(flat, pool[:block], pool_sq=pool_sq[:block]).reshape(b, s)
    top = bound.topk(seeds, dim=1).indices                               # (B, seeds)
    rows = torch.arange(b, device=queries.device)[:, None].expand(-1, seeds)
    low = nearest_distance(queries[rows, top].reshape(-1, d), pool, pool_sq=pool_sq
                           ).reshape(b, seeds).amax(1)
    bound[rows, top] = -torch.inf                                        # settled exactly
    live = (bound > low[:, None]).nonzero()
    group, q, ub = live[:, 0], queries[live[:, 0], live[:, 1]], bound[live[:, 0], live[:, 1]]
    for start in range(block, n, block):
        if group.numel() == 0:
            break
        ub = torch.minimum(ub, nearest_distance(q, pool[start:start + block],
                                                pool_sq=pool_sq[start:start + block]))
        keep = ub > low[group]
        group, q, ub = group[keep], q[keep], ub[keep]
    # Every query left has seen the whole pool: its bound is its exact nearest distance.
    return low.scatter_reduce(0, group, ub, reduce="amax")


def _snippets(x: Tensor, length: int) -> Tensor:
    """(B, L, C) windows -> (B, L - length + 1, length * C) overlapping snippets."""
    return x.unfold(1, length, 1).transpose(-1, -2).reshape(x.shape[0], -1, length * x.shape[2])


class TrustEstimator:
    """Confidence of plans from a denoiser, a sample of its data and the plan (no simulator).

    Parameters
    ----------
    denoiser : callable
        ``D(x, σ)`` on normalised windows (B, L, m + p).
    windows : ndarray or Tensor, shape (N, L, m + p)
        Training windows, normalised units (the support of the data).
    input_dim : int
        m; channels ``[:m]`` are inputs, ``[m:]`` outputs.
    held_out : ndarray or Tensor, shape (H, L, m + p), optional
        Windows the pool does not contain (other trajectories), to measure the typical
        nearest-neighbour distance of real behaviour. Default: the last ``held_out_fraction``
        of ``windows`` (windows are trajectory-major, so those are other trajectories).
    t_ini : int
        T_ini: rows ``[:T_ini]`` are the measured past, rows ``[T_ini:]`` the plan
        (``past_length=`` is its deprecated name; the attribute keeps both names).
    mean, std : array (m + p,), optional
        The model's normalisation (physical = normalised · std + mean); identity if omitted.
    residual_sigma : float
        σ_r of the residual and of the sensitivity (normalised units).
    probe_sigma : float
        σ_p of ``sigma_shift``.
    repredict_sigma, repredict_iterations : float, int
        σ (the planning σ is a good choice) and Gauss-Newton pulls of ``reprediction``
        (0 iterations: not computed, zeros).
    repredict_damping : float
        Tikhonov damping of the reprediction's least-squares pulls; the planning damping is a
        good choice (:meth:`DenoisingTracker.from_model` passes it). With a measured past a
        damping larger than the plan's leaves the past's weakly observable directions unfitted
        in 20 pulls: on ``bench_conditioned_prediction.py``'s 32 finite-horizon plans of the
        mass-spring-damper (T_ini = 5, σ 0.3, every one good: deviation at most 0.036) 0.05
        flagged 3 (13 with the current output left free), the system's 0.01 none.
    repredict_quantile : float
        Quantile of the held-out conditioned-prediction errors that sets ``repredict_floor``.
    snippet : int
        Samples per snippet of ``local_support``.
    noise_std : float
        Perturbation of the past for ``sensitivity`` (normalised units).
    quantile : float
        Quantile of the held-out nearest-neighbour distances that defines support ratio 1.
    excess_scale : float
        Estimated deviation per unit of support ratio beyond 1.
    threshold : float
        ``ood`` fires above this estimated deviation.
    held_out_fraction : float
        Share of ``windows`` held out when ``held_out`` is not given.
    max_windows, max_snippets, max_held_out : int
        Sizes of the (seeded, uniform) subsamples that bound memory and time.
    seed : int
    """

    @renamed_keywords(past_length="t_ini")
    def __init__(self, denoiser: Any, windows: Any, *, input_dim: int,
                 held_out: Any = None, t_ini: int = 0,
                 mean: Any = None, std: Any = None, residual_sigma: float = 0.02,
                 probe_sigma: float = 0.2, repredict_sigma: float = 0.05,
                 repredict_iterations: int = 40, repredict_damping: float = 0.05,
                 repredict_quantile: float = 0.99,
                 snippet: int = 3, noise_std: float = 0.01,
                 quantile: float = 0.99, excess_scale: float = 0.2,
                 threshold: float = DEFAULT_THRESHOLD, held_out_fraction: float = 0.1,
                 max_windows: int = 4096, max_snippets: int = 20000, max_held_out: int = 512,
                 seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as D(x, sigma)")
        self.denoiser = denoiser
        self.device, self.dtype = torch.device(device), dtype
        w = self._as_windows(windows, "windows")
        n, length, channels = w.shape
        self.window_length, self.channels = length, channels
        self.m = check_positive_int(input_dim, "input_dim")
        if self.m >= channels:
            raise DimensionError(f"input_dim {self.m} leaves no output channel of {channels}")
        self.past_length = check_positive_int(t_ini, "t_ini", allow_zero=True)
        if self.past_length >= length:
            raise DimensionError(f"t_ini {self.past_length} leaves no future in windows "
                                 f"of {length} steps")
        self.residual_sigma = check_positive_float(residual_sigma, "residual_sigma")
        self.probe_sigma = check_positive_float(probe_sigma, "probe_sigma")
        self.repredict_sigma = check_positive_float(repredict_sigma, "repredict_sigma")
        self.repredict_iterations = check_positive_int(repredict_iterations,
                                                       "repredict_iterations", allow_zero=True)
        self.repredict_damping = check_positive_float(repredict_damping, "repredict_damping")
        if not 0.0 < repredict_quantile <= 1.0:
            raise ConfigurationError(f"repredict_quantile must be in (0, 1], got "
                                     f"{repredict_quantile}")
        self.repredict_quantile = float(repredict_quantile)
        self._floor: float | None = None
        self.snippet = check_positive_int(snippet, "snippet")
        if self.snippet > length:
            raise ConfigurationError(f"snippet {self.snippet} is longer than the windows")
        self.noise_std = check_positive_float(noise_std, "noise_std")
        self.excess_scale = check_positive_float(excess_scale, "excess_scale", allow_zero=True)
        self.threshold = check_positive_float(threshold, "threshold")
        if not 0.0 < quantile <= 1.0:
            raise ConfigurationError(f"quantile must be in (0, 1], got {quantile}")
        self.scale_mean = self._channel_vector(mean, 0.0, "mean")
        self.scale_std = self._channel_vector(std, 1.0, "std")
        gen = np.random.default_rng(seed)
        if held_out is None:
            if not 0.0 < held_out_fraction < 1.0:
                raise ConfigurationError("held_out_fraction must be in (0, 1)")
            k = max(1, int(round(held_out_fraction * n)))
            if n - k < 1:
                raise DimensionError("need at least 2 windows to hold some out")
            w, h = w[: n - k], w[n - k:]
        else:
            h = self._as_windows(held_out, "held_out")
            if h.shape[1:] != (length, channels):
                raise DimensionError(f"held_out must be (H, {length}, {channels}), got "
                                     f"{tuple(h.shape)}")
        w = self._subsample(w, max_windows, gen)
        h = self._subsample(h, max_held_out, gen)
        # The reprediction floor is measured (lazily) on 128 of them, spread over the set.
        self._floor_windows = h[:: max(1, h.shape[0] // 128)][:128]
        self.pool = w.reshape(w.shape[0], -1)
        snip = _snippets(w, self.snippet).reshape(-1, self.snippet * channels)
        # In random order: farthest_nearest searches it in blocks that are random samples.
        snip = self._subsample(snip, max_snippets, gen)
        order = torch.as_tensor(gen.permutation(snip.shape[0]), device=snip.device)
        self.snippet_pool = snip[order]
        self._pool_sq = (self.pool * self.pool).sum(dim=1)
        self._snippet_sq = (self.snippet_pool * self.snippet_pool).sum(dim=1)
        self._noise: Tensor | None = None  # the sensitivity's fixed perturbation of the past
        with torch.no_grad():
            d_win = nearest_distance(h.reshape(h.shape[0], -1), self.pool)
            hs = _snippets(h, self.snippet)
            d_snip = nearest_distance(hs.reshape(-1, hs.shape[-1]), self.snippet_pool)
            d_snip = d_snip.reshape(hs.shape[0], hs.shape[1]).max(dim=1).values
        self.window_scale = max(float(torch.quantile(d_win, quantile)), 1e-12)
        self.snippet_scale = max(float(torch.quantile(d_snip, quantile)), 1e-12)

    # -- construction helpers -------------------------------------------------------------------
    def _as_windows(self, value: Any, name: str) -> Tensor:
        if isinstance(value, Tensor):
            arr = value.detach().to(device=self.device, dtype=self.dtype)
            if arr.ndim != 3 or arr.shape[0] == 0:
                raise DimensionError(f"{name} must have shape (N, L, C), got {tuple(arr.shape)}")
            if not bool(torch.isfinite(arr).all()):
                raise DimensionError(f"{name} contains NaN or inf")
            return arr
        arr = as_finite_array(value, name, ndim=3)
        if arr.shape[0] == 0:
            raise DimensionError(f"{name} is empty")
        return torch.as_tensor(arr, dtype=self.dtype, device=self.device)

    def _channel_vector(self, value: Any, default: float, name: str) -> Tensor:
        if value is None:
            return torch.full((self.channels,), default, dtype=self.dtype, device=self.device)
        arr = as_finite_array(value, name, ndim=1)
        if arr.shape != (self.channels,):
            raise DimensionError(f"{name} must have shape ({self.channels},), got {arr.shape}")
        return torch.as_tensor(arr, dtype=self.dtype, device=self.device)

    @staticmethod
    def _subsample(x: Tensor, k: int, gen: np.random.Generator) -> Tensor:
        if x.shape[0] <= k:
            return x
        idx = np.sort(gen.choice(x.shape[0], size=k, replace=False))
        return x[torch.as_tensor(idx, device=x.device)]

    @property
    def t_ini(self) -> int:
        """T_ini, the measured past rows of a plan window (``past_length``)."""
        return self.past_length

    @classmethod
    @renamed_keywords(past_length="t_ini")
    def from_model(cls, model: Any, dataset: Any, *, t_ini: int = 0,
                   **kwargs: Any) -> TrustEstimator:
        """From a ``TrainedModel`` and the dataset it was trained on (``t_ini``: T_ini;
        ``past_length=`` is its deprecated name).

        The held-out windows are the trajectories training held out (same split, same seed),
        the pool the others; the physical scale is the model's normaliser.
        """
        cfg = getattr(model, "config", {}) or {}
        frac, seed = float(cfg.get("val_fraction", 0.1)), int(cfg.get("seed", 0))
        length = model.window_length
        if hasattr(model, "model_windows"):  # the model's frame (canonical with a symmetry)
            as_model = model.model_windows
        else:
            def as_model(ds: Any, stride: int) -> np.ndarray:
                return model.normalizer.normalize(ds.windows(length, stride))
        if 0.0 < frac < 1.0 and dataset.num_trajectories >= 2:
            train_ds, val_ds = dataset.split(1.0 - frac, seed=seed)
            windows, held = as_model(train_ds, 1), as_model(val_ds, 1)
        else:
            windows, held = as_model(dataset, 1), None
        # The model's device: of its first parameter, or buffer (closed forms have only those).
        tensors = (list(model.denoiser.parameters()) + list(model.denoiser.buffers())
                   if hasattr(model.denoiser, "parameters") else [])
        device = tensors[0].device if tensors else "cpu"
        kwargs.setdefault("device", device)
        return cls(model.denoiser, windows, input_dim=model.input_dim, held_out=held,
                   t_ini=t_ini, mean=model.normalizer.mean,
                   std=model.normalizer.std, **kwargs)

    # -- measurement ----------------------------------------------------------------------------
    def _relative_outputs(self, delta: Tensor, x: Tensor) -> Tensor:
        """‖delta_y,future‖ / ‖y_future‖ in physical units, (B,)."""
        t, m = self.past_length, self.m
        std, mean = self.scale_std[m:], self.scale_mean[m:]
        dy = delta[:, t:, m:] * std
        y = x[:, t:, m:] * std + mean
        num = dy.flatten(1).norm(dim=1)
        return num / y.flatten(1).norm(dim=1).clamp_min(1e-12)

    def _nearest_outputs(self, x: Tensor) -> Tensor:
        """``x`` with its future outputs replaced by those of the training window (of the pool)
        nearest to it on the pinned coordinates (the past and the future inputs)."""
        t, m, b = self.past_length, self.m, x.shape[0]
        pinned = torch.zeros(self.window_length, self.channels, dtype=torch.bool,
                             device=x.device)
        pinned[:t] = True
        pinned[t:, :m] = True
        flat = pinned.flatten()
        pool = self.pool[:, flat]
        q = x.reshape(b, -1)[:, flat]
        d2 = torch.addmm((pool * pool).sum(dim=1), q, pool.t(), alpha=-2.0)
        near = self.pool[d2.argmin(dim=1)].reshape(b, self.window_length, self.channels)
        start = x.clone()
        start[:, t:, m:] = near[:, t:, m:]
        return start

    def _reprediction(self, x: Tensor, current_output: bool = False) -> Tensor:
        """The smaller of the two relative disagreements of ``x``'s outputs with the model's
        conditioned prediction from a neutral start and from the nearest training window
        (``current_output``: row T_ini's outputs are measured and pinned too)."""
        from ddcontrol.manifold import BehaviorManifold
        from ddcontrol.solvers import Problem
        from ddcontrol.solvers.conditioned import ConditionedDRGD

        t, m, b = self.past_length, self.m, x.shape[0]
        neutral = x.clone()
        neutral[:, t:, m:] = x[:, t - 1: t, m:] if t else 0.0
        mask = torch.zeros(self.window_length, self.channels, dtype=torch.bool,
                           device=x.device)
        mask[:t] = True
        mask[t:, :m] = True
        if current_output:
            mask[t, m:] = True
        both = torch.cat([x, x])
        iterations = self.repredict_iterations
        start_sigma = max(0.3, self.repredict_sigma)
        anneal = ({"sigma_start": start_sigma, "anneal_iterations": iterations // 2}
                  if start_sigma > self.repredict_sigma else {})
        zero = lambda z: torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)  # noqa: E731
        solver = ConditionedDRGD(mask, both, step_size=1.0, damping=self.repredict_damping,
                                 max_iterations=iterations, min_gradient_norm=0.0,
                                 record_history=False, jacobian_every=4, **anneal)
        problem = Problem(BehaviorManifold(self.denoiser, self.repredict_sigma), zero,
                          torch.zeros_like)
        again = solver.run(problem, initial_point=torch.cat([neutral, self._nearest_outputs(x)])
                           ).point
        again[:, mask] = both[:, mask]
        rel = self._relative_outputs(again - both, both)
        # A solve that stalled short of the manifold (outputs far outside the data, where the
        # learned pull is weak) is no prediction of the model: its fixed-point residual is
        # compared with the plan's own.
        res_again = self._relative_outputs(self.denoiser(again, self.repredict_sigma) - again,
                                           both)
        res_plan = self._relative_outputs(self.denoiser(x, self.repredict_sigma) - x, x)
        valid = res_again <= torch.clamp(2.0 * res_plan.repeat(2), min=0.02)
        rel = torch.where(valid, rel, torch.full_like(rel, torch.inf))
        return torch.minimum(rel[:b], rel[b:])

    @property
    def repredict_floor(self) -> float:
        """The ``repredict_quantile`` of the true error of the conditioned prediction on
        held-out windows (dimensionless); measured on first use."""
        if self._floor is None:
            h = self._floor_windows
            again = conditioned_prediction(self.denoiser, h, self.repredict_sigma,
                                           input_dim=self.m, t_ini=self.past_length,
                                           iterations=max(self.repredict_iterations, 1))
            err = self._relative_outputs(again - h, h)
            self._floor = float(torch.quantile(torch.nan_to_num(err, nan=torch.inf).clamp_max(
                1e6), self.repredict_quantile))
        return self._floor

    @torch.no_grad()
    def __call__(self, plan: Any, repredict: bool | None = None,
                 current_output: bool = False) -> TrustReport:
        """Measure plans ``plan`` (B, L, m + p) or (L, m + p), normalised units.

        ``repredict`` False skips the reprediction (cheaper; its term is then 0); default:
        computed when ``repredict_iterations`` > 0. ``current_output``: the outputs of row
        T_ini (the first future sample) were measured, as the tracker's plans pin them when
        given ``current_y``; the reprediction pins them too.
        """
        if isinstance(plan, np.ndarray):
            plan = torch.as_tensor(as_finite_array(plan, "plan"))
        if not isinstance(plan, Tensor):
            raise TypeError(f"plan must be an ndarray or Tensor, got {type(plan).__name__}")
        x = plan.detach().to(device=self.device, dtype=self.dtype)
        x = x[None] if x.ndim == 2 else x
        if x.ndim != 3 or x.shape[1:] != (self.window_length, self.channels):
            raise DimensionError(f"plan must be (B, {self.window_length}, {self.channels}), "
                                 f"got {tuple(plan.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise DimensionError("plan contains NaN or inf")
        b = x.shape[0]
        shift = self._relative_outputs(self.denoiser(x, self.probe_sigma) - x, x)
        if self.past_length:
            # One fixed perturbation of the past for every plan, so that a plan's estimate does
            # not depend on the batch it is rated in.
            if self._noise is None:
                gen = torch.Generator(device="cpu").manual_seed(0)
                shape = (1, self.past_length, self.channels)
                self._noise = (self.noise_std * torch.randn(shape, generator=gen)).to(
                    self.device, self.dtype)
            xp = x.clone()
            xp[:, : self.past_length] += self._noise
            # The plan and its perturbed copy through one call of the denoiser.
            d_small, d_pert = self.denoiser(torch.cat([x, xp]), self.residual_sigma).split(b)
            sens = self._relative_outputs(d_pert - d_small, x)
        else:
            d_small = self.denoiser(x, self.residual_sigma)
            sens = torch.zeros(b, dtype=x.dtype, device=x.device)
        residual = (d_small - x).flatten(1).norm(dim=1) / np.sqrt(x[0].numel())
        if repredict is None:
            repredict = self.repredict_iterations > 0
        repredicted = bool(repredict and self.repredict_iterations)
        if repredicted:
            again = self._reprediction(x, current_output=bool(current_output))
        else:
            again = torch.zeros(b, dtype=x.dtype, device=x.device)
        support = nearest_distance(x.reshape(b, -1), self.pool,
                                   pool_sq=self._pool_sq) / self.window_scale
        snip = _snippets(x, self.snippet)
        local = farthest_nearest(snip, self.snippet_pool, self._snippet_sq) / self.snippet_scale
        excess = torch.clamp(torch.maximum(support, local) - 1.0, min=0.0)
        if repredicted:
            # The model's own prediction for the plan's inputs, against the plan's outputs, or the
            # model's doubt about its prediction (the σ-disagreement), whichever is larger (see
            # the module docstring); where neither solve reached the manifold, the σ-disagreement
            # alone (no support term: far outside the data is where a linear system's model
            # still extrapolates right).
            ok = torch.isfinite(again)
            estimate = torch.where(ok, torch.maximum(again, shift), shift) + sens
            again = torch.where(ok, again, torch.full_like(again, float("nan")))
        else:
            estimate = shift + sens + self.excess_scale * excess
        as_np = lambda t: t.double().cpu().numpy()  # noqa: E731
        est = as_np(estimate)
        return TrustReport(estimated_deviation=est, ood=est > self.threshold,
                           residual=as_np(residual), sigma_shift=as_np(shift),
                           reprediction=as_np(again),
                           support=as_np(support), local_support=as_np(local),
                           sensitivity=as_np(sens), threshold=self.threshold)

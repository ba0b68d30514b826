"""Many plans at once: K tracking problems of one tracker solved in one batched solver run.

A :class:`~ddcontrol.tracking.tracker.DenoisingTracker` solves one problem per
:meth:`~ddcontrol.tracking.tracker.DenoisingTracker.plan`; the solvers are batched over the leading
dimension of the point, so K problems (K measured pasts, K references and start steps, K frames of
a symmetry) can share every denoiser evaluation. :func:`plan_batch` does that: the same cold-start
rule, cost, conditioning, solver, refinement and trust measures as K single plans, in one solver
run over a (K · num_starts, L, C) point. The plans equal the single ones up to floating-point
round-off (``tests/test_batch.py``); what the problems share is the tracker: model, horizon,
weights, bounds and solver settings. Only the references differ.

Costs: :class:`BatchWindowCost` is :class:`~ddcontrol.tracking.window_cost.WindowCost` with one
reference window per batch row, and a symmetry's per-row frames go through
:class:`~ddcontrol.tracking.window_cost.FramedWindowCost` (whose frames may be (B, k)): the single
cost's code, with batched data. The cold-start search scores every candidate window against every
problem; for symmetries that act on each sample by an affine map (the identity, planar moves) this
is a few matrix products in float64 instead of K passes over the candidates.

Limits: ``conditioning="clamp"`` with a measured past is not batched (its box bounds would differ
per problem, and the solvers share one box); ``"pin"`` and ``"penalty"`` are. The trust estimate's
past-sensitivity probe draws its noise for the whole batch at once, so a plan's
``estimated_deviation`` can differ slightly from the one of the same plan made alone (the other
measures are per plan and equal).

``benchmarks/bench_batch_plans.py`` measures the throughput against sequential plans.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._validation import as_finite_array, check_positive_int
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.manifold import BehaviorManifold
from ddcontrol.solvers import Problem, SolverResult
from ddcontrol.solvers.conditioned import ConditionedDRGD
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference
from ddcontrol.tracking.tracker import conditioned_cost
from ddcontrol.tracking.window_cost import FramedWindowCost, WindowCost

if TYPE_CHECKING:
    from ddcontrol.data.normalize import Normalizer
    from ddcontrol.tracking.tracker import DenoisingTracker, PlanResult

__all__ = ["BatchPlanResult", "BatchWindowCost", "batch_problems", "plan_batch"]

# Candidate windows scored per chunk in the cold-start search (bounds its float64 memory).
_CHUNK = 4096


class BatchWindowCost(WindowCost):
    """:class:`WindowCost` of B problems at once: row ``b`` of ``x`` against ``references[b]``.

    Parameters
    ----------
    problem : TrackingProblem
        Weights, channels and horizon (its own reference is not used).
    normalizer : Normalizer
    past_length : int
        T_ini.
    references : ndarray (B, N_h, q)
        The reference window of each row, physical units (B = 1 broadcasts over any batch).
    dtype, device : torch dtype and device.
    """

    def __init__(self, problem: TrackingProblem, normalizer: Normalizer, past_length: int,
                 references: np.ndarray, dtype: torch.dtype, device: Any) -> None:
        super().__init__(problem, normalizer, past_length, 0, dtype, device)
        self.start = None
        self.set_references(references)

    def set_references(self, references: np.ndarray) -> None:
        """The per-row reference windows (B, N_h, q), physical units."""
        ref = as_finite_array(references, "references", ndim=3)
        want = (self.problem.horizon, len(self.problem.channels))
        if ref.shape[1:] != want:
            raise DimensionError(f"references must be (B, {want[0]}, {want[1]}), got {ref.shape}")
        self.ref = torch.as_tensor(ref, dtype=self.mean.dtype, device=self.mean.device)

    @property
    def batch_size(self) -> int:
        return self.ref.shape[0]

    def _future(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.batch_size != 1 and x.shape[0] != self.batch_size:
            raise DimensionError(f"the cost holds {self.batch_size} references, got "
                                 f"{x.shape[0]} windows")
        return super()._future(x)


@dataclass
class BatchPlanResult:
    """K plans for the horizon ahead (the fields of :class:`PlanResult`, stacked).

    Attributes
    ----------
    inputs : ndarray (K, N_h, m)
        Planned inputs, physical units, inside the input bounds.
    predicted_outputs : ndarray (K, N_h, p)
    predicted_cost : ndarray (K,)
        Tracking cost of each plan against its own reference.
    initial_cost : ndarray (K,)
        Cost of each plan's initial point (the start it was kept from).
    windows : ndarray (K, L, m + p)
        Optimised windows, normalised units, canonical frame (``frames`` maps them to the world).
    frames : ndarray (K, k)
        The symmetry's group element of each plan (k = 0 without a symmetry).
    starts : ndarray (K,) of int
        Reference step of each plan's first future sample.
    iterations : int
        Iterations of the batched solver run.
    solve_time_s : float
        Wall time of the whole batch (cold-start search, solve, refinement, trust).
    manifold_distance : ndarray (K,)
    solver_result : SolverResult
        The batched run; its rows are problem-major (K · num_starts).
    estimated_deviation, ood : ndarray (K,) or None
        The trust estimate and its flag (None without a trust estimator).
    trust : list of dict or None
        Every measurement behind each estimate.
    """

    inputs: np.ndarray
    predicted_outputs: np.ndarray
    predicted_cost: np.ndarray
    initial_cost: np.ndarray
    windows: np.ndarray
    frames: np.ndarray
    starts: np.ndarray
    iterations: int
    solve_time_s: float
    manifold_distance: np.ndarray
    solver_result: SolverResult = field(repr=False)
    estimated_deviation: np.ndarray | None = None
    ood: np.ndarray | None = None
    trust: list[dict[str, Any]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.inputs)

    def plan(self, k: int) -> PlanResult:
        """Problem ``k`` as a :class:`PlanResult` (its ``solver_result`` is the batched run and
        its ``solve_time_s`` the batch's wall time)."""
        from ddcontrol.tracking.tracker import PlanResult

        if not -len(self) <= k < len(self):
            raise IndexError(f"plan {k} of a batch of {len(self)}")
        return PlanResult(inputs=self.inputs[k], predicted_outputs=self.predicted_outputs[k],
                          predicted_cost=float(self.predicted_cost[k]),
                          initial_cost=float(self.initial_cost[k]), window=self.windows[k],
                          iterations=self.iterations, solve_time_s=self.solve_time_s,
                          manifold_distance=float(self.manifold_distance[k]),
                          solver_result=self.solver_result, frame=self.frames[k],
                          estimated_deviation=None if self.estimated_deviation is None
                          else float(self.estimated_deviation[k]),
                          ood=None if self.ood is None else bool(self.ood[k]),
                          trust=None if self.trust is None else self.trust[k])

    def plans(self) -> list[PlanResult]:
        """Every problem's :class:`PlanResult`."""
        return [self.plan(k) for k in range(len(self))]


# -- the K problems --------------------------------------------------------------------------------
def batch_problems(tracker: DenoisingTracker, references: Sequence[Any]) -> list[TrackingProblem]:
    """The tracker's problem with each reference in ``references`` (a :class:`Reference`, an
    array of targets, a callable, or a :class:`TrackingProblem` that differs from the tracker's
    in its reference only). Build them once to plan the same problems repeatedly."""
    if isinstance(references, (str, bytes)) or not isinstance(references, Sequence):
        raise TypeError("references must be a sequence (one per problem)")
    base = tracker.problem
    out = []
    for i, ref in enumerate(references):
        if isinstance(ref, TrackingProblem):
            _check_compatible(base, ref, i)
            out.append(ref)
        elif isinstance(ref, (Reference, np.ndarray, list, tuple)) or callable(ref):
            out.append(dataclasses.replace(base, reference=ref))
        else:
            raise TypeError(f"references[{i}] must be a Reference, an array, a callable or a "
                            f"TrackingProblem, got {type(ref).__name__}")
    return out


def _check_compatible(base: TrackingProblem, other: TrackingProblem, i: int) -> None:
    same = (other.horizon == base.horizon and other.input_dim == base.input_dim
            and other.output_dim == base.output_dim and list(other.channels) == base.channels
            and np.array_equal(other.Q_matrix, base.Q_matrix)
            and np.array_equal(other.R_matrix, base.R_matrix))
    for name in ("input_low", "input_high"):
        a, b = getattr(base, name), getattr(other, name)
        same = same and ((a is None and b is None) or (a is not None and b is not None
                                                       and np.array_equal(a, b)))
    if not same:
        raise ConfigurationError(f"references[{i}]: the plans of one batch share the tracker's "
                                 "horizon, channels, weights and bounds; only the reference "
                                 "may differ")


def _batch_size(values: dict[str, Any]) -> int:
    sizes = {name: len(v) for name, v in values.items() if v is not None}
    if not sizes:
        raise ConfigurationError("cannot tell the number of problems: pass a batched past, "
                                 "current_y, references, start, initial_point or frame")
    if len(set(sizes.values())) != 1:
        raise DimensionError(f"the problems disagree on their number: {sizes}")
    k = next(iter(sizes.values()))
    if k == 0:
        raise DimensionError("a batch needs at least one problem")
    return k


def _blocks(tracker: DenoisingTracker, past_u: Any, past_y: Any, current_y: Any, k: int
            ) -> np.ndarray | None:
    """The measured pasts as physical (K, T_ini + 1, C) blocks, NaN where not measured."""
    t, m, p = tracker.past_length, tracker.m, tracker.p
    if t == 0 and current_y is None:
        return None
    block = np.full((k, t + 1, m + p), np.nan)
    if t:
        if past_u is None or past_y is None:
            raise DimensionError(f"past_u ({k}, {t}, {m}) and past_y ({k}, {t}, {p}) are "
                                 f"required with T_ini = {t}")
        pu = as_finite_array(past_u, "past_u", ndim=3)
        py = as_finite_array(past_y, "past_y", ndim=3)
        if pu.shape != (k, t, m) or py.shape != (k, t, p):
            raise DimensionError(f"past_u must be ({k}, {t}, {m}) and past_y ({k}, {t}, {p}), "
                                 f"got {pu.shape} and {py.shape}")
        block[:, :t, :m], block[:, :t, m:] = pu, py
    if current_y is not None:
        cy = as_finite_array(current_y, "current_y", ndim=2)
        if cy.shape != (k, p):
            raise DimensionError(f"current_y must be ({k}, {p}), got {cy.shape}")
        block[:, t, m:] = cy
    return block


def _check_blocks(tracker: DenoisingTracker, blocks: Any) -> np.ndarray:
    shape = (tracker.past_length + 1, tracker.m + tracker.p)
    arr = np.asarray(blocks, dtype=float)
    if arr.ndim != 3 or arr.shape[1:] != shape:
        raise DimensionError(f"blocks must be (K, {shape[0]}, {shape[1]}), got {arr.shape}")
    known = ~np.isnan(arr)
    if np.any(np.isinf(arr)):
        raise DimensionError("blocks contain inf (NaN marks what is not measured)")
    if not np.all(known == known[:1]):
        raise DimensionError("the problems of a batch must measure the same entries (their "
                             "blocks must be NaN at the same places)")
    return arr


def _normalise(tracker: DenoisingTracker, block: np.ndarray | None, frames: np.ndarray
               ) -> tuple[Tensor | None, np.ndarray]:
    """Measured blocks into the model's frame and units (normalised (K, T_ini + 1, C)), and the
    frames (K, k_g): each read off its problem's first measured sample where that fixes one, as
    ``DenoisingTracker`` does for one plan."""
    if block is None:
        return None, frames
    sym = tracker.symmetry
    if not sym.is_identity:
        g = np.asarray(sym.frame_of_sample(block[:, 0]), dtype=float)
        frames = np.where(np.all(np.isfinite(g), axis=-1, keepdims=True), g, frames)
        block = sym.inverse_act(frames, block)
    mean, std = tracker.normalizer.mean, tracker.normalizer.std
    return torch.as_tensor((block - mean) / std, dtype=tracker.dtype,
                           device=tracker.device), frames


# -- the cold start ---------------------------------------------------------------------------------
def _frame_maps(tracker: DenoisingTracker, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray
                                                                        ] | None:
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


def _affine_scorer(tracker: DenoisingTracker, maps: tuple[np.ndarray, np.ndarray],
                   refs: np.ndarray, measured: Tensor | None) -> Callable[[Tensor], Tensor]:
    """Scores (Mc, K) of candidate windows under the single cold start's rule (the cost of the
    candidate moved into each problem's frame, plus 1e3 · its past mismatch, plus the solve's
    own past penalty), float64, from per-candidate moments: the cost of an affine image of a
    window is a quadratic form of it, so K problems cost a few matrix products."""
    dev, f64 = tracker.candidates.device, torch.float64
    as64 = lambda a: torch.as_tensor(np.asarray(a), dtype=f64, device=dev)  # noqa: E731
    t, m = tracker.past_length, tracker.m
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
        # The cold start's 1e3 · mismatch, and the solve cost's penalty term (which a single
        # plan's score includes, except under clamping).
        coef = 1e3 + (tracker.penalty_weight if tracker.conditioning != "clamp" else 0.0)
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


def _each_scorer(tracker: DenoisingTracker, refs: np.ndarray, frames: np.ndarray,
                 measured: Tensor | None) -> Callable[[Tensor], Tensor]:
    """The same scores, problem by problem with each problem's own cost and the single cold
    start's code (for symmetries whose action is not affine per sample)."""
    fns = []
    for k in range(len(refs)):
        cost = _cost(tracker, refs[k:k + 1], frames[k:k + 1])
        fns.append(_cost_fns(tracker, cost, None if measured is None else measured[k:k + 1])[0])

    def score(xc: Tensor) -> Tensor:
        out = []
        for k, f in enumerate(fns):
            s = f(xc)
            if measured is not None:
                known = ~torch.isnan(measured[k])
                dd = (xc[:, : measured.shape[1]] - torch.nan_to_num(measured[k])) * known
                s = s + 1e3 * (dd * dd).sum(dim=(-1, -2))
            out.append(s)
        return torch.stack(out, dim=1)

    return score


def _best_candidates(tracker: DenoisingTracker, score: Callable[[Tensor], Tensor],
                     num_starts: int) -> Tensor:
    """Indices (K, S) of the S best-scored candidates of each problem."""
    cand = tracker.candidates
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


def _cold_start(tracker: DenoisingTracker, refs: np.ndarray, frames: np.ndarray,
                measured: Tensor | None, num_starts: int) -> Tensor:
    """(K · S, L, C) starts: each problem's S best candidates, measured values written in."""
    if tracker.candidates is None:
        raise ConfigurationError("a cold start needs candidate windows (pass candidates= or "
                                 "build with from_model(..., dataset=...)) or initial_point=")
    maps = _frame_maps(tracker, frames)
    with torch.no_grad():
        score = (_each_scorer(tracker, refs, frames, measured) if maps is None
                 else _affine_scorer(tracker, maps, refs, measured))
        idx = _best_candidates(tracker, score, num_starts)
    x0 = tracker.candidates[idx].clone()  # (K, S, L, C)
    if measured is not None:
        rows = measured.shape[1]
        known = ~torch.isnan(measured[:, None])
        x0[:, :, :rows] = torch.where(known, measured[:, None], x0[:, :, :rows])
    return x0.reshape(-1, *x0.shape[2:])


# -- cost and solver ---------------------------------------------------------------------------------
def _cost(tracker: DenoisingTracker, refs: np.ndarray, frames: np.ndarray
          ) -> BatchWindowCost | FramedWindowCost:
    cost = BatchWindowCost(tracker.problem, tracker.normalizer, tracker.past_length, refs,
                           tracker.dtype, tracker.device)
    if tracker.symmetry.is_identity:
        return cost
    framed = FramedWindowCost(cost, tracker.symmetry, tracker.normalizer)
    framed.set_frame(frames)
    return framed


def _cost_fns(tracker: DenoisingTracker, cost: Any, measured: Tensor | None
              ) -> tuple[Any, Any]:
    """Cost and gradient of the solve, with per-row pasts."""
    return conditioned_cost(cost, measured, tracker.conditioning, tracker.penalty_weight)


def _refine(tracker: DenoisingTracker, x: Tensor, measured: Tensor | None) -> Tensor:
    """``DenoisingTracker._refine`` for K windows: pin each one's measured past and clipped
    inputs and pull it onto the manifold (Gauss-Newton only)."""
    t, m = tracker.past_length, tracker.m
    mask = torch.zeros(x.shape[1:], dtype=torch.bool, device=x.device)
    values = x.clone()
    lo, hi = tracker._bounds(None)
    values[:, t:, :m] = torch.clamp(values[:, t:, :m], lo[t:, :m], hi[t:, :m])
    mask[t:, :m] = True
    if measured is not None:
        rows = measured.shape[1]
        known = ~torch.isnan(measured)
        mask[:rows] |= known[0]
        values[:, :rows] = torch.where(known, measured, values[:, :rows])
    zero = lambda z: torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)  # noqa: E731
    anneal = {}
    if tracker.refine_sigma != tracker.sigma:
        anneal = {"sigma_start": tracker.sigma,
                  "anneal_iterations": tracker.refine_iterations // 2}
    problem = Problem(BehaviorManifold(tracker.denoiser, tracker.refine_sigma), zero,
                      torch.zeros_like)
    solver = ConditionedDRGD(mask, values, step_size=1.0,
                             max_iterations=tracker.refine_iterations, min_gradient_norm=0.0,
                             record_history=False, **anneal)
    out = solver.run(problem, initial_point=x).point
    out[:, mask] = values[:, mask]
    return out


def _starts(start: Any, k: int | None) -> np.ndarray | None:
    if isinstance(start, (int, np.integer)) and not isinstance(start, bool):
        return None if k is None else np.full(k, check_positive_int(start, "start",
                                                                    allow_zero=True))
    arr = np.asarray(start)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 0):
        raise ConfigurationError(f"start must be an int >= 0 or a (K,) array of them, got "
                                 f"{start!r}")
    return arr.astype(int)


def plan_batch(tracker: DenoisingTracker, past_u: np.ndarray | None = None,
               past_y: np.ndarray | None = None, *, current_y: np.ndarray | None = None,
               start: int | Sequence[int] | np.ndarray = 0,
               references: Sequence[Any] | None = None,
               initial_point: np.ndarray | Tensor | None = None, iterations: int | None = None,
               refine: bool = True, max_time: float | None = None,
               frame: np.ndarray | None = None, num_starts: int | None = None,
               blocks: np.ndarray | None = None, confidence: bool = True) -> BatchPlanResult:
    """K plans of ``tracker`` in one batched solve; plan ``k`` is ``tracker.plan(past_u[k],
    past_y[k], current_y=current_y[k], start=start[k], ...)`` with reference ``references[k]``.

    Parameters
    ----------
    past_u, past_y : ndarray (K, T_ini, m), (K, T_ini, p)
        Each problem's measured past (physical units); required if T_ini > 0.
    current_y : ndarray (K, p), optional
        Each problem's current output, pinned like the past (for all problems or none).
    start : int or (K,) ints
        Reference step of each plan's first future sample.
    references : sequence of K, optional
        Each problem's reference (see :func:`batch_problems`; prebuilt TrackingProblems are
        the cheap form); default the tracker's own for every problem.
    initial_point : (K, L, C) or (K, S, L, C) normalised windows, optional
        Warm starts (one or S per problem), in each problem's canonical frame; default the
        ``num_starts`` best candidates of each problem.
    iterations : int, optional
        Solver iterations (default the tracker's ``iterations``).
    refine : bool
        Run the refinement after the solve.
    max_time : float, optional
        Seconds the batch may take up to the end of its solve (cold-start search included;
        the solver stops early to keep it); the refinement and the trust estimate follow.
    frame : ndarray (k,) or (K, k), optional
        With a symmetry: the world frame of a plan whose measurements do not fix one.
    num_starts : int, optional
        Cold starts per problem (default the tracker's ``num_starts``); the best is kept.
    blocks : ndarray (K, T_ini + 1, C), optional
        Instead of ``past_u``, ``past_y`` and ``current_y``: the measured blocks (physical
        units, inputs first, the current output in the last row), NaN where not measured, at
        the same places in every problem (e.g. a receding horizon's warm-up, before T_ini
        samples exist).
    confidence : bool
        Measure the plans' confidence with the tracker's trust estimator (if it has one);
        False leaves ``estimated_deviation``, ``ood`` and ``trust`` None.

    Returns
    -------
    BatchPlanResult
    """
    t0 = time.perf_counter()
    x0_in = None
    if initial_point is not None:
        x0_in = torch.as_tensor(initial_point, dtype=tracker.dtype, device=tracker.device)
        if x0_in.ndim == 3:
            x0_in = x0_in[:, None]
        if x0_in.ndim != 4 or x0_in.shape[2:] != (tracker.window_length, tracker.m + tracker.p):
            raise DimensionError(f"initial_point must be (K, {tracker.window_length}, "
                                 f"{tracker.m + tracker.p}) or (K, S, {tracker.window_length}, "
                                 f"{tracker.m + tracker.p}), got {tuple(x0_in.shape)}")
    frames_in = None if frame is None else np.asarray(frame, dtype=float)
    gdim = tracker.symmetry.group_dim
    if frames_in is not None and frames_in.ndim == 1:
        frames_in = frames_in.reshape(1, gdim) if frames_in.size == gdim else frames_in
        shared_frame = True
    else:
        shared_frame = False
    if blocks is not None:
        if past_u is not None or past_y is not None or current_y is not None:
            raise ConfigurationError("pass blocks= or past_u, past_y and current_y, not both")
        blocks = _check_blocks(tracker, blocks)
    k = _batch_size({"past_u": past_u if tracker.past_length else None,
                     "past_y": past_y if tracker.past_length else None,
                     "current_y": current_y, "blocks": blocks, "references": references,
                     "start": _starts(start, None), "initial_point": x0_in,
                     "frame": None if frames_in is None or shared_frame else frames_in})
    starts = _starts(start, k)
    if frames_in is None:
        frames = tracker.symmetry.identity_element((k,))
    else:
        if frames_in.shape[-1] != gdim or frames_in.ndim != 2:
            raise DimensionError(f"frame must be ({gdim},) or ({k}, {gdim}), got "
                                 f"{np.shape(frame)}")
        frames = np.broadcast_to(frames_in, (k, gdim)).astype(float)
    problems = (None if references is None else batch_problems(tracker, references))
    horizon = tracker.problem.horizon
    refs = np.stack([(tracker.problem if problems is None else problems[i]).reference_values(
        int(starts[i]), horizon) for i in range(k)])
    if blocks is None:
        blocks = _blocks(tracker, past_u, past_y, current_y, k)
    measured, frames = _normalise(tracker, blocks, frames)
    if measured is not None and tracker.conditioning == "clamp":
        raise ConfigurationError("conditioning='clamp' is not batched (its bounds differ per "
                                 "problem); use 'pin' or 'penalty', or plan one at a time")
    if x0_in is None:
        n_starts = tracker.num_starts if num_starts is None else check_positive_int(
            num_starts, "num_starts")
        x0 = _cold_start(tracker, refs, frames, measured, n_starts)
        n_starts = x0.shape[0] // k
    else:
        n_starts = x0_in.shape[1]
        x0 = x0_in.reshape(-1, *x0_in.shape[2:])
    rows_of = lambda a: np.repeat(a, n_starts, axis=0)  # noqa: E731  problem-major rows
    cost = _cost(tracker, rows_of(refs), rows_of(frames))
    measured_rows = None if measured is None else torch.repeat_interleave(measured, n_starts, 0)
    f, g = _cost_fns(tracker, cost, measured_rows)
    lo, hi = tracker._bounds(None)
    problem = Problem(tracker.manifold, f, g, lower=lo, upper=hi)
    if max_time is not None:
        max_time = max(max_time - (time.perf_counter() - t0), 1e-6)
    iterations = (tracker.iterations if iterations is None
                  else check_positive_int(iterations, "iterations"))
    solver = tracker._make_solver(iterations, None if measured is None else measured[0],
                                  warm=x0_in is not None, max_time=max_time)
    if (isinstance(tracker._solver_spec, str) and isinstance(solver, ConditionedDRGD)
            and measured_rows is not None):
        # The solver was built for the first problem's past: give every row its own.
        values = torch.zeros((len(x0), *solver.mask.shape), dtype=tracker.dtype,
                             device=tracker.device)
        values[:, : measured.shape[1]] = torch.nan_to_num(measured_rows)
        solver.values = values
    result = solver.run(problem, initial_point=x0)
    with torch.no_grad():
        # Per problem its best start's final iterate (as a single plan keeps).
        final = torch.nan_to_num(result.cost, nan=torch.inf).reshape(k, n_starts)
        best = torch.argmin(final, dim=1) + n_starts * torch.arange(k, device=final.device)
        x = result.point[best]
        dist = tracker.manifold.dist(x).double().cpu().numpy()
        initial_cost = cost(x0)[best].double().cpu().numpy()
    if refine and tracker.refine_iterations:
        x = _refine(tracker, x, measured)
    report = (None if tracker.trust is None or not confidence
              else tracker.trust(x, repredict=refine))
    solve_time = time.perf_counter() - t0
    w = tracker.symmetry.act(frames, tracker.normalizer.denormalize(x.double().cpu().numpy()))
    fut = w[:, tracker.past_length:]
    u = np.clip(fut[..., : tracker.m], tracker._u_low, tracker._u_high)
    y = fut[..., tracker.m:]
    e = y[..., tracker.problem.channels] - refs
    qm, rm = tracker.problem.Q_matrix, tracker.problem.R_matrix
    predicted = ((e @ qm) * e).sum(axis=(-1, -2)) + ((u @ rm) * u).sum(axis=(-1, -2))
    return BatchPlanResult(
        inputs=u, predicted_outputs=y, predicted_cost=predicted, initial_cost=initial_cost,
        windows=x.cpu().numpy(), frames=np.array(frames, dtype=float), starts=starts,
        iterations=result.iterations, solve_time_s=solve_time, manifold_distance=dist,
        solver_result=result,
        estimated_deviation=None if report is None else report.estimated_deviation,
        ood=None if report is None else report.ood,
        trust=None if report is None else [report.item(i) for i in range(k)])

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
per problem, and the solvers share one box); ``"pin"`` and ``"penalty"`` are. The trust measures
are per plan (the past-sensitivity probe perturbs every plan's past by the same fixed noise), so a
plan's ``estimated_deviation`` is the one of the same plan made alone, up to round-off.

Threads: a batch's products are large enough for torch's intra-op threads, a single plan's are
not. ``benchmarks/bench_batch_plans.py`` measures the throughput against sequential plans with
one thread and with the whole CPU (K = 64 on 2 cores: 1.05-1.3x the one-thread batched rates,
in two runs minutes apart).
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

from ddcontrol._deprecation import renamed_keywords
from ddcontrol._validation import as_finite_array, check_positive_int
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.solvers import Problem, SolverResult
from ddcontrol.tracking import cold_start
from ddcontrol.tracking.measured import measured_block, normalise_block
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference
from ddcontrol.tracking.window_cost import FramedWindowCost, WindowCost

if TYPE_CHECKING:
    from ddcontrol.data.normalize import Normalizer
    from ddcontrol.tracking.tracker import DenoisingTracker, PlanResult

__all__ = ["BatchPlanResult", "BatchWindowCost", "batch_problems", "plan_batch"]


class BatchWindowCost(WindowCost):
    """:class:`WindowCost` of B problems at once: row ``b`` of ``x`` against ``references[b]``.

    Parameters
    ----------
    problem : TrackingProblem
        Weights, channels and horizon (its own reference is not used).
    normalizer : Normalizer
    t_ini : int
        T_ini (``past_length=`` is its deprecated name).
    references : ndarray (B, N_h, q)
        The reference window of each row, physical units (B = 1 broadcasts over any batch).
    dtype, device : torch dtype and device.
    """

    @renamed_keywords(past_length="t_ini")
    def __init__(self, problem: TrackingProblem, normalizer: Normalizer, t_ini: int,
                 references: np.ndarray, dtype: torch.dtype, device: Any) -> None:
        super().__init__(problem, normalizer, t_ini, 0, dtype, device)
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


def _check_blocks(tracker: DenoisingTracker, blocks: Any) -> np.ndarray:
    shape = (tracker.t_ini + 1, tracker.m + tracker.p)
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


# -- the cold start ---------------------------------------------------------------------------------
def _each_scorer(tracker: DenoisingTracker, refs: np.ndarray, frames: np.ndarray,
                 measured: Tensor | None) -> Callable[[Tensor], Tensor]:
    """The cold-start scores of K problems, each with its own solve cost (the single plan's
    rule; for symmetries whose action is not affine per sample)."""
    fns = [tracker.conditioner.cost(_cost(tracker, refs[k:k + 1], frames[k:k + 1]),
                                    None if measured is None else measured[k:k + 1])[0]
           for k in range(len(refs))]
    return cold_start.cost_scorer(fns, measured)


def _cold_start(tracker: DenoisingTracker, refs: np.ndarray, frames: np.ndarray,
                measured: Tensor | None, num_starts: int) -> Tensor:
    """(K · S, L, C) starts: each problem's S best candidates, measured values written in;
    scored from moments where the frames act affinely per sample, else problem by problem."""
    tracker.cold_start.require()  # before the scores are set up
    maps = cold_start.frame_maps(tracker, frames)
    score = (_each_scorer(tracker, refs, frames, measured) if maps is None
             else cold_start.affine_scorer(tracker, maps, refs, measured))
    return tracker.cold_start.search(score, measured, num_starts)


# -- cost and solver ---------------------------------------------------------------------------------
def _cost(tracker: DenoisingTracker, refs: np.ndarray, frames: np.ndarray
          ) -> BatchWindowCost | FramedWindowCost:
    cost = BatchWindowCost(tracker.problem, tracker.normalizer, tracker.t_ini, refs,
                           tracker.dtype, tracker.device)
    if tracker.symmetry.is_identity:
        return cost
    framed = FramedWindowCost(cost, tracker.symmetry, tracker.normalizer)
    framed.set_frame(frames)
    return framed


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
    k = _batch_size({"past_u": past_u if tracker.t_ini else None,
                     "past_y": past_y if tracker.t_ini else None,
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
        blocks = measured_block(tracker.t_ini, tracker.m, tracker.p, past_u, past_y, current_y,
                                batch=k)
    measured, frames = normalise_block(tracker.symmetry, tracker.normalizer, blocks, frames,
                                       tracker.dtype, tracker.device)
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
    f, g = tracker.conditioner.cost(cost, measured_rows)
    problem = Problem(tracker.manifold, f, g, lower=tracker.box[0], upper=tracker.box[1])
    if max_time is not None:
        max_time = max(max_time - (time.perf_counter() - t0), 1e-6)
    # Every row of the solve pins its own problem's measured values.
    solver = tracker.solvers.build(iterations, measured_rows, warm=x0_in is not None,
                                   max_time=max_time)
    result = solver.run(problem, initial_point=x0)
    with torch.no_grad():
        # Per problem its best start's final iterate (as a single plan keeps).
        final = torch.nan_to_num(result.cost, nan=torch.inf).reshape(k, n_starts)
        best = torch.argmin(final, dim=1) + n_starts * torch.arange(k, device=final.device)
        x = result.point[best]
        dist = tracker.manifold.dist(x).double().cpu().numpy()
        initial_cost = cost(x0)[best].double().cpu().numpy()
    if refine and tracker.refine_iterations:
        x = tracker.refinement(x, measured)
    report = (None if tracker.trust is None or not confidence
              else tracker.rate(x, measured, repredict=refine))
    solve_time = time.perf_counter() - t0
    w = tracker.symmetry.act(frames, tracker.normalizer.denormalize(x.double().cpu().numpy()))
    fut = w[:, tracker.t_ini:]
    u = np.clip(fut[..., : tracker.m], tracker.input_low, tracker.input_high)
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

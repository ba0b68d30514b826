"""DenoisingTracker: reference tracking by Riemannian optimisation on a learned behaviour manifold.

A denoiser is the only knowledge of the system. With a :class:`TrackingProblem` and the
:class:`~ddcontrol.manifold.BehaviorManifold` at a fixed σ, :meth:`DenoisingTracker.plan` solves
one problem, :meth:`~DenoisingTracker.plan_batch` K at once (:mod:`ddcontrol.tracking.batch`),
and ``reset``/``act`` run it as a receding-horizon controller. Windows are ``L = T_ini + N_h``
steps of ``(u, y)`` in the model's normalised units; the first ``T_ini`` steps are the measured
past, which conditions the plan on the system's current (unknown) state, as in DeePC.

The tracker composes small pieces, each with one job (all in :mod:`ddcontrol.tracking`):

* :class:`~ddcontrol.tracking.config.TrackerConfig`: the settings (σ, solver, iterations, time
  budget, conditioning, out-of-distribution policy), checked once;
* :mod:`~ddcontrol.tracking.measured`: the measured block, physical → normalised, what it pins;
* :mod:`~ddcontrol.tracking.conditioning`: pin, clamp or penalty, each owning its cost, bounds
  and solver choice;
* :class:`~ddcontrol.tracking.plan_solver.PlanSolvers`: the solver of each plan (built by name,
  or an object used as given);
* :class:`~ddcontrol.tracking.cold_start.ColdStart`: the best training windows as starts;
* :class:`~ddcontrol.tracking.refine.Refinement`: the predicted outputs made the model's
  response to the inputs that will be applied;
* :class:`~ddcontrol.tracking.receding.RecedingHorizonPolicy`: ``reset``/``act`` on the
  ``Controller`` base the baselines share (warm starts, warm-up, out-of-distribution policies),
  whose rules the batched fleet (:mod:`ddcontrol.evaluate.fleet`) uses too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._deprecation import renamed_keywords
from ddcontrol._validation import as_finite_array, check_device
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.manifold import BehaviorManifold
from ddcontrol.solvers import Problem, Solver, SolverResult
from ddcontrol.symmetry import Identity, WindowSymmetry
from ddcontrol.tracking.cold_start import ColdStart, cost_scorer
from ddcontrol.tracking.conditioning import make_conditioning
from ddcontrol.tracking.config import CONDITIONINGS, SOLVERS, TrackerConfig
from ddcontrol.tracking.defaults import system_defaults
from ddcontrol.tracking.measured import current_measured, measured_block, normalise_block
from ddcontrol.tracking.plan_solver import PlanSolvers
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.receding import RecedingHorizon, RecedingHorizonPolicy, StepRequest
from ddcontrol.tracking.refine import Refinement
from ddcontrol.tracking.window_cost import FramedWindowCost

__all__ = ["DenoisingTracker", "PlanResult", "TrackerConfig", "SOLVERS", "CONDITIONINGS"]


@dataclass
class PlanResult:
    """A plan on the manifold for the horizon ahead.

    Attributes
    ----------
    inputs : ndarray (N_h, m)
        Planned inputs, physical units, inside the input bounds.
    predicted_outputs : ndarray (N_h, p)
        The model's outputs y* for those inputs (physical units).
    predicted_cost : float
        Tracking cost of (inputs, predicted_outputs).
    initial_cost : float
        Cost of the initial point (the best training window for a cold start).
    window : ndarray (L, m + p)
        The optimised window in the model's normalised units and frame (past block included):
        with a symmetry, the canonical frame; ``frame`` maps it to the world.
    iterations : int
    solve_time_s : float
        Wall time of :meth:`DenoisingTracker.plan` (cold-start search, solve, refinement).
    manifold_distance : float
        ‖v(x) − x‖ of the final window in normalised units: large values mean the point is not
        where the denoiser thinks the manifold is. A receding-horizon step whose confidence is
        estimated in the background (``on_ood`` "warn" or "escalate") computes it there too:
        NaN until that estimate is attached to the plan (at the next step, or on reading
        ``flagged_steps``), which keeps a network pass out of the step's time.
    solver_result : SolverResult
    frame : ndarray (k,)
        The symmetry's group element of the plan (the world frame of ``window``; empty
        without a symmetry).
    estimated_deviation : float or None
        The model-intrinsic estimate of ‖y* − y_true‖ / ‖y_true‖ (:mod:`ddcontrol.trust`),
        computed from the model and its data only; None without a trust estimator.
    ood : bool or None
        The plan is flagged as outside the data's distribution (estimate above threshold).
    trust : dict or None
        Every measurement behind the estimate (``TrustReport.item``).
    """

    inputs: np.ndarray
    predicted_outputs: np.ndarray
    predicted_cost: float
    initial_cost: float
    window: np.ndarray
    iterations: int
    solve_time_s: float
    manifold_distance: float
    solver_result: SolverResult = field(repr=False)
    frame: np.ndarray = field(default_factory=lambda: np.zeros(0))
    estimated_deviation: float | None = None
    ood: bool | None = None
    trust: dict[str, Any] | None = field(default=None, repr=False)


class _Setting:
    """A read-only attribute of the tracker that is the configuration's field of the same name
    (``tracker.sigma`` is ``tracker.config.sigma``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.config, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} is a setting (tracker.config.{self.name}): build a "
                             "new tracker to change it")


class DenoisingTracker(RecedingHorizonPolicy):
    """Plan inputs that track a reference, on the behaviour manifold learned by a denoiser.

    Parameters
    ----------
    denoiser : callable
        ``D(x, σ)`` on normalised windows (B, L, m + p); a trained model or a closed form.
    normalizer : Normalizer
        The model's normalisation (physical ↔ normalised).
    problem : TrackingProblem
        Reference, horizon N_h, weights and input bounds.
    candidates : ndarray (M, L, m + p), optional
        Normalised training windows of the model's length L; the cold start is the one of least
        cost (and past mismatch), or the ``num_starts`` best as a batch of starts.
    t_ini : int, optional
        T_ini, the measured past that conditions each plan (default: the problem's, else 0);
        the model's window length must be ``T_ini + N_h``. ``past_length=`` is its deprecated
        name.
    sigma : float
        Noise level of the projection, normalised units (``"auto"``, the σ selected from
        held-out data, through :meth:`from_model`).
    sigma_start : float, optional
        σ annealing of a cold-start solve: σ decreases geometrically from ``sigma_start`` to
        ``sigma`` over its first half (a large σ first moves the plan through the data's
        bulk, the small one then makes it precise). Warm receding-horizon steps use ``sigma``.
    solver : "drgd" | "nesterov" | "dlf" | "guided" | Solver
        The optimiser (:mod:`ddcontrol.tracking.plan_solver`); a name builds it for each plan
        with ``step_scale / L`` as step size (L: the cost gradient's Lipschitz constant in
        normalised coordinates). "drgd" and "nesterov" (heavy ball, momentum 0.9) run
        :class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`, which also masks active input
        bounds out of the step and caps each move (``max_step``); "guided" samples the denoiser
        with look-ahead cost guidance (:class:`~ddcontrol.solvers.guided.GuidedDiffusion`;
        ``iterations`` are its levels). A Solver object is used as given: its own step size,
        ``max_iterations`` and criteria, never modified (a time budget shortens a copy's
        ``max_time``); it cannot pin the measured past, so it needs ``conditioning="penalty"``
        or ``"clamp"`` when T_ini > 0.
    iterations : int
        Iterations of a cold-start plan (solvers built by name).
    iterations_per_step : int
        Iterations of each warm-started receding-horizon plan (solvers built by name).
    conditioning : "pin" | "clamp" | "penalty"
        How the plan is tied to the measured past (:mod:`ddcontrol.tracking.conditioning`);
        "pin" by default.
    penalty_weight : float
        λ for the penalty conditioning (per normalised unit²).
    num_starts : int
        Solve from the k best candidates at once and keep the best.
    damping, max_step : float
        Conditioned ("pin") solves: Tikhonov damping of the pinned-coordinate solves, and the
        trust radius of one iteration's move in normalised units (None: no cap); see
        :class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`. A learned denoiser is only
        reliable within a few training σ of the data, so long moves are unsafe.
    jacobian_every : int
        Warm-started receding-horizon steps recompute the Jacobian rows of the pinned (measured)
        coordinates every this many iterations (1: every iteration); in between they reuse the
        rows and the inverse of their small k × k block (``chord="reused"`` of
        :class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`: one backward pass over ∇f and
        the momentum per iteration). The rows cost one VJP per pinned coordinate. On the
        unicycle (40 pinned) 5 halves the time per iteration with the same closed loop (three
        references, seed 0: equal to 4 digits, with the rows' inverse reused alone and exact
        directions; the rows reused too: 0.9992-1.0013x that over 9 runs); on the double pendulum
        (32 pinned, σ 0.1) it raised the closed-loop cost from 1.04x to 1.66x the oracle's, so
        the system defaults (:mod:`~ddcontrol.tracking.defaults`) set it per system.
    row_dtype : "auto" | torch.dtype | None
        Precision of the products that compute the pinned coordinates' Jacobian rows (their
        network part; the gradient's VJP stays in ``dtype``): "auto" (default) bfloat16 where
        its products are native (CPUs with AVX512-BF16 or AMX, CUDA from compute capability
        8.0), else the network's dtype; None the network's dtype; or a dtype (also by name,
        "bfloat16"). See ``row_dtype`` of :class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`.
    step_time_budget : float, optional
        Seconds a receding-horizon solve (:meth:`act`) may take: the solver stops at the first
        iteration past it, and the next step continues from that plan (real-time iteration).
        The cold start of an episode is the one solve that needs it (it runs ``iterations``).
        None: iteration-limited only.
    freeze_gc : bool
        At the start of an episode (:meth:`reset` with the first observation), run one full
        collection of Python's cyclic garbage collector and freeze what survives
        (:func:`gc.freeze`), so that later full collections leave out the objects that
        existed before the loop (the model, the data, torch's modules). Otherwise such a
        collection traverses all of them whenever it runs, in the middle of a step or not: in
        the demo's process, after training, about 500,000 objects and 150-350 ms per full
        collection (one ran during its closed loop); after the freeze 1-2 ms. Frozen objects
        that later become unreachable only through reference cycles are not reclaimed (until
        :func:`gc.unfreeze`); False leaves the collector as it is. Default True.
    trust_batch : int
        Under ``on_ood="warn"`` the steps' confidence estimates run in a background thread
        while the plant moves; this many plans go to it at once (and the rest at the end of the
        episode, or whenever the flags are read). One estimate per step had the two threads
        hand Python's lock back and forth inside every step (about 60 context switches): on
        the unicycle (400 steps, seeds 0-2) the median step took 9.4-15.5 ms with 1 against
        6.1-9.1 ms with 5, as fast as without any estimate, and the 95th percentile 16-21
        against 11.5-14.5 ms. A flag then arrives up to ``trust_batch`` steps late; under
        ``"escalate"``, whose next step waits for the estimate, every plan goes alone.
        Default 5.
    refine_iterations : int
        Gauss-Newton iterations that, after :meth:`plan`, pin the measured past and the final
        (clipped) inputs and pull the window onto the manifold, so that the predicted outputs
        are the model's response to exactly the inputs that will be applied (0: off;
        :mod:`ddcontrol.tracking.refine`). Receding-horizon steps (:meth:`act`) skip it: only
        their first input is applied.
    refine_sigma : float, optional
        σ at which the refinement ends (normalised units); it anneals geometrically from
        ``sigma`` over the first half of the refinement. Default: ``sigma``, the data-selected
        σ under the default ``sigma="auto"``. A learned model predicts the outputs for given
        inputs worst at the smallest σ (held-out conditioned prediction error 0.45 at σ 0.02
        against 0.10-0.13 at 0.2-0.3 on the mass-spring-damper's suite model): refining at
        0.02, the earlier default, left the mass-spring-damper's plans of
        ``bench_conditioned_prediction.py`` at a replay deviation of 0.078 (median) / 0.29
        (90th percentile), against 0.012 / 0.019 at the plan's σ (0.3); the double pendulum's
        at 0.010 / 0.024.
    refine_sigma_start : float or None
        σ at which the refinement starts, if above ``sigma`` (normalised units; None: at
        ``sigma``). The outputs a solve leaves were pulled towards the reference, often beyond
        the data, where the learned pull at a small σ is weak: a refinement begun at the plan's
        σ 0.05 left the double pendulum's plans for references scaled beyond its data at a
        replay deviation of 0.140 (worst of 20), begun at 0.3 at 0.085
        (:mod:`ddcontrol.tracking.refine`).
    refine_damping : float
        Tikhonov damping of the refinement's Gauss-Newton solves
        (:class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`).
    warmup_input : ndarray (m,), optional
        Input applied while fewer than T_ini samples have been measured (default: zero, clipped
        into the bounds).
    symmetry : WindowSymmetry, optional
        The group action whose canonical frame the denoiser's windows are in (a trained model's
        ``model.symmetry``; default the identity). Each plan reads its frame ``g`` off the first
        measured sample, optimises canonical windows and evaluates the cost on ``g · window``,
        so the reference, Q and the outputs of a plan stay in world units. The action must
        leave the inputs unchanged (their bounds are applied in the model's frame).
    trust : TrustEstimator, optional
        Measures every plan's confidence (``PlanResult.estimated_deviation``, ``.ood``);
        :meth:`from_model` builds one from the dataset. None: no confidence.
    on_ood : "warn" | "hold" | "fallback" | "raise" | "escalate"
        What :meth:`act` does at a flagged step: warn and apply the plan anyway; apply the
        last unflagged plan's input for this step (``hold``; the warm-up input once it runs
        out); apply ``fallback.act(observation, info)``; raise
        :class:`~ddcontrol.trust.OutOfDistributionError`; or ``escalate``: warn, and once a
        third of the last horizon's steps have been flagged
        (:data:`~ddcontrol.tracking.receding.ESCALATION_FRACTION`), plan at the next σ of the
        ladder ``escalate_sigma``, and climb again each time a third of the steps planned on
        a rung are flagged (``escalated_at`` says from which step, ``escalations`` the step
        of each rung). ``ood_steps``
        counts flagged steps. Under ``warn`` and ``escalate`` the estimates run in the
        background while the plant moves (``escalate`` awaits the previous step's before it
        counts); the other policies rate each plan before applying it. ``escalate`` is
        measured, not the default (``benchmarks/bench_escalation.py``): on unicycle models of
        data that never showed the task's speeds (9 runs, auto σ 0.07) the ladder brought the
        median cost from 5.6x to 1.58x the oracle's (worst 65x to 61x; σ 0.3 from the start:
        1.22x / 1.89x), and one of the 9 runs got worse (22x to 42x: the vehicle was lost
        before the first escalation, at step 58). On the suite's own models only the double
        pendulum's false alarms escalate (seed 2, swing: 1.13x against 1.12x under ``warn``;
        a single jump to 0.3, the policy before the ladder, cost 4.61x there).
    escalate_sigma : float or sequence of float, optional
        The σ of the plans after each escalation (normalised units): projections that pull
        plans harder towards the data, one rung per escalation. Default: the σ of the
        selection grid above ``sigma`` (:data:`~ddcontrol.score.sigma.SIGMA_GRID`), one grid
        step at a time; a number: that σ alone; values not above ``sigma`` are dropped
        (none left: no escalation). ``config.escalate_sigma`` holds the resulting ladder.
    fallback : controller, optional
        For ``on_ood="fallback"``: an object with ``act(observation, info)`` (and optionally
        ``reset(observation, info)``, called by :meth:`reset`).
    """

    name = "denoising"

    # The settings, read from ``config``.
    t_ini = _Setting()
    sigma = _Setting()
    sigma_start = _Setting()
    step_scale = _Setting()
    iterations = _Setting()
    iterations_per_step = _Setting()
    conditioning = _Setting()
    penalty_weight = _Setting()
    num_starts = _Setting()
    refine_iterations = _Setting()
    refine_sigma = _Setting()
    refine_sigma_start = _Setting()
    refine_damping = _Setting()
    jacobian_every = _Setting()
    row_dtype = _Setting()
    step_time_budget = _Setting()
    damping = _Setting()
    max_step = _Setting()
    on_ood = _Setting()
    escalate_sigma = _Setting()
    freeze_gc = _Setting()
    trust_batch = _Setting()
    solver_name = _Setting()

    @renamed_keywords(past_length="t_ini")
    def __init__(self, denoiser: Any, normalizer: Normalizer, problem: TrackingProblem, *,
                 candidates: np.ndarray | None = None, t_ini: int | None = None,
                 sigma: float = 0.05, sigma_start: float | None = None,
                 solver: str | Solver = "drgd", step_scale: float = 1.0, iterations: int = 500,
                 iterations_per_step: int = 20, conditioning: str = "pin",
                 penalty_weight: float = 100.0, num_starts: int = 1,
                 warmup_input: np.ndarray | None = None, refine_iterations: int = 8,
                 refine_sigma: float | None = None, refine_sigma_start: float | None = None,
                 refine_damping: float = 1e-3, jacobian_every: int = 1, row_dtype: Any = "auto",
                 step_time_budget: float | None = None,
                 damping: float = 0.05, max_step: float | None = 0.5,
                 symmetry: WindowSymmetry | None = None,
                 trust: Any = None, on_ood: str = "warn", fallback: Any = None,
                 escalate_sigma: float | Sequence[float] | None = None,
                 freeze_gc: bool = True, trust_batch: int = 5,
                 device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as D(x, sigma)")
        if not isinstance(problem, TrackingProblem):
            raise TypeError(f"problem must be a TrackingProblem, got {type(problem).__name__}")
        if t_ini is None:
            t_ini = problem.t_ini or 0
        elif problem.t_ini is not None and t_ini != problem.t_ini:
            raise ConfigurationError(f"t_ini={t_ini} but the problem's is {problem.t_ini}: give "
                                     "it once (the problem's is the default)")
        self.config = cfg = TrackerConfig(
            t_ini=t_ini, sigma=sigma, sigma_start=sigma_start, solver=solver,
            step_scale=step_scale, iterations=iterations,
            iterations_per_step=iterations_per_step, conditioning=conditioning,
            penalty_weight=penalty_weight, num_starts=num_starts,
            refine_iterations=refine_iterations, refine_sigma=refine_sigma,
            refine_sigma_start=refine_sigma_start, refine_damping=refine_damping,
            jacobian_every=jacobian_every, row_dtype=row_dtype,
            step_time_budget=step_time_budget, damping=damping, max_step=max_step,
            on_ood=on_ood, escalate_sigma=escalate_sigma, freeze_gc=freeze_gc,
            trust_batch=trust_batch)
        self.denoiser, self.normalizer, self.problem = denoiser, normalizer, problem
        self.device, self.dtype = check_device(device), dtype
        m, p = problem.input_dim, problem.output_dim
        self.m, self.p = m, p
        self.window_length = cfg.t_ini + problem.horizon
        shape = (self.window_length, m + p)
        self.symmetry = Identity() if symmetry is None else symmetry
        if not isinstance(self.symmetry, WindowSymmetry):
            raise TypeError(f"symmetry must be a WindowSymmetry, got {type(symmetry).__name__}")
        moved = [c for c in getattr(self.symmetry, "channels", []) if not m <= c < m + p]
        if moved:
            raise ConfigurationError(f"the symmetry acts on window channels {moved}, which are "
                                     f"not outputs (channels {m}..{m + p - 1}); inputs must be "
                                     "invariant")
        self.cost = problem.window_cost(normalizer, cfg.t_ini, 0, dtype, self.device)
        if not self.symmetry.is_identity:
            self.cost = FramedWindowCost(self.cost, self.symmetry, normalizer)
        # The plans' projection, then those of the escalation ladder's rungs
        # (on_ood="escalate"; none where nothing is more conservative than the plans').
        self._ladder = [BehaviorManifold(denoiser, s) for s in (cfg.sigma,) + (
            cfg.escalate_sigma if cfg.on_ood == "escalate" else ())]
        self.manifold = self._ladder[0]
        self.conditioner = make_conditioning(cfg.conditioning, cfg.penalty_weight)
        self.solvers = PlanSolvers(cfg, self.conditioner, self.cost, shape, dtype, self.device)
        self.cold_start = ColdStart(candidates, cfg.num_starts, shape, dtype, self.device)
        self.box = self._input_box(shape)
        self.refinement = Refinement(denoiser, cfg.sigma, cfg.refine_sigma,
                                     cfg.refine_iterations, cfg.t_ini, m, *self.box,
                                     damping=cfg.refine_damping,
                                     sigma_start=cfg.refine_sigma_start)
        low = -np.inf if problem.input_low is None else problem.input_low
        high = np.inf if problem.input_high is None else problem.input_high
        warm = np.zeros(m) if warmup_input is None else as_finite_array(warmup_input,
                                                                        "warmup_input", ndim=1)
        if warm.shape != (m,):
            raise DimensionError(f"warmup_input must have shape ({m},), got {warm.shape}")
        self.warmup_input = np.clip(warm, low, high)
        # Recent time of a receding-horizon plan after its solver stops (the plan's bookkeeping,
        # and the confidence estimate where it is not left to the background), per confidence
        # mode: a decaying maximum that the per-step budget sets aside.
        self._after_solve_s = {"now": 0.0, "later": 0.0, "none": 0.0}
        rules = RecedingHorizon(cfg.t_ini, m, p, self.warmup_input, self.symmetry, normalizer,
                                self.solvers.step_iterations, cfg.on_ood,
                                escalation_window=problem.horizon)
        super().__init__(problem, rules, step_time_budget=cfg.step_time_budget, trust=trust,
                         fallback=fallback, device=self.device, freeze_gc=cfg.freeze_gc,
                         trust_batch=cfg.trust_batch)

    def _input_box(self, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The input bounds as box bounds (L, C) on normalised windows: the future inputs'
        rows, ±inf elsewhere (the past is measured, the outputs are free)."""
        t, m, prob = self.config.t_ini, self.m, self.problem
        mean, std = self.normalizer.mean[:m], self.normalizer.std[:m]
        lo, hi = np.full(shape, -np.inf), np.full(shape, np.inf)
        if prob.input_low is not None:
            lo[t:, :m] = (prob.input_low - mean) / std
        if prob.input_high is not None:
            hi[t:, :m] = (prob.input_high - mean) / std
        return (torch.as_tensor(lo, dtype=self.dtype, device=self.device),
                torch.as_tensor(hi, dtype=self.dtype, device=self.device))

    @classmethod
    def from_model(cls, model: Any, problem: TrackingProblem, dataset: Any = None,
                   candidate_stride: int | None = None, **kwargs: Any) -> DenoisingTracker:
        """Build from a trained model (``.denoiser``, ``.normalizer``, ``.window_length``) and,
        for cold starts, the dataset it was trained on (its windows every ``candidate_stride``
        steps are the candidates; default a quarter window, which bounds their memory).

        ``sigma="auto"`` (the default when the checkpoint stores a σ or ``dataset`` is given;
        otherwise the constructor's) takes the checkpoint's data-selected σ, or selects one now
        from the trajectories of ``dataset`` training held out
        (:func:`ddcontrol.score.sigma.resolve_sigma`).
        With a dataset and no ``trust=`` given, plans carry a confidence from a
        :class:`~ddcontrol.trust.TrustEstimator` on the dataset (``trust=None``: none).

        Settings not in ``kwargs`` are the problem's system's
        (:func:`~ddcontrol.tracking.defaults.system_defaults` of ``problem.env_id``: solver,
        iterations per step, Jacobian reuse, cold starts, refinement, damping and the per-step
        time budget ``step_time_fraction`` x ``problem.dt``; the generic ones for a system
        without its own), so a tracker built here is real-time by default as
        :func:`~ddcontrol.evaluate.controllers.make_controller`'s is. The constructor keeps its
        own plain defaults."""
        for key, value in system_defaults(problem.env_id).tracker_options(problem.dt).items():
            if key != "sigma" or value != "auto":  # "auto": the model's σ, below
                kwargs.setdefault(key, value)
        if candidate_stride is None:
            candidate_stride = max(1, model.window_length // 4)
        past = model.window_length - problem.horizon
        if past < 0:
            raise DimensionError(f"the model's windows ({model.window_length} steps) are shorter "
                                 f"than the horizon {problem.horizon}")
        cand = None
        if dataset is not None:
            cand = model.model_windows(dataset, candidate_stride)
        # The model's device: of its first parameter, or buffer (closed forms have only those).
        tensors = (list(model.denoiser.parameters()) + list(model.denoiser.buffers())
                   if hasattr(model.denoiser, "parameters") else [])
        device = tensors[0].device if tensors else "cpu"
        kwargs.setdefault("device", device)
        kwargs.setdefault("symmetry", getattr(model, "symmetry", None))
        if "sigma" not in kwargs and (getattr(model, "sigma", None) is not None
                                      or dataset is not None):
            kwargs["sigma"] = "auto"  # the default wherever the model or its data can give it
        if isinstance(kwargs.get("sigma"), str) and kwargs["sigma"] == "auto":
            from ddcontrol.score.sigma import resolve_sigma

            kwargs["sigma"] = resolve_sigma(model, dataset, t_ini=past or None)
        if dataset is not None and "trust" not in kwargs:
            kwargs["trust"] = cls.default_trust(model, dataset, past, kwargs,
                                                device=kwargs["device"])
        return cls(model.denoiser, model.normalizer, problem, candidates=cand, t_ini=past,
                   **kwargs)

    @staticmethod
    def default_trust(model: Any, dataset: Any, t_ini: int, options: dict[str, Any],
                      **overrides: Any) -> Any:
        """The plans' confidence estimator for a tracker built with keyword arguments
        ``options``: a :class:`~ddcontrol.trust.TrustEstimator` on ``dataset`` whose
        re-prediction fits the measured past (T_ini = ``t_ini``) as the plan does, with the
        plan's σ and damping; ``overrides``: its other keyword arguments (``device``...)."""
        from ddcontrol.trust import TrustEstimator

        return TrustEstimator.from_model(model, dataset, t_ini=t_ini, **{
            "repredict_sigma": float(options.get("sigma", 0.05)),
            "repredict_damping": float(options.get("damping", TrackerConfig.damping)),
            **overrides})

    # -- the pieces, read as attributes -----------------------------------------------------
    @property
    def past_length(self) -> int:
        """T_ini (``t_ini``, the name everywhere else)."""
        return self.config.t_ini

    @property
    def candidates(self) -> Tensor | None:
        """The cold start's candidate windows (M, L, C), normalised, or None."""
        return self.cold_start.candidates

    @property
    def step_size(self) -> float:
        """step_scale / L, L the Lipschitz constant of the (penalised) cost's gradient."""
        return self.solvers.step_size

    # -- one plan -----------------------------------------------------------------------------
    def plan(self, past_u: np.ndarray | None = None, past_y: np.ndarray | None = None, *,
             current_y: np.ndarray | None = None, start: int = 0,
             initial_point: np.ndarray | Tensor | None = None,
             iterations: int | None = None, refine: bool = True,
             max_time: float | None = None, frame: np.ndarray | None = None) -> PlanResult:
        """Solve the tracking problem over the horizon starting at reference step ``start``.

        Parameters
        ----------
        past_u, past_y : ndarray (T_ini, m), (T_ini, p)
            The last T_ini measured inputs and outputs (physical units); required if T_ini > 0.
        current_y : ndarray (p,), optional
            The output measured now (the first future output), pinned like the past.
        initial_point : (L, C) or (B, L, C) normalised windows, optional
            Warm start; default: the best candidate window(s).
        iterations : int, optional
            Solver iterations (default ``iterations``; not for a solver passed as an object,
            which runs its own).
        refine : bool
            Run the refinement (``refine_iterations``) after the solve.
        max_time : float, optional
            Seconds the whole call may take (the cold-start search included): the solver
            stops at the first iteration past what is left of it.
        frame : ndarray (k,), optional
            With a symmetry: the world frame of the plan when no measurement fixes it (nothing
            measured); default the identity (the canonical frame is the world frame).
        """
        start_t = time.perf_counter()
        block = measured_block(self.t_ini, self.m, self.p, past_u, past_y, current_y)
        return self._plan(block, start=start, initial_point=initial_point, iterations=iterations,
                          refine=refine, max_time=max_time, frame=frame, start_t=start_t)

    def _solve(self, request: StepRequest, *, max_time: float | None, start_t: float,
               confidence: str) -> PlanResult:
        """A receding-horizon step's plan (the policy's hook)."""
        return self._plan(request.block, start=request.start,
                          initial_point=request.initial_point, iterations=request.iterations,
                          refine=False, max_time=max_time, frame=None, start_t=start_t,
                          confidence=confidence)

    def _can_cold_start(self) -> bool:
        return self.cold_start.candidates is not None

    def _background_job(self, x: Tensor) -> Any:
        """The trust estimates and the manifold distances of steps' plan windows ``x`` (B, L, C),
        at the projection that planned them (an escalation may change it before the job runs;
        under ``on_ood="escalate"`` a batch is one plan)."""
        trust, manifold = self.trust, self.manifold

        def job() -> tuple[Any, list[float]]:
            report = trust(x, repredict=False)
            with torch.no_grad():
                return report, manifold.dist(x.to(self.dtype)).tolist()

        return job

    def rate(self, x: Tensor, measured: Tensor | None, repredict: bool) -> Any:
        """The trust estimator's report on normalised plan windows ``x`` (B, L, C) solved from
        the measured block(s) ``measured`` (normalised, as the plan pinned them): with the
        re-prediction for plans that are applied whole (``repredict``), which pins the current
        output where it was measured, as the plan did."""
        return self.trust(x, repredict=repredict, current_output=repredict and current_measured(
            measured, self.t_ini, self.m))

    def escalation(self, level: int) -> str | None:
        """``"sigma <next> instead of <current>"`` for the escalation after ``level`` of them,
        or None (no ``on_ood="escalate"``, or no rung of ``escalate_sigma`` left)."""
        if level + 1 >= len(self._ladder):
            return None
        return (f"sigma {self._ladder[level + 1].sigma:g} instead of "
                f"{self._ladder[level].sigma:g}")

    def use_escalated(self, level: int) -> None:
        """Plan at the σ of the escalation ladder's rung ``level`` (0: ``sigma``; past the
        last rung: the last)."""
        self.manifold = self._ladder[min(int(level), len(self._ladder) - 1)]

    def _plan(self, block: np.ndarray | None, *, start: int,
              initial_point: np.ndarray | Tensor | None, iterations: int | None, refine: bool,
              max_time: float | None, frame: np.ndarray | None, start_t: float,
              confidence: str = "now") -> PlanResult:
        """:meth:`plan` from a physical measured block (T_ini + 1, C) in which entries not
        measured (yet) are NaN: the receding-horizon warm-up plans before T_ini samples exist.
        ``confidence``: the trust estimate ``"now"``, ``"later"`` (left to the caller, which
        runs it and the manifold distance in the background: :meth:`_background_job`) or
        ``"none"`` (plans never applied)."""
        frame = (self.symmetry.identity_element() if frame is None
                 else np.asarray(frame, dtype=float).reshape(self.symmetry.group_dim))
        measured, frame = normalise_block(self.symmetry, self.normalizer, block, frame,
                                          self.dtype, self.device)
        if isinstance(self.cost, FramedWindowCost):
            self.cost.set_frame(frame)
        self.cost.set_start(start)
        f, g = self.conditioner.cost(self.cost, measured)
        if initial_point is None:
            one = None if measured is None else measured[None]
            x0 = self.cold_start.search(cost_scorer([f], one), one)
        else:
            x0 = torch.as_tensor(initial_point, dtype=self.dtype, device=self.device)
            x0 = x0[None] if x0.ndim == 2 else x0
            if x0.shape[1:] != (self.window_length, self.m + self.p):
                raise DimensionError(f"initial_point must be (B, {self.window_length}, "
                                     f"{self.m + self.p}), got {tuple(x0.shape)}")
        lo, hi = self.conditioner.bounds(*self.box, measured)
        problem = Problem(self.manifold, f, g, lower=lo, upper=hi)
        if max_time is not None:
            # What is left of the budget once what follows the solve (its recent duration)
            # is set aside.
            max_time = max(max_time - (time.perf_counter() - start_t)
                           - self._after_solve_s[confidence], 1e-6)
        solver = self.solvers.build(iterations, measured, warm=initial_point is not None,
                                    max_time=max_time)
        result = solver.run(problem, initial_point=x0)
        solved_t = time.perf_counter()
        with torch.no_grad():
            # The final iterate, not the lowest-cost one: early iterates can be cheaper only
            # because they do not yet satisfy the conditioning. (A diverged start already
            # reports its best finite iterate as its point.)
            best = int(torch.argmin(torch.nan_to_num(result.cost, nan=torch.inf)))
            x = result.point[best:best + 1]
            # A step rated in the background gets its distance there (_background_job).
            dist = math.nan if confidence == "later" else float(self.manifold.dist(x)[0])
            initial_cost = float(self.cost(x0[best:best + 1])[0])
        if refine and self.refine_iterations:
            x = self.refinement(x, measured)
        # The reprediction term (a conditioned solve) only for refined plans: receding-horizon
        # steps apply one input and keep the cheap measures (ddcontrol.trust).
        report = None
        if self.trust is not None and confidence == "now":
            report = self.rate(x, measured, repredict=refine).item(0)
        solve_time = time.perf_counter() - start_t
        w = self.symmetry.act(frame, self.normalizer.denormalize(x[0].double().cpu().numpy()))
        fut = w[self.t_ini:]
        u = np.clip(fut[:, : self.m], self.input_low, self.input_high)
        y = fut[:, self.m:]
        plan = PlanResult(inputs=u, predicted_outputs=y,
                          predicted_cost=float(self.problem.cost(u, y, start)),
                          initial_cost=initial_cost, window=x[0].cpu().numpy(),
                          iterations=result.iterations, solve_time_s=solve_time,
                          manifold_distance=dist, solver_result=result,
                          frame=np.array(frame, dtype=float),
                          estimated_deviation=None if report is None
                          else report["estimated_deviation"],
                          ood=None if report is None else report["ood"], trust=report)
        if not refine:
            self._after_solve_s[confidence] = max(0.9 * self._after_solve_s[confidence],
                                                  time.perf_counter() - solved_t)
        return plan

    def plan_batch(self, past_u: np.ndarray | None = None, past_y: np.ndarray | None = None,
                   **kwargs: Any) -> Any:
        """K plans in one batched solve (pasts (K, T_ini, ·), per-problem ``start``,
        ``references``, ``frame``...): :func:`ddcontrol.tracking.batch.plan_batch`."""
        from ddcontrol.tracking.batch import plan_batch

        return plan_batch(self, past_u, past_y, **kwargs)

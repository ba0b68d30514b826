"""The receding horizon: one plan per sample, warm-started from the last, applied one input at a
time.

The rules (:class:`RecedingHorizon`) are written once, over an :class:`EpisodeState`, and serve
both the single policy (:class:`RecedingHorizonPolicy`, the base of
:class:`~ddcontrol.tracking.tracker.DenoisingTracker`) and the batched fleet
(:func:`ddcontrol.evaluate.fleet.run_fleet`), which solves the plans its K episodes need at a
step in one batch:

* **reset**: with y_0, the episode's first plan (reference step T_ini) is solved at once, from a
  cold start, conditioned on y_0 and the warm-up inputs (known in advance), with the full
  ``iterations``: no control step pays for the cold start.
* **warm-up** (k < T_ini): the warm-up input is applied; the first plan is re-solved from itself
  with each new output (``iterations_per_step``, not applied, so no confidence yet).
* **first planned step** (k = T_ini): continues the first plan.
* **later steps**: warm start from the previous plan shifted by one sample (its last row
  repeated, a neutral guess) and moved into the frame of the new measured past (the world frame
  is fixed); ``iterations_per_step``, within ``step_time_budget``, no refinement (only the first
  input is applied).
* **out of distribution**: a plan flagged by the trust estimator is handled by the ``on_ood``
  policy (warn, hold the last good plan's inputs, ask a fallback controller, raise, or escalate:
  warn, and once the flags are persistent, a third of the last horizon's steps, plan with the
  next more conservative projection of a ladder, climbing a rung each time the flags persist).
"""

from __future__ import annotations

import abc
import gc
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ddcontrol._validation import check_positive_int
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, UnknownNameError
from ddcontrol.symmetry import WindowSymmetry
from ddcontrol.tracking.controller import Controller
from ddcontrol.tracking.measured import measured_block
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference, as_reference
from ddcontrol.trust import ON_OOD_POLICIES, OutOfDistributionError

if TYPE_CHECKING:
    from ddcontrol.tracking.tracker import PlanResult

__all__ = ["EpisodeState", "StepRequest", "RecedingHorizon", "RecedingHorizonPolicy",
           "ESCALATION_FRACTION", "escalation_count", "escalation_message"]

ESCALATION_FRACTION = 1.0 / 3.0
"""Under ``on_ood="escalate"``, the fraction of the last horizon's steps (those planned since the
last escalation) that must be flagged before the plans climb to the next σ of the escalation
ladder, for the rest of the episode or the next escalation. Chosen on the flags of
closed loops under ``warn`` (``benchmarks/bench_escalation.py``): the unicycle's models of data
that never showed the task's speeds and turn rates (excitation amplitude 0.3, auto σ 0.07) were
flagged at 27-160 of 195 steps on the six runs that went wrong (4-65x the oracle); the suite's
own models at none of their steps (unicycle, linear systems; 27 runs) or at 2-31 (double
pendulum, 9 runs, every one within 1.2x the oracle). A third of a horizon was reached on 1 of
those 36 runs (double pendulum, seed 2, swing: a false alarm). An eighth escalated 8 of the 9
pendulum runs and made the worst stress run worse (42x to 99x the oracle)."""


@dataclass(eq=False)
class EpisodeState:
    """What one receding-horizon episode keeps between samples.

    ``inputs`` and ``outputs`` are the applied u_0 .. u_{k-1} and measured y_0 .. y_{k-1}; the
    caller appends y_k and u_k after step k (:meth:`record`; a :class:`RecedingHorizonPolicy`
    shares its :class:`~ddcontrol.tracking.controller.Controller` lists, which ``act`` fills).
    """

    inputs: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    #: The previous plan's window, world frame, physical units.
    warm: np.ndarray | None = None
    #: The episode's first plan while the past fills up (solved at reset, refined in warm-up).
    first_plan: PlanResult | None = None
    #: (step, inputs) of the last plan that was rated and not flagged.
    good: tuple[int, np.ndarray] | None = None
    #: Steps whose plan was flagged out of the data's distribution.
    flagged: list[int] = field(default_factory=list)
    #: The steps from which the plans climbed each rung of the escalation ladder
    #: (``on_ood="escalate"``): the first rung at ``escalations[0]``, and so on.
    escalations: list[int] = field(default_factory=list)

    @property
    def escalated_at(self) -> int | None:
        """The step of the first escalation (None: the plans never escalated)."""
        return self.escalations[0] if self.escalations else None

    @property
    def level(self) -> int:
        """Rungs of the escalation ladder climbed so far (0: the plans' own σ)."""
        return len(self.escalations)

    @property
    def k(self) -> int:
        """The current step (samples measured before this one)."""
        return len(self.outputs)

    def record(self, y: np.ndarray, u: np.ndarray) -> None:
        """Step k is done: y_k was measured and u_k applied."""
        self.outputs.append(y)
        self.inputs.append(u)


@dataclass(frozen=True)
class StepRequest:
    """The plan that step k needs.

    ``warmup``: the warm-up input is applied at this step; the plan, if ``solve``, re-solves
    the first plan (not applied). ``block`` is the physical measured block (T_ini + 1, C), NaN
    where not measured; ``start`` the plan's reference step; ``initial_point`` a normalised warm
    start (None: a cold start); ``iterations`` None for the cold-start default.
    """

    k: int
    warmup: bool
    solve: bool
    block: np.ndarray | None = None
    start: int = 0
    initial_point: np.ndarray | None = None
    iterations: int | None = None


def flag_message(k: int, plan: PlanResult) -> str:
    """Why step ``k``'s input is not (or not only) its plan's."""
    return (f"step {k}: plan flagged out of the data's distribution (estimated deviation "
            f"{plan.estimated_deviation:.3g} > {plan.trust['threshold']:.3g})")


def escalation_count(window: int) -> int:
    """Flagged steps among the last ``window`` that escalate (:data:`ESCALATION_FRACTION`)."""
    return math.ceil(ESCALATION_FRACTION * window)


def escalation_message(k: int, window: int, how: str) -> str:
    """Why an episode's plans change projection at step ``k`` (``on_ood="escalate"``)."""
    return (f"step {k}: {escalation_count(window)} or more of the last {window} steps' plans "
            f"were flagged out of the data's distribution; planning with {how} from this step "
            "on")


class RecedingHorizon:
    """The rules of the receding horizon (module docstring), over :class:`EpisodeState` s.

    Parameters
    ----------
    t_ini, input_dim, output_dim : int
        T_ini, m and p.
    warmup_input : ndarray (m,)
        Applied while fewer than T_ini samples exist (and for a non-finite or held-out input).
    symmetry : WindowSymmetry
        Whose frames the plans' windows are in.
    normalizer : Normalizer
        The model's normalisation.
    step_iterations : int or None
        Iterations of a warm-started step (None: the solver's own).
    on_ood : str
        One of ``ON_OOD_POLICIES``.
    escalation_window : int
        Under ``on_ood="escalate"``: the steps over which persistent flags are counted (the
        horizon); the plans escalate once :data:`ESCALATION_FRACTION` of them are flagged.
    """

    def __init__(self, t_ini: int, input_dim: int, output_dim: int, warmup_input: np.ndarray,
                 symmetry: WindowSymmetry, normalizer: Normalizer, step_iterations: int | None,
                 on_ood: str, escalation_window: int = 1) -> None:
        if on_ood not in ON_OOD_POLICIES:
            raise UnknownNameError(f"on_ood must be one of {ON_OOD_POLICIES}, got {on_ood!r}")
        self.t_ini, self.m, self.p = t_ini, input_dim, output_dim
        self.warmup_input = warmup_input
        self.symmetry, self.normalizer = symmetry, normalizer
        self.step_iterations, self.on_ood = step_iterations, on_ood
        self.escalation_window = escalation_window

    def warmup_block(self, observations: list[np.ndarray]) -> np.ndarray:
        """The first plan's measured block (T_ini + 1, C) while only y_0 .. y_k (k < T_ini)
        exist: the warm-up inputs are known in advance, the outputs not measured yet are NaN."""
        t, m = self.t_ini, self.m
        block = np.full((t + 1, m + self.p), np.nan)
        block[:t, :m] = self.warmup_input
        for i, y in enumerate(observations[: t + 1]):
            block[i, m:] = y
        return block

    def first_request(self, y0: np.ndarray) -> StepRequest:
        """The cold start at reset: the first plan from y_0 (not applied before step T_ini)."""
        return StepRequest(0, warmup=True, solve=True, block=self.warmup_block([y0]),
                           start=self.t_ini)

    def request(self, state: EpisodeState, y: np.ndarray) -> StepRequest:
        """What step ``state.k`` needs, y = y_k measured now. A request that continues the first
        plan takes it out of ``state``."""
        k, t, m, p = state.k, self.t_ini, self.m, self.p
        if k < t:
            if state.first_plan is not None and k > 0:
                return StepRequest(k, warmup=True, solve=True,
                                   block=self.warmup_block([*state.outputs, y]), start=t,
                                   initial_point=state.first_plan.window,
                                   iterations=self.step_iterations)
            return StepRequest(k, warmup=True, solve=False)
        past_u = np.array(state.inputs[k - t:k]).reshape(t, m)
        past_y = np.array(state.outputs[k - t:k]).reshape(t, p)
        block = measured_block(t, m, p, past_u, past_y, y)
        if state.warm is None and state.first_plan is not None:
            initial, iterations = state.first_plan.window, self.step_iterations
            state.first_plan = None
        elif state.warm is None:  # no reset with an observation: a cold start now
            initial, iterations = None, None
        else:
            initial, iterations = self.shifted(state.warm, block), self.step_iterations
        return StepRequest(k, warmup=False, solve=True, block=block, start=k,
                           initial_point=initial, iterations=iterations)

    def shifted(self, previous: np.ndarray, block: np.ndarray) -> np.ndarray:
        """The previous plan's window (world frame, physical) one sample on, its last row
        repeated, normalised in the frame of the new measured block's first sample."""
        shifted = np.concatenate([previous[1:], previous[-1:]], axis=0)
        g = self.symmetry.frame_of_sample(block[0])
        return self.normalizer.normalize(self.symmetry.inverse_act(g, shifted))

    def remember(self, state: EpisodeState, plan: PlanResult) -> None:
        """Keep an applied plan's window (in the world frame) for the next warm start."""
        state.warm = self.symmetry.act(plan.frame, self.normalizer.denormalize(
            np.asarray(plan.window, dtype=float)))

    def choose_input(self, state: EpisodeState, k: int, plan: PlanResult,
                     fallback: Callable[[], np.ndarray] | None = None) -> np.ndarray:
        """The input u_k (m,) to apply from step k's plan, under the ``on_ood`` policy
        (``fallback()`` gives the fallback controller's input). Raises
        :class:`~ddcontrol.trust.OutOfDistributionError` for a flagged plan under "raise"."""
        u = plan.inputs[0].copy()
        if plan.ood:
            u = self.flagged_input(state, k, plan, u, fallback)
        elif plan.ood is not None:
            state.good = (k, plan.inputs)
        if not np.all(np.isfinite(u)):
            warnings.warn("tracker produced a non-finite input; applying the warm-up input",
                          RuntimeWarning, stacklevel=4)
            u = self.warmup_input.copy()
        return u

    def escalate(self, state: EpisodeState, how: str | None) -> bool:
        """Under ``on_ood="escalate"``, mark step ``state.k`` as the episode's next rung of
        escalation and warn, if its flags are persistent (:meth:`should_escalate`) and the
        planner has a more conservative projection (``how`` names it; None: none left).
        Returns whether it escalated: the caller then plans with that projection."""
        if how is None or not self.should_escalate(state):
            return False
        state.escalations.append(state.k)
        warnings.warn(escalation_message(state.k, self.escalation_window, how), RuntimeWarning,
                      stacklevel=4)
        return True

    def should_escalate(self, state: EpisodeState) -> bool:
        """Under ``on_ood="escalate"``, whether the flags known at step ``state.k`` are
        persistent: at least :data:`ESCALATION_FRACTION` of the last ``escalation_window``
        steps, counting only the steps planned since the last escalation (each rung is
        judged on its own plans)."""
        if self.on_ood != "escalate":
            return False
        w, k = self.escalation_window, state.k
        since = state.escalations[-1] if state.escalations else -1
        recent = sum(1 for j in state.flagged if k - w < j <= k and j >= since)
        return recent >= escalation_count(w)

    def flagged_input(self, state: EpisodeState, k: int, plan: PlanResult, u: np.ndarray,
                      fallback: Callable[[], np.ndarray] | None) -> np.ndarray:
        """The input of flagged step ``k`` instead of (or, under "warn", as) the plan's ``u``;
        counts the step."""
        state.flagged.append(k)
        msg = flag_message(k, plan)
        if self.on_ood == "raise":
            raise OutOfDistributionError(msg)
        if self.on_ood == "fallback":
            if fallback is None:
                raise ConfigurationError("on_ood='fallback' needs a fallback controller")
            return np.asarray(fallback(), dtype=float).reshape(self.m)
        if self.on_ood == "hold":
            if state.good is not None and k - state.good[0] < len(state.good[1]):
                return state.good[1][k - state.good[0]].copy()
            return self.warmup_input.copy()
        if len(state.flagged) == 1:  # once per episode; the count has the rest
            warnings.warn(msg + "; later flagged steps are counted in ood_steps",
                          RuntimeWarning, stacklevel=5)
        return u


class RecedingHorizonPolicy(Controller):
    """A receding-horizon controller on the :class:`~ddcontrol.tracking.controller.Controller`
    base: ``reset``/``act`` by the :class:`RecedingHorizon` rules around a planner.

    Subclasses plan (:meth:`_solve`) and say whether they can cold-start
    (:meth:`_can_cold_start`); this class keeps the episode, the warm starts, the warm-up, the
    out-of-distribution policy and the confidence estimates that run in the background (the
    "warn" policy's: its input does not depend on them, so they are computed while the plant
    moves).

    Parameters
    ----------
    problem : TrackingProblem
        Reference, weights and input bounds (a reference given as a function of time is sampled
        over the first horizon for the ``reference`` attribute of the base; plans evaluate the
        function itself).
    rules : RecedingHorizon
    step_time_budget : float, optional
        Seconds a step's solve may take (None: iteration-limited).
    trust : callable, optional
        The trust estimator (its ``on_ood`` policy is ``rules.on_ood``).
    fallback : controller, optional
        For ``on_ood="fallback"``: an object with ``act(observation, info)`` (and optionally
        ``reset(observation, info)``, called by :meth:`reset`).
    device : torch device of the plan windows (for background estimates).
    freeze_gc : bool
        Collect and freeze Python's cyclic garbage at the start of each episode
        (:func:`gc.freeze`; see ``freeze_gc`` of
        :class:`~ddcontrol.tracking.tracker.DenoisingTracker`).
    trust_batch : int
        Plans whose background confidence estimates start together (see ``trust_batch`` of
        :class:`~ddcontrol.tracking.tracker.DenoisingTracker`; 1: one per step).
    """

    def __init__(self, problem: TrackingProblem, rules: RecedingHorizon, *,
                 step_time_budget: float | None, trust: Any = None, fallback: Any = None,
                 device: Any = "cpu", freeze_gc: bool = False, trust_batch: int = 1) -> None:
        low = -np.inf if problem.input_low is None else problem.input_low
        high = np.inf if problem.input_high is None else problem.input_high
        reference = problem.reference
        if not isinstance(reference, Reference):
            reference = as_reference(problem.reference_values(0, problem.horizon),
                                     problem.output_dim, problem.channels, problem.dt)
        super().__init__(reference, problem.Q_matrix, problem.R_matrix,
                         np.broadcast_to(low, (problem.input_dim,)),
                         np.broadcast_to(high, (problem.input_dim,)))
        if rules.on_ood == "fallback" and (fallback is None or not callable(
                getattr(fallback, "act", None))):
            raise ConfigurationError("on_ood='fallback' needs fallback=<controller with act()>")
        if trust is not None and not callable(trust):
            raise TypeError("trust must be a TrustEstimator (callable on plan windows) or None")
        self.rules, self._step_budget = rules, step_time_budget
        self.trust, self.fallback, self._device = trust, fallback, device
        self._freeze_gc = bool(freeze_gc)
        self._trust_batch = check_positive_int(trust_batch, "trust_batch")
        self._executor: ThreadPoolExecutor | None = None  # background confidence estimates
        # Plans waiting for a background estimate: those not yet submitted, then the submitted
        # batches with their future.
        self._unrated: list[tuple[int, PlanResult]] = []
        self._pending: list[tuple[list[tuple[int, PlanResult]], Future]] = []
        self.reset()

    # -- what a subclass provides --------------------------------------------------------------
    @abc.abstractmethod
    def _solve(self, request: StepRequest, *, max_time: float | None, start_t: float,
               confidence: str) -> PlanResult:
        """Solve ``request`` (no refinement) within ``max_time`` seconds counted from
        ``start_t``; ``confidence`` "now" (rate the plan), "later" (leave it to the background)
        or "none" (a plan that is not applied)."""

    @abc.abstractmethod
    def _can_cold_start(self) -> bool:
        """Whether a plan can start without a warm start (candidate windows exist)."""

    def escalation(self, level: int) -> str | None:
        """How this planner plans on the escalation ladder's rung ``level + 1``, the one after
        ``level`` escalations (``on_ood="escalate"``; for the warning), or None where it has
        nothing more conservative."""
        return None

    def use_escalated(self, level: int) -> None:
        """Plan with the projection of the escalation ladder's rung ``level`` (0: the usual
        one)."""

    # -- the episode ----------------------------------------------------------------------------
    def reset(self, observation: Any = None, info: dict | None = None) -> None:
        """Forget the measured history and the warm start (call at the start of an episode).

        With the first observation (y_0) and a cold start available, this also solves the
        episode's first plan (``iterations``, not time-limited; its time is ``reset_time_s``):
        the control steps, the first included, then run warm-started solves within
        ``step_time_budget``.
        """
        self._pending.clear()  # a previous episode's estimates are not this one's
        self._unrated.clear()
        self.use_escalated(0)
        self.last_plan: PlanResult | None = None
        self.reset_time_s = 0.0
        if observation is None:
            self.k, self.inputs, self.outputs = 0, [], []
            self.last_solve_time_s = 0.0
            self._episode = EpisodeState(self.inputs, self.outputs)
            return
        super().reset(observation, info)

    def _reset(self, y0: np.ndarray, info: dict[str, Any] | None) -> None:
        self._episode = EpisodeState(self.inputs, self.outputs)
        if self._freeze_gc:
            # Before the loop, where a pause costs nothing: what lives now is left out of the
            # full collections that would otherwise traverse it during a step.
            gc.collect()
            gc.freeze()
        if self._can_cold_start():
            t0 = time.perf_counter()
            self._episode.first_plan = self._solve(self.rules.first_request(y0), max_time=None,
                                                   start_t=t0, confidence="now")
            self.reset_time_s = time.perf_counter() - t0
        if self.fallback is not None and callable(getattr(self.fallback, "reset", None)):
            self.fallback.reset(y0, info)

    def _act(self, y: np.ndarray, info: dict[str, Any] | None) -> np.ndarray:
        """u_k from y_k: the warm-up input while fewer than T_ini samples exist (refining the
        first plan with each new output), then the first input of step k's plan."""
        start_t = time.perf_counter()
        state = self._episode
        # Escalation counts every flag of the steps before this one (the last estimate, which
        # ran while the plant moved, is awaited): the same step in every run and in a fleet.
        how = self.escalation(state.level) if self.rules.on_ood == "escalate" else None
        self._collect_trust(wait=how is not None)
        if how is not None and self.rules.escalate(state, how):
            self.use_escalated(state.level)
        request = self.rules.request(state, y)
        if request.warmup:
            if request.solve:
                state.first_plan = self._solve(request, max_time=self._step_budget,
                                               start_t=start_t, confidence="none")
            return self.rules.warmup_input.copy()
        # Rated in the background (its input does not depend on the rating) where there is a
        # rating at all.
        later = self.rules.on_ood in ("warn", "escalate") and self.trust is not None
        plan = self._solve(request, max_time=self._step_budget, start_t=start_t,
                           confidence="later" if later else "now")
        if later:
            self._rate_later(request.k, plan)
        self.rules.remember(state, plan)
        self.last_plan = plan
        return self.rules.choose_input(
            state, request.k, plan,
            None if self.fallback is None else lambda: self.fallback.act(y, info))

    @property
    def step_index(self) -> int:
        """Samples acted on since :meth:`reset` (the base's ``k``)."""
        return self.k

    @property
    def first_plan(self) -> PlanResult | None:
        """The episode's first plan while the measured past fills up (None once applied)."""
        return self._episode.first_plan

    # -- confidence ------------------------------------------------------------------------------
    @property
    def ood_steps(self) -> int:
        """How many steps of this episode had a flagged plan (every estimate finished first)."""
        return len(self.flagged_steps)

    @property
    def flagged_steps(self) -> list[int]:
        """The steps (sample indices) of this episode whose plan was flagged."""
        self._collect_trust(wait=True)
        return list(self._episode.flagged)

    @property
    def escalated_at(self) -> int | None:
        """The step of this episode from which the plans used a more conservative projection
        (``on_ood="escalate"``: its first escalation), or None."""
        return self._episode.escalated_at

    @property
    def escalations(self) -> list[int]:
        """The steps of this episode at which the plans climbed each rung of the escalation
        ladder (``on_ood="escalate"``)."""
        return list(self._episode.escalations)

    def _rate_later(self, k: int, plan: PlanResult) -> None:
        """Queue the confidence estimate of step ``k``'s plan for the background; every
        ``trust_batch`` plans (every plan under ``on_ood="escalate"``, whose next step waits for
        it) go to the background thread as one batch."""
        self._unrated.append((k, plan))
        if len(self._unrated) >= self._trust_batch or self.rules.on_ood == "escalate":
            self._submit_unrated()

    def _submit_unrated(self) -> None:
        """Start the background estimate of the queued plans (one batch)."""
        if not self._unrated:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="ddcontrol-trust")
        items, self._unrated = self._unrated, []
        x = torch.as_tensor(np.stack([plan.window for _, plan in items]), device=self._device)
        self._pending.append((items, self._executor.submit(self._background_job(x))))

    def _background_job(self, x: torch.Tensor
                        ) -> Callable[[], tuple[Any, list[float] | None]]:
        """What runs in the background for the plan windows ``x`` (B, L, C) whose confidence
        comes later: it returns the trust estimator's report and the plans' manifold distances,
        or None where the plans computed them themselves (this class: always)."""
        trust = self.trust
        return lambda: (trust(x, repredict=False), None)

    def _collect_trust(self, wait: bool = False) -> None:
        """Attach the background estimates that have finished (all with ``wait``, the queued
        ones included) to their plans, and count the flagged ones."""
        if wait:
            self._submit_unrated()
        while self._pending and (wait or self._pending[0][1].done()):
            items, future = self._pending.pop(0)
            result, distances = future.result()
            for i, (k, plan) in enumerate(items):
                report = result.item(i)
                if distances is not None:
                    plan.manifold_distance = distances[i]
                plan.estimated_deviation, plan.ood, plan.trust = (
                    report["estimated_deviation"], report["ood"], report)
                if plan.ood:
                    self.rules.flagged_input(self._episode, k, plan, plan.inputs[0], None)

"""K closed-loop episodes at once, with one batched plan per time step (a fleet).

:func:`run_fleet` runs K independent episodes of one environment, each with its own reference,
seed (and optionally initial state), controlled by one :class:`DenoisingTracker`: every solve
the K episodes need at a step is one :func:`~ddcontrol.tracking.batch.plan_batch` call. Each
episode keeps an :class:`~ddcontrol.tracking.receding.EpisodeState` and follows the rules
:meth:`DenoisingTracker.act` follows (``tracker.rules``, :mod:`ddcontrol.tracking.receding`:
cold start at reset, warm-up, warm starts, out-of-distribution policies). So an episode of the
fleet is the episode :func:`run_episode` gives for its reference (up to round-off;
``tests/test_batch.py`` checks this). Episodes that end (a failure, an env's own end)
leave the batch; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.data.gym_env import EnvLike, StateAccess, applied_action, env_spec, make_env
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.evaluate.closed_loop import Episode, episode_metrics
from ddcontrol.tracking.batch import batch_problems, plan_batch
from ddcontrol.tracking.receding import EpisodeState
from ddcontrol.tracking.reference import Reference
from ddcontrol.tracking.tracker import DenoisingTracker
from ddcontrol.trust import OutOfDistributionError
from envs.dynamics import Dynamics

__all__ = ["run_fleet"]

_TRACKER_BUDGET = "tracker"


@dataclass(eq=False)
class _Run:
    """One episode's environment, its record, and the receding-horizon state of its tracker."""

    env: Any
    owned: bool
    native: bool
    spec: Any
    access: StateAccess
    obs: np.ndarray
    info: dict
    ys: list = field(default_factory=list)
    us: list = field(default_factory=list)
    req: list = field(default_factory=list)
    xs: list = field(default_factory=list)
    times: list = field(default_factory=list)
    state: EpisodeState = field(default_factory=EpisodeState)  # the receding horizon's
    error: str | None = None
    ended: str | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or self.ended is not None


def run_fleet(tracker: DenoisingTracker, env_id: EnvLike, references: Sequence[Reference],
              length: int | None = None, *, seeds: int | Sequence[int] = 0,
              initial_states: Sequence[np.ndarray] | None = None,
              env_kwargs: dict[str, Any] | None = None,
              step_time_budget: float | None | str = _TRACKER_BUDGET,
              score_from: int | None = None) -> list[Episode]:
    """Run K = ``len(references)`` episodes of ``env_id`` under ``tracker``, one batched solve per
    step.

    Parameters
    ----------
    tracker : DenoisingTracker
        Its model, horizon, weights, bounds and solver settings serve every episode; its own
        reference is not used.
    env_id : str, gymnasium.Env factory
        A registered id or a callable returning a fresh env (an instance cannot serve K
        episodes).
    references : sequence of K Reference
        Each episode's reference (its tracked channels must be the tracker's).
    length : int, optional
        Samples per episode (default the references' length, when they share one).
    seeds : int or K ints
        Each episode's environment seed (initial state and noise).
    initial_states : K states, optional
        Start states instead of the env's random ones (where the env's state can be set).
    step_time_budget : float or None, optional
        Seconds one batched solve (all K plans) may take; default the tracker's
        ``step_time_budget``; None: iteration-limited.
    score_from : int, optional
        First scored sample of the metrics (default T_ini).

    Returns
    -------
    list of K Episode
        With ``metrics`` (:func:`episode_metrics` against its reference and the tracker's
        weights). ``solve_times`` hold the wall time of each batched step: the time the whole
        fleet's plans took, not a share of it.
    """
    if not isinstance(tracker, DenoisingTracker):
        raise TypeError(f"tracker must be a DenoisingTracker, got {type(tracker).__name__}")
    if tracker.on_ood == "fallback":
        raise ConfigurationError("on_ood='fallback' is not available in a fleet (one fallback "
                                 "controller cannot serve K episodes); use warn, hold or raise")
    if not isinstance(env_id, str) and not callable(env_id):
        raise ConfigurationError("env_id must be a registered id or an env factory: K episodes "
                                 "need K environments")
    refs = list(references)
    if not refs or not all(isinstance(r, Reference) for r in refs):
        raise TypeError("references must be a non-empty sequence of Reference")
    problems = batch_problems(tracker, refs)
    k_runs = len(refs)
    if length is None:
        lengths = {r.length for r in refs}
        if len(lengths) != 1:
            raise ConfigurationError(f"the references have lengths {sorted(lengths)}: pass "
                                     "length=")
        length = lengths.pop()
    steps = check_positive_int(length, "length")
    seed_list = ([int(seeds)] * k_runs if isinstance(seeds, (int, np.integer))
                 else [int(s) for s in seeds])
    if len(seed_list) != k_runs:
        raise DimensionError(f"{len(seed_list)} seeds for {k_runs} references")
    if initial_states is not None and len(initial_states) != k_runs:
        raise DimensionError(f"{len(initial_states)} initial states for {k_runs} references")
    budget = (tracker.step_time_budget if isinstance(step_time_budget, str)
              and step_time_budget == _TRACKER_BUDGET else step_time_budget)
    if budget is not None:
        budget = check_positive_float(budget, "step_time_budget")
    t, m, p = tracker.t_ini, tracker.m, tracker.p
    score_from = t if score_from is None else check_positive_int(score_from, "score_from",
                                                                 allow_zero=True)

    runs: list[_Run] = []
    try:
        for i in range(k_runs):
            env, owned = make_env(env_id, env_kwargs)
            spec = env_spec(env)
            if (spec.input_dim, spec.output_dim) != (m, p):
                raise DimensionError(f"the env has {spec.input_dim} inputs and {spec.output_dim}"
                                     f" outputs; the tracker plans {m} and {p}")
            obs, info = env.reset(seed=seed_list[i])
            access = StateAccess(env, info)
            if initial_states is not None:
                obs, info = access.set(env, np.asarray(initial_states[i], float), seed_list[i])
            run = _Run(env, owned, isinstance(getattr(env.unwrapped, "dynamics", None), Dynamics),
                       spec, access, obs, info)
            run.xs.append(access.read(env, obs, info))
            runs.append(run)
        if tracker.candidates is not None:
            _cold_start(tracker, runs, problems)
        for k in range(steps):
            index = [i for i, r in enumerate(runs) if not r.done]
            if not index:
                break
            active = [runs[i] for i in index]
            t0 = time.perf_counter()
            actions = _act(tracker, active, problems, index, k, budget)
            elapsed = time.perf_counter() - t0
            for run, action in zip(active, actions):
                if action is None:
                    continue
                run.times.append(elapsed)
                _step(run, action, steps)
    finally:
        for run in runs:
            if run.owned:
                run.env.close()
    episodes = []
    for run, ref in zip(runs, refs):
        ep = Episode(tracker.name, np.array(run.ys).reshape(-1, p),
                     np.array(run.us).reshape(-1, m), np.array(run.req).reshape(-1, m),
                     np.array(run.xs), np.array(run.times), run.error, ended=run.ended,
                     state_source=run.access.source, ood_steps=len(run.state.flagged),
                     flagged_steps=list(run.state.flagged),
                     escalations=list(run.state.escalations), sigma=float(tracker.sigma))
        ep.metrics = episode_metrics(ep, ref, tracker.problem.Q_matrix,
                                     tracker.problem.R_matrix, input_low=run.spec.input_low,
                                     input_high=run.spec.input_high, score_from=score_from)
        episodes.append(ep)
    return episodes


def _cold_start(tracker: DenoisingTracker, runs: list[_Run], problems: list[Any]) -> None:
    """What :meth:`DenoisingTracker.reset` does with y_0, for every episode in one batch."""
    rules = tracker.rules
    first = [rules.first_request(np.asarray(run.obs, dtype=float).reshape(tracker.p))
             for run in runs]
    try:
        res = plan_batch(tracker, start=first[0].start, references=problems,
                         blocks=np.stack([r.block for r in first]), refine=False)
    except Exception as exc:  # noqa: BLE001 - as run_episode reports a failing reset
        for run in runs:
            run.error = f"reset failed: {type(exc).__name__}: {exc}"
        return
    for i, run in enumerate(runs):
        run.state.first_plan = res.plan(i)


def _act(tracker: DenoisingTracker, active: list[_Run], problems: list[Any], index: list[int],
         k: int, budget: float | None) -> list[np.ndarray | None]:
    """Measure every active episode's output and return its input (None: the episode failed),
    by the receding-horizon rules of :meth:`DenoisingTracker.act`, with one batched plan."""
    rules = tracker.rules
    for run in active:  # as DenoisingTracker.act under on_ood="escalate"
        rules.escalate(run.state, tracker.escalation(run.state.level))
    ys = [np.asarray(run.obs, dtype=float).reshape(tracker.p) for run in active]
    requests = [rules.request(run.state, y) for run, y in zip(active, ys)]
    # The episodes move in step: all warm, all continuing their first plans, or all cold. One
    # batch per projection: the episodes that escalated (on_ood="escalate") plan at the σ of
    # their rung of the tracker's ladder.
    req = requests[0]
    plans: list[Any] = [None] * len(active)
    if req.solve:
        groups: dict[int, list[int]] = {}
        for i, run in enumerate(active):
            groups.setdefault(run.state.level, []).append(i)
        try:
            for level, members in groups.items():
                tracker.use_escalated(level)
                try:
                    res = plan_batch(
                        tracker, start=[requests[i].start for i in members],
                        references=[problems[index[i]] for i in members],
                        blocks=np.stack([requests[i].block for i in members]),
                        initial_point=None if req.initial_point is None
                        else np.stack([requests[i].initial_point for i in members]),
                        iterations=req.iterations, refine=False, max_time=budget,
                        confidence=not req.warmup)
                finally:
                    tracker.use_escalated(0)
                for n, i in enumerate(members):
                    plans[i] = res.plan(n)
        except Exception as exc:  # noqa: BLE001 - a failed solve ends the episodes, as in run_episode
            for run in active:
                run.error = f"{type(exc).__name__}: {exc}"
            return [None] * len(active)
    actions: list[np.ndarray | None] = []
    for i, (run, y) in enumerate(zip(active, ys)):
        if req.warmup:
            if req.solve:  # the first plan again, with one more measured output; not applied
                run.state.first_plan = plans[i]
            u = rules.warmup_input.copy()
        else:
            plan = plans[i]
            rules.remember(run.state, plan)
            try:
                u = rules.choose_input(run.state, k, plan)
            except OutOfDistributionError as exc:  # "raise" ends this episode only
                run.error = f"{type(exc).__name__}: {exc}"
                actions.append(None)
                continue
        run.state.record(y, u)
        actions.append(u)
    return actions


def _step(run: _Run, action: np.ndarray, steps: int) -> None:
    """Apply ``action`` to the run's env (as :func:`run_episode` does)."""
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if action.shape != run.env.action_space.shape or not np.all(np.isfinite(action)):
        run.error = f"invalid action {action!r}"
        run.times.pop()
        return
    run.ys.append(np.array(run.obs, dtype=np.float64).reshape(-1))
    run.req.append(action)
    sent = action if run.native else applied_action(action, run.spec)
    obs, _, terminated, truncated, info = run.env.step(sent)
    run.us.append(info["applied_action"] if run.native else sent.astype(np.float64))
    run.obs, run.info = obs, info
    run.xs.append(run.access.read(run.env, obs, info))
    if terminated and run.native:
        run.error = "simulation diverged"
    elif (terminated or truncated) and len(run.ys) < steps:
        run.ended = "terminated" if terminated else "truncated"

"""K closed-loop episodes at once, with one batched plan per time step (a fleet).

:func:`run_fleet` runs K independent episodes of one environment, each with its own reference,
seed (and optionally initial state), controlled by one :class:`DenoisingTracker`: every solve
the K episodes need at a step is one :func:`~ddcontrol.tracking.batch.plan_batch` call. Each
episode follows :meth:`DenoisingTracker.reset` and :meth:`~DenoisingTracker.act` step for step:
the first plan solved from y_0 at reset, refined with each warm-up output while the warm-up input
is applied, continued at the first full past, then warm starts from the previous plan shifted by
one step and moved into the new past's frame, ``iterations_per_step`` iterations, no refinement.
So an episode of the fleet is the episode :func:`run_episode` gives for its reference (up to
round-off; ``tests/test_batch.py`` checks this). Episodes that end (a failure, an env's own end)
leave the batch; the others go on.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.data.gym_env import EnvLike, StateAccess, applied_action, env_spec, make_env
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.evaluate.closed_loop import Episode, episode_metrics
from ddcontrol.tracking.batch import batch_problems, plan_batch
from ddcontrol.tracking.reference import Reference
from ddcontrol.tracking.tracker import DenoisingTracker
from envs.dynamics import Dynamics

__all__ = ["run_fleet"]

_TRACKER_BUDGET = "tracker"


@dataclass(eq=False)
class _Run:
    """One episode's environment and the tracker state that ``act`` keeps for it."""

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
    u_hist: list = field(default_factory=list)
    y_hist: list = field(default_factory=list)
    warm: np.ndarray | None = None  # previous plan's window, world frame, physical units
    prefetch: np.ndarray | None = None  # the first plan's window while the past fills up
    good: tuple[int, np.ndarray] | None = None  # (step, inputs) of the last unflagged plan
    ood_steps: int = 0
    flagged: list[int] = field(default_factory=list)
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
        lengths = {r.steps for r in refs}
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
    t, m, p = tracker.past_length, tracker.m, tracker.p
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
                     state_source=run.access.source, ood_steps=run.ood_steps,
                     flagged_steps=list(run.flagged))
        ep.metrics = episode_metrics(ep, ref, tracker.problem.Q_matrix,
                                     tracker.problem.R_matrix, input_low=run.spec.input_low,
                                     input_high=run.spec.input_high, score_from=score_from)
        episodes.append(ep)
    return episodes


def _warmup_blocks(tracker: DenoisingTracker, active: list[_Run]) -> np.ndarray:
    """The first plan's measured blocks (K, T_ini + 1, C) while only y_0..y_k (k < T_ini)
    exist: the warm-up inputs are known in advance, the outputs not measured yet are NaN."""
    t, m = tracker.past_length, tracker.m
    block = np.full((len(active), t + 1, m + tracker.p), np.nan)
    block[:, :t, :m] = tracker.warmup_input
    for i, run in enumerate(active):
        for j, y in enumerate(run.y_hist[: t + 1]):
            block[i, j, m:] = y
    return block


def _cold_start(tracker: DenoisingTracker, runs: list[_Run], problems: list[Any]) -> None:
    """What :meth:`DenoisingTracker.reset` does with y_0: the episodes' first plans (reference
    step T_ini, ``iterations``), conditioned on y_0 and the warm-up inputs, in one batch."""
    for run in runs:
        run.y_hist = [np.asarray(run.obs, dtype=float).reshape(tracker.p)]
    try:
        res = plan_batch(tracker, start=tracker.past_length, references=problems,
                         blocks=_warmup_blocks(tracker, runs), refine=False)
    except Exception as exc:  # noqa: BLE001 - as run_episode reports a failing reset
        for run in runs:
            run.error = f"reset failed: {type(exc).__name__}: {exc}"
        return
    for i, run in enumerate(runs):
        run.prefetch = res.windows[i]
    for run in runs:
        run.y_hist = []


def _act(tracker: DenoisingTracker, active: list[_Run], problems: list[Any], index: list[int],
         k: int, budget: float | None) -> list[np.ndarray | None]:
    """Measure every active episode's output and return its input (None: the episode failed),
    as :meth:`DenoisingTracker.act` would for each, with one batched plan."""
    t, m, p = tracker.past_length, tracker.m, tracker.p
    for run in active:
        run.y_hist.append(np.asarray(run.obs, dtype=float).reshape(p))
    refs = [problems[i] for i in index]
    if k < t:
        if active[0].prefetch is not None and k > 0:
            # The first plans again (same windows, frames and reference step), with one more
            # measured output each; not applied, so no confidence yet.
            try:
                res = plan_batch(tracker, start=t, references=refs,
                                 blocks=_warmup_blocks(tracker, active),
                                 initial_point=np.stack([r.prefetch for r in active]),
                                 iterations=tracker.iterations_per_step, refine=False,
                                 max_time=budget, confidence=False)
            except Exception as exc:  # noqa: BLE001
                for run in active:
                    run.error = f"{type(exc).__name__}: {exc}"
                return [None] * len(active)
            for i, run in enumerate(active):
                run.prefetch = res.windows[i]
        for run in active:
            run.u_hist.append(tracker.warmup_input.copy())
        return [tracker.warmup_input.copy() for _ in active]
    past_u = np.array([r.u_hist[k - t:k] for r in active]).reshape(len(active), t, m)
    past_y = np.array([r.y_hist[k - t:k] for r in active]).reshape(len(active), t, p)
    current = np.array([r.y_hist[k] for r in active])
    # The episodes move in step: all warm, all continuing their first plans, or all cold.
    start_point, iterations = None, None
    if active[0].warm is None and active[0].prefetch is not None:
        start_point = np.stack([r.prefetch for r in active])
        iterations = tracker.iterations_per_step
        for run in active:
            run.prefetch = None
    elif active[0].warm is not None:
        warm = []
        for i, run in enumerate(active):
            # The previous plan shifted by one step (its last row repeated), moved into the
            # frame of the new measured past.
            prev = run.warm
            shifted = np.concatenate([prev[1:], prev[-1:]], axis=0)
            first = (np.concatenate([past_u[i, 0], past_y[i, 0]]) if t else
                     np.concatenate([np.full(m, np.nan), current[i]]))
            g = tracker.symmetry.frame_of_sample(first)
            warm.append(tracker.normalizer.normalize(tracker.symmetry.inverse_act(g, shifted)))
        start_point, iterations = np.stack(warm), tracker.iterations_per_step
    try:
        res = plan_batch(tracker, past_u, past_y, current_y=current, start=k, references=refs,
                         initial_point=start_point, iterations=iterations, refine=False,
                         max_time=budget)
    except Exception as exc:  # noqa: BLE001 - a failed solve ends the episodes, as in run_episode
        for run in active:
            run.error = f"{type(exc).__name__}: {exc}"
        return [None] * len(active)
    actions: list[np.ndarray | None] = []
    for i, run in enumerate(active):
        run.warm = tracker.symmetry.act(res.frames[i], tracker.normalizer.denormalize(
            np.asarray(res.windows[i], dtype=float)))
        u = res.inputs[i, 0].copy()
        if res.ood is not None and res.ood[i]:
            u = _on_ood(tracker, run, res, i, k, u)
            if u is None:
                actions.append(None)
                continue
        elif res.ood is not None:
            run.good = (k, res.inputs[i])
        if not np.all(np.isfinite(u)):
            warnings.warn("tracker produced a non-finite input; applying the warm-up input",
                          RuntimeWarning, stacklevel=3)
            u = tracker.warmup_input.copy()
        run.u_hist.append(u)
        actions.append(u)
    return actions


def _on_ood(tracker: DenoisingTracker, run: _Run, res: Any, i: int, k: int, u: np.ndarray
            ) -> np.ndarray | None:
    """The input of a flagged step under the tracker's ``on_ood`` policy (None: "raise", which
    ends the episode with an error)."""
    run.ood_steps += 1
    run.flagged.append(k)
    msg = (f"step {k}: plan flagged out of the data's distribution (estimated deviation "
           f"{res.estimated_deviation[i]:.3g} > {res.trust[i]['threshold']:.3g})")
    if tracker.on_ood == "raise":
        run.error = f"OutOfDistributionError: {msg}"
        return None
    if tracker.on_ood == "hold":
        if run.good is not None and k - run.good[0] < len(run.good[1]):
            return run.good[1][k - run.good[0]].copy()
        return tracker.warmup_input.copy()
    if run.ood_steps == 1:
        warnings.warn(msg + "; later flagged steps are counted in ood_steps", RuntimeWarning,
                      stacklevel=4)
    return u


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

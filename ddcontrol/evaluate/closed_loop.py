"""Closed-loop episodes in the true environment, and their metrics.

Both take a :class:`~ddcontrol.tracking.problem.TrackingProblem` (environment, reference, Q, R,
T_ini from it), or, in the older form, the environment and the terms separately.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ddcontrol._deprecation import renamed_keywords
from ddcontrol.data.gym_env import EnvLike, StateAccess, applied_action, env_spec, make_env
from ddcontrol.errors import ConfigurationError
from ddcontrol.tracking.cost import tracking_cost, weight_matrix
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference
from envs.dynamics import Dynamics


class Policy(Protocol):
    """What a closed-loop controller must offer (the baselines and the DenoisingTracker do)."""

    name: str
    last_solve_time_s: float

    def reset(self, observation: np.ndarray, info: dict | None = None) -> None: ...

    def act(self, observation: np.ndarray, info: dict | None = None) -> np.ndarray: ...


@dataclass
class Episode:
    """One closed-loop run.

    Attributes
    ----------
    name : str
        Controller label.
    outputs : ndarray (K, p)
        Measured outputs y_0 .. y_{K-1} (the one each action was computed from).
    inputs : ndarray (K, m)
        Applied (saturated) inputs u_0 .. u_{K-1}.
    requested : ndarray (K, m)
        Inputs as returned by the controller, before the actuator saturates them.
    states : ndarray (K + 1, n_x)
        True states.
    solve_times : ndarray (K,)
        Seconds the controller spent per step.
    error : str or None
        Why the episode stopped early (an exception, a NaN action, a diverged simulation).
    ended : str or None
        ``"terminated"`` or ``"truncated"``: a Gymnasium env (not a ddcontrol one) ended the
        episode before ``steps`` samples; not an error (e.g. a goal reached).
    state_source : str
        Where ``states`` come from (see :mod:`ddcontrol.data.gym_env`).
    ood_steps : int or None
        Steps the controller flagged as out of its data's distribution (a DenoisingTracker's
        ``ood_steps``); None for controllers that do not measure it.
    flagged_steps : list of int or None
        Which steps those were (sample indices; marked in the comparison's output plot).
    escalations : list of int or None
        The step of each rung of a DenoisingTracker's escalation ladder under
        ``on_ood="escalate"`` (None: the controller has no such policy); ``escalated_at`` is
        the first.
    sigma : float or None
        The projection σ the controller was built with (a DenoisingTracker's, its ``"auto"``
        resolved; normalised units); None for controllers without one.
    """

    name: str
    outputs: np.ndarray
    inputs: np.ndarray
    requested: np.ndarray
    states: np.ndarray
    solve_times: np.ndarray
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    ended: str | None = None
    state_source: str = "info"
    ood_steps: int | None = None
    flagged_steps: list[int] | None = None
    escalations: list[int] | None = None
    sigma: float | None = None

    @property
    def escalated_at(self) -> int | None:
        """The step from which the tracker planned with a more conservative projection (its
        first escalation), or None."""
        return self.escalations[0] if self.escalations else None

    @property
    def failed(self) -> bool:
        return self.error is not None


def problem_env(problem: TrackingProblem, env: EnvLike | None, where: str
                ) -> tuple[EnvLike, dict[str, Any] | None]:
    """The environment (and its keywords) a problem's episodes run in: ``env`` if given (an
    ``Env`` or a factory: then the problem's ``env_kwargs`` do not apply), else the problem's
    registered ``env_id``.

    Raises
    ------
    ConfigurationError
        Neither: the problem names no environment.
    """
    if env is not None:
        return env, None
    if problem.env_id is None:
        raise ConfigurationError(f"{where}: the problem names no environment; build it with "
                                 "TrackingProblem.for_env(env_id, ...), or pass env= (an id, "
                                 "a gymnasium.Env or a factory)")
    return problem.env_id, problem.env_kwargs


def _sigma_of(controller: Any) -> float | None:
    """The projection σ of a controller that has one (a number), else None."""
    sigma = getattr(controller, "sigma", None)
    return float(sigma) if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) \
        else None


@renamed_keywords(steps="length")
def run_episode(problem: TrackingProblem | EnvLike, controller: Policy, length: int | None = None,
                *, seed: int = 0, initial_state: np.ndarray | None = None,
                env_kwargs: dict[str, Any] | None = None, warmup: int | None = None,
                warmup_input: np.ndarray | None = None, env: EnvLike | None = None,
                paced: bool = False) -> Episode:
    """Run ``controller`` for ``length`` samples in a fresh episode.

    ``problem`` is a :class:`~ddcontrol.tracking.problem.TrackingProblem` (the episode runs in
    its environment, or in ``env``; ``length`` defaults to its reference's, ``warmup`` to its
    ``t_ini``), or (older form) the environment itself: a registered id, a ``gymnasium.Env``
    instance (reset here, not closed) or a factory returning one; any env with 1-D ``Box``
    spaces works. ``steps=`` is the deprecated name of ``length=``. The environment is reset with
    ``seed`` (and put in ``initial_state`` if given, where the env's state can be set), so every
    controller run with the same arguments sees the same initial state and noise. For the first
    ``warmup`` samples the controller is still called (it measures), but ``warmup_input``
    (default zero) is applied: data-driven controllers that need T_ini past samples apply
    exactly that input during their own warm-up, and with it every controller starts acting
    from the same state. A controller that raises or returns a non-finite action ends its
    episode with ``error`` set; nothing propagates.

    Episode ends: a ddcontrol env that terminates has diverged (``error`` set). Any other env
    that terminates (e.g. a goal reached) or is truncated (a time limit) ends the episode
    early without an error; ``Episode.ended`` says which, and the metrics cover what ran.
    ``Episode.states`` holds the env's own state where it exposes one, else its observations
    (``Episode.state_source``).

    ``paced`` runs the loop against the wall clock, as on a plant: each sample is taken one
    sampling time (the env's ``dt``, seconds) after the previous one, or at once when the
    controller took longer. Work a controller leaves to the background between samples (the
    tracker's confidence estimate) then runs while it waits, as it would in use; unpaced, the
    next sample comes as soon as the previous action is applied.
    """
    if isinstance(problem, TrackingProblem):
        if env_kwargs is not None:
            raise ConfigurationError("run_episode: the TrackingProblem already holds env_kwargs; "
                                     "pass the problem alone")
        env_id, env_kwargs = problem_env(problem, env, "run_episode")
        if length is None and isinstance(problem.reference, Reference):
            length = problem.reference.steps
        if warmup is None:
            warmup = problem.t_ini or 0
    else:
        if env is not None:
            raise ConfigurationError("run_episode: env= goes with a TrackingProblem; the older "
                                     "form takes the environment as its first argument")
        env_id = problem
    if length is None:
        raise ConfigurationError("run_episode: length (samples of the episode) is required")
    steps, warmup = length, warmup or 0
    env, owned = make_env(env_id, env_kwargs)
    spec = env_spec(env)
    dt = float(getattr(env.unwrapped, "dt", 0.0) or 0.0) if paced else 0.0
    if paced and not (np.isfinite(dt) and dt > 0):
        if owned:
            env.close()
        raise ConfigurationError("run_episode: paced=True needs the environment's sampling "
                                 "time as a positive env.unwrapped.dt (seconds)")
    native = isinstance(getattr(env.unwrapped, "dynamics", None), Dynamics)
    obs, info = env.reset(seed=seed)
    access = StateAccess(env, info)
    if initial_state is not None:
        obs, info = access.set(env, np.asarray(initial_state, float), seed)
    ys, us, req, xs, times = [], [], [], [access.read(env, obs, info)], []
    error = ended = None
    try:
        controller.reset(obs, info)
    except Exception as exc:  # noqa: BLE001 - a failing controller is a result, not a crash
        error = f"reset failed: {type(exc).__name__}: {exc}"
    sample_at = time.perf_counter()
    for _ in range(steps if error is None else 0):
        if paced:
            time.sleep(max(0.0, sample_at - time.perf_counter()))
        start = time.perf_counter()
        sample_at = start + dt
        try:
            action = np.asarray(controller.act(obs, info), dtype=np.float64).reshape(-1)
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
            tb = traceback.extract_tb(exc.__traceback__)
            if tb:
                error += f" (at {tb[-1].filename.split('/')[-1]}:{tb[-1].lineno})"
            break
        times.append(time.perf_counter() - start)
        if action.shape != env.action_space.shape or not np.all(np.isfinite(action)):
            error = f"invalid action {action!r}"
            times.pop()
            break
        if len(ys) < warmup:
            action = (np.zeros(env.action_space.shape) if warmup_input is None
                      else np.asarray(warmup_input, dtype=np.float64).reshape(action.shape))
        ys.append(np.array(obs, dtype=np.float64).reshape(-1))
        req.append(action)
        sent = action if native else applied_action(action, spec)
        obs, _, terminated, truncated, info = env.step(sent)
        us.append(info["applied_action"] if native else sent.astype(np.float64))
        xs.append(access.read(env, obs, info))
        if terminated and native:
            error = "simulation diverged"
            break
        if (terminated or truncated) and len(ys) < steps:
            ended = "terminated" if terminated else "truncated"
            break
    if owned:
        env.close()
    m, p = spec.input_dim, spec.output_dim
    return Episode(controller.name if hasattr(controller, "name") else type(controller).__name__,
                   np.array(ys).reshape(-1, p), np.array(us).reshape(-1, m),
                   np.array(req).reshape(-1, m), np.array(xs), np.array(times), error,
                   ended=ended, state_source=access.source,
                   ood_steps=getattr(controller, "ood_steps", None),
                   flagged_steps=getattr(controller, "flagged_steps", None),
                   escalations=getattr(controller, "escalations", None),
                   sigma=_sigma_of(controller))


def episode_metrics(episode: Episode, problem: TrackingProblem | Reference, Q: Any = None,
                    R: Any = None, *, input_low: np.ndarray | None = None,
                    input_high: np.ndarray | None = None, score_from: int | None = None
                    ) -> dict[str, Any]:
    """Tracking metrics of the samples ``k >= score_from``.

    ``problem`` is a :class:`~ddcontrol.tracking.problem.TrackingProblem` (reference, Q, R, input
    bounds — unbounded where it has none — and ``score_from`` its ``t_ini``, unless given), or
    (older form) the reference, with ``Q``, ``R``, ``input_low`` and ``input_high`` given.

    Returns ``rms_error`` (RMS over tracked channels and samples, output units), ``total_cost``
    (Σ uᵀRu + eᵀQe), ``input_energy`` (Σ‖u‖²), ``bound_violations`` (samples where the
    controller asked for an input outside the actuator limits), ``mean_solve_ms`` and
    ``max_solve_ms``, ``steps`` scored, ``failed``, ``ood_steps`` (steps the controller
    flagged out of its data, None where it does not measure it), ``escalated_at`` (the step
    from which a tracker under ``on_ood="escalate"`` planned more conservatively, or None) and
    ``escalations`` (the step of each rung of its ladder; None: no such policy).

    Raises
    ------
    ConfigurationError
        A problem with Q or R; without a problem, a missing Q, R or bound.
    """
    if isinstance(problem, TrackingProblem):
        if Q is not None or R is not None:
            raise ConfigurationError("episode_metrics: the TrackingProblem already holds Q and R; "
                                     "pass the problem alone")
        if not isinstance(problem.reference, Reference):
            raise ConfigurationError("episode_metrics needs the problem's reference as a "
                                     "Reference or an array of targets")
        reference, Q, R = problem.reference, problem.Q, problem.R
        m = problem.input_dim
        input_low = (np.full(m, -np.inf) if problem.input_low is None else problem.input_low
                     ) if input_low is None else input_low
        input_high = (np.full(m, np.inf) if problem.input_high is None else problem.input_high
                      ) if input_high is None else input_high
        if score_from is None:
            score_from = problem.t_ini or 0
    else:
        reference = problem
        missing = [k for k, v in (("Q", Q), ("R", R), ("input_low", input_low),
                                  ("input_high", input_high)) if v is None]
        if missing:
            raise ConfigurationError(f"episode_metrics: pass a TrackingProblem, or "
                                     f"{', '.join(missing)} with the reference")
        score_from = score_from or 0
    k = len(episode.outputs)
    out: dict[str, Any] = {"failed": episode.failed, "error": episode.error, "steps": k}
    out["ood_steps"] = episode.ood_steps  # flagged steps (None: not measured)
    out["escalated_at"] = episode.escalated_at
    out["escalations"] = None if episode.escalations is None else list(episode.escalations)
    if k <= score_from:
        out.update(rms_error=float("inf"), total_cost=float("inf"), input_energy=float("nan"),
                   bound_violations=0, mean_solve_ms=float("nan"), max_solve_ms=float("nan"))
        return out
    y = episode.outputs[score_from:]
    u = episode.inputs[score_from:]
    r = reference.window(score_from, len(y))
    e = reference.select(y) - r
    span = np.abs(np.asarray(input_high, float) - np.asarray(input_low, float))
    tol = 1e-9 * (1.0 + np.where(np.isfinite(span), span, 0.0))  # an open side bounds nothing
    violations = np.any((episode.requested[score_from:] < input_low - tol)
                        | (episode.requested[score_from:] > input_high + tol), axis=1)
    cost = tracking_cost(u, reference.select(y), r, weight_matrix(Q, reference.tracked_dim, "Q"),
                         weight_matrix(R, u.shape[1], "R"))
    # A failed episode is scored on what it did, but its cost is not comparable: report inf.
    out.update(rms_error=float(np.sqrt(np.mean(e ** 2))) if not episode.failed else float("inf"),
               total_cost=float(cost) if not episode.failed else float("inf"),
               input_energy=float(np.sum(u ** 2)),
               bound_violations=int(np.sum(violations)),
               mean_solve_ms=float(1e3 * np.mean(episode.solve_times)),
               max_solve_ms=float(1e3 * np.max(episode.solve_times)),
               steps=len(y))
    return out

"""Build any controller by name — the baselines and the DenoisingTracker — for one problem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ddcontrol.baselines import BASELINES, make_baseline
from ddcontrol.errors import ConfigurationError, UnknownNameError
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference
from ddcontrol.tracking.tracker import DenoisingTracker

if TYPE_CHECKING:
    from ddcontrol.data.gym_env import EnvLike

CONTROLLERS = ("denoising", *BASELINES)


def _problem_parts(problem: TrackingProblem | None, env_id: EnvLike | None, reference: Any,
                   Q: Any, R: Any, horizon: int | None, env_kwargs: dict[str, Any] | None,
                   where: str) -> tuple[EnvLike | None, Any, Any, Any, int, dict[str, Any] | None]:
    """``(env_id, reference, Q, R, horizon, env_kwargs)`` of a call in either form: a
    :class:`TrackingProblem` (then nothing it holds may be given again), or the older separate
    ``env_id, reference, Q, R, horizon``.

    Raises
    ------
    ConfigurationError
        A problem and any of the separate arguments at once; or, without a problem, one of
        them missing.
    """
    given = {k: v for k, v in (("env_id", env_id), ("reference", reference), ("Q", Q),
                               ("R", R), ("horizon", horizon), ("env_kwargs", env_kwargs))
             if v is not None}
    if problem is not None:
        if given:
            raise ConfigurationError(f"{where}: the TrackingProblem already holds "
                                     f"{', '.join(given)}; pass the problem alone")
        return (problem.env_id, problem.reference, problem.Q, problem.R, problem.horizon,
                problem.env_kwargs)
    missing = [k for k in ("env_id", "reference", "Q", "R", "horizon") if k not in given]
    if missing:
        raise ConfigurationError(f"{where}: pass a TrackingProblem (TrackingProblem.for_env("
                                 f"env_id, reference, horizon, Q=..., R=...)), or "
                                 f"{', '.join(missing)} as well")
    return env_id, reference, Q, R, horizon, env_kwargs


def _model_t_ini(model: Any, problem: TrackingProblem, t_ini: int | None) -> int:
    """T_ini of a tracker on ``model``: its window less the horizon, checked against the
    ``t_ini`` asked for (the call's, else the problem's)."""
    have = model.window_length - problem.horizon
    want = problem.t_ini if t_ini is None else t_ini
    if want is not None and want != have:
        raise ConfigurationError(f"t_ini={want} but the model's windows ({model.window_length} "
                                 f"steps) hold T_ini = {have} before the horizon "
                                 f"{problem.horizon}: use a model with windows of "
                                 f"{want + problem.horizon} steps, or t_ini={have}")
    return have


def make_tracker(model: Any, data: Any, problem: TrackingProblem | Reference, Q: Any = None,
                 R: Any = None, *, horizon: int | None = None, env_id: EnvLike | None = None,
                 env_kwargs: dict[str, Any] | None = None,
                 candidate_stride: int | None = None,
                 **options: Any) -> DenoisingTracker:
    """A receding-horizon DenoisingTracker for ``problem``: T_ini = model window − horizon.

    ``make_tracker(model, data, problem, **options)``; the older form
    ``make_tracker(model, data, reference, Q, R, horizon=..., env_id=...)`` builds the problem
    itself (:meth:`TrackingProblem.for_env`: ``env_id`` a ddcontrol or any Gymnasium id with a
    ``Box`` action space, an ``Env`` instance or a factory). Settings not in ``options`` (σ,
    solver, iterations per step, per-step time budget) are the system's
    (:func:`~ddcontrol.tracking.defaults.system_defaults`: the generic ones for a system without
    its own, e.g. ``Pendulum-v1``).

    Raises
    ------
    ConfigurationError
        No model or dataset; the problem's ``t_ini`` disagrees with the model's window.
    """
    if isinstance(problem, TrackingProblem):
        _problem_parts(problem, env_id, None, Q, R, horizon, env_kwargs, "make_tracker")
    else:
        env_id, reference, Q, R, horizon, env_kwargs = _problem_parts(
            None, env_id, problem, Q, R, horizon, env_kwargs, "make_tracker")
        problem = TrackingProblem.for_env(env_id, reference, horizon, Q=Q, R=R,
                                          env_kwargs=env_kwargs)
    if model is None or data is None:
        raise ConfigurationError("the denoising tracker needs a trained model and its dataset")
    model.check_dataset(data)
    _model_t_ini(model, problem, None)
    # The system's settings are applied by from_model (those not in ``options``).
    return DenoisingTracker.from_model(model, problem, data, candidate_stride=candidate_stride,
                                       **options)


def make_controller(name: str, problem: TrackingProblem | EnvLike,
                    reference: Reference | None = None,
                    Q: Any = None, R: Any = None, *, horizon: int | None = None,
                    data: Any = None, model: Any = None, t_ini: int | None = None,
                    env_kwargs: dict[str, Any] | None = None,
                    options: dict[str, Any] | None = None) -> Any:
    """Controller ``name`` (``CONTROLLERS``) for ``problem``.

    ``make_controller(name, problem, data=..., model=...)``; the older form
    ``make_controller(name, env_id, reference, Q, R, horizon=...)`` builds the problem itself.
    ``"denoising"`` and the baselines that identify their model from the data (``"lqr-id"``,
    ``"deepc"``, ``"koopman"``, ``"sindy"``) work for any Gymnasium environment with a ``Box``
    action space (for ``"denoising"`` in the older form, ``env_id`` may also be an ``Env``
    instance or a factory, see :meth:`TrackingProblem.for_env`); the others need a ddcontrol
    environment's dynamics.

    ``t_ini`` (default: the problem's) is the measured past: DeePC's T_ini (without one, the
    model's when a model is given, else 4), so that DeePC and the DenoisingTracker condition on
    the same past; the tracker's is its model's window less the horizon, which must agree.
    ``options`` go to the controller's constructor.
    """
    given = problem if isinstance(problem, TrackingProblem) else None
    env_id, reference, Q, R, horizon, env_kwargs = _problem_parts(
        given, problem if given is None else None, reference, Q, R, horizon, env_kwargs,
        "make_controller")
    options = dict(options or {})
    if given is not None and t_ini is None:
        t_ini = given.t_ini
    if name == "denoising":
        if not isinstance(problem, TrackingProblem):
            problem = TrackingProblem.for_env(env_id, reference, horizon, Q=Q, R=R,
                                              env_kwargs=env_kwargs)
        if model is not None:
            _model_t_ini(model, problem, t_ini)
        return make_tracker(model, data, problem, **options)
    if name not in BASELINES:
        raise UnknownNameError(f"unknown controller {name!r}; choose from {CONTROLLERS}")
    if given is not None and not isinstance(reference, Reference):
        raise ConfigurationError(f"controller {name!r} needs the problem's reference as a "
                                 "Reference or an array of targets, not a function of time")
    if name == "deepc":
        if t_ini is None:
            t_ini = model.window_length - horizon if model is not None else 4
        options.setdefault("t_ini", t_ini)
    return make_baseline(name, env_id, reference, Q, R, horizon=horizon, data=data,
                         env_kwargs=env_kwargs, **options)

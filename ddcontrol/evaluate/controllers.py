"""Build any controller by name — the baselines and the DenoisingTracker — for one problem."""

from __future__ import annotations

from typing import Any

from ddcontrol.baselines import BASELINES, make_baseline
from ddcontrol.errors import ConfigurationError, UnknownNameError
from ddcontrol.tracking.defaults import system_defaults
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference
from ddcontrol.tracking.tracker import DenoisingTracker

CONTROLLERS = ("denoising", *BASELINES)


def make_tracker(model: Any, data: Any, reference: Reference, Q: Any, R: Any, *, horizon: int,
                 env_id: str, env_kwargs: dict[str, Any] | None = None,
                 candidate_stride: int | None = None,
                 **options: Any) -> DenoisingTracker:
    """A receding-horizon DenoisingTracker for ``reference``: T_ini = model window − horizon.

    Settings not in ``options`` (σ, solver, iterations per step, per-step time budget) are the
    system's (:func:`~ddcontrol.tracking.defaults.system_defaults`).
    """
    if model is None or data is None:
        raise ConfigurationError("the denoising tracker needs a trained model and its dataset")
    model.check_dataset(data)
    for key, value in system_defaults(env_id).tracker_options(reference.dt).items():
        options.setdefault(key, value)
    problem = TrackingProblem.for_env(env_id, reference, horizon, Q=Q, R=R, env_kwargs=env_kwargs)
    return DenoisingTracker.from_model(model, problem, data, candidate_stride=candidate_stride,
                                       **options)


def make_controller(name: str, env_id: str, reference: Reference, Q: Any, R: Any, *,
                    horizon: int, data: Any = None, model: Any = None, t_ini: int | None = None,
                    env_kwargs: dict[str, Any] | None = None,
                    options: dict[str, Any] | None = None) -> Any:
    """Controller ``name`` (``CONTROLLERS``) for tracking ``reference`` on ``env_id``.

    ``t_ini`` is DeePC's past length (default: the model's T_ini when a model is given, else 4),
    so that DeePC and the DenoisingTracker condition on the same measured past.
    """
    options = dict(options or {})
    if name == "denoising":
        return make_tracker(model, data, reference, Q, R, horizon=horizon, env_id=env_id,
                            env_kwargs=env_kwargs, **options)
    if name not in BASELINES:
        raise UnknownNameError(f"unknown controller {name!r}; choose from {CONTROLLERS}")
    if name == "deepc":
        if t_ini is None:
            t_ini = model.window_length - horizon if model is not None else 4
        options.setdefault("t_ini", t_ini)
    return make_baseline(name, env_id, reference, Q, R, horizon=horizon, data=data,
                         env_kwargs=env_kwargs, **options)

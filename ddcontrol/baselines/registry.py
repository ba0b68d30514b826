"""Build any baseline controller by name, for the comparison harness and the CLI."""

from __future__ import annotations

from typing import Any

from ddcontrol.baselines.best_window import best_window
from ddcontrol.baselines.deepc import DeePC
from ddcontrol.baselines.lqr import LQRTracker
from ddcontrol.baselines.oracle import make_oracle
from ddcontrol.baselines.policy import Controller
from ddcontrol.errors import ConfigurationError, UnknownNameError
from ddcontrol.tracking.reference import Reference

__all__ = ["BASELINES", "make_baseline"]

#: name -> (needs a dataset, short description)
BASELINES: dict[str, tuple[bool, str]] = {
    "oracle": (False, "model-based finite-horizon optimum from the true state (cheats)"),
    "lqr": (False, "LQR on the true / linearised model with a Kalman filter"),
    "lqr-id": (True, "LQR on a least-squares ARX model of the data"),
    "deepc": (True, "DeePC on the data's mosaic Hankel matrix"),
    "best-window": (True, "open-loop replay of the least-cost training window"),
}


def make_baseline(name: str, env_id: str, reference: Reference, Q: Any, R: Any, *,
                  horizon: int = 20, data: Any | None = None,
                  env_kwargs: dict[str, Any] | None = None, **options: Any) -> Controller:
    """Construct the baseline controller ``name`` for a registered environment.

    Parameters
    ----------
    name : str
        One of ``BASELINES``: ``"oracle"``, ``"lqr"``, ``"lqr-id"``, ``"deepc"``,
        ``"best-window"``.
    env_id : str
        Registered environment id (the true dynamics for the model-based ones).
    reference : Reference
    Q, R : weights on the tracked outputs and the inputs.
    horizon : int
        Prediction horizon N of the oracle and DeePC (LQR is infinite-horizon; the best window
        has the reference's length).
    data : TrajectoryDataset, optional
        Required by the data-driven baselines.
    env_kwargs : dict, optional
        Environment keyword arguments.
    **options
        Forwarded to the constructor (e.g. ``t_ini``, ``lambda_g`` for DeePC; ``lag`` for
        lqr-id; ``integral_weight`` for both LQRs; ``max_iterations`` for the shooting oracle).

    Raises
    ------
    UnknownNameError
        Unknown baseline name or environment id.
    ConfigurationError
        A data-driven baseline without ``data``.
    NotApplicableError
        The baseline cannot control this system (e.g. LQR on the unicycle).
    """
    from ddcontrol.data.collect import make_dynamics

    if name not in BASELINES:
        raise UnknownNameError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    if BASELINES[name][0] and data is None:
        raise ConfigurationError(f"baseline {name!r} is data-driven: pass data=TrajectoryDataset")
    if name == "oracle":
        return make_oracle(make_dynamics(env_id, env_kwargs), reference, Q, R, horizon=horizon,
                           **options)
    if name == "lqr":
        return LQRTracker.from_dynamics(make_dynamics(env_id, env_kwargs), reference, Q, R,
                                        **options)
    if name == "lqr-id":
        return LQRTracker.from_data(data, reference, Q, R, **options)
    if name == "deepc":
        return DeePC(data, reference, Q, R, horizon=horizon, **options)
    dyn = make_dynamics(env_id, env_kwargs)
    best = best_window(data, reference, Q, R, **options)
    return best.controller(reference, Q, R, dyn.input_low, dyn.input_high)

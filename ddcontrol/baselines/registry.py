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

__all__ = ["BASELINES", "make_baseline", "tuned_deepc"]

#: name -> (needs a dataset, short description)
BASELINES: dict[str, tuple[bool, str]] = {
    "oracle": (False, "model-based finite-horizon optimum from the true state (cheats): exact QP "
                      "for linear systems, CasADi NMPC (IPOPT) for nonlinear ones when CasADi is "
                      "installed, else shooting NMPC"),
    "oracle-casadi": (False, "CasADi NMPC oracle (multiple shooting, IPOPT), any system"),
    "oracle-shooting": (False, "Gauss-Newton single-shooting NMPC oracle (scipy + torch), any "
                               "system: the dependency-free cross-check"),
    "lqr": (False, "LQR on the true / linearised model with a Kalman filter"),
    "lqr-id": (True, "LQR on a least-squares ARX model of the data"),
    "deepc": (True, "DeePC on the data's mosaic Hankel matrix"),
    "deepc-tuned": (True, "DeePC with (T_ini, λ_g, λ_y, columns) chosen on held-out data"),
    "koopman": (True, "linear MPC on an EDMD (Koopman) model of delay-embedded outputs"),
    "sindy": (True, "NMPC (CasADi) on a sparse SINDy-with-control model of delay-embedded "
                    "outputs"),
    "best-window": (True, "open-loop replay of the least-cost training window"),
}


def tuned_deepc(data: Any, reference: Reference, Q: Any, R: Any, *, horizon: int = 20,
                t_ini: int | None = None, grid: dict[str, Any] | None = None, **options: Any
                ) -> DeePC:
    """DeePC whose regularisation is chosen on held-out data (:func:`tune_deepc`).

    ``t_ini`` fixes the past length (only λ_g, λ_y and the column count are tuned); without it
    T_ini is tuned as well. The tuning is cached per dataset, so many controllers tune once.
    The chosen values are in the returned controller's ``tuning`` attribute.
    """
    from ddcontrol.baselines.tuning import tune_deepc

    grid = dict(grid or {})
    if t_ini is not None:
        grid["t_ini"] = (int(t_ini),)
    tuning = tune_deepc(data, horizon=horizon, grid=grid)
    kwargs = {**tuning.deepc_kwargs(), **options}
    ctrl = DeePC(data, reference, Q, R, horizon=horizon, **kwargs)
    ctrl.tuning = tuning
    ctrl.name = "deepc-tuned"
    return ctrl


def make_baseline(name: str, env_id: str, reference: Reference, Q: Any, R: Any, *,
                  horizon: int = 20, data: Any | None = None,
                  env_kwargs: dict[str, Any] | None = None, **options: Any) -> Controller:
    """Construct the baseline controller ``name`` for a registered environment.

    Parameters
    ----------
    name : str
        One of ``BASELINES``: ``"oracle"``, ``"oracle-casadi"``, ``"oracle-shooting"``,
        ``"lqr"``, ``"lqr-id"``, ``"deepc"``, ``"deepc-tuned"``, ``"koopman"``,
        ``"sindy"``, ``"best-window"``.
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
        lqr-id; ``integral_weight`` for both LQRs; ``max_iterations`` for the oracles;
        ``delays``, ``observables``, ``ridge`` for koopman; ``delays``, ``library``,
        ``threshold`` for sindy). ``deepc`` takes ``tune=True``: its
        (λ_g, λ_y, columns) are then chosen by :func:`~ddcontrol.baselines.tuning.tune_deepc`
        on held-out data with the given ``t_ini`` (or, without one, T_ini too, as
        ``"deepc-tuned"`` does; ``"deepc-tuned"`` with a ``t_ini`` keeps it fixed likewise).

    Raises
    ------
    UnknownNameError
        Unknown baseline name.
    envs.registry.UnknownEnvironmentError
        Unknown environment id (a ``ValueError``).
    ConfigurationError
        A data-driven baseline without ``data``.
    NotApplicableError
        The baseline cannot control this system (e.g. LQR on the unicycle).
    """
    from envs.registry import make_dynamics

    if name not in BASELINES:
        raise UnknownNameError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    if BASELINES[name][0] and data is None:
        raise ConfigurationError(f"baseline {name!r} is data-driven: pass data=TrajectoryDataset")
    if name in ("oracle", "oracle-casadi", "oracle-shooting"):
        backend = {"oracle": "auto", "oracle-casadi": "casadi", "oracle-shooting": "shooting"}
        ctrl = make_oracle(make_dynamics(env_id, env_kwargs), reference, Q, R, horizon=horizon,
                           backend=backend[name], **options)
        if name != "oracle":
            ctrl.name = name
        return ctrl
    if name == "lqr":
        return LQRTracker.from_dynamics(make_dynamics(env_id, env_kwargs), reference, Q, R,
                                        **options)
    if name == "lqr-id":
        return LQRTracker.from_data(data, reference, Q, R, **options)
    if name == "deepc" and not options.pop("tune", False):
        return DeePC(data, reference, Q, R, horizon=horizon, **options)
    if name in ("deepc", "deepc-tuned"):
        ctrl = tuned_deepc(data, reference, Q, R, horizon=horizon, **options)
        ctrl.name = name
        return ctrl
    if name == "koopman":
        from ddcontrol.baselines.koopman import KoopmanMPC

        return KoopmanMPC(data, reference, Q, R, horizon=horizon, **options)
    if name == "sindy":
        from ddcontrol.baselines.sindy import SINDyMPC

        return SINDyMPC(data, reference, Q, R, horizon=horizon, **options)
    # The bounds the data were collected under (any Gymnasium env, or measured data), as DeePC.
    best = best_window(data, reference, Q, R, **options)
    return best.controller(reference, Q, R, *data.input_bounds)

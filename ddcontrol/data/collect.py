"""Collect input-output trajectories from any registered ddcontrol environment, batched."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

import envs
from ddcontrol import __version__
from ddcontrol._validation import check_positive_int
from ddcontrol.data.dataset import TrajectoryDataset
from ddcontrol.data.excitation import get_excitation
from ddcontrol.errors import DimensionError, NonFiniteError, UnknownNameError
from envs.dynamics import Dynamics


def make_dynamics(env_id: str, env_kwargs: dict[str, Any] | None = None) -> Dynamics:
    """The batched dynamics behind a registered environment id.

    Raises
    ------
    UnknownNameError
        ``env_id`` is not registered, or its environment exposes no ``dynamics``.
    """
    envs.register_envs()
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("ddcontrol/"))
        raise UnknownNameError(f"unknown environment id {env_id!r}; ddcontrol provides {known}")
    env = gym.make(env_id, **(env_kwargs or {}))
    dynamics = getattr(env.unwrapped, "dynamics", None)
    env.close()
    if not isinstance(dynamics, Dynamics):
        raise UnknownNameError(f"{env_id} has no batched `dynamics`; use a ddcontrol environment "
                               "or wrap your env (see examples/bring_your_own_system.py)")
    return dynamics


def collect(env_id: str, num_trajectories: int, horizon: int, *,
            excitation: str = "mixed", excitation_params: dict[str, Any] | None = None,
            seed: int = 0, env_kwargs: dict[str, Any] | None = None,
            initial_states: np.ndarray | None = None, noise: bool = True,
            progress: bool = False) -> TrajectoryDataset:
    """Simulate ``num_trajectories`` episodes of ``horizon`` steps under an excitation signal.

    Parameters
    ----------
    env_id : str
        A registered id, e.g. ``"ddcontrol/Unicycle-v0"``.
    num_trajectories, horizon : int
        N episodes of T steps (T samples of u and y).
    excitation : str
        ``"uniform-hold"``, ``"prbs"``, ``"gaussian"``, ``"sines"`` or ``"mixed"``
        (see :mod:`ddcontrol.data.excitation`); ``excitation_params`` are forwarded to it.
    seed : int
        Seeds the initial states, the excitation and the noise: same seed, same data.
    env_kwargs : dict, optional
        Keyword arguments of the environment (e.g. ``{"outputs": ["x", "y"]}``).
    initial_states : ndarray, shape (N, n_x) or (n_x,), optional
        Fixed initial states; default: drawn from the environment's starting distribution.
    noise : bool
        Apply the environment's process/measurement noise (if it has any).
    progress : bool
        Show a progress bar over time steps.

    Returns
    -------
    TrajectoryDataset
        u (N, T, m), y (N, T, p), x (N, T + 1, n_x) and metadata.
    """
    n = check_positive_int(num_trajectories, "num_trajectories")
    horizon = check_positive_int(horizon, "horizon")
    excite = get_excitation(excitation)
    dyn = make_dynamics(env_id, env_kwargs)
    rng = np.random.default_rng(seed)
    if initial_states is None:
        x0 = dyn.sample_initial_states(rng, n)
    else:
        x0 = np.asarray(initial_states, dtype=np.float64)
        x0 = np.broadcast_to(x0, (n, dyn.state_dim)) if x0.ndim == 1 else x0
        if x0.shape != (n, dyn.state_dim):
            raise DimensionError(f"initial_states must have shape ({n}, {dyn.state_dim}) or "
                                 f"({dyn.state_dim},), got {x0.shape}")
        if not np.all(np.isfinite(x0)):
            raise NonFiniteError("initial_states contains NaN or inf")
    params = dict(excitation_params or {})
    try:
        u = excite(rng, n, horizon, dyn.input_low, dyn.input_high, **params)
    except TypeError as exc:
        raise UnknownNameError(f"bad parameters {params} for excitation {excitation!r}: {exc}"
                               ) from exc
    y, x = _simulate(dyn, x0, u, rng if noise else None, progress)
    metadata = {
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs or {}),
        "dt": dyn.dt,
        "input_names": list(dyn.input_names),
        "output_names": list(dyn.output_names),
        "state_names": list(dyn.state_names),
        "input_low": dyn.input_low.tolist(),
        "input_high": dyn.input_high.tolist(),
        "excitation": excitation,
        "excitation_params": params,
        "seed": seed,
        "noise": bool(noise),
        "ddcontrol_version": __version__,
    }
    return TrajectoryDataset(u=dyn.saturate(u), y=y, x=x, metadata=metadata)


def _simulate(dyn: Dynamics, x0: np.ndarray, u: np.ndarray, rng: np.random.Generator | None,
              progress: bool) -> tuple[np.ndarray, np.ndarray]:
    if not progress:
        return dyn.simulate(x0, u, rng)
    from tqdm.auto import tqdm

    # Simulate in time chunks so the bar moves; the chunks chain through the last state/input.
    n, horizon, _ = u.shape
    ys, xs = [], [x0[:, None]]
    u_prev = None
    chunk = max(1, horizon // 20)
    with tqdm(total=horizon, desc="simulating", unit="step") as bar:
        for k in range(0, horizon, chunk):
            y_c, x_c = dyn.simulate(xs[-1][:, -1], u[:, k:k + chunk], rng, u_prev=u_prev)
            ys.append(y_c)
            xs.append(x_c[:, 1:])
            u_prev = dyn.saturate(u[:, min(k + chunk, horizon) - 1])
            bar.update(y_c.shape[1])
    return np.concatenate(ys, axis=1), np.concatenate(xs, axis=1)

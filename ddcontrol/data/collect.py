"""Collect input-output trajectories: batched from ddcontrol's environments, episode by episode from
any other Gymnasium environment with Box spaces (see :mod:`ddcontrol.data.gym_env`)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ddcontrol import __version__
from ddcontrol._validation import check_positive_int
from ddcontrol.data.dataset import TrajectoryDataset
from ddcontrol.data.excitation import get_excitation
from ddcontrol.data.gym_env import EnvLike, StateAccess, env_label, env_spec, has_dynamics, make_env
from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError, UnknownNameError
from envs.dynamics import Dynamics
from envs.registry import UnknownEnvironmentError
from envs.registry import make_dynamics as _env_dynamics


def make_dynamics(env_id: str, env_kwargs: dict[str, Any] | None = None) -> Dynamics:
    """The batched dynamics behind a registered environment id.

    Kept here for compatibility: the lookup lives in :func:`envs.registry.make_dynamics`.

    Raises
    ------
    UnknownNameError
        ``env_id`` is not registered, or its environment exposes no ``dynamics``.
    """
    try:
        return _env_dynamics(env_id, env_kwargs)
    except UnknownEnvironmentError as exc:
        raise UnknownNameError(str(exc)) from exc


def _renamed_argument(value: Any, old_value: Any, name: str, old_name: str, where: str) -> Any:
    """``value``, or ``old_value`` given under the deprecated keyword ``old_name`` (with a
    ``DeprecationWarning``); one of the two is required, not both.

    Raises
    ------
    ConfigurationError
        Both or neither given.
    """
    if old_value is not None:
        if value is not None:
            raise ConfigurationError(f"{where}: pass {name}= only ({old_name}= is its old name)")
        warnings.warn(f"{where}: {old_name}= is deprecated, use {name}= (the trajectory "
                      f"length; 'horizon' is the planning horizon)", DeprecationWarning,
                      stacklevel=3)
        return old_value
    if value is None:
        raise ConfigurationError(f"{where}: {name} is required (steps per trajectory)")
    return value


def collect(env_id: EnvLike, num_trajectories: int, length: int | None = None, *,
            excitation: str = "mixed", excitation_params: dict[str, Any] | None = None,
            seed: int = 0, env_kwargs: dict[str, Any] | None = None,
            initial_states: np.ndarray | None = None, noise: bool = True,
            progress: bool = False, dt: float | None = None,
            input_names: list[str] | None = None, output_names: list[str] | None = None,
            max_attempts: int | None = None, horizon: int | None = None) -> TrajectoryDataset:
    """Simulate ``num_trajectories`` episodes of ``length`` steps under an excitation signal.

    A ddcontrol id runs batched on its :class:`~envs.dynamics.Dynamics`. Any other Gymnasium
    environment (an id, an ``Env`` instance or a factory; 1-D ``Box`` spaces, finite action
    bounds) is stepped episode by episode: episode ``i`` is reset with
    ``metadata["episode_seeds"][i]``, so that :func:`ddcontrol.evaluate.replay.verify_dataset`
    can replay it. ``x`` holds the env's own state where it exposes one, else its observations
    (``metadata["state_source"]``: ``"info"``, ``"mujoco"``, ``"attribute"`` or
    ``"observations"``; with ``"observations"``, ``x[:, :T]`` equals ``y``). The recorded
    inputs are the actions as applied (clipped to the action space, in its dtype).

    **Early ends.** An episode that terminates or is truncated before ``length`` steps is
    *dropped* and another one (the next seed) is tried in its place; their count is
    ``metadata["dropped_episodes"]``. After ``max_attempts`` episodes (default
    ``4 * num_trajectories + 10``) without N complete ones, ``ConfigurationError`` is raised
    (use a shorter length, or raise the env's ``max_episode_steps``).

    Parameters
    ----------
    env_id : str, gymnasium.Env or callable
        A registered id, e.g. ``"ddcontrol/Unicycle-v0"`` or ``"Pendulum-v1"``; an ``Env``
        instance (used as is, not closed); or a factory returning a fresh ``Env``.
    num_trajectories, length : int
        N episodes of T steps (T samples of u and y). ``horizon=`` is the deprecated name of
        ``length`` (a ``DeprecationWarning``; "horizon" now means the planning horizon only).
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
        Show a progress bar over time steps (episodes for a foreign env).
    dt, input_names, output_names : optional
        Foreign envs only: the sampling time (default ``env.unwrapped.dt``; 1.0 and
        ``metadata["dt_known"] = False`` without one) and channel names (default ``u0 ..``,
        ``y0 ..``).
    max_attempts : int, optional
        Foreign envs only: episodes tried before giving up (see "Early ends").

    Returns
    -------
    TrajectoryDataset
        u (N, T, m), y (N, T, p), x (N, T + 1, n_x) and metadata.
    """
    n = check_positive_int(num_trajectories, "num_trajectories")
    horizon = check_positive_int(_renamed_argument(length, horizon, "length", "horizon",
                                                  "collect"), "length")
    excite = get_excitation(excitation)
    if not has_dynamics(env_id, env_kwargs):
        return _collect_gym(env_id, n, horizon, excite=excite, excitation=excitation,
                            excitation_params=excitation_params, seed=seed,
                            env_kwargs=env_kwargs, initial_states=initial_states,
                            progress=progress, dt=dt, input_names=input_names,
                            output_names=output_names, max_attempts=max_attempts)
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
        "state_source": "dynamics",
        "ddcontrol_version": __version__,
    }
    return TrajectoryDataset(u=dyn.saturate(u), y=y, x=x, metadata=metadata)


def _collect_gym(env: EnvLike, n: int, horizon: int, *, excite: Any, excitation: str,
                 excitation_params: dict[str, Any] | None, seed: int,
                 env_kwargs: dict[str, Any] | None, initial_states: np.ndarray | None,
                 progress: bool, dt: float | None, input_names: list[str] | None,
                 output_names: list[str] | None, max_attempts: int | None) -> TrajectoryDataset:
    """:func:`collect` for a Gymnasium env without batched dynamics: episode by episode."""
    from ddcontrol.data.gym_env import rollout

    made, owned = make_env(env, env_kwargs)
    try:
        spec = env_spec(made, env_label(env, made))
        for name, names, dim in (("input_names", input_names, spec.input_dim),
                                 ("output_names", output_names, spec.output_dim)):
            if names is not None and len(names) != dim:
                raise DimensionError(f"{name} has {len(names)} entries, the env has {dim}")
        limit = 4 * n + 10 if max_attempts is None else check_positive_int(max_attempts,
                                                                           "max_attempts")
        x0 = None
        if initial_states is not None:
            x0 = np.asarray(initial_states, dtype=np.float64)
            x0 = np.broadcast_to(x0, (n, x0.shape[-1])) if x0.ndim == 1 else x0
            if x0.ndim != 2 or len(x0) != n:
                raise DimensionError(f"initial_states must have shape ({n}, n_x) or (n_x,), "
                                     f"got {np.shape(initial_states)}")
            if not np.all(np.isfinite(x0)):
                raise NonFiniteError("initial_states contains NaN or inf")
            limit = n  # a fixed start per episode: nothing to draw in place of a dropped one
        params = dict(excitation_params or {})
        # Episode seeds and excitations come from independent streams of `seed`.
        seed_seq, excite_seq = np.random.SeedSequence(seed).spawn(2)
        seeds = seed_seq.generate_state(limit, dtype=np.uint32).astype(np.int64)
        rng = np.random.default_rng(excite_seq)
        try:
            u_all = excite(rng, limit, horizon, spec.input_low, spec.input_high, **params)
        except TypeError as exc:
            raise UnknownNameError(f"bad parameters {params} for excitation {excitation!r}: "
                                   f"{exc}") from exc
        us, ys, xs, kept, ended = [], [], [], [], []
        source = None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="collecting", unit="episode")
        for i in range(limit):
            if len(us) == n:
                break
            start = None if x0 is None else x0[len(us)]
            r = rollout(made, u_all[i], seed=int(seeds[i]), state=start, spec=spec)
            source = r.state_source
            if r.ended_at is not None:
                ended.append((int(seeds[i]), r.ended_at + 1, r.terminated))
                continue
            us.append(r.inputs)
            ys.append(r.outputs)
            xs.append(r.states)
            kept.append(int(seeds[i]))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if len(us) < n:
            lengths = sorted({e[1] for e in ended})[:5]
            raise ConfigurationError(
                f"{spec.label}: only {len(us)} of {n} episodes ran {horizon} steps in {limit} "
                f"attempts; the others ended early (after {lengths} steps; terminated: "
                f"{any(e[2] for e in ended)}). Use a shorter horizon or a larger "
                "max_episode_steps (env_kwargs) / max_attempts")
        state_dim = xs[0].shape[1]
        access_names = StateAccess(made).names(state_dim) if source != "info" else [
            f"x{j}" for j in range(state_dim)]
    finally:
        if owned:
            made.close()
    known_dt = dt is not None or spec.dt is not None
    metadata = {
        "env_id": spec.label,
        "env_kwargs": dict(env_kwargs or {}),
        "dt": float(dt if dt is not None else (spec.dt or 1.0)),
        "dt_known": bool(known_dt),
        "input_names": list(input_names or spec.input_names),
        "output_names": list(output_names or spec.output_names),
        "state_names": access_names,
        "state_source": source,
        "input_low": spec.input_low.tolist(),
        "input_high": spec.input_high.tolist(),
        "excitation": excitation,
        "excitation_params": params,
        "seed": seed,
        "episode_seeds": kept,
        "dropped_episodes": len(ended),
        "initial_states_given": x0 is not None,
        "noise": None,
        "simulator": "gymnasium",
        "ddcontrol_version": __version__,
    }
    return TrajectoryDataset(u=np.array(us), y=np.array(ys), x=np.array(xs), metadata=metadata)


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

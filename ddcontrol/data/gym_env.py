"""Any Gymnasium environment with Box spaces as a data source and a replay simulator.

ddcontrol's own environments expose batched :class:`~envs.dynamics.Dynamics`; any other
Gymnasium environment is stepped one episode at a time. Three things are needed from it:

* **Channels.** Inputs are the action vector (a 1-D ``Box`` with finite bounds), outputs the
  observation vector (a 1-D ``Box``), measured before each action (the datasets' convention).
* **A state, if it has one.** Read, in this order: ``info["state"]`` (ddcontrol's convention),
  MuJoCo's ``(qpos, qvel)`` (``env.unwrapped.data``), an array attribute ``env.unwrapped.state``
  (Gymnasium's classic-control environments). When none exists the *observations* stand in for
  the state, and :attr:`StateAccess.source` says so (``"observations"``): it is recorded in the
  dataset's metadata, never silently.
* **Determinism.** Replay resets with the recorded episode's seed and re-applies the recorded
  inputs; where the state can also be *set* (ddcontrol's ``reset(options={"state": x})``,
  MuJoCo's ``set_state``, a classic-control ``state`` attribute with ``_get_obs``), a replay can
  start from a recorded state directly.

``EnvLike`` is a registered id, an ``Env`` instance (used as is, never closed here) or a callable
returning a fresh ``Env``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from ddcontrol.errors import ConfigurationError, DimensionError, UnknownNameError

EnvLike = str | gym.Env | Callable[[], gym.Env]

#: ``metadata["state_source"]`` values.
STATE_SOURCES = ("info", "mujoco", "attribute", "observations")


def make_env(env: EnvLike, env_kwargs: dict[str, Any] | None = None) -> tuple[gym.Env, bool]:
    """A Gymnasium env from an id, an instance or a factory, and whether the caller owns it.

    Returns
    -------
    env : gym.Env
    owned : bool
        True when the env was created here (the caller closes it); False for an instance.

    Raises
    ------
    UnknownNameError
        An id that is not registered.
    ConfigurationError
        ``env_kwargs`` with an instance, or a factory that does not return an ``Env``.
    """
    if isinstance(env, str):
        import envs

        envs.register_envs()
        if env not in gym.registry:
            raise UnknownNameError(f"unknown environment id {env!r} (not registered with "
                                   "Gymnasium; pass an Env instance or a factory instead)")
        return gym.make(env, **(env_kwargs or {})), True
    if isinstance(env, gym.Env):
        if env_kwargs:
            raise ConfigurationError("env_kwargs apply to an environment id, not to an Env "
                                     "instance")
        return env, False
    if callable(env):
        made = env(**(env_kwargs or {}))
        if not isinstance(made, gym.Env):
            raise ConfigurationError(f"the environment factory returned {type(made).__name__}, "
                                     "not a gymnasium.Env")
        return made, True
    raise ConfigurationError(f"env must be an id, a gymnasium.Env or a factory, got "
                             f"{type(env).__name__}")


def env_label(env: EnvLike, instance: gym.Env | None = None) -> str:
    """A name for metadata: the id, else the registered spec's id, else the class name."""
    if isinstance(env, str):
        return env
    made = instance if instance is not None else (env if isinstance(env, gym.Env) else None)
    if made is not None and made.spec is not None:
        return made.spec.id
    if made is not None:
        return type(made.unwrapped).__name__
    return getattr(env, "__name__", type(env).__name__)


def has_dynamics(env: EnvLike, env_kwargs: dict[str, Any] | None = None) -> bool:
    """True for an id of a ddcontrol environment (batched :class:`~envs.dynamics.Dynamics`)."""
    if not isinstance(env, str):
        return False
    from envs.dynamics import Dynamics

    made, _ = make_env(env, env_kwargs)
    try:
        return isinstance(getattr(made.unwrapped, "dynamics", None), Dynamics)
    finally:
        made.close()


@dataclass
class EnvSpec:
    """What ddcontrol needs to know about an environment's channels (from its spaces)."""

    label: str
    input_dim: int
    output_dim: int
    input_low: np.ndarray
    input_high: np.ndarray
    action_dtype: np.dtype
    dt: float | None
    input_names: list[str]
    output_names: list[str]


def env_spec(env: gym.Env, label: str = "") -> EnvSpec:
    """Check the spaces (1-D ``Box`` action with finite bounds, 1-D ``Box`` observation) and
    describe the channels. ``dt`` is ``env.unwrapped.dt`` when the env has one, else None.

    Raises
    ------
    DimensionError
        A space that is not a 1-D ``Box``, or an action space without finite bounds.
    """
    act, obs = env.action_space, env.observation_space
    name = label or env_label(env, env)
    for what, space in (("action", act), ("observation", obs)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise DimensionError(f"{name}: the {what} space must be a 1-D gymnasium.spaces.Box, "
                                 f"got {space}")
    low = np.asarray(act.low, dtype=np.float64)
    high = np.asarray(act.high, dtype=np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise DimensionError(f"{name}: the action space {act} has infinite bounds; excitation "
                             "and planning need finite input limits (wrap the env with "
                             "gymnasium.wrappers.ClipAction or a Box of finite bounds)")
    base = env.unwrapped
    dyn = getattr(base, "dynamics", None)
    dt = getattr(base, "dt", None)
    dt = float(dt) if isinstance(dt, (int, float, np.floating)) and dt > 0 else None
    in_names = [str(n) for n in getattr(dyn, "input_names", ())] or [
        f"u{j}" for j in range(low.size)]
    out_names = [str(n) for n in getattr(dyn, "output_names", ())] or [
        f"y{j}" for j in range(obs.shape[0])]
    return EnvSpec(name, int(low.size), int(obs.shape[0]), low, high, np.dtype(act.dtype), dt,
                   in_names, out_names)


class StateAccess:
    """How to read (and, where possible, set) an environment's own state.

    Attributes
    ----------
    source : str
        One of ``STATE_SOURCES``: ``"info"`` (``info["state"]``), ``"mujoco"`` (``qpos``,
        ``qvel``), ``"attribute"`` (``env.unwrapped.state``) or ``"observations"`` (no state
        exposed: the observations stand in for it).
    can_set : bool
        True when :meth:`set` can start an episode from a given state.
    """

    def __init__(self, env: gym.Env, info: dict | None = None) -> None:
        base = env.unwrapped
        data = getattr(base, "data", None)
        if info is not None and "state" in info:
            self.source, self.can_set = "info", True
        elif data is not None and hasattr(data, "qpos") and hasattr(data, "qvel"):
            self.source = "mujoco"
            self.can_set = hasattr(base, "set_state") and hasattr(base, "_get_obs")
        elif isinstance(getattr(base, "state", None), np.ndarray) and np.issubdtype(
                np.asarray(base.state).dtype, np.number):
            self.source = "attribute"
            self.can_set = hasattr(base, "_get_obs")
        else:
            self.source, self.can_set = "observations", False
        self._nq = int(np.asarray(data.qpos).size) if self.source == "mujoco" else 0

    def read(self, env: gym.Env, obs: np.ndarray, info: dict) -> np.ndarray:
        """The current state as a float64 vector (a copy)."""
        base = env.unwrapped
        if self.source == "info":
            return np.array(info["state"], dtype=np.float64).reshape(-1)
        if self.source == "mujoco":
            return np.concatenate([np.ravel(base.data.qpos), np.ravel(base.data.qvel)]
                                  ).astype(np.float64)
        if self.source == "attribute":
            return np.array(base.state, dtype=np.float64).reshape(-1)
        return np.array(obs, dtype=np.float64).reshape(-1)

    def names(self, dim: int) -> list[str]:
        """Names of the ``dim`` state components."""
        if self.source == "mujoco":
            return [f"qpos{j}" for j in range(self._nq)] + [f"qvel{j}" for j in range(dim - self._nq)]
        prefix = "obs" if self.source == "observations" else "x"
        return [f"{prefix}{j}" for j in range(dim)]

    def set(self, env: gym.Env, state: np.ndarray, seed: int | None) -> tuple[np.ndarray, dict]:
        """Reset with ``seed``, then put the env in ``state``; return the observation and the
        reset's info there.

        Raises
        ------
        ConfigurationError
            The environment's state cannot be set (``can_set`` is False).
        """
        if not self.can_set:
            raise ConfigurationError(f"the state of this environment ({self.source}) cannot be "
                                     "set; replay from the episode's seed and inputs instead")
        state = np.asarray(state, dtype=np.float64)
        if self.source == "info":
            obs, info = env.reset(seed=seed, options={"state": state})
            return np.asarray(obs, dtype=np.float64), info
        _, info = env.reset(seed=seed)
        base = env.unwrapped
        if self.source == "mujoco":
            base.set_state(state[: self._nq], state[self._nq:])
        else:
            old = np.asarray(base.state)
            if old.size != state.size:
                raise DimensionError(f"state must have {old.size} components, got {state.size}")
            base.state = state.reshape(old.shape).astype(old.dtype)
        return np.asarray(base._get_obs(), dtype=np.float64), info


@dataclass
class Rollout:
    """One episode of recorded inputs through a Gymnasium env.

    Attributes
    ----------
    inputs : ndarray (K, m)
        Inputs as applied (cast to the action dtype and clipped to the action space).
    outputs : ndarray (K, p)
        Observations ``y_k`` measured before ``inputs[k]``.
    states : ndarray (K + 1, n_x)
        The env's state (or its observations, see ``state_source``) before each input and after
        the last one.
    ended_at : int or None
        Step after which the env terminated or was truncated before the inputs ran out
        (``K = ended_at + 1 < len(requested)``); None when every input was applied.
    terminated : bool
        Whether that early end was a termination (not a truncation).
    state_source : str
    """

    inputs: np.ndarray
    outputs: np.ndarray
    states: np.ndarray
    ended_at: int | None
    terminated: bool
    state_source: str


def applied_action(action: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """The action as the env receives it: clipped to the action space and cast to its dtype."""
    clipped = np.clip(np.asarray(action, dtype=np.float64).reshape(spec.input_dim),
                      spec.input_low, spec.input_high)
    return clipped.astype(spec.action_dtype)


def rollout(env: gym.Env, inputs: np.ndarray, *, seed: int | None = None,
            state: np.ndarray | None = None, spec: EnvSpec | None = None) -> Rollout:
    """Reset ``env`` with ``seed`` (and put it in ``state`` if given), then apply ``inputs``.

    Parameters
    ----------
    inputs : ndarray (K, m)
        Physical units; clipped to the action space.
    seed : int, optional
        Reset seed: the same seed and inputs give the same episode (deterministic envs).
    state : ndarray (n_x,), optional
        Start from this state instead (needs :attr:`StateAccess.can_set`).

    Returns
    -------
    Rollout
        Stops early if the env terminates or is truncated.
    """
    spec = spec or env_spec(env)
    u = np.asarray(inputs, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != spec.input_dim:
        raise DimensionError(f"inputs must have shape (K, {spec.input_dim}), got {u.shape}")
    obs, info = env.reset(seed=seed)
    access = StateAccess(env, info)
    if state is not None:
        obs, info = access.set(env, state, seed)
    xs = [access.read(env, obs, info)]
    ys, us = [], []
    ended_at, terminated = None, False
    for k in range(len(u)):
        action = applied_action(u[k], spec)
        ys.append(np.array(obs, dtype=np.float64).reshape(-1))
        us.append(action.astype(np.float64))
        obs, _reward, term, trunc, info = env.step(action)
        xs.append(access.read(env, obs, info))
        if (term or trunc) and k < len(u) - 1:
            ended_at, terminated = k, bool(term)
            break
    p = spec.output_dim
    return Rollout(np.array(us).reshape(-1, spec.input_dim), np.array(ys).reshape(-1, p),
                   np.array(xs), ended_at, terminated, access.source)


class EnvSimulator:
    """Replays inputs in a Gymnasium environment, one episode at a time (any env with Box
    spaces). Created from an id, an instance or a factory; :meth:`close` closes an env made here.

    Parameters
    ----------
    env : EnvLike
    env_kwargs : dict, optional
        For an id or a factory.
    """

    def __init__(self, env: EnvLike, env_kwargs: dict[str, Any] | None = None) -> None:
        self.env, self._owned = make_env(env, env_kwargs)
        self.spec = env_spec(self.env, env_label(env, self.env))
        _, info = self.env.reset(seed=0)
        self.access = StateAccess(self.env, info)

    @property
    def can_set_state(self) -> bool:
        return self.access.can_set

    def run(self, inputs: np.ndarray, *, seed: int | None = None,
            prefix_inputs: np.ndarray | None = None, state: np.ndarray | None = None
            ) -> Rollout:
        """Reset with ``seed`` (or set ``state``), apply ``prefix_inputs`` then ``inputs``; the
        returned rollout covers ``inputs`` only (its ``states[0]`` is the state before them).

        Raises
        ------
        ConfigurationError
            The episode ended before all inputs were applied.
        """
        u = np.asarray(inputs, dtype=np.float64).reshape(-1, self.spec.input_dim)
        pre = np.zeros((0, self.spec.input_dim)) if prefix_inputs is None else np.asarray(
            prefix_inputs, dtype=np.float64).reshape(-1, self.spec.input_dim)
        r = rollout(self.env, np.concatenate([pre, u]), seed=seed, state=state, spec=self.spec)
        if r.ended_at is not None:
            raise ConfigurationError(f"{self.spec.label}: the episode ended (terminated={r.terminated}) "
                                     f"after step {r.ended_at} of {len(pre) + len(u)}")
        k = len(pre)
        return Rollout(r.inputs[k:], r.outputs[k:], r.states[k:], None, False, r.state_source)

    def close(self) -> None:
        if self._owned:
            self.env.close()

    def __enter__(self) -> EnvSimulator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

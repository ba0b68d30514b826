"""Environment lookup: from a registered Gymnasium id to the batched dynamics behind it.

The one place where an environment id is turned into a simulator model. The data layer (to
collect), the problem layer (references and actuator limits), the baselines (true or linearised
models) and the evaluation (replay) all ask here; none of them needs the others for it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from envs.dynamics import Dynamics
from envs.errors import EnvError

__all__ = ["UnknownEnvironmentError", "ddcontrol_env_ids", "make_dynamics"]


class UnknownEnvironmentError(EnvError):
    """An environment id is not registered, or its environment has no batched ``dynamics``."""


def ddcontrol_env_ids() -> list[str]:
    """The registered ``ddcontrol/*`` ids, sorted (registering them first if needed)."""
    import envs

    envs.register_envs()
    return sorted(k for k in gym.registry if k.startswith("ddcontrol/"))


def make_dynamics(env_id: str, env_kwargs: dict[str, Any] | None = None) -> Dynamics:
    """The batched dynamics behind a registered environment id.

    Parameters
    ----------
    env_id : str
        A registered id whose environment exposes ``env.unwrapped.dynamics``, e.g.
        ``"ddcontrol/Unicycle-v0"``.
    env_kwargs : dict, optional
        Keyword arguments of the environment (e.g. ``{"outputs": ["x", "y"]}``).

    Returns
    -------
    Dynamics
        The environment's simulator model (same parameters as ``gym.make(env_id, **env_kwargs)``).

    Raises
    ------
    UnknownEnvironmentError
        ``env_id`` is not registered, or its environment exposes no ``dynamics``.
    """
    known = ddcontrol_env_ids()
    if env_id not in gym.registry:
        raise UnknownEnvironmentError(f"unknown environment id {env_id!r}; ddcontrol provides "
                                      f"{known}")
    env = gym.make(env_id, **(env_kwargs or {}))
    dynamics = getattr(env.unwrapped, "dynamics", None)
    env.close()
    if not isinstance(dynamics, Dynamics):
        raise UnknownEnvironmentError(
            f"{env_id} has no batched `dynamics`; use a ddcontrol environment or wrap your env "
            "(see examples/bring_your_own_system.py)")
    return dynamics

"""True simulators of ddcontrol, registered with Gymnasium.

Importing this package (``import envs``, or ``import ddcontrol``) registers:

==============================  =========================================================
id                              system
==============================  =========================================================
``ddcontrol/DoublePendulum-v0``  double pendulum, torque on joint 1, outputs (θ1, θ2)
``ddcontrol/Unicycle-v0``        unicycle with acceleration inputs, full-state output
``ddcontrol/LinearSystem-v0``    any LTI system (default preset: mass-spring-damper)
``ddcontrol/MassSpringDamper-v0`` SISO preset
``ddcontrol/CoupledMasses-v0``   2-input 2-output preset
==============================  =========================================================

The environments know nothing of learning: each is a small Gymnasium wrapper around a batched
:class:`envs.dynamics.Dynamics`, which the dataset generator and replay verifier use directly.
"""

from __future__ import annotations

import gymnasium as gym

from envs.double_pendulum import DoublePendulumEnv
from envs.dynamics import (
    DoublePendulumDynamics,
    Dynamics,
    LinearDynamics,
    UnicycleDynamics,
    linear_preset,
)
from envs.errors import EnvConfigurationError, EnvError, InvalidActionError, InvalidStateError
from envs.linear import LinearSystemEnv
from envs.registry import UnknownEnvironmentError, make_dynamics
from envs.unicycle import UnicycleEnv

ENV_IDS: dict[str, tuple[str, dict]] = {
    "ddcontrol/DoublePendulum-v0": ("envs.double_pendulum:DoublePendulumEnv", {}),
    "ddcontrol/Unicycle-v0": ("envs.unicycle:UnicycleEnv", {}),
    "ddcontrol/LinearSystem-v0": ("envs.linear:LinearSystemEnv", {}),
    "ddcontrol/MassSpringDamper-v0": ("envs.linear:LinearSystemEnv",
                                      {"preset": "mass-spring-damper"}),
    "ddcontrol/CoupledMasses-v0": ("envs.linear:LinearSystemEnv", {"preset": "coupled-masses"}),
}
MAX_EPISODE_STEPS = 1000


def register_envs() -> None:
    """Register every ddcontrol environment with Gymnasium (idempotent)."""
    for env_id, (entry_point, kwargs) in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs,
                         max_episode_steps=MAX_EPISODE_STEPS)


register_envs()

__all__ = [
    "ENV_IDS",
    "register_envs",
    "Dynamics",
    "DoublePendulumDynamics",
    "UnicycleDynamics",
    "LinearDynamics",
    "linear_preset",
    "DoublePendulumEnv",
    "UnicycleEnv",
    "LinearSystemEnv",
    "EnvError",
    "InvalidActionError",
    "InvalidStateError",
    "EnvConfigurationError",
    "UnknownEnvironmentError",
    "make_dynamics",
]

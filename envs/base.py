"""Common Gymnasium plumbing of the simulators: spaces, validation, noise, history, rendering."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.dynamics import Dynamics
from envs.errors import EnvConfigurationError, InvalidActionError, InvalidStateError


def _real_array(value: Any, what: str, error: type[Exception]) -> np.ndarray:
    """``value`` as a float64 array; raise ``error`` unless it holds real numbers (no strings,
    booleans or complex values, which a float cast would silently change)."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested sequences
        raise error(f"{what} must be an array of real numbers, got {type(value).__name__}"
                    ) from exc
    if arr.dtype.kind not in "iuf":
        raise error(f"{what} must hold real numbers, got {type(value).__name__} of dtype "
                    f"{arr.dtype}")
    return arr.astype(np.float64)


class SimulatorEnv(gym.Env):
    """A Gymnasium env around a batched :class:`~envs.dynamics.Dynamics` (batch of one).

    Observation: the measured output ``y_k`` (float64, shape ``(p,)``). Action: the input ``u_k``
    (float64, shape ``(m,)``), saturated to the actuator limits. ``info`` holds the true ``state``
    (which a data-driven controller must not use), the time ``t`` in seconds and the saturated
    ``applied_action``. Reward is the negative squared output norm ``-‖y‖²`` (regulation to zero):
    tracking costs are computed by ddcontrol, not by the env. Episodes never terminate; registered
    ids truncate them with ``max_episode_steps``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, dynamics: Dynamics, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        if np.any(np.asarray(dynamics.input_low) > np.asarray(dynamics.input_high)):
            raise EnvConfigurationError(f"input_low must be <= input_high, got "
                                        f"{dynamics.input_low} and {dynamics.input_high}")
        self.dynamics = dynamics
        self.dt = dynamics.dt
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / dynamics.dt))}
        self.action_space = spaces.Box(dynamics.input_low.astype(np.float64),
                                       dynamics.input_high.astype(np.float64), dtype=np.float64)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dynamics.output_dim,),
                                            dtype=np.float64)
        self.state = np.zeros(dynamics.state_dim)
        self._u_prev = np.zeros(dynamics.input_dim)
        self._t = 0
        self._outputs: list[np.ndarray] = []
        self._states: list[np.ndarray] = []
        self._inputs: list[np.ndarray] = []

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode from ``options["state"]`` or from the default initial distribution."""
        super().reset(seed=seed)
        options = options or {}
        if "state" in options and options["state"] is not None:
            state = _real_array(options["state"], "initial state", InvalidStateError)
            if state.shape != (self.dynamics.state_dim,):
                raise InvalidStateError(f"initial state must have shape "
                                        f"({self.dynamics.state_dim},), got {state.shape}")
            if not np.all(np.isfinite(state)):
                raise InvalidStateError("initial state contains NaN or inf")
            self.state = state.copy()
        else:
            self.state = self.dynamics.sample_initial_states(self.np_random, 1)[0]
        self._u_prev = np.zeros(self.dynamics.input_dim)
        self._t = 0
        obs = self._observe()
        self._states, self._outputs, self._inputs = [self.state.copy()], [obs], []
        return obs, self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Hold ``action`` for one sampling period and return the next measured output."""
        u = self._check_action(action)
        x_next = self.dynamics.step(self.state[None], u[None])[0]
        if self.dynamics.process_noise_std > 0:
            x_next = x_next + self.dynamics.process_noise_std * self.np_random.standard_normal(
                x_next.shape)
        self.state, self._u_prev = np.asarray(x_next, dtype=np.float64), u
        self._t += 1
        obs = self._observe()
        self._states.append(self.state.copy())
        self._outputs.append(obs)
        self._inputs.append(u)
        if not np.all(np.isfinite(self.state)):
            # A blown-up simulation is reported, not silently continued.
            return obs, -np.inf, True, False, {**self._info(), "diverged": True}
        return obs, float(-np.sum(obs ** 2)), False, False, self._info()

    def render(self) -> np.ndarray | None:
        """Return an RGB picture (H, W, 3) uint8 of the current episode, or None without a mode."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.0, 4.0), dpi=80)
        FigureCanvasAgg(fig)
        self._draw(fig)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()

    # -- helpers ------------------------------------------------------------------------------
    def _observe(self) -> np.ndarray:
        y = np.asarray(self.dynamics.output(self.state[None], self._u_prev[None])[0],
                       dtype=np.float64)
        if self.dynamics.measurement_noise_std > 0:
            y = y + self.dynamics.measurement_noise_std * self.np_random.standard_normal(y.shape)
        return y

    def _info(self) -> dict[str, Any]:
        return {"state": self.state.copy(), "t": self._t * self.dt,
                "applied_action": self._u_prev.copy()}

    def _check_action(self, action: Any) -> np.ndarray:
        u = _real_array(action, "action", InvalidActionError)
        m = self.dynamics.input_dim
        if u.shape == () and m == 1:
            u = u.reshape(1)
        if u.shape != (m,):
            raise InvalidActionError(f"action must have shape ({m},), got {u.shape}")
        if not np.all(np.isfinite(u)):
            raise InvalidActionError(f"action contains NaN or inf: {u}")
        return self.dynamics.saturate(u)

    def _draw(self, fig: Any) -> None:
        """Default picture: the measured outputs against time."""
        ax = fig.add_subplot(111)
        ys = np.array(self._outputs)
        t = np.arange(len(ys)) * self.dt
        for i, name in enumerate(self.dynamics.output_names):
            ax.plot(t, ys[:, i], label=name)
        ax.set_xlabel("time [s]")
        ax.set_ylabel("output")
        ax.legend(loc="upper right", fontsize=7)
        ax.grid(alpha=0.3)

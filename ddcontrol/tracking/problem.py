"""The finite-horizon tracking problem, in physical units, and its form on normalised windows.

A :class:`TrackingProblem` is data: reference, horizon, weights, bounds, and (optionally) the
measured past T_ini and the environment it is posed on. It is what a user builds once and hands
to the tracker, :func:`~ddcontrol.evaluate.make_controller`, :func:`~ddcontrol.evaluate.compare`
and :func:`~ddcontrol.evaluate.run_episode`. :meth:`window_cost` turns it into the batched cost
of a normalised trajectory window ``x`` (B, L, m + p) — the form the manifold solvers minimise —
with an analytic gradient (no extra backward pass) and the Lipschitz constant of that gradient
(the natural step size is its inverse).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ddcontrol._deprecation import renamed_keywords
from ddcontrol._validation import as_finite_array, check_positive_int
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.tracking.cost import weight_matrix
from ddcontrol.tracking.reference import Reference, as_reference, evaluate_callable

if TYPE_CHECKING:  # the torch side lives in window_cost.py; the problem itself is numpy only
    import torch

    from ddcontrol.data.gym_env import EnvLike
    from ddcontrol.tracking.window_cost import WindowCost

ReferenceLike = Reference | np.ndarray | Callable[[float], Any]


@dataclass
class TrackingProblem:
    """Track a reference with the outputs ``y[:, channels]`` over a horizon of ``N_h`` steps.

    Cost (physical units): ``f(u, y) = Σ_k u_kᵀ R u_k + (y_k[ch] − r_k)ᵀ Q (y_k[ch] − r_k)``,
    ``k = 0..N_h−1``, with ``y_k`` measured before ``u_k`` is applied (the datasets' convention).

    Parameters
    ----------
    reference : Reference, ndarray (T, q) or callable
        A :class:`~ddcontrol.tracking.reference.Reference` (it brings its channels, output count
        and dt), an array of targets of the tracked channels at steps ``0..T−1`` (held at its last
        value beyond its end), or a function of time in seconds returning (q,).
    horizon : int
        N_h, the planning horizon in steps.
    input_dim : int
        m.
    output_dim : int, optional
        p (taken from a Reference when omitted).
    dt : float
        Sampling time in seconds (to evaluate callable references).
    channels : sequence of int, optional
        Indices of the tracked outputs (default: the Reference's, else all p).
    Q, R : scalar, (q,)/(m,) diagonal, or matrix
        Output and input weights (default 1 and 0.01).
    input_low, input_high : (m,), optional
        Input bounds in physical units (default: none).
    t_ini : int, optional
        T_ini, the measured past every controller gets before it is scored: the data-driven
        controllers condition on it (a denoiser for this problem has windows of
        ``t_ini + horizon`` steps), and :func:`~ddcontrol.evaluate.compare` scores from sample
        ``t_ini`` on. None: taken from the model where one is given, else 0 / the controller's.
    env_id : str, optional
        The registered environment the problem is posed on (set by :meth:`for_env`, and by
        :meth:`for_dataset` from the dataset's metadata): a ddcontrol id or any Gymnasium one;
        what ``compare`` and ``run_episode`` run the controllers in.
    env_kwargs : dict, optional
        Keyword arguments of that environment.
    """

    reference: ReferenceLike
    horizon: int
    input_dim: int
    output_dim: int | None = None
    dt: float = 1.0
    channels: Sequence[int] | None = None
    Q: Any = 1.0
    R: Any = 0.01
    input_low: Any = None
    input_high: Any = None
    t_ini: int | None = None
    env_id: str | None = None
    env_kwargs: dict[str, Any] | None = None
    _Q: np.ndarray = field(init=False, repr=False)
    _R: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.horizon = check_positive_int(self.horizon, "horizon")
        self.input_dim = check_positive_int(self.input_dim, "input_dim")
        if self.t_ini is not None:
            self.t_ini = check_positive_int(self.t_ini, "t_ini", allow_zero=True)
        if self.env_id is not None and not isinstance(self.env_id, str):
            raise TypeError(f"env_id must be a registered environment id (str), got "
                            f"{type(self.env_id).__name__}")
        self.env_kwargs = None if self.env_kwargs is None else dict(self.env_kwargs)
        if isinstance(self.reference, Reference):
            ref = self.reference
            if self.output_dim is not None and self.output_dim != ref.output_dim:
                raise DimensionError(f"output_dim={self.output_dim} but the reference is for "
                                     f"{ref.output_dim} outputs")
            if self.channels is not None and tuple(self.channels) != ref.channels:
                raise DimensionError(f"channels {tuple(self.channels)} disagree with the "
                                     f"reference's {ref.channels}")
            self.output_dim, self.channels, self.dt = ref.output_dim, ref.channels, ref.dt
        if self.output_dim is None:
            raise DimensionError("output_dim is required unless the reference is a Reference")
        self.output_dim = check_positive_int(self.output_dim, "output_dim")
        if callable(self.reference):
            ch = list(range(self.output_dim)) if self.channels is None else list(self.channels)
            probe = as_finite_array(self.reference(0.0), "reference(0)").reshape(-1)
            if probe.shape != (len(ch),):
                raise DimensionError(f"reference(t) must return {len(ch)} values, got "
                                     f"{probe.shape}")
            as_reference(np.zeros((1, len(ch))), self.output_dim, ch, self.dt)  # checks channels
        elif not isinstance(self.reference, Reference):
            arr = as_finite_array(self.reference, "reference")
            if arr.ndim == 1:
                arr = arr[:, None]
            self.reference = as_reference(arr, self.output_dim, self.channels, self.dt)
        if isinstance(self.reference, Reference):
            self.channels = self.reference.channels
            if self.reference.steps < self.horizon:
                raise DimensionError(f"the reference has {self.reference.steps} samples, fewer "
                                     f"than the horizon {self.horizon}")
        self.channels = [int(c) for c in (self.channels if self.channels is not None
                                          else range(self.output_dim))]
        self._Q = weight_matrix(self.Q, len(self.channels), "Q")
        self._R = weight_matrix(self.R, self.input_dim, "R")
        for name in ("input_low", "input_high"):
            value = getattr(self, name)
            if value is not None:
                arr = np.broadcast_to(np.asarray(value, dtype=float), (self.input_dim,)).copy()
                if np.any(np.isnan(arr)):
                    raise DimensionError(f"{name} contains NaN")
                setattr(self, name, arr)
        if self.input_low is not None and self.input_high is not None and np.any(
                self.input_low > self.input_high):
            raise ConfigurationError(f"input_low must be <= input_high, got {self.input_low} "
                                     f"and {self.input_high}")

    @classmethod
    def for_dataset(cls, data: Any, reference: Reference, horizon: int, *, Q: Any = 1.0,
                    R: Any = 0.01, t_ini: int | None = None) -> TrackingProblem:
        """The problem for the system a dataset came from (input bounds, environment id and
        keywords from its metadata); works for data collected from any environment, without a
        ddcontrol simulator."""
        meta = data.metadata
        env_id = meta.get("env_id")
        return cls(reference, horizon, data.input_dim, Q=Q, R=R,
                   input_low=meta.get("input_low"), input_high=meta.get("input_high"),
                   t_ini=t_ini, env_id=env_id if isinstance(env_id, str) else None,
                   env_kwargs=meta.get("env_kwargs") or None)

    @classmethod
    def for_env(cls, env_id: EnvLike, reference: Reference, horizon: int, *, Q: Any = 1.0,
                R: Any = 0.01, t_ini: int | None = None,
                env_kwargs: dict[str, Any] | None = None) -> TrackingProblem:
        """The problem for an environment: its input count and actuator limits.

        A ddcontrol environment (an id whose env exposes batched
        :class:`~envs.dynamics.Dynamics`) gives them from its dynamics; any other Gymnasium
        environment from its ``action_space``, a :class:`gymnasium.spaces.Box` of any shape
        (flattened: m is its size).

        Parameters
        ----------
        env_id : str, gymnasium.Env or callable
            A registered id (the env is made with ``gymnasium.make(env_id, **env_kwargs)`` and
            closed again), an ``Env`` instance (used as is, not closed) or a factory returning a
            fresh ``Env`` (called with ``env_kwargs``, closed again).
        reference, horizon, Q, R, t_ini
            As for :class:`TrackingProblem`.
        env_kwargs : dict, optional
            Keyword arguments of the environment (not with an instance).

        Returns
        -------
        TrackingProblem
            With ``input_dim`` m, ``input_low`` / ``input_high`` (m,) in the action's units (a
            side whose bounds are all infinite is None, i.e. unbounded; single infinite bounds
            stay ±inf), ``env_id`` the id (for an instance or a factory: its ``spec.id``, else
            None, so :func:`~ddcontrol.tracking.defaults.system_defaults` gives the generic
            settings) and ``env_kwargs`` (None for an instance or a factory: episodes run by
            ``compare`` or ``run_episode`` then remake the env from its id, or take ``env=``).

        Raises
        ------
        envs.registry.UnknownEnvironmentError
            An id that is not registered.
        DimensionError
            An action space that is not a ``gymnasium.spaces.Box`` (e.g. ``Discrete``), as for
            :func:`~ddcontrol.data.gym_env.env_spec`.
        ConfigurationError
            ``env_kwargs`` with an instance, or a factory that does not return an ``Env``.
        """
        label, m, low, high = _env_inputs(env_id, env_kwargs)
        return cls(reference, horizon, m, Q=Q, R=R, input_low=low, input_high=high,
                   t_ini=t_ini, env_id=label,
                   env_kwargs=env_kwargs if isinstance(env_id, str) else None)

    @property
    def tracked_dim(self) -> int:
        return len(self.channels)

    @property
    def Q_matrix(self) -> np.ndarray:
        return self._Q

    @property
    def R_matrix(self) -> np.ndarray:
        return self._R

    def reference_values(self, start: int, steps: int) -> np.ndarray:
        """Reference at steps ``start .. start + steps − 1``, shape (steps, q)."""
        if isinstance(self.reference, Reference):
            return self.reference.window(start, steps)
        return evaluate_callable(self.reference, (start + np.arange(steps)) * self.dt,
                                 len(self.channels))

    def cost(self, u: Any, y: Any, start: int = 0) -> Any:
        """Tracking cost of plans, batched, numpy or torch.

        Parameters
        ----------
        u : (..., N, m) inputs; y : (..., N, p) outputs, physical units; N ≤ any length.
        start : step index of the first sample (selects the reference).

        Returns
        -------
        (...,) cost.
        """
        n = u.shape[-2]
        if u.shape[-1] != self.input_dim or y.shape[-1] != self.output_dim or y.shape[-2] != n:
            raise DimensionError(f"u (..., N, {self.input_dim}) and y (..., N, {self.output_dim})"
                                 f" expected, got {tuple(u.shape)} and {tuple(y.shape)}")
        ref, Q, R = self.reference_values(start, n), self._Q, self._R
        torch = sys.modules.get("torch")  # a tensor argument means torch is already loaded
        if torch is not None and isinstance(u, torch.Tensor):
            ref, Q, R = (torch.as_tensor(a, dtype=u.dtype, device=u.device) for a in (ref, Q, R))
        e = y[..., self.channels] - ref
        return ((e @ Q) * e).sum(axis=(-1, -2)) + ((u @ R) * u).sum(axis=(-1, -2))

    @renamed_keywords(past_length="t_ini")
    def window_cost(self, normalizer: Normalizer, t_ini: int | None = None, start: int = 0,
                    dtype: torch.dtype | None = None, device: Any = "cpu") -> WindowCost:
        """The cost as a function of normalised windows of length ``t_ini + horizon`` (torch;
        ``t_ini`` default: the problem's, else 0; ``dtype`` default ``torch.float32``).
        ``past_length=`` is the deprecated name of ``t_ini=``."""
        import torch

        from ddcontrol.tracking.window_cost import WindowCost

        if t_ini is None:
            t_ini = self.t_ini or 0
        return WindowCost(self, normalizer, t_ini, start,
                          torch.float32 if dtype is None else dtype, device)


def _env_inputs(env: EnvLike, env_kwargs: dict[str, Any] | None
                ) -> tuple[str | None, int, np.ndarray | None, np.ndarray | None]:
    """``(env_id, m, input_low, input_high)`` of an environment (see
    :meth:`TrackingProblem.for_env`): from :func:`envs.registry.make_dynamics` for a ddcontrol
    id, else from the env's (or, for a ddcontrol env given as an instance or factory, its
    dynamics') bounds. Bounds are (m,) float arrays, None where all m are infinite."""
    import gymnasium as gym

    from ddcontrol.data.gym_env import make_env
    from envs.dynamics import Dynamics
    from envs.registry import UnknownEnvironmentError, make_dynamics

    if isinstance(env, str):
        try:
            dyn = make_dynamics(env, env_kwargs)
        except UnknownEnvironmentError:
            if env not in gym.registry:  # unknown id: the registry's error, as before
                raise
        else:
            return env, dyn.input_dim, dyn.input_low, dyn.input_high
    made, owned = make_env(env, env_kwargs)
    try:
        label = env if isinstance(env, str) else (made.spec.id if made.spec is not None else None)
        dyn = getattr(made.unwrapped, "dynamics", None)
        if isinstance(dyn, Dynamics):
            return label, dyn.input_dim, dyn.input_low, dyn.input_high
        space = made.action_space
        if not isinstance(space, gym.spaces.Box):
            raise DimensionError(f"{label or type(made.unwrapped).__name__}: the action space "
                                 f"must be a gymnasium.spaces.Box (continuous inputs), got "
                                 f"{space}")
        low = np.asarray(space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(space.high, dtype=np.float64).reshape(-1)
        return (label, int(low.size), None if np.all(np.isneginf(low)) else low,
                None if np.all(np.isposinf(high)) else high)
    finally:
        if owned:
            made.close()


def __getattr__(name: str) -> Any:
    """``WindowCost`` and ``FramedWindowCost`` moved to :mod:`ddcontrol.tracking.window_cost`
    (they need torch); importing them from here still works and loads torch then."""
    if name in ("WindowCost", "FramedWindowCost"):
        from ddcontrol.tracking import window_cost

        return getattr(window_cost, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

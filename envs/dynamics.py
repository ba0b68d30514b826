"""Batched system dynamics: the single definition of each true simulator's physics.

A :class:`Dynamics` maps a batch of states and inputs to the next states (sampled at ``dt`` seconds)
and states to measured outputs. The Gymnasium environments wrap a batch of one; the dataset
generator and the replay verifier run thousands at once. Everything is vectorised over leading
dimensions and works on numpy arrays or torch tensors (for differentiable model-based oracles).

Sampling convention (used by the environments, the datasets and every controller):
``y_k = output(x_k, u_{k-1})`` is measured at time ``k`` (with ``u_{-1} = 0``), then the input ``u_k``
is held for ``dt`` seconds: ``x_{k+1} = step(x_k, u_k)``. Only linear systems with a nonzero
feedthrough ``D`` see ``u_{k-1}`` in the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs._numerics import namespace, rk4_step
from envs.errors import EnvConfigurationError


@dataclass
class Dynamics:
    """Base class of a sampled-data system ``x_{k+1} = step(x_k, u_k)``, ``y_k = output(x_k, u_{k-1})``.

    Attributes
    ----------
    dt : float
        Sampling time in seconds.
    input_low, input_high : ndarray, shape (m,)
        Actuator limits; inputs are saturated to them by :meth:`saturate`.
    """

    dt: float = 0.1
    state_names: tuple[str, ...] = ()
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    input_low: np.ndarray = field(default_factory=lambda: np.zeros(0))
    input_high: np.ndarray = field(default_factory=lambda: np.zeros(0))
    process_noise_std: float = 0.0
    measurement_noise_std: float = 0.0

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def input_dim(self) -> int:
        return len(self.input_names)

    @property
    def output_dim(self) -> int:
        return len(self.output_names)

    def step(self, x: Any, u: Any) -> Any:
        """Next states (..., n_x) from states (..., n_x) and held inputs (..., m)."""
        raise NotImplementedError

    def output(self, x: Any, u_prev: Any | None = None) -> Any:
        """Noise-free measured outputs (..., p) of states (..., n_x)."""
        raise NotImplementedError

    def sample_initial_states(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` initial states (n, n_x) from the default starting distribution."""
        raise NotImplementedError

    def symmetry_spec(self) -> dict[str, Any] | None:
        """The symmetry of the dynamics, as plain data by output name, or None (none declared).

        ``{"kind": "planar", "x": NAME, "y": NAME, "heading": NAME}``: the dynamics commute with
        moves and turns of the plane (the position rotates and shifts, the heading shifts by the
        same angle, every other signal is unchanged). ``ddcontrol.symmetry`` implements it.
        """
        return None

    def saturate(self, u: np.ndarray) -> np.ndarray:
        """Clip inputs (..., m) to the actuator limits."""
        return np.clip(u, self.input_low, self.input_high)

    def simulate(self, x0: np.ndarray, u: np.ndarray, rng: np.random.Generator | None = None,
                 u_prev: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run input sequences from initial states, batched.

        Parameters
        ----------
        x0 : ndarray, shape (N, n_x)
            Initial states.
        u : ndarray, shape (N, T, m)
            Inputs, saturated to the actuator limits before use.
        rng : numpy Generator, optional
            Source of process and measurement noise; without it the run is noise-free.
        u_prev : ndarray, shape (N, m), optional
            Input held before the first step (seen only through a feedthrough ``D``); default 0.

        Returns
        -------
        y : ndarray, shape (N, T, p)
            Measured outputs, ``y[:, k] = output(x_k, u_{k-1})``.
        x : ndarray, shape (N, T + 1, n_x)
            True states, including the state after the last input.
        """
        x0 = np.asarray(x0, dtype=np.float64)
        u = self.saturate(np.asarray(u, dtype=np.float64))
        n, horizon, _ = u.shape
        xs = np.empty((n, horizon + 1, self.state_dim))
        ys = np.empty((n, horizon, self.output_dim))
        xs[:, 0] = x0
        u_prev = np.zeros((n, self.input_dim)) if u_prev is None else np.asarray(u_prev, float)
        for k in range(horizon):
            ys[:, k] = self.output(xs[:, k], u_prev)
            xs[:, k + 1] = self.step(xs[:, k], u[:, k])
            if rng is not None and self.process_noise_std > 0:
                xs[:, k + 1] += self.process_noise_std * rng.standard_normal((n, self.state_dim))
            u_prev = u[:, k]
        if rng is not None and self.measurement_noise_std > 0:
            ys += self.measurement_noise_std * rng.standard_normal(ys.shape)
        return ys, xs


@dataclass
class DoublePendulumDynamics(Dynamics):
    """Planar double pendulum with point masses, torque on the first joint only.

    State ``(θ1, ω1, θ2, ω2)``: absolute angles of the two links from the downward vertical (rad) and
    their rates (rad/s). Input: torque on joint 1 (N·m). Output: ``(θ1, θ2)`` (rad). Viscous damping
    ``d1 ω1`` and ``d2 ω2`` (N·m·s/rad) acts on each link's angular velocity.
    """

    m1: float = 1.0  # kg, point mass at the end of link 1
    m2: float = 0.5  # kg
    l1: float = 1.0  # m, length of link 1
    l2: float = 0.5  # m
    d1: float = 0.1  # N·m·s/rad
    d2: float = 0.1  # N·m·s/rad
    g: float = 1.0  # m/s², the paper's normalised gravity
    max_torque: float = 1.0  # N·m; below the 1.5 N·m gravity torque, so data stay mostly swinging
    substeps: int = 4  # RK4 sub-steps per sample; 0.025 s resolves the fastest mode easily
    dt: float = 0.1
    state_names: tuple[str, ...] = ("theta1", "omega1", "theta2", "omega2")
    input_names: tuple[str, ...] = ("torque1",)
    output_names: tuple[str, ...] = ("theta1", "theta2")

    def __post_init__(self) -> None:
        self.input_low = np.array([-self.max_torque])
        self.input_high = np.array([self.max_torque])

    def _dsdt(self, s: Any, u: Any) -> Any:
        xp = namespace(s)
        th1, w1, th2, w2 = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
        tau = u[..., 0]
        m1, m2, l1, l2, g = self.m1, self.m2, self.l1, self.l2, self.g
        delta = th1 - th2
        c, sn = xp.cos(delta), xp.sin(delta)
        # Lagrange's equations M(θ) α = b(θ, ω, τ) for point masses, solved in closed form (2x2).
        m11 = (m1 + m2) * l1 ** 2
        m12 = m2 * l1 * l2 * c
        m22 = m2 * l2 ** 2
        b1 = tau - self.d1 * w1 - m2 * l1 * l2 * sn * w2 ** 2 - (m1 + m2) * g * l1 * xp.sin(th1)
        b2 = -self.d2 * w2 + m2 * l1 * l2 * sn * w1 ** 2 - m2 * g * l2 * xp.sin(th2)
        det = m11 * m22 - m12 ** 2
        a1 = (m22 * b1 - m12 * b2) / det
        a2 = (m11 * b2 - m12 * b1) / det
        return xp.stack([w1, a1, w2, a2], axis=-1)

    def step(self, x: Any, u: Any) -> Any:
        return rk4_step(self._dsdt, x, u, self.dt, self.substeps)

    def output(self, x: Any, u_prev: Any | None = None) -> Any:
        return x[..., [0, 2]]

    def sample_initial_states(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Angles uniform in ±0.5 rad, rates uniform in ±0.5 rad/s."""
        return rng.uniform([-0.5, -0.5, -0.5, -0.5], [0.5, 0.5, 0.5, 0.5], size=(n, 4))


UNICYCLE_OUTPUTS = ("x", "y", "theta", "omega", "v")


@dataclass
class UnicycleDynamics(Dynamics):
    """Unicycle (kinematic car) with acceleration inputs.

    State ``(x, y, θ, ω, v)``: position (m), heading (rad), turn rate (rad/s), forward speed (m/s),
    with ẋ = v cos θ, ẏ = v sin θ, θ̇ = ω, ω̇ = u2, v̇ = u1. Inputs: ``u1`` forward acceleration
    (m/s², in [-10, 10]) and ``u2`` angular acceleration (rad/s², in [-5, 5]). Output: the full state
    by default, or any subset of ``("x", "y", "theta", "omega", "v")`` (e.g. ``("x", "y")``).
    """

    dt: float = 0.05
    substeps: int = 1  # the vector field is smooth and slow compared with 0.05 s
    outputs: tuple[str, ...] = UNICYCLE_OUTPUTS
    max_accel: float = 10.0  # m/s²
    max_angular_accel: float = 5.0  # rad/s²
    state_names: tuple[str, ...] = UNICYCLE_OUTPUTS
    input_names: tuple[str, ...] = ("accel", "angular_accel")

    def __post_init__(self) -> None:
        unknown = [name for name in self.outputs if name not in UNICYCLE_OUTPUTS]
        if unknown or not self.outputs:
            raise EnvConfigurationError(f"unicycle outputs must be a non-empty subset of {UNICYCLE_OUTPUTS}, "
                             f"got {self.outputs}")
        self.outputs = tuple(self.outputs)
        self.output_names = self.outputs
        self._output_idx = [UNICYCLE_OUTPUTS.index(name) for name in self.outputs]
        self.input_low = np.array([-self.max_accel, -self.max_angular_accel])
        self.input_high = np.array([self.max_accel, self.max_angular_accel])

    def _dsdt(self, s: Any, u: Any) -> Any:
        xp = namespace(s)
        th, w, v = s[..., 2], s[..., 3], s[..., 4]
        return xp.stack([v * xp.cos(th), v * xp.sin(th), w, u[..., 1], u[..., 0]], axis=-1)

    def step(self, x: Any, u: Any) -> Any:
        return rk4_step(self._dsdt, x, u, self.dt, self.substeps)

    def output(self, x: Any, u_prev: Any | None = None) -> Any:
        return x[..., self._output_idx]

    def symmetry_spec(self) -> dict[str, Any] | None:
        """Moves and turns of the plane: ẋ, ẏ rotate with the heading, nothing depends on (x, y, θ)
        except through them."""
        return {"kind": "planar", "x": "x", "y": "y", "heading": "theta"}

    def sample_initial_states(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Position uniform in ±1 m, any heading, turn rate in ±1 rad/s, speed in [0, 5] m/s."""
        low = [-1.0, -1.0, -np.pi, -1.0, 0.0]
        high = [1.0, 1.0, np.pi, 1.0, 5.0]
        return rng.uniform(low, high, size=(n, 5))


@dataclass
class LinearDynamics(Dynamics):
    """Discrete-time LTI system ``x_{k+1} = A x_k + B u_k + w_k``, ``y_k = C x_k + D u_{k-1} + v_k``.

    ``w`` and ``v`` are zero-mean Gaussian with standard deviations ``process_noise_std`` and
    ``measurement_noise_std`` (zero by default). Build one from matrices, from a python-control
    ``StateSpace`` with :meth:`from_statespace`, or from a named preset with :func:`linear_preset`.
    """

    A: np.ndarray = field(default_factory=lambda: np.eye(1))
    B: np.ndarray = field(default_factory=lambda: np.eye(1))
    C: np.ndarray = field(default_factory=lambda: np.eye(1))
    D: np.ndarray | None = None
    input_limit: float | np.ndarray = np.inf
    initial_state_scale: float = 1.0

    def __post_init__(self) -> None:
        A = np.atleast_2d(np.asarray(self.A, dtype=np.float64))
        B = np.asarray(self.B, dtype=np.float64)
        C = np.asarray(self.C, dtype=np.float64)
        B = B.reshape(-1, 1) if B.ndim == 1 else B
        C = C.reshape(1, -1) if C.ndim == 1 else C
        n = A.shape[0]
        if A.shape != (n, n) or B.shape[0] != n or C.shape[1] != n:
            raise EnvConfigurationError(f"inconsistent state-space dimensions: A {A.shape}, B {B.shape}, "
                             f"C {C.shape}")
        D = np.zeros((C.shape[0], B.shape[1])) if self.D is None else np.atleast_2d(
            np.asarray(self.D, dtype=np.float64))
        if D.shape != (C.shape[0], B.shape[1]):
            raise EnvConfigurationError(f"D must have shape {(C.shape[0], B.shape[1])}, got {D.shape}")
        for name, mat in (("A", A), ("B", B), ("C", C), ("D", D)):
            if not np.all(np.isfinite(mat)):
                raise EnvConfigurationError(f"state-space matrix {name} contains NaN or inf")
        self.A, self.B, self.C, self.D = A, B, C, D
        if not self.state_names:
            self.state_names = tuple(f"x{i}" for i in range(n))
        if not self.input_names:
            self.input_names = tuple(f"u{i}" for i in range(B.shape[1]))
        if not self.output_names:
            self.output_names = tuple(f"y{i}" for i in range(C.shape[0]))
        limit = np.broadcast_to(np.asarray(self.input_limit, dtype=np.float64), (B.shape[1],))
        self.input_low, self.input_high = -limit.copy(), limit.copy()

    @classmethod
    def from_statespace(cls, sys: Any, dt: float | None = None, **kwargs: Any) -> LinearDynamics:
        """Build from a python-control ``StateSpace``; continuous systems are discretised (ZOH)."""
        import control

        if sys.isctime():
            if dt is None:
                raise EnvConfigurationError("a continuous-time system needs a sampling time dt to discretise")
            sys = control.c2d(sys, dt, method="zoh")
        elif dt is not None and not np.isclose(sys.dt, dt):
            raise EnvConfigurationError(f"discrete system has dt={sys.dt}, but dt={dt} was requested")
        return cls(A=sys.A, B=sys.B, C=sys.C, D=sys.D, dt=float(sys.dt), **kwargs)

    def step(self, x: Any, u: Any) -> Any:
        xp = namespace(x)
        A, B = (_like(self.A, x), _like(self.B, x)) if xp.is_torch else (self.A, self.B)
        return x @ A.T + u @ B.T

    def output(self, x: Any, u_prev: Any | None = None) -> Any:
        xp = namespace(x)
        C, D = (_like(self.C, x), _like(self.D, x)) if xp.is_torch else (self.C, self.D)
        y = x @ C.T
        if u_prev is not None:
            y = y + u_prev @ D.T
        return y

    def sample_initial_states(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """States uniform in ±``initial_state_scale`` per component."""
        s = self.initial_state_scale
        return rng.uniform(-s, s, size=(n, self.state_dim))


def _like(mat: np.ndarray, ref: Any) -> Any:
    import torch

    return torch.as_tensor(mat, dtype=ref.dtype, device=ref.device)


def mass_spring_damper(mass: float = 1.0, stiffness: float = 1.0, damping: float = 0.5,
                       dt: float = 0.1, **kwargs: Any) -> LinearDynamics:
    """Mass (kg) on a spring (N/m) and damper (N·s/m); force input (N); position output (m)."""
    A = np.array([[0.0, 1.0], [-stiffness / mass, -damping / mass]])
    B = np.array([[0.0], [1.0 / mass]])
    C = np.array([[1.0, 0.0]])
    return _discretise(A, B, C, dt, state_names=("position", "velocity"), input_names=("force",),
                       output_names=("position",), **{"input_limit": 5.0, **kwargs})


def coupled_masses(mass: float = 1.0, stiffness: float = 1.0, coupling: float = 0.5,
                   damping: float = 0.3, dt: float = 0.1, **kwargs: Any) -> LinearDynamics:
    """Two masses (kg), each on a wall spring, joined by a coupling spring (N/m): a 2x2 MIMO system.

    States: positions (m) and velocities (m/s) of both masses; inputs: a force (N) on each mass;
    outputs: both positions (m).
    """
    k, kc, c, m = stiffness, coupling, damping, mass
    A = np.array([
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [-(k + kc) / m, kc / m, -c / m, 0.0],
        [kc / m, -(k + kc) / m, 0.0, -c / m],
    ])
    B = np.array([[0.0, 0.0], [0.0, 0.0], [1.0 / m, 0.0], [0.0, 1.0 / m]])
    C = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    return _discretise(A, B, C, dt, state_names=("p1", "p2", "v1", "v2"),
                       input_names=("force1", "force2"), output_names=("p1", "p2"),
                       **{"input_limit": 5.0, **kwargs})


def _discretise(A: np.ndarray, B: np.ndarray, C: np.ndarray, dt: float, **kwargs: Any
                ) -> LinearDynamics:
    from scipy.linalg import expm

    n, m = B.shape
    # Exact zero-order-hold discretisation via the block matrix exponential.
    block = np.zeros((n + m, n + m))
    block[:n, :n], block[:n, n:] = A, B
    phi = expm(block * dt)
    return LinearDynamics(A=phi[:n, :n], B=phi[:n, n:], C=C, dt=dt, **kwargs)


LINEAR_PRESETS = {
    "mass-spring-damper": mass_spring_damper,
    "coupled-masses": coupled_masses,
}


def linear_preset(name: str, **kwargs: Any) -> LinearDynamics:
    """Return the named linear system (see ``LINEAR_PRESETS``), keyword overrides forwarded."""
    try:
        factory = LINEAR_PRESETS[name]
    except KeyError:
        raise EnvConfigurationError(
            f"unknown linear preset {name!r}; known: {sorted(LINEAR_PRESETS)}") from None
    return factory(**kwargs)

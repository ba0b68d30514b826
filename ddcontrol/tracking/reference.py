"""Reference signals for tracking: named generators and the :class:`Reference` container.

A reference gives target values for a subset of a system's measured outputs (its *tracked
channels*) at every sample ``k = 0 .. T-1``: the unicycle's figure-eight tracks only ``(x, y)``,
the double pendulum's swing tracks ``(θ1, θ2)``. Every controller, the tracking cost and the
comparison harness take a :class:`Reference`.

=================  ================================================  =========================
name               signal                                            default channels
=================  ================================================  =========================
``"step"``         ``amplitude`` from sample ``delay`` on             all outputs
``"sine"``         ``amplitude sin(2π t / period + phase_c)``         all outputs
``"random"``       random smooth sum of sines (seeded)                all outputs
``"figure-eight"`` ``x = a sin s``, ``y = b sin 2s``, s ∈ [0, 2π]     ``x`` and ``y``
``"circle"``       ``x = r sin s``, ``y = r (1 − cos s)``, s ∈ [0, 2π]  ``x`` and ``y``
``"swing"``        in-phase swing of ``θ1, θ2`` inside ±0.6 rad        ``theta1``, ``theta2``
=================  ================================================  =========================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddcontrol._deprecation import renamed_keywords
from ddcontrol._validation import as_finite_array, check_positive_float, check_positive_int
from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError, UnknownNameError

__all__ = ["Reference", "REFERENCES", "make_reference", "as_reference", "evaluate_callable"]


@dataclass(frozen=True)
class Reference:
    """Target values of some measured outputs over time.

    Attributes
    ----------
    values : ndarray, shape (T, p_tracked)
        Target of output channel ``channels[j]`` at sample ``k`` (physical units).
    channels : tuple of int
        Indices of the tracked outputs in the measured output vector (length p_tracked).
    output_dim : int
        Number p of measured outputs of the system.
    dt : float
        Sampling time in seconds.
    name : str
        Generator name, or ``"custom"``.
    """

    values: np.ndarray
    channels: tuple[int, ...]
    output_dim: int
    dt: float = 1.0
    name: str = "custom"

    def __post_init__(self) -> None:
        values = as_finite_array(self.values, "reference values")
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] < 1:
            raise DimensionError(f"reference values must have shape (T, p_tracked), got "
                                 f"{values.shape}")
        channels = tuple(int(c) for c in self.channels)
        output_dim = check_positive_int(self.output_dim, "output_dim")
        if len(channels) != values.shape[1]:
            raise DimensionError(f"{len(channels)} channels given for a reference with "
                                 f"{values.shape[1]} columns")
        if len(set(channels)) != len(channels) or any(c < 0 or c >= output_dim for c in channels):
            raise DimensionError(f"channels {channels} must be distinct indices in "
                                 f"[0, {output_dim})")
        values = values.copy()
        values.setflags(write=False)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "output_dim", output_dim)
        object.__setattr__(self, "dt", check_positive_float(self.dt, "dt"))

    @property
    def length(self) -> int:
        """Number of samples T (the episode length of a closed-loop run on it)."""
        return int(self.values.shape[0])

    @property
    def steps(self) -> int:
        """Number of samples T (``length``)."""
        return int(self.values.shape[0])

    @property
    def tracked_dim(self) -> int:
        """Number of tracked channels p_tracked."""
        return len(self.channels)

    def window(self, start: int, length: int) -> np.ndarray:
        """Targets of samples ``start .. start + length - 1``, shape (length, p_tracked).

        Samples past the end hold the last value, so receding-horizon controllers can look ahead
        of the final sample.
        """
        if start < 0:
            raise ConfigurationError(f"window start must be >= 0, got {start}")
        idx = np.minimum(np.arange(start, start + length), self.steps - 1)
        return self.values[idx]

    def full(self, fill: float = np.nan) -> np.ndarray:
        """Targets as a (T, p) array over all outputs, ``fill`` in the untracked channels."""
        out = np.full((self.steps, self.output_dim), fill, dtype=np.float64)
        out[:, list(self.channels)] = self.values
        return out

    def select(self, y: np.ndarray) -> np.ndarray:
        """The tracked channels ``y[..., channels]`` of full outputs (..., p)."""
        y = np.asarray(y)
        if y.shape[-1] != self.output_dim:
            raise DimensionError(f"outputs must have {self.output_dim} channels on the last axis, "
                                 f"got shape {y.shape}")
        return y[..., list(self.channels)]


def as_reference(reference: Reference | np.ndarray, output_dim: int,
                 channels: Sequence[int] | None = None, dt: float = 1.0) -> Reference:
    """Return ``reference`` as a :class:`Reference` checked against a system with ``output_dim``.

    An array (T, p_tracked) is wrapped with ``channels`` (default: the first p_tracked outputs).

    Raises
    ------
    DimensionError
        The reference is for another number of outputs, or its shape does not fit.
    NonFiniteError
        It contains NaN or inf.
    """
    if isinstance(reference, Reference):
        if reference.output_dim != output_dim:
            raise DimensionError(f"reference is for {reference.output_dim} outputs, the system "
                                 f"has {output_dim}")
        if channels is not None and tuple(channels) != reference.channels:
            raise DimensionError(f"channels {tuple(channels)} disagree with the reference's "
                                 f"{reference.channels}")
        return reference
    values = as_finite_array(reference, "reference")
    if values.ndim == 1:
        values = values[:, None]
    if channels is None:
        channels = tuple(range(values.shape[-1])) if values.ndim == 2 else ()
    return Reference(values, tuple(channels), output_dim, dt)


def evaluate_callable(reference: Callable[[float], Any], times: Any, count: int) -> np.ndarray:
    """Values of a reference given as a function of time, shape (len(times), count).

    Every value is checked, not only the first: a function that returns NaN or inf at some
    time would otherwise turn a plan's cost into NaN without a word.

    Raises
    ------
    NonFiniteError
        ``reference(t)`` is NaN or inf at some ``t`` (the first such time is named).
    DimensionError
        ``reference(t)`` does not return ``count`` values.
    """
    rows = []
    for t in np.asarray(times, dtype=np.float64).reshape(-1):
        try:
            value = np.asarray(reference(float(t)), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DimensionError(f"reference(t) must return {count} numbers; at t={t:g} s: "
                                 f"{exc}") from exc
        if value.shape != (count,):
            raise DimensionError(f"reference(t) must return {count} values, got shape "
                                 f"{value.shape} at t={t:g} s")
        if not np.all(np.isfinite(value)):
            raise NonFiniteError(f"reference(t) returned {value.tolist()} at t={t:g} s; a "
                                 "reference must be finite at every time of the horizon")
        rows.append(value)
    return np.stack(rows) if rows else np.zeros((0, count))


# -- generators -------------------------------------------------------------------------------
# Each maps (t (T,) seconds, dt, channel count, rng, **params) -> values (T, p_tracked).

def _per_channel(value: Any, count: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    try:
        return np.broadcast_to(arr, (count,)).copy()
    except ValueError:
        raise DimensionError(f"{name} must be a scalar or have {count} entries, got shape "
                             f"{arr.shape}") from None


def _step(t: np.ndarray, dt: float, count: int, rng: np.random.Generator, *,
          amplitude: Any = 1.0, delay: int = 0, initial: Any = 0.0) -> np.ndarray:
    """``initial`` before sample ``delay``, ``amplitude`` from it on."""
    amp, init = _per_channel(amplitude, count, "amplitude"), _per_channel(initial, count, "initial")
    on = (np.arange(t.size) >= delay)[:, None]
    return np.where(on, amp, init)


def _sine(t: np.ndarray, dt: float, count: int, rng: np.random.Generator, *,
          amplitude: Any = 1.0, period: float | None = None, phase: Any = None,
          offset: Any = 0.0) -> np.ndarray:
    """Sines of ``period`` seconds (default: half the duration); channel c lags by c·π/2."""
    period = 0.5 * t.size * dt if period is None else check_positive_float(period, "period")
    phase = -0.5 * np.pi * np.arange(count) if phase is None else _per_channel(phase, count,
                                                                               "phase")
    amp, off = _per_channel(amplitude, count, "amplitude"), _per_channel(offset, count, "offset")
    return off + amp * np.sin(2 * np.pi * t[:, None] / period + phase)


def _random(t: np.ndarray, dt: float, count: int, rng: np.random.Generator, *,
            amplitude: Any = 1.0, components: int = 3, max_cycles: float = 3.0) -> np.ndarray:
    """Sum of ``components`` sines per channel with at most ``max_cycles`` periods over the
    duration (smooth), random phases, scaled so each channel peaks at ``amplitude``."""
    components = check_positive_int(components, "components")
    max_cycles = check_positive_float(max_cycles, "max_cycles")
    amp = _per_channel(amplitude, count, "amplitude")
    duration = t.size * dt
    freq = rng.uniform(0.5, max_cycles, size=(components, count)) / duration
    phase = rng.uniform(0.0, 2 * np.pi, size=(components, count))
    weight = rng.uniform(0.5, 1.0, size=(components, count))
    sig = np.sum(weight * np.sin(2 * np.pi * freq * t[:, None, None] + phase), axis=1)
    peak = np.maximum(np.max(np.abs(sig), axis=0), 1e-12)
    return amp * sig / peak


def _figure_eight(t: np.ndarray, dt: float, count: int, rng: np.random.Generator, *,
                  a: float = 8.0, b: float = 3.0, cycles: float = 1.0) -> np.ndarray:
    """``x = a sin s``, ``y = b sin 2s`` with ``s`` spread over ``[0, 2π·cycles]``."""
    s = np.linspace(0.0, 2 * np.pi * cycles, t.size)
    return np.stack([a * np.sin(s), b * np.sin(2 * s)], axis=1)


def _circle(t: np.ndarray, dt: float, count: int, rng: np.random.Generator, *,
            radius: float = 4.0, cycles: float = 1.0) -> np.ndarray:
    """A circle of ``radius`` m through the origin, ``x = r sin s``, ``y = r (1 − cos s)``, with
    ``s`` spread over ``[0, 2π·cycles]`` (counter-clockwise, starting along +x)."""
    radius = check_positive_float(radius, "radius")
    s = np.linspace(0.0, 2 * np.pi * cycles, t.size)
    return np.stack([radius * np.sin(s), radius * (1.0 - np.cos(s))], axis=1)


def _swing(t: np.ndarray, dt: float, count: int, rng: np.random.Generator, *,
           amplitude: Any = (0.4, 0.55), period: float = 7.0, ramp: float = 3.0) -> np.ndarray:
    """``θ_c = A_c s(t) sin(2π t / period)`` with a smoothstep ramp ``s`` over ``ramp`` seconds.

    The defaults follow the slow (in-phase) mode of the linearised double pendulum (period
    ≈ 7 s, θ2/θ1 ≈ 1.37), which one torque on joint 1 can drive, and stay inside ±0.6 rad.
    """
    amp = _per_channel(amplitude, count, "amplitude")
    period = check_positive_float(period, "period")
    s = np.clip(t / ramp, 0.0, 1.0) if ramp > 0 else np.ones_like(t)
    envelope = s * s * (3.0 - 2.0 * s)
    return amp * (envelope * np.sin(2 * np.pi * t / period))[:, None]


# name -> (generator, names of the outputs it needs, or None when it fits any output)
REFERENCES: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...] | None]] = {
    "step": (_step, None),
    "sine": (_sine, None),
    "random": (_random, None),
    "figure-eight": (_figure_eight, ("x", "y")),
    "circle": (_circle, ("x", "y")),
    "swing": (_swing, ("theta1", "theta2")),
}


@renamed_keywords(steps="length")
def make_reference(name: str, system: str | int, length: int, dt: float | None = None, *,
                   channels: Sequence[int] | None = None, seed: int = 0,
                   env_kwargs: dict[str, Any] | None = None, **params: Any) -> Reference:
    """Build the named reference for a system.

    Parameters
    ----------
    name : str
        One of ``REFERENCES``: ``"step"``, ``"sine"``, ``"random"``, ``"figure-eight"``,
        ``"circle"``, ``"swing"``.
    system : str or int
        A registered environment id (gives the output names and ``dt``), or the number p of
        measured outputs.
    length : int
        Number T of samples (``steps=`` is its deprecated name).
    dt : float, optional
        Sampling time in seconds; default: the environment's (1.0 for an integer ``system``).
    channels : sequence of int, optional
        Tracked output indices. Default: every output for step/sine/random; the outputs named
        ``x, y`` (figure-eight, circle) or ``theta1, theta2`` (swing), or the first two for an
        integer ``system``.
    seed : int
        Seeds the ``"random"`` reference.
    env_kwargs : dict, optional
        Environment keyword arguments (e.g. the unicycle's ``outputs``).
    **params
        Generator parameters, e.g. ``amplitude``, ``period`` (s), ``delay`` (samples),
        ``a, b, cycles`` (figure-eight), ``radius, cycles`` (circle), ``ramp`` (s, swing),
        ``components, max_cycles`` (random).

    Returns
    -------
    Reference
        ``values`` of shape (length, p_tracked).

    Raises
    ------
    UnknownNameError
        Unknown reference name, or a parameter the generator does not take.
    envs.registry.UnknownEnvironmentError
        Unknown environment id (a ``ValueError``).
    ConfigurationError
        The system lacks the outputs the reference needs (e.g. figure-eight without ``x, y``).
    """
    if name not in REFERENCES:
        raise UnknownNameError(f"unknown reference {name!r}; choose one of {sorted(REFERENCES)}")
    generator, needed = REFERENCES[name]
    length = check_positive_int(length, "length")
    if isinstance(system, str):
        from envs.registry import make_dynamics

        dyn = make_dynamics(system, env_kwargs)
        output_names: tuple[str, ...] | None = tuple(dyn.output_names)
        output_dim = dyn.output_dim
        dt = dyn.dt if dt is None else dt
    else:
        output_names, output_dim = None, check_positive_int(system, "output_dim")
        dt = 1.0 if dt is None else dt
    dt = check_positive_float(dt, "dt")
    if channels is None:
        if needed is None:
            channels = tuple(range(output_dim))
        elif output_names is None:
            channels = tuple(range(len(needed)))
        else:
            missing = [n for n in needed if n not in output_names]
            if missing:
                raise ConfigurationError(f"reference {name!r} needs outputs {needed}; the system "
                                         f"measures {output_names}")
            channels = tuple(output_names.index(n) for n in needed)
    channels = tuple(int(c) for c in channels)
    if needed is not None and len(channels) != len(needed):
        raise ConfigurationError(f"reference {name!r} tracks {len(needed)} channels, got "
                                 f"channels={channels}")
    t = np.arange(length) * dt
    try:
        values = generator(t, dt, len(channels), np.random.default_rng(seed), **params)
    except TypeError as exc:
        raise UnknownNameError(f"bad parameters {sorted(params)} for reference {name!r}: {exc}"
                               ) from exc
    return Reference(values, channels, output_dim, dt, name)

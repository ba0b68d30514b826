"""Excitation signals: batched input sequences that make trajectory data informative.

Every generator has the signature ``f(rng, n, horizon, low, high, **params) -> u`` with ``u`` of shape
``(n, horizon, m)`` inside the box ``[low, high]`` (arrays of shape (m,), finite). Amplitudes are
fractions of the half-range around the box centre.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ddcontrol.errors import ConfigurationError, UnknownNameError

Excitation = Callable[..., np.ndarray]


def _centre_halfrange(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.asarray(low, float), np.asarray(high, float)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ConfigurationError("excitation needs finite input bounds; give the env finite "
                                 "actuator limits (e.g. input_limit=...)")
    return 0.5 * (low + high), 0.5 * (high - low)


def uniform_hold(rng: np.random.Generator, n: int, horizon: int, low: np.ndarray,
                 high: np.ndarray, *, hold: int = 5, amplitude: float = 1.0,
                 random_hold: bool = True) -> np.ndarray:
    """Piecewise-constant inputs, uniform in the box, held for ``hold`` steps.

    With ``random_hold`` each trajectory draws its hold length uniformly in ``[1, 2*hold - 1]``,
    which spreads the excitation over more frequencies.
    """
    if hold < 1:
        raise ConfigurationError(f"hold must be >= 1 step, got {hold}")
    centre, half = _centre_halfrange(low, high)
    m = centre.shape[0]
    holds = rng.integers(1, 2 * hold, size=n) if random_hold else np.full(n, hold)
    levels = rng.uniform(-1.0, 1.0, size=(n, horizon, m))
    # Index of the held level: each trajectory repeats its level k // hold_i.
    idx = (np.arange(horizon)[None, :] // holds[:, None]).clip(max=horizon - 1)
    u = np.take_along_axis(levels, idx[:, :, None].repeat(m, axis=2), axis=1)
    return centre + amplitude * half * u


def prbs(rng: np.random.Generator, n: int, horizon: int, low: np.ndarray, high: np.ndarray, *,
         levels: int = 5, switch_probability: float = 0.2, amplitude: float = 1.0) -> np.ndarray:
    """Multi-level pseudo-random binary sequence: ``levels`` equally spaced values, switching with
    probability ``switch_probability`` at each step."""
    if levels < 2:
        raise ConfigurationError(f"prbs needs at least 2 levels, got {levels}")
    if not 0.0 < switch_probability <= 1.0:
        raise ConfigurationError(f"switch_probability must be in (0, 1], got {switch_probability}")
    centre, half = _centre_halfrange(low, high)
    m = centre.shape[0]
    values = np.linspace(-1.0, 1.0, levels)
    draws = values[rng.integers(0, levels, size=(n, horizon, m))]
    switch = rng.random((n, horizon, m)) < switch_probability
    switch[:, 0] = True
    # Forward-fill the drawn level from the last switching time.
    last = np.where(switch, np.arange(horizon)[None, :, None], 0)
    last = np.maximum.accumulate(last, axis=1)
    u = np.take_along_axis(draws, last, axis=1)
    return centre + amplitude * half * u


def filtered_gaussian(rng: np.random.Generator, n: int, horizon: int, low: np.ndarray,
                      high: np.ndarray, *, bandwidth: float = 0.2, amplitude: float = 0.5
                      ) -> np.ndarray:
    """Gaussian white noise through a first-order low-pass filter, clipped to the box.

    ``bandwidth`` in (0, 1] is the filter's pole distance from 1 (1 = white noise); the output is
    scaled to a standard deviation of ``amplitude`` half-ranges before clipping.
    """
    if not 0.0 < bandwidth <= 1.0:
        raise ConfigurationError(f"bandwidth must be in (0, 1], got {bandwidth}")
    centre, half = _centre_halfrange(low, high)
    m = centre.shape[0]
    a = 1.0 - bandwidth
    gain = np.sqrt(1.0 - a * a)  # unit stationary variance
    e = rng.standard_normal((n, horizon, m))
    z = np.empty_like(e)
    z[:, 0] = e[:, 0]
    for k in range(1, horizon):
        z[:, k] = a * z[:, k - 1] + gain * e[:, k]
    return np.clip(centre + amplitude * half * z, low, high)


def sum_of_sines(rng: np.random.Generator, n: int, horizon: int, low: np.ndarray,
                 high: np.ndarray, *, components: int = 4, max_frequency: float = 0.25,
                 amplitude: float = 1.0) -> np.ndarray:
    """Sum of ``components`` sines with random frequencies (cycles/sample, up to ``max_frequency``,
    at most the Nyquist 0.5), phases and weights, scaled to fit the box."""
    if components < 1:
        raise ConfigurationError(f"components must be >= 1, got {components}")
    if not 0.0 < max_frequency <= 0.5:
        raise ConfigurationError(f"max_frequency must be in (0, 0.5], got {max_frequency}")
    centre, half = _centre_halfrange(low, high)
    m = centre.shape[0]
    freq = rng.uniform(0.0, max_frequency, size=(n, 1, m, components))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, m, components))
    weight = rng.dirichlet(np.ones(components), size=(n, 1, m))
    k = np.arange(horizon)[None, :, None, None]
    u = np.sum(weight * np.sin(2 * np.pi * freq * k + phase), axis=-1)
    return centre + amplitude * half * u


def mixed(rng: np.random.Generator, n: int, horizon: int, low: np.ndarray, high: np.ndarray
          ) -> np.ndarray:
    """Each trajectory uses one of the other excitations (default parameters), drawn at random."""
    kinds = [uniform_hold, prbs, filtered_gaussian, sum_of_sines]
    choice = rng.integers(0, len(kinds), size=n)
    u = np.empty((n, horizon, np.asarray(low).shape[0]))
    for i, kind in enumerate(kinds):
        sel = np.flatnonzero(choice == i)
        if sel.size:
            u[sel] = kind(rng, sel.size, horizon, low, high)
    return u


EXCITATIONS: dict[str, Excitation] = {
    "uniform-hold": uniform_hold,
    "prbs": prbs,
    "gaussian": filtered_gaussian,
    "sines": sum_of_sines,
    "mixed": mixed,
}


def get_excitation(name: str) -> Excitation:
    """Return the excitation generator called ``name`` (see ``EXCITATIONS``)."""
    try:
        return EXCITATIONS[name]
    except KeyError:
        raise UnknownNameError(f"unknown excitation {name!r}; choose one of "
                               f"{sorted(EXCITATIONS)}") from None

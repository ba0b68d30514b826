"""Reference signals and the shared tracking cost."""

from __future__ import annotations

import numpy as np
import pytest

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError, UnknownNameError
from ddcontrol.tracking.cost import tracking_cost, weight_matrix
from ddcontrol.tracking.reference import REFERENCES, Reference, as_reference, make_reference

UNICYCLE = "ddcontrol/Unicycle-v0"
PENDULUM = "ddcontrol/DoublePendulum-v0"
MIMO = "ddcontrol/CoupledMasses-v0"


@pytest.mark.parametrize("name, system", [("step", MIMO), ("sine", MIMO), ("random", MIMO),
                                          ("figure-eight", UNICYCLE), ("circle", UNICYCLE),
                                          ("swing", PENDULUM)])
def test_named_references_shapes_and_channels(name, system):
    ref = make_reference(name, system, 80)
    assert ref.values.shape == (80, ref.tracked_dim)
    assert np.all(np.isfinite(ref.values)) and ref.name == name
    assert ref.full().shape == (80, ref.output_dim)
    expected = {"figure-eight": (0, 1), "swing": (0, 1)}.get(name, (0, 1))
    assert ref.channels == expected


def test_figure_eight_formula_and_untracked_channels():
    ref = make_reference("figure-eight", UNICYCLE, 101)
    s = np.linspace(0, 2 * np.pi, 101)
    np.testing.assert_allclose(ref.values, np.stack([8 * np.sin(s), 3 * np.sin(2 * s)], 1))
    assert ref.output_dim == 5 and ref.dt == 0.05
    assert np.all(np.isnan(ref.full()[:, 2:]))
    pos_only = make_reference("figure-eight", UNICYCLE, 10, env_kwargs={"outputs": ["y", "x"]})
    assert pos_only.channels == (1, 0)


def test_swing_is_smooth_and_bounded():
    ref = make_reference("swing", PENDULUM, 200)
    assert np.abs(ref.values).max() <= 0.6
    assert np.abs(ref.values[0]).max() < 1e-12  # starts at rest
    assert np.abs(np.diff(ref.values, 2, axis=0)).max() < 0.01  # no jumps


def test_random_reference_is_seeded():
    a = make_reference("random", 2, 100, dt=0.1, seed=3, amplitude=2.0)
    b = make_reference("random", 2, 100, dt=0.1, seed=3, amplitude=2.0)
    c = make_reference("random", 2, 100, dt=0.1, seed=4, amplitude=2.0)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values)
    np.testing.assert_allclose(np.abs(a.values).max(0), 2.0)


def test_step_and_sine_parameters():
    step = make_reference("step", 1, 10, amplitude=2.0, delay=3)
    np.testing.assert_array_equal(step.values[:, 0], [0, 0, 0, 2, 2, 2, 2, 2, 2, 2])
    sine = make_reference("sine", 1, 40, dt=0.5, amplitude=1.5, period=10.0)
    np.testing.assert_allclose(sine.values[:, 0], 1.5 * np.sin(2 * np.pi * np.arange(40) * 0.05))


def test_window_holds_last_value():
    ref = Reference(np.arange(5.0)[:, None], (0,), 1)
    np.testing.assert_array_equal(ref.window(3, 4)[:, 0], [3, 4, 4, 4])
    with pytest.raises(ConfigurationError):
        ref.window(-1, 2)


def test_reference_errors():
    with pytest.raises(UnknownNameError):
        make_reference("spiral", 2, 10)
    with pytest.raises(UnknownNameError):
        make_reference("sine", 2, 10, colour="red")
    with pytest.raises(ConfigurationError):
        make_reference("figure-eight", "ddcontrol/MassSpringDamper-v0", 10)
    with pytest.raises(NonFiniteError):
        Reference(np.array([[0.0], [np.nan]]), (0,), 1)
    with pytest.raises(DimensionError):
        Reference(np.zeros((5, 2)), (0,), 2)
    with pytest.raises(DimensionError):
        Reference(np.zeros((5, 1)), (3,), 2)
    with pytest.raises(DimensionError):
        as_reference(make_reference("step", 2, 5), output_dim=3)
    assert set(REFERENCES) == {"step", "sine", "random", "figure-eight", "circle", "swing"}


def test_tracking_cost_matches_loop_and_batches():
    rng = np.random.default_rng(0)
    u, y = rng.normal(size=(3, 7, 2)), rng.normal(size=(3, 7, 4))
    ref = Reference(rng.normal(size=(7, 2)), (3, 1), 4)
    Q, R = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([0.1, 0.3])
    got = tracking_cost(u, y, ref, Q, R)
    for b in range(3):
        e = y[b][:, [3, 1]] - ref.values
        want = sum(e[k] @ Q @ e[k] + u[b, k] @ np.diag(R) @ u[b, k] for k in range(7))
        assert got[b] == pytest.approx(want, rel=1e-12)
    # Array reference + channels, and already-selected outputs give the same numbers.
    np.testing.assert_allclose(tracking_cost(u, y, ref.values, Q, R, channels=(3, 1)), got)
    np.testing.assert_allclose(tracking_cost(u, y[..., [3, 1]], ref.values, Q, R), got)


def test_tracking_cost_errors_and_divergence():
    ref = Reference(np.zeros((4, 1)), (0,), 1)
    y = np.zeros((4, 1))
    y[2] = np.nan
    assert tracking_cost(np.zeros((4, 1)), y, ref, 1.0, 1.0) == np.inf
    with pytest.raises(NonFiniteError):
        tracking_cost(np.full((4, 1), np.nan), np.zeros((4, 1)), ref, 1.0, 1.0)
    with pytest.raises(DimensionError):
        tracking_cost(np.zeros((5, 1)), np.zeros((4, 1)), ref, 1.0, 1.0)
    with pytest.raises(DimensionError):
        weight_matrix(np.ones(3), 2)
    with pytest.raises(ConfigurationError):
        weight_matrix(-1.0, 2)

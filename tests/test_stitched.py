"""StitchedDenoiser: long windows from a short-window denoiser, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol.data import collect
from ddcontrol.data.collect import make_dynamics
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.score.stitched import StitchedDenoiser, stitch_offsets
from ddcontrol.symmetry import PlanarSymmetry

MIMO = "ddcontrol/CoupledMasses-v0"


@pytest.mark.parametrize("length, window, stride", [(100, 45, 15), (30, 10, 3), (12, 12, 4),
                                                    (31, 10, 10), (11, 10, 1)])
def test_offsets_cover_the_window_with_gaps_at_most_stride(length, window, stride):
    off = stitch_offsets(length, window, stride)
    assert off[0] == 0 and off[-1] == length - window
    assert all(0 < b - a <= stride for a, b in zip(off, off[1:]))


def test_offsets_reject_gaps_and_short_lengths():
    with pytest.raises(ConfigurationError, match="stride"):
        stitch_offsets(30, 10, 11)
    with pytest.raises(ConfigurationError, match="cannot stitch"):
        stitch_offsets(8, 10, 3)


@pytest.fixture(scope="module")
def mimo():
    """Noise-free coupled-masses data (lag 2), its 15-step and 26-step normalised windows."""
    data = collect(MIMO, 200, 60, seed=0, noise=False)
    return data, data.windows(15, stride=3, normalized=True), data.windows(26, stride=7,
                                                                            normalized=True)


def test_true_trajectories_are_fixed_points(mimo, exact_projector):
    data, short, long = mimo
    den = StitchedDenoiser(exact_projector(short), 15, 26, stride=4)
    x = torch.as_tensor(long[:8])
    np.testing.assert_allclose(den(x, 1e-3).numpy(), long[:8], atol=1e-7)


def test_iterating_lands_on_the_long_behaviour(mimo, exact_projector):
    """Averaged projections onto the stretches' behaviours converge to the intersection, which
    for windows longer than the lag is the long window's behaviour (geometrically fast: the
    stretches overlap by far more than the lag)."""
    data, short, long = mimo
    den = StitchedDenoiser(exact_projector(short), 15, 26, stride=4)
    long_projector = exact_projector(long)
    gen = torch.Generator().manual_seed(0)
    x = torch.as_tensor(long[:4]) + 0.3 * torch.randn(4, 26, 4, generator=gen,
                                                     dtype=torch.float64)
    off = float((long_projector(x, 1e-3) - x).norm())
    for _ in range(300):
        x = den(x, 1e-3)
    assert off > 0.5
    assert float((long_projector(x, 1e-3) - x).norm()) < 1e-6 * off


def test_planar_symmetry_equivariance():
    """With a symmetry, the stitched map commutes with the group: D(g·x) = g·D(x)."""
    torch.manual_seed(0)
    sym = PlanarSymmetry(x=2, y=3, heading=4)
    norm = Normalizer(mean=np.array([0.1, -0.2, 0.3, 0.1, 0.0]),
                      std=np.array([1.0, 2.0, 1.5, 1.5, 0.7]), input_dim=2)
    weight = 0.1 * torch.randn(5, 5, dtype=torch.float64)

    def inner(x, sigma):  # any map of canonical windows
        return x + torch.tanh(x @ weight) * sigma

    den = StitchedDenoiser(inner, 6, 17, stride=4, symmetry=sym, normalizer=norm)
    w = torch.randn(2, 17, 5, dtype=torch.float64)
    g = np.array([[1.5, -2.0, 0.7], [-0.3, 4.0, -2.1]])
    moved = norm.normalize(sym.act(g, norm.denormalize(w)))
    lhs = den(moved, 0.2)
    rhs = norm.normalize(sym.act(g, norm.denormalize(den(w, 0.2))))
    torch.testing.assert_close(lhs, rhs, atol=1e-10, rtol=0)


def test_vector_jacobian_products_match_finite_differences(mimo, exact_projector):
    data, short, _ = mimo
    den = StitchedDenoiser(exact_projector(short), 15, 20, stride=3)
    x = torch.as_tensor(data.windows(20, stride=50, normalized=True)[:2]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: den(z, 0.1), (x,), eps=1e-6, atol=1e-6)


def test_rejects_wrong_length_and_symmetry_without_normalizer():
    den = StitchedDenoiser(lambda x, s: x, 5, 12)
    with pytest.raises(DimensionError, match="12"):
        den(torch.zeros(1, 11, 3), 0.1)
    with pytest.raises(ConfigurationError, match="normalizer"):
        StitchedDenoiser(lambda x, s: x, 5, 12, symmetry=PlanarSymmetry(x=0, y=1))


def test_stitched_plan_reaches_the_bounded_optimum(mimo, exact_projector):
    """A 26-step plan (T_ini 6 + 20) on a manifold known only through 20-step windows reaches the
    true constrained optimum from a measured past (the passes make the stitched map close to
    the projection onto the long behaviour, which the pinned past's Gauss-Newton pull needs)."""
    from test_tracking import conditioned_mimo_plan

    data, short, long = mimo
    t_ini, n_h = 6, 20
    den = StitchedDenoiser(exact_projector(data.windows(20, stride=3, normalized=True)), 20,
                           t_ini + n_h, stride=3, passes=10)
    _, rep, optimum, _, _ = conditioned_mimo_plan(den, data.normalizer, long, t_ini, n_h, 300,
                                                  num_starts=1)
    assert rep.true_cost <= 1.01 * optimum
    assert rep.manifold_deviation < 1e-3


def test_pinned_start_lets_a_stitched_model_plan_from_the_data_start(exact_projector):
    """The paper's setting (T_ini = 0, data from one initial state) with a model of 15-step
    windows from every state: pinning the measured initial output (the full state here) gives
    the plan of the horizon-long model, whose windows all start there."""
    from ddcontrol.evaluate.finite_horizon import finite_horizon_experiment
    from ddcontrol.score.checkpoint import TrainedModel
    from ddcontrol.score.stitched import stitched_model
    from ddcontrol.tracking.reference import Reference

    msd = make_dynamics("ddcontrol/MassSpringDamper-v0")
    kwargs = {"A": msd.A, "B": msd.B, "C": np.eye(2), "D": np.zeros((2, 1)), "dt": 0.1,
              "input_limit": 5.0}
    data = collect("ddcontrol/LinearSystem-v0", 100, 60, seed=0, noise=False, env_kwargs=kwargs,
                   initial_states=np.array([0.5, 0.0]))
    n = 30
    ref = Reference(0.8 * np.sin(np.linspace(0, 2 * np.pi, n))[:, None], (0,), 2, 0.1)
    options = dict(sigma=1e-3, solver="nesterov", iterations=300, dtype=torch.float64,
                   damping=1e-3, max_step=None, trust=None)

    def model(window: int, stride: int) -> TrainedModel:
        windows = data.windows(window, stride=stride, normalized=True)
        return TrainedModel(exact_projector(windows), data.normalizer, window, 1, 2,
                            metadata=dict(data.metadata))

    # The paper's model: windows as long as the horizon, from the data's initial state only.
    full = finite_horizon_experiment(model(n, data.length), data, ref, horizon=n, **options)
    short = stitched_model(model(15, 3), n, stride=3, passes=10)
    stitched = finite_horizon_experiment(short, data, ref, horizon=n, pin_start=True, **options)
    np.testing.assert_allclose(stitched.plan.predicted_outputs[0], data.y[0, 0], atol=1e-6)
    assert stitched.summary["manifold_deviation"] < 1e-2
    assert stitched.summary["replay_cost"] == pytest.approx(full.summary["replay_cost"], rel=1e-2)
    assert stitched.summary["replay_beats_best_window"]

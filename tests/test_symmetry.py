"""Symmetries: group actions on windows against closed forms, and their use in the tracker."""

import numpy as np
import pytest
import torch

from ddcontrol.data import collect, make_dynamics
from ddcontrol.errors import ConfigurationError
from ddcontrol.score import TrainConfig, load_model, train
from ddcontrol.score.closed_form import EmpiricalDenoiser
from ddcontrol.symmetry import Identity, PlanarSymmetry, symmetry_for, symmetry_from_spec
from ddcontrol.tracking.problem import FramedWindowCost, TrackingProblem
from ddcontrol.tracking.reference import make_reference
from ddcontrol.tracking.tracker import DenoisingTracker

UNI = "ddcontrol/Unicycle-v0"
# Unicycle windows: channels (u1, u2, x, y, theta, omega, v)
SYM = PlanarSymmetry(x=2, y=3, heading=4)


def random_windows(rng, batch=(4,), length=6, channels=7):
    return rng.normal(size=(*batch, length, channels)) * 3.0


def test_planar_canonical_form_and_round_trip_are_exact():
    rng = np.random.default_rng(0)
    w = random_windows(rng)
    c, g = SYM.canonicalize(w)
    assert g.shape == (4, 3)
    np.testing.assert_allclose(c[:, 0, [2, 3, 4]], 0.0, atol=1e-12)  # first pose at the origin
    np.testing.assert_allclose(SYM.act(g, c), w, atol=1e-12)
    np.testing.assert_allclose(SYM.inverse_act(g, SYM.act(g, w)), w, atol=1e-12)
    # Inputs, turn rate and speed are untouched; distances between positions are kept.
    np.testing.assert_array_equal(c[..., [0, 1, 5, 6]], w[..., [0, 1, 5, 6]])
    d_w = np.linalg.norm(w[:, 1:, 2:4] - w[:, :1, 2:4], axis=-1)
    d_c = np.linalg.norm(c[:, 1:, 2:4], axis=-1)
    np.testing.assert_allclose(d_c, d_w, atol=1e-12)
    # A window already moved by any h has the same canonical form.
    h = np.array([5.0, -7.0, 2.0])
    np.testing.assert_allclose(SYM.canonicalize(SYM.act(h, w))[0], c, atol=1e-10)


def test_planar_numpy_and_torch_agree_and_torch_is_differentiable():
    rng = np.random.default_rng(1)
    w = random_windows(rng)
    g = rng.normal(size=(4, 3))
    wt = torch.tensor(w, requires_grad=True)
    out = SYM.act(torch.tensor(g), wt)
    np.testing.assert_allclose(out.detach().numpy(), SYM.act(g, w), atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(wt.grad).all()


def test_translation_only_without_heading():
    sym = PlanarSymmetry(x=0, y=1)
    w = np.array([[[1.0, 2.0, 0.3], [2.0, 4.0, 0.1]]])
    c, g = sym.canonicalize(w)
    np.testing.assert_allclose(g, [[1.0, 2.0, 0.0]])
    np.testing.assert_allclose(c, [[[0.0, 0.0, 0.3], [1.0, 2.0, 0.1]]])


def test_the_unicycle_commutes_with_its_declared_symmetry():
    """Simulating a moved and turned start gives the moved and turned trajectory."""
    dyn = make_dynamics(UNI)
    rng = np.random.default_rng(2)
    x0 = dyn.sample_initial_states(rng, 3)
    u = rng.uniform(dyn.input_low, dyn.input_high, size=(3, 30, 2))
    y, _ = dyn.simulate(x0, u)
    g = np.array([6.0, -3.0, 1.1])
    sym = symmetry_for({"env_id": UNI, "output_names": list(dyn.output_names)}, 2)
    assert isinstance(sym, PlanarSymmetry) and sym.channels == [2, 3, 4]
    x0_moved = sym.act(g, np.concatenate([np.zeros((3, 2)), x0], axis=-1)[:, None])[:, 0, 2:]
    y_moved, _ = dyn.simulate(x0_moved, u)
    w = np.concatenate([u, y], axis=-1)
    np.testing.assert_allclose(np.concatenate([u, y_moved], axis=-1), sym.act(g, w), atol=1e-9)


def test_declarations_resolve_to_window_channels():
    assert isinstance(symmetry_for({"env_id": "ddcontrol/DoublePendulum-v0",
                                    "output_names": ["theta1", "theta2"]}, 1), Identity)
    xy = symmetry_for({"env_id": UNI, "env_kwargs": {"outputs": ["x", "y"]},
                       "output_names": ["x", "y"]}, 2)
    assert isinstance(xy, PlanarSymmetry) and xy.heading is None and xy.channels == [2, 3]
    user = symmetry_for({"output_names": ["psi", "px", "py"],
                         "symmetry": {"kind": "planar", "x": "px", "y": "py", "heading": "psi"}}, 1)
    assert user.channels == [2, 3, 1]
    assert isinstance(symmetry_for({"env_id": UNI, "output_names": list("xy")}, 2, "none"),
                      Identity)
    with pytest.raises(ConfigurationError, match="declares no planar"):
        symmetry_for({"output_names": ["a"]}, 1, "planar")
    with pytest.raises(ConfigurationError, match="not among the outputs"):
        symmetry_for({"output_names": ["px", "py"],
                      "symmetry": {"kind": "planar", "x": "px", "y": "py", "heading": "q"}}, 1)
    assert symmetry_from_spec(SYM.to_spec()).to_spec() == SYM.to_spec()
    assert isinstance(symmetry_from_spec(None), Identity)


def _framed_cost(sym, normalizer, reference, horizon=5, past=2):
    prob = TrackingProblem(reference, horizon, 2, 5, dt=0.05, channels=[0, 1], Q=[1.0, 1.0],
                           R=0.01)
    base = prob.window_cost(normalizer, past, 0, torch.float64)
    return FramedWindowCost(prob.window_cost(normalizer, past, 0, torch.float64), sym,
                            normalizer), base


def test_framed_cost_is_the_world_cost_and_its_gradient_is_exact():
    data = collect(UNI, 20, 12, seed=0, noise=False)
    sym = symmetry_for(data.metadata, 2)
    norm = sym.fit_normalizer(sym.windows(data, 7), 2)
    assert norm.std[2] == norm.std[3]  # x and y share a scale: rotations stay isometries
    ref = np.random.default_rng(0).normal(size=(12, 2)) * 5
    framed, base = _framed_cost(sym, norm, ref)
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(3, 7, 7)))
    g = np.array([4.0, -2.0, 0.7])
    framed.set_frame(g)
    world = norm.normalize(sym.act(g, norm.denormalize(x.numpy())))
    np.testing.assert_allclose(framed(x).numpy(), base(torch.tensor(world)).numpy(), rtol=1e-12)
    xx = x.clone().requires_grad_(True)
    framed(xx).sum().backward()
    np.testing.assert_allclose(framed.egrad(x).numpy(), xx.grad.numpy(), rtol=1e-9, atol=1e-12)
    # An isometry in normalised units leaves the step size unchanged.
    assert framed.lipschitz() == pytest.approx(base.lipschitz(), rel=1e-9)
    # The fused evaluation follows a new frame and a new reference start (its affine form is
    # recomputed), per window too (K frames at once).
    for frame, start in ((np.array([-1.0, 3.0, -2.1]), 0), (np.array([-1.0, 3.0, -2.1]), 3),
                         (np.array([[0.5, 0.0, 0.3], [2.0, 1.0, -1.0], [0.0, -4.0, 2.5]]), 3)):
        framed.set_frame(frame)
        framed.set_start(start)
        f, grad = framed.value_and_egrad(x)
        xx = x.clone().requires_grad_(True)
        framed(xx).sum().backward()
        np.testing.assert_allclose(f.numpy(), framed(x).numpy(), rtol=1e-12)
        np.testing.assert_allclose(grad.numpy(), xx.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_a_plan_far_from_the_origin_is_the_plan_at_the_origin_moved():
    """Equivariance of the whole tracker: canonical frame from the measured past, world cost."""
    t_ini, n_h = 2, 6
    data = collect(UNI, 40, 16, seed=3, noise=False, excitation="gaussian")
    sym = symmetry_for(data.metadata, 2)
    norm = sym.fit_normalizer(sym.windows(data, t_ini + n_h, 2), 2)
    cand = norm.normalize(sym.windows(data, t_ini + n_h, 2))
    den = EmpiricalDenoiser(torch.tensor(cand))
    rng = np.random.default_rng(4)
    past = data.windows(t_ini + 1, 1)[5]  # a measured past and current output, world units
    ref = past[-1, 2:4] + np.cumsum(rng.normal(size=(40, 2)) * 0.05, axis=0)

    def plan(g):
        moved_past = sym.act(g, past)
        moved_ref = sym.act(g, np.concatenate([np.zeros((40, 2)), ref, np.zeros((40, 3))],
                                              axis=-1))[:, 2:4]
        prob = TrackingProblem(moved_ref, n_h, 2, 5, dt=0.05, channels=[0, 1], R=0.01,
                               input_low=[-10, -5], input_high=[10, 5])
        tracker = DenoisingTracker(den, norm, prob, candidates=cand, t_ini=t_ini,
                                   sigma=0.05, iterations=30, symmetry=sym,
                                   dtype=torch.float64)
        return tracker.plan(moved_past[:t_ini, :2], moved_past[:t_ini, 2:],
                            current_y=moved_past[t_ini, 2:], start=0)

    home = plan(np.zeros(3))
    g = np.array([8.0, -3.0, 2.3])
    away = plan(g)
    np.testing.assert_allclose(away.inputs, home.inputs, atol=1e-7)
    moved = sym.act(g, np.concatenate([home.inputs, home.predicted_outputs], axis=-1))
    np.testing.assert_allclose(away.predicted_outputs, moved[:, 2:], atol=1e-7)
    np.testing.assert_allclose(away.window, home.window, atol=1e-7)  # same canonical plan
    assert away.predicted_cost == pytest.approx(home.predicted_cost, rel=1e-6)


def test_training_learns_canonical_windows_and_the_checkpoint_keeps_the_symmetry(tmp_path):
    data = collect(UNI, 30, 20, seed=0, excitation="gaussian")
    cfg = TrainConfig(out=str(tmp_path), window=8, steps=5, batch_size=16, width=16, depth=1,
                      emb_dim=8, progress=False, val_every=0, overwrite=True)
    train(cfg, data)
    model = load_model(tmp_path, dataset=data)
    assert isinstance(model.symmetry, PlanarSymmetry)
    assert model.metadata["window_symmetry"] == {"kind": "planar", "x": 2, "y": 3, "heading": 4}
    w = model.model_windows(data, 4)
    first = model.normalizer.denormalize(w)[:, 0, 2:5]
    np.testing.assert_allclose(first, 0.0, atol=1e-9)
    ref = make_reference("figure-eight", UNI, length=20)
    tracker = DenoisingTracker.from_model(model, TrackingProblem.for_env(UNI, ref, 4), data,
                                          iterations=2)
    assert tracker.symmetry.to_spec() == model.symmetry.to_spec()
    cfg_none = TrainConfig(out=str(tmp_path / "none"), window=8, steps=2, batch_size=16, width=16,
                           depth=1, emb_dim=8, progress=False, val_every=0, symmetry="none")
    train(cfg_none, data)
    assert isinstance(load_model(tmp_path / "none").symmetry, Identity)


def test_system_defaults_reach_the_tracker_and_options_override_them():
    from ddcontrol.evaluate.controllers import make_controller
    from ddcontrol.tracking.defaults import GENERIC, system_defaults

    d = system_defaults(UNI)
    assert d.horizon == d.window - d.t_ini and d.excitation == "gaussian"
    assert system_defaults("SomeoneElses-v0") is GENERIC
    data = collect(UNI, 12, 12, seed=0)

    class Model:  # the smallest thing make_tracker accepts: a closed-form denoiser
        window_length, input_dim, output_dim = 8, 2, 5
        sigma = 0.15  # as if training had stored a selected σ: the default "auto" takes it
        symmetry = symmetry_for(data.metadata, 2)
        normalizer = symmetry.fit_normalizer(symmetry.windows(data, 8), 2)
        denoiser = EmpiricalDenoiser(torch.tensor(normalizer.normalize(symmetry.windows(data, 8)),
                                                  dtype=torch.float32))

        def check_dataset(self, dataset):
            pass

        def model_windows(self, dataset, stride=1):
            return self.normalizer.normalize(self.symmetry.windows(dataset, 8, stride))

    ref = make_reference("circle", UNI, 30)
    assert ref.values.shape == (30, 2) and np.allclose(ref.values[0], 0.0)
    tracker = make_controller("denoising", UNI, ref, 1.0, 0.001, horizon=5, data=data,
                              model=Model())
    assert d.sigma == "auto" and tracker.sigma == 0.15 and tracker.solver_name == d.solver
    # The unicycle's per-step budget is a cap at 0.9 dt, not the 0.45 dt of the others
    # (quality first; see defaults.py).
    assert d.step_time_fraction == 0.9
    assert tracker.step_time_budget == pytest.approx(0.9 * ref.dt)
    # 8 cold starts everywhere; chord iterations on the unicycle only (measured per system).
    assert tracker.num_starts == d.num_starts == 8
    assert tracker.jacobian_every == d.jacobian_every == 5
    assert system_defaults("ddcontrol/DoublePendulum-v0").jacobian_every == 1
    # 5 warm iterations per step on the unicycle (measured per system), 20 elsewhere.
    assert tracker.iterations_per_step == d.iterations_per_step == 5
    assert system_defaults("ddcontrol/DoublePendulum-v0").iterations_per_step == 20
    # Training options per system (measured): the pendulum's narrower noise range, valid as a
    # TrainConfig; the unicycle keeps the generic one.
    from ddcontrol.score import TrainConfig

    pendulum = system_defaults("ddcontrol/DoublePendulum-v0").train_options
    assert TrainConfig(**pendulum).sigma_max == 0.5 and d.train_options == {}
    # The finite-horizon refinement: the system's iterations, at the plan's σ by default.
    assert tracker.refine_iterations == d.refine_iterations == 30
    assert tracker.refine_sigma == d.refine_sigma == 0.02 and tracker.config.damping == d.damping
    assert system_defaults("ddcontrol/DoublePendulum-v0").refine_sigma is None  # the plan's σ
    # ... started at 0.3 (or the plan's σ, if larger) with the plan's damping.
    assert tracker.refine_sigma_start == d.refine_sigma_start == 0.3
    assert tracker.refinement.sigma_start == max(0.3, tracker.sigma)
    assert tracker.refine_damping == d.damping
    assert isinstance(tracker.symmetry, PlanarSymmetry)
    tuned = make_controller("denoising", UNI, ref, 1.0, 0.001, horizon=5, data=data,
                            model=Model(), options={"sigma": 0.2, "step_time_budget": 0.02})
    assert tuned.sigma == 0.2 and tuned.step_time_budget == 0.02


def test_planar_gain_bounds_the_linear_part_for_every_frame():
    from ddcontrol.data.normalize import Normalizer

    norm = Normalizer(mean=np.zeros(5), std=np.array([1.0, 1.0, 0.5, 2.0, 1.0]), input_dim=2)
    sym = PlanarSymmetry(x=2, y=3, heading=4)
    assert sym.gain(norm) == pytest.approx(4.0)
    assert Identity().gain(norm) == 1.0
    worst = 0.0
    for phi in np.linspace(0, 2 * np.pi, 73):
        g = np.array([3.0, -1.0, phi])
        # Linear part in normalised units: columns are images of unit vectors minus the image of 0.
        zero = norm.normalize(sym.act(g, norm.denormalize(np.zeros((1, 5)))))
        cols = [norm.normalize(sym.act(g, norm.denormalize(np.eye(5)[i:i + 1]))) - zero
                for i in range(5)]
        worst = max(worst, np.linalg.norm(np.concatenate(cols).T, 2))
    assert worst <= sym.gain(norm) + 1e-12 and worst > 0.9 * sym.gain(norm)


def test_framed_cost_affine_map_equals_the_group_action():
    """The frame map read off as x M + b equals the symmetry's own action, batched frames too."""
    from ddcontrol.data.normalize import Normalizer
    from ddcontrol.tracking.window_cost import FramedWindowCost

    sym = PlanarSymmetry(1, 2, 3)
    norm = Normalizer(mean=np.array([0.1, 0.5, -0.2, 0.3, 0.0]),
                      std=np.array([0.7, 2.0, 2.0, 1.1, 0.4]), input_dim=1)

    class _Cost:  # the parts of WindowCost that FramedWindowCost reads
        mean = torch.zeros(5, dtype=torch.float64)
        t_ini, m = 2, 1

    cost = FramedWindowCost(_Cost(), sym, norm)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(3, 6, 5)))
    for g in (np.array([1.5, -2.0, 0.7]), rng.normal(size=(3, 3))):
        cost.set_frame(g)
        expected = norm.normalize(sym.act(torch.as_tensor(g), norm.denormalize(x)))
        torch.testing.assert_close(cost.to_world(x), expected, rtol=1e-12, atol=1e-12)

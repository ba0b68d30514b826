"""DenoisingTracker against exact answers, with closed-form denoisers (no training)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol.data import collect
from ddcontrol.data.collect import make_dynamics
from ddcontrol.errors import ConfigurationError, DimensionError, UnknownNameError
from ddcontrol.evaluate.replay import replay
from ddcontrol.manifold import BehaviorManifold, Linearization
from ddcontrol.score import LinearGaussianDenoiser
from ddcontrol.solvers import DRGD, Problem
from ddcontrol.solvers.conditioned import ConditionedDRGD
from ddcontrol.tracking import DenoisingTracker, TrackingProblem

MSD = "ddcontrol/MassSpringDamper-v0"
MIMO = "ddcontrol/CoupledMasses-v0"


def exact_projector_denoiser(windows: np.ndarray) -> LinearGaussianDenoiser:
    """The linear-Gaussian denoiser of the windows' subspace with a wide prior: at σ = 1e-3 it is
    the orthogonal projector onto the (affine) behaviour to ~1e-10. (Being exact, it needs
    neither the tracker's damping nor its trust radius: the tests switch them off.)"""
    fit = LinearGaussianDenoiser.from_samples(torch.as_tensor(windows, dtype=torch.float64))
    return LinearGaussianDenoiser(fit.mean.reshape(windows.shape[1:]), fit.vectors,
                                  torch.full((fit.rank,), 100.0, dtype=torch.float64))


def lti_prediction(dyn, x0: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """y = O x0 + T u over the horizon, stacked time-major (y_0 first)."""
    A, B, C = dyn.A, dyn.B, dyn.C
    p, m = C.shape[0], B.shape[1]
    O = np.concatenate([C @ np.linalg.matrix_power(A, i) for i in range(horizon)])
    T = np.zeros((horizon * p, horizon * m))
    for i in range(horizon):
        for j in range(i):
            T[i * p:(i + 1) * p, j * m:(j + 1) * m] = C @ np.linalg.matrix_power(A, i - 1 - j) @ B
    return O @ x0, T


def bounded_optimum(dyn, x0, ref, R, low, high, horizon):
    import cvxpy as cp

    c, T = lti_prediction(dyn, x0, horizon)
    u = cp.Variable(T.shape[1])
    obj = cp.sum_squares(T @ u + c - ref.reshape(-1)) + R * cp.sum_squares(u)
    cp.Problem(cp.Minimize(obj), [u >= low, u <= high]).solve()
    return float(obj.value)


@pytest.mark.parametrize("sigma_start", [None, 0.1])
def test_finite_horizon_reaches_true_optimum_and_beats_training_windows(sigma_start):
    n = 30
    x0 = np.array([0.5, 0.0])
    data = collect(MSD, 300, n, seed=0, initial_states=x0, noise=False)
    windows = data.windows(n, normalized=True)
    ref = 0.8 * np.sin(np.linspace(0, 2 * np.pi, n))[:, None]
    prob = TrackingProblem(ref, n, 1, 1, dt=0.1, Q=1.0, R=0.01)
    tracker = DenoisingTracker(exact_projector_denoiser(windows), data.normalizer, prob,
                               candidates=windows, sigma=1e-3, solver="nesterov",
                               iterations=1500, dtype=torch.float64, sigma_start=sigma_start)
    plan = tracker.plan()
    sigmas = plan.solver_result.history["sigma"]
    assert sigmas[-1] == pytest.approx(1e-3)
    # Annealed solves start at sigma_start and reach sigma halfway.
    assert sigmas[0] == pytest.approx(sigma_start or 1e-3) and sigmas[750] == pytest.approx(1e-3)
    rep = replay(prob, make_dynamics(MSD), x0, plan.inputs, plan.predicted_outputs)
    c, T = lti_prediction(make_dynamics(MSD), x0, n)
    u_opt = np.linalg.solve(T.T @ T + 0.01 * np.eye(n), T.T @ (ref[:, 0] - c))
    optimum = float(prob.cost(u_opt[:, None], (T @ u_opt + c)[:, None]))
    assert rep.true_cost == pytest.approx(optimum, rel=1e-3)
    assert rep.manifold_deviation < 1e-3 and not rep.drifted
    best_window = float(prob.cost(data.u, data.y).min())
    assert rep.true_cost < best_window
    assert plan.initial_cost == pytest.approx(best_window, rel=1e-6)


def conditioned_mimo_plan(denoiser, normalizer, candidates, t_ini: int, n_h: int,
                          iterations: int, **options):
    """The coupled masses' conditioned case: a plan from a measured past at step 20 of a
    noise-free episode; returns (plan, replay, bounded optimum, the episode)."""
    episode = collect(MIMO, 1, 40, seed=5, noise=False)
    k = 20
    ref = np.stack([0.8 * np.sin(np.arange(60) * 0.1),
                    0.5 * np.sign(np.sin(np.arange(60) * 0.05))], axis=1)
    prob = TrackingProblem(ref, n_h, 2, 2, dt=0.1, Q=1.0, R=0.01, input_low=-5, input_high=5)
    tracker = DenoisingTracker(denoiser, normalizer, prob, candidates=candidates, t_ini=t_ini,
                               sigma=1e-3, solver="nesterov", iterations=iterations,
                               dtype=torch.float64, damping=1e-3, max_step=None, **options)
    plan = tracker.plan(episode.u[0, k - t_ini:k], episode.y[0, k - t_ini:k],
                        current_y=episode.y[0, k], start=k)
    dyn = make_dynamics(MIMO)
    rep = replay(prob, dyn, episode.x[0, k], plan.inputs, plan.predicted_outputs,
                 u_prev=episode.u[0, k - 1], start=k)
    optimum = bounded_optimum(dyn, episode.x[0, k], ref[k:k + n_h], 0.01, -5, 5, n_h)
    return plan, rep, optimum, episode, k


def test_conditioned_plan_reaches_bounded_optimum_from_measured_past():
    t_ini, n_h = 6, 20
    data = collect(MIMO, 300, 60, seed=0, noise=False)
    windows = data.windows(t_ini + n_h, stride=5, normalized=True)
    plan, rep, optimum, episode, k = conditioned_mimo_plan(
        exact_projector_denoiser(windows), data.normalizer, windows, t_ini, n_h, 600)
    assert rep.true_cost <= 1.01 * optimum
    assert np.all(np.abs(plan.inputs) <= 5 + 1e-9)
    # The plan's past is the measured past.
    past = data.normalizer.denormalize(plan.window[:t_ini])
    np.testing.assert_allclose(past[:, :2], episode.u[0, k - t_ini:k], atol=1e-6)
    np.testing.assert_allclose(past[:, 2:], episode.y[0, k - t_ini:k], atol=1e-6)


@pytest.mark.parametrize("jacobian_every, momentum, chord", [
    (1, 0.0, "exact"), (7, 0.0, "exact"), (7, 0.5, "exact"), (7, 0.0, "reused"),
    (7, 0.5, "reused")])
def test_conditioned_solver_keeps_pinned_coordinates_on_a_subspace(jacobian_every, momentum,
                                                                   chord, monkeypatch):
    # On a linear manifold the pinned rows are constant: reusing them (jacobian_every > 1)
    # must reach the same KKT point.
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 6, dtype=torch.float64))[0]
    den = LinearGaussianDenoiser(torch.zeros(10, dtype=torch.float64), basis,
                                 torch.full((6,), 100.0, dtype=torch.float64))
    batches: list[int] = []

    def counting(x, sigma):
        batches.append(x.shape[0])
        return den(x, sigma)

    cotangents: list[int] = []
    vjps = Linearization.vjps

    def spy(self, u, **kwargs):
        cotangents.append(u.shape[0])
        return vjps(self, u, **kwargs)

    monkeypatch.setattr(Linearization, "vjps", spy)
    manifold = BehaviorManifold(counting, 1e-4)
    target = torch.randn(10, dtype=torch.float64)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[:3] = True
    values = basis @ torch.randn(6, dtype=torch.float64)  # reachable pinned values
    problem = Problem(manifold, lambda x: ((x - target) ** 2).sum(dim=1))
    solver = ConditionedDRGD(mask, values, step_size=0.5, max_iterations=200, damping=1e-6,
                             min_gradient_norm=0.0, jacobian_every=jacobian_every,
                             momentum=momentum, chord=chord)
    res = solver.run(problem, initial_point=torch.randn(2, 10, dtype=torch.float64))
    x = res.point
    np.testing.assert_allclose(x[:, :3].numpy(), values[:3].expand(2, 3).numpy(), atol=1e-8)
    np.testing.assert_allclose(den(x, 1e-4).numpy(), x.numpy(), atol=1e-6)
    # KKT on the slice: the gradient is orthogonal to the slice's tangent space.
    null = torch.linalg.svd(basis[:3])[2][3:].T  # coefficients that leave the first 3 coords
    slice_basis = basis @ null
    grad = 2 * (x - target)
    assert torch.abs(grad @ slice_basis).max() < 1e-6
    # One forward at the batch size per iteration; the rows (3 extra cotangents of the one
    # vectorised backward) are recomputed every jacobian_every-th iteration only, and not at
    # the last one (k = 200), whose step is never taken. With jacobian_every > 1 the other
    # iterations make two small backward passes: ∇f (and the momentum) with the pull's Eᵀμ,
    # then the Eᵀλ of the directions; with the rows reused too, one over ∇f (and the momentum).
    assert batches == [2] * 201
    copies = 2 if momentum else 1
    expected: list[int] = []
    for k in range(201):
        if k % jacobian_every == 0 and k < 200:
            expected.append(copies + 3)
        elif jacobian_every > 1 and chord == "exact":
            expected += [copies + 1, copies]
        else:
            expected.append(copies)
    assert cotangents == expected


def test_closed_loop_tracks_a_constant_reference_in_a_gym_loop():
    t_ini, n_h = 4, 15
    data = collect(MSD, 200, 60, seed=1, noise=False)
    windows = data.windows(t_ini + n_h, stride=4, normalized=True)
    ref = np.full((200, 1), 1.0)
    prob = TrackingProblem(ref, n_h, 1, 1, dt=0.1, Q=1.0, R=0.001, input_low=-5, input_high=5)
    tracker = DenoisingTracker(exact_projector_denoiser(windows), data.normalizer, prob,
                               candidates=windows, t_ini=t_ini, sigma=1e-3,
                               solver="nesterov", iterations=200, iterations_per_step=30,
                               dtype=torch.float64, damping=1e-3, max_step=None)
    env = gym.make(MSD)
    obs, info = env.reset(seed=0)
    tracker.reset(obs, info)
    ys = []
    for _ in range(60):
        action = tracker.act(obs)
        assert action.shape == (1,) and np.all(np.isfinite(action))
        obs, *_ = env.step(action)
        ys.append(obs[0])
    # Steady state of the tracking cost with the static gain y = u / k (k = 1 N/m): minimising
    # Q e² + R u² with e = r − u gives e = r R / (Q + R) ≈ 1e-3; allow 5x for the finite horizon.
    assert abs(ys[-1] - 1.0) < 5 * 1.0 * 0.001 / (1.0 + 0.001)
    assert tracker.last_solve_time_s > 0


def test_step_time_budget_stops_receding_horizon_solves():
    t_ini, n_h = 3, 10
    data = collect(MSD, 50, 40, seed=1, noise=False)
    windows = data.windows(t_ini + n_h, stride=3, normalized=True)
    prob = TrackingProblem(np.ones((40, 1)), n_h, 1, 1, dt=0.1, Q=1.0, R=0.001)
    tracker = DenoisingTracker(exact_projector_denoiser(windows), data.normalizer, prob,
                               candidates=windows, t_ini=t_ini, sigma=1e-3,
                               iterations=500, iterations_per_step=500, dtype=torch.float64,
                               step_time_budget=1e-9)
    obs = np.zeros(1)
    # The reset with the first observation runs the cold start, not time-limited: every
    # iteration, no control step.
    tracker.reset(obs)
    assert tracker.last_plan is None and tracker.step_index == 0
    assert tracker.first_plan.solver_result.iterations == 500 and tracker.reset_time_s > 0

    def no_cold_search(*args, **kwargs):
        raise AssertionError("a control step ran the cold-start search")

    tracker.cold_start.search = no_cold_search
    for k in range(t_ini + 3):
        action = tracker.act(obs)
        assert np.all(np.isfinite(action))
        if k > 0:  # the warm-up steps refine the first plan within the budget, as all others
            result = (tracker.first_plan or tracker.last_plan).solver_result
            assert result.stop_reason == "max_time" and result.iterations <= 1
    # Every control step's solve stopped on time after its first iteration.
    result = tracker.last_plan.solver_result
    assert result.stop_reason == "max_time" and result.iterations <= 1
    with pytest.raises(ConfigurationError):
        DenoisingTracker(exact_projector_denoiser(windows), data.normalizer, prob,
                         candidates=windows, t_ini=t_ini, step_time_budget=0.0)
    # A solver passed in keeps its own time limit when a call gives no budget.
    own = DenoisingTracker(exact_projector_denoiser(windows), data.normalizer, prob,
                           candidates=windows, t_ini=t_ini, dtype=torch.float64,
                           solver=DRGD(step_size=0.1, max_time=1e-9), conditioning="penalty")
    plan = own.plan(data.u[0, :t_ini], data.y[0, :t_ini], current_y=data.y[0, t_ini],
                    start=t_ini)
    assert plan.solver_result.stop_reason == "max_time"


def test_tracker_bad_inputs():
    data = collect(MSD, 20, 20, seed=0, noise=False)
    windows = data.windows(10, normalized=True)
    den = exact_projector_denoiser(windows)
    prob = TrackingProblem(np.zeros((10, 1)), 8, 1, 1)
    with pytest.raises(UnknownNameError):
        DenoisingTracker(den, data.normalizer, prob, candidates=windows, t_ini=2,
                         solver="newton")
    with pytest.raises(UnknownNameError):
        DenoisingTracker(den, data.normalizer, prob, t_ini=2, conditioning="hope")
    with pytest.raises(DimensionError):
        DenoisingTracker(den, data.normalizer, prob, candidates=windows, t_ini=3)
    with pytest.raises(ConfigurationError):
        DenoisingTracker(den, data.normalizer, prob, candidates=windows, t_ini=2,
                         solver="dlf")
    tracker = DenoisingTracker(den, data.normalizer, prob, candidates=windows, t_ini=2,
                               dtype=torch.float64)
    with pytest.raises(DimensionError):
        tracker.plan(np.zeros((3, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError):
        tracker.plan(np.zeros((2, 1)), np.full((2, 1), np.nan))
    no_cand = DenoisingTracker(den, data.normalizer, prob, t_ini=2)
    with pytest.raises(ConfigurationError):
        no_cand.plan(np.zeros((2, 1)), np.zeros((2, 1)))
    with pytest.raises(DimensionError):
        TrackingProblem(np.zeros((10, 2)), 8, 1, 1)
    with pytest.raises(ConfigurationError):
        TrackingProblem(np.zeros((10, 1)), 8, 1, 1, Q=-np.eye(1))


def test_replay_flags_drift_when_the_model_is_of_another_system():
    n = 20
    x0 = np.zeros(2)
    data = collect(MSD, 200, n, seed=0, initial_states=x0, noise=False)
    windows = data.windows(n, normalized=True)
    ref = np.full((n, 1), 0.8)
    prob = TrackingProblem(ref, n, 1, 1, dt=0.1, Q=1.0, R=0.001, input_low=-5, input_high=5)
    tracker = DenoisingTracker(exact_projector_denoiser(windows), data.normalizer, prob,
                               candidates=windows, sigma=1e-3, solver="nesterov",
                               iterations=300, dtype=torch.float64)
    plan = tracker.plan()
    stiffer = make_dynamics(MSD, {"stiffness": 4.0, "damping": 0.1})
    rep = replay(prob, stiffer, x0, plan.inputs, plan.predicted_outputs)
    assert rep.drifted and rep.true_cost > 1.5 * rep.predicted_cost
    honest = replay(prob, make_dynamics(MSD), x0, plan.inputs, plan.predicted_outputs)
    assert not honest.drifted


def test_replay_equals_a_direct_env_rollout():
    env = gym.make(MIMO)
    obs, info = env.reset(seed=4)
    u = np.random.default_rng(0).uniform(-3, 3, size=(25, 2))
    ys = []
    for k in range(25):
        ys.append(obs)
        obs, *_ = env.step(u[k])
    ref = np.zeros((25, 2))
    prob = TrackingProblem(ref, 25, 2, 2, R=0.01)
    rep = replay(prob, make_dynamics(MIMO), info["state"], u, np.array(ys))
    np.testing.assert_allclose(rep.outputs, np.array(ys), atol=1e-12)
    assert rep.manifold_deviation < 1e-12
    assert rep.true_cost == pytest.approx(float(prob.cost(u, np.array(ys))))


def test_problem_and_model_mismatches_raise():
    from ddcontrol.errors import CheckpointError
    from ddcontrol.evaluate.controllers import make_tracker
    from ddcontrol.score import TrainConfig, train
    from ddcontrol.tracking.reference import make_reference

    short = make_reference("step", MSD, 5)
    with pytest.raises(DimensionError):
        TrackingProblem.for_env(MSD, short, 10)
    with pytest.raises(DimensionError):
        TrackingProblem(np.zeros((12, 3)), 10, 1, 2)
    with pytest.raises(ConfigurationError):
        TrackingProblem(np.zeros((12, 1)), 10, 1, 1, R=-1.0)
    data = collect(MSD, 20, 20, seed=0)
    model = train(TrainConfig(window=12, steps=3, width=16, depth=1, progress=False,
                              val_every=0), data)
    other = collect(MIMO, 20, 20, seed=0)
    ref = make_reference("step", MIMO, 30)
    with pytest.raises(CheckpointError):
        make_tracker(model, other, ref, 1.0, 0.01, horizon=8, env_id=MIMO)


def test_problem_for_dataset_takes_bounds_from_metadata():
    from ddcontrol.tracking.reference import make_reference

    data = collect(MIMO, 5, 20, seed=0)
    prob = TrackingProblem.for_dataset(data, make_reference("sine", MIMO, 20), 10)
    np.testing.assert_array_equal(prob.input_high, [5.0, 5.0])
    assert (prob.input_dim, prob.output_dim) == (2, 2)


def test_episode_start_collects_and_freezes_the_garbage_collector():
    import gc

    t_ini, n_h = 3, 10
    data = collect(MSD, 30, 30, seed=1, noise=False)
    windows = data.windows(t_ini + n_h, stride=3, normalized=True)
    prob = TrackingProblem(np.ones((30, 1)), n_h, 1, 1, dt=0.1, Q=1.0, R=0.001)

    def tracker(**kw):
        return DenoisingTracker(exact_projector_denoiser(windows), data.normalizer, prob,
                                candidates=windows, t_ini=t_ini, sigma=1e-3, iterations=5,
                                dtype=torch.float64, **kw)

    gc.unfreeze()
    try:
        quiet = tracker(freeze_gc=False)
        assert quiet.freeze_gc is False
        quiet.reset(np.zeros(1))
        assert gc.get_freeze_count() == 0
        import weakref

        class Node:
            pass

        node = Node()
        node.self = node  # garbage reachable only through a cycle: collected, not frozen
        dead = weakref.ref(node)
        del node
        live = [object()]
        frozen = tracker()
        assert frozen.freeze_gc is True
        frozen.reset()  # no observation: no episode yet, nothing frozen
        assert gc.get_freeze_count() == 0 and dead() is not None
        frozen.reset(np.zeros(1))
        assert gc.get_freeze_count() > 0 and dead() is None
        # What lived at the episode's start is in the permanent generation: a full collection
        # no longer visits it.
        assert all(o is not live for o in gc.get_objects())
        assert np.all(np.isfinite(frozen.act(np.zeros(1))))
    finally:
        gc.unfreeze()
    with pytest.raises(TypeError, match="freeze_gc"):
        tracker(freeze_gc="yes")

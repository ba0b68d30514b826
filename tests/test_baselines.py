"""Baseline controllers (oracle, LQR, lqr-id, DeePC, best window) against exact answers."""

from __future__ import annotations

import warnings

import control
import gymnasium as gym
import numpy as np
import pytest

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol.baselines import (
    BASELINES,
    AffineModel,
    DeePC,
    InsufficientExcitationError,
    KalmanObserver,
    LinearOracle,
    LQRTracker,
    NotApplicableError,
    ShootingOracle,
    best_window,
    check_persistency,
    condense,
    fit_arx,
    linearize,
    make_baseline,
    window_costs,
)
from ddcontrol.data import TrajectoryDataset, collect
from ddcontrol.data.collect import make_dynamics
from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError, UnknownNameError
from ddcontrol.tracking.cost import tracking_cost
from ddcontrol.tracking.reference import Reference, make_reference

MSD = "ddcontrol/MassSpringDamper-v0"
MIMO = "ddcontrol/CoupledMasses-v0"
PENDULUM = "ddcontrol/DoublePendulum-v0"
UNICYCLE = "ddcontrol/Unicycle-v0"
Q, R = 10.0, 0.1


@pytest.fixture(scope="module")
def linear_data():
    """Noise-free data of both linear systems (the presets have no noise)."""
    return {env: collect(env, 20, 100, seed=1) for env in (MSD, MIMO)}


@pytest.fixture(scope="module")
def pendulum_data():
    return collect(PENDULUM, 30, 120, seed=2)


# -- DeePC reproduces the model-based optimum on noise-free LTI data ----------------------------
@pytest.mark.parametrize("env_id", [MSD, MIMO])
def test_deepc_equals_oracle_plan_on_noise_free_lti_data(env_id, linear_data):
    N, t_ini, k = 20, 4, 10
    ref = make_reference("sine", env_id, N, amplitude=2.0, period=3.0)  # saturates some inputs
    test = collect(env_id, 1, 30, seed=7)
    oracle = LinearOracle(make_dynamics(env_id), ref, Q, R, horizon=N)
    u_opt, y_opt = oracle.plan(test.x[0, k], ref, u_prev=test.u[0, k - 1])
    deepc = DeePC(linear_data[env_id], ref, Q, R, horizon=N, t_ini=t_ini, lambda_g=0.0,
                  lambda_y=None)
    u_dd, y_dd = deepc.plan(test.u[0, k - t_ini:k], test.y[0, k - t_ini:k + 1], ref)
    assert deepc.hankel_rank == (t_ini + N) * deepc.input_dim + test.state_dim
    np.testing.assert_allclose(u_dd, u_opt, atol=1e-4 * np.abs(u_opt).max())
    np.testing.assert_allclose(y_dd, y_opt, atol=1e-4 * np.abs(y_opt).max())
    assert np.any(np.isclose(np.abs(u_opt), 5.0))  # the bounds were active


def test_deepc_regularised_variants_solve(linear_data):
    ref = make_reference("step", MSD, 10)
    data = linear_data[MSD]
    u_ini, y_ini = data.u[0, 10:14], data.y[0, 10:15]
    for opts in ({"regularizer": "l1", "slack_norm": "l1"}, {"regularizer": "none"},
                 {"solver": "CLARABEL"}):
        deepc = DeePC(data, ref, Q, R, horizon=10, max_columns=100, **opts)
        u, y = deepc.plan(u_ini, y_ini, ref)
        assert u.shape == (10, 1) and y.shape == (10, 1)
        assert np.all(np.abs(u) <= 5.0 + 1e-6)
        assert abs(y[0, 0] - y_ini[-1, 0]) < 1e-2  # the current output is matched


# -- LQR ----------------------------------------------------------------------------------------
def test_lqr_gain_equals_python_control_dlqr_on_double_integrator():
    dt = 0.1
    A = np.array([[1.0, dt], [0.0, 1.0]])
    B = np.array([[0.5 * dt ** 2], [dt]])
    Qx, Ru = np.diag([1.0, 0.5]), np.array([[0.2]])
    model = AffineModel(A, B, np.eye(2), np.zeros(2), np.zeros(2), dt)
    ref = Reference(np.zeros((10, 2)), (0, 1), 2, dt)
    lqr = LQRTracker(model, ref, Qx, Ru, [-np.inf], [np.inf], estimator=KalmanObserver(model))
    K, S, E = control.dlqr(A, B, Qx, Ru)
    np.testing.assert_allclose(lqr.K, K, rtol=1e-6)
    np.testing.assert_allclose(lqr.S, S, rtol=1e-6)
    np.testing.assert_allclose(np.sort_complex(lqr.E), np.sort_complex(E), rtol=1e-6)


@pytest.mark.parametrize("flavour", ["lqr", "lqr-id", "lqr-integral"])
def test_lqr_tracks_a_step_on_the_mass_spring_damper(flavour, linear_data):
    ref = make_reference("step", MSD, 150, amplitude=1.0)
    if flavour == "lqr-id":
        ctrl = LQRTracker.from_data(linear_data[MSD], ref, Q, R, lag=2)
    else:
        ctrl = LQRTracker.from_dynamics(make_dynamics(MSD), ref, Q, R,
                                        integral_weight=0.1 if flavour == "lqr-integral" else 0)
    env = gym.make(MSD)
    obs, info = env.reset(seed=0)
    ctrl.reset(obs, info)
    for _ in range(150):
        obs, *_ = env.step(ctrl.act(obs))
    assert abs(obs[0] - 1.0) < 1e-3


def test_lqr_not_applicable_to_the_unicycle():
    ref = make_reference("figure-eight", UNICYCLE, 50)
    with pytest.raises(NotApplicableError, match="not stabilisable"):
        make_baseline("lqr", UNICYCLE, ref, Q, R)
    assert issubclass(NotApplicableError, ConfigurationError)


def test_integral_action_needs_enough_inputs():
    ref = make_reference("swing", PENDULUM, 50)
    with pytest.raises(NotApplicableError):
        LQRTracker.from_dynamics(make_dynamics(PENDULUM), ref, Q, R, integral_weight=1.0)


def test_linearize_matches_finite_differences():
    dyn = make_dynamics(PENDULUM)
    x0, u0 = np.array([0.3, -0.2, 0.1, 0.4]), np.array([0.5])
    model = linearize(dyn, x0, u0)
    h = 1e-6
    A_fd = np.stack([(dyn.step(x0 + h * e, u0) - dyn.step(x0 - h * e, u0)) / (2 * h)
                     for e in np.eye(4)], axis=1)
    np.testing.assert_allclose(model.A, A_fd, atol=1e-7)
    np.testing.assert_allclose(model.A @ x0 + model.B @ u0 + model.c, dyn.step(x0, u0),
                               atol=1e-12)


# -- system identification ----------------------------------------------------------------------
@pytest.mark.parametrize("env_id, lag", [(MSD, 2), (MIMO, 2), (MIMO, 4)])
def test_arx_reproduces_noise_free_lti_data(env_id, lag, linear_data):
    data = linear_data[env_id]
    arx = fit_arx(data.u, data.y, lag)
    err = arx.predict(data.u, data.y) - data.y[:, lag:]
    assert np.abs(err).max() < 1e-8 * np.abs(data.y).max()
    # The measurable-state realisation simulates the same outputs.
    model = arx.to_state_space()
    i, k = 3, 40
    xi = arx.state(data.u[i, k - lag + 1:k], data.y[i, k - lag + 1:k + 1])
    for j in range(k, k + 20):
        assert np.abs(model.C @ xi + model.d - data.y[i, j]).max() < 1e-7
        xi = model.A @ xi + model.B @ data.u[i, j] + model.c


# -- oracles ------------------------------------------------------------------------------------
def test_linear_oracle_satisfies_kkt_and_beats_feasible_plans():
    dyn = make_dynamics(MIMO)
    ref = make_reference("random", MIMO, 15, amplitude=3.0, seed=1)
    oracle = LinearOracle(dyn, ref, Q, R, horizon=15)
    x0 = np.array([0.5, -0.5, 1.0, 0.0])
    u, y = oracle.plan(x0, ref)
    y_sim, _ = dyn.simulate(x0[None], u[None])
    np.testing.assert_allclose(y, y_sim[0], atol=1e-10)
    # KKT of the box-constrained QP: gradient zero on free inputs, pushing outwards on active ones.
    Phi, Gamma, off = condense(oracle.model, 15)
    rows = (np.arange(15)[:, None] * 2 + np.array(ref.channels)).reshape(-1)
    e = (Phi @ x0 + off + Gamma @ u.reshape(-1))[rows] - ref.values.reshape(-1)
    grad = 2 * Gamma[rows].T @ np.kron(np.eye(15), oracle.Q) @ e + 2 * np.kron(
        np.eye(15), oracle.R) @ u.reshape(-1)
    uf = u.reshape(-1)
    lo, hi = np.isclose(uf, -5.0), np.isclose(uf, 5.0)
    assert lo.any() or hi.any()
    assert np.abs(grad[~lo & ~hi]).max() < 1e-6 * np.abs(grad).max()
    assert np.all(grad[lo] >= -1e-8) and np.all(grad[hi] <= 1e-8)
    best = tracking_cost(u, y, ref, Q, R)
    rng = np.random.default_rng(0)
    others = np.clip(u + rng.normal(scale=0.3, size=(200, 15, 2)), -5, 5)
    y_others, _ = dyn.simulate(np.repeat(x0[None], 200, 0), others)
    assert np.all(tracking_cost(others, y_others, ref, Q, R) >= best - 1e-9)


def test_shooting_oracle_improves_on_zero_input_and_respects_bounds():
    dyn = make_dynamics(PENDULUM)
    N = 25
    ref = make_reference("swing", PENDULUM, N, ramp=0.0, amplitude=0.5)
    oracle = ShootingOracle(dyn, ref, Q, 0.01, horizon=N, max_iterations=40)
    x0 = np.array([0.2, 0.0, -0.1, 0.0])
    u, y = oracle.plan(x0, ref)
    assert np.all(np.abs(u) <= 1.0 + 1e-12)
    assert np.any(np.isclose(np.abs(u), 1.0))  # the torque limit is active
    y_sim, _ = dyn.simulate(x0[None], u[None])
    np.testing.assert_allclose(y, y_sim[0], atol=1e-12)
    zero = tracking_cost(np.zeros((N, 1)), dyn.simulate(x0[None], np.zeros((1, N, 1)))[0][0],
                         ref, Q, 0.01)
    assert tracking_cost(u, y, ref, Q, 0.01) < 0.7 * zero


@pytest.mark.parametrize("derivatives", ["autograd", "central-difference"])
def test_shooting_jacobian_matches_finite_differences(derivatives):
    dyn = make_dynamics(UNICYCLE)
    ref = make_reference("figure-eight", UNICYCLE, 6)
    oracle = ShootingOracle(dyn, ref, Q, R, horizon=6, derivatives=derivatives)
    rng = np.random.default_rng(0)
    x0, u, up = rng.normal(size=5), rng.normal(size=(6, 2)), np.zeros(2)
    J = oracle._output_sensitivity(x0, u, up)
    h = 1e-6
    for j in range(12):
        du = np.zeros(12)
        du[j] = h
        yp = oracle._rollout(x0, u + du.reshape(6, 2), up)[1].reshape(-1)
        ym = oracle._rollout(x0, u - du.reshape(6, 2), up)[1].reshape(-1)
        np.testing.assert_allclose(J[:, j], (yp - ym) / (2 * h), atol=1e-6)


# -- best training window -----------------------------------------------------------------------
def test_best_window_is_the_brute_force_minimum(linear_data):
    data = linear_data[MIMO].subset(np.arange(5))
    ref = make_reference("random", MIMO, 12, seed=2)
    best = best_window(data, ref, Q, R, stride=3)
    brute = [(tracking_cost(data.u[i, s:s + 12], data.y[i, s:s + 12], ref, Q, R), i, s)
             for i in range(5) for s in range(0, data.length - 12 + 1, 3)]
    cost, i, s = min(brute)
    assert (best.trajectory, best.start) == (i, s)
    assert best.cost == pytest.approx(cost, rel=1e-12)
    np.testing.assert_array_equal(best.u, data.u[i, s:s + 12])
    np.testing.assert_array_equal(best.x0, data.x[i, s])
    assert window_costs(data, ref, Q, R, stride=3, chunk=2).min() == pytest.approx(cost)


# -- data checks and bad inputs -----------------------------------------------------------------
def test_persistency_check_flags_rank_deficient_data():
    env = MSD
    dyn = make_dynamics(env)
    u = np.ones((10, 60, 1))  # constant inputs: rank 1 whatever the depth
    y, x = dyn.simulate(np.zeros((10, 2)), u)
    data = TrajectoryDataset(u, y, x, {"env_id": env, "dt": 0.1})
    assert not check_persistency(u, 5, on_failure="ignore")
    assert check_persistency(collect(env, 5, 60, seed=0).u, 10)
    ref = make_reference("step", env, 10)
    with pytest.raises(InsufficientExcitationError, match="persistently exciting"):
        DeePC(data, ref, Q, R, horizon=10)
    with pytest.warns(UserWarning, match="persistently exciting"):
        check_persistency(u, 5, on_failure="warn")
    with pytest.raises(InsufficientExcitationError):
        check_persistency(u, 61)  # longer than the trajectories


def test_bad_arguments_raise_ddcontrol_errors(linear_data):
    data = linear_data[MSD]
    ref = make_reference("step", MSD, 10)
    deepc = DeePC(data, ref, Q, R, horizon=10, max_columns=100)
    with pytest.raises(DimensionError):
        deepc.plan(np.zeros((4, 1)), np.zeros((4, 1)), ref)  # y_ini needs T_ini + 1 rows
    with pytest.raises(DimensionError):
        deepc.plan(np.zeros((4, 1)), np.zeros((5, 1)), np.zeros((9, 1)))
    with pytest.raises(NonFiniteError):
        deepc.plan(np.full((4, 1), np.nan), np.zeros((5, 1)), ref)
    deepc.reset(np.zeros(1))
    with pytest.raises(NonFiniteError):
        deepc.act(np.array([np.nan]))
    with pytest.raises(DimensionError):
        deepc.act(np.zeros(2))
    with pytest.raises(ConfigurationError):
        DeePC(data, ref, Q, R, regularizer="l3")
    with pytest.raises(DimensionError):
        DeePC(data, make_reference("step", MIMO, 10), Q, R)
    with pytest.raises(UnknownNameError):
        make_baseline("pid", MSD, ref, Q, R)
    with pytest.raises(ConfigurationError):
        make_baseline("deepc", MSD, ref, Q, R)  # no data
    oracle = make_baseline("oracle", MSD, ref, Q, R, horizon=10)
    oracle.reset(np.zeros(1))
    with pytest.raises(ConfigurationError, match="true state"):
        oracle.act(np.zeros(1))  # without info
    with pytest.raises(TypeError):
        LinearOracle(make_dynamics(MSD), ref.values, Q, R)


# -- every controller in a Gymnasium loop -------------------------------------------------------
@pytest.mark.parametrize("env_id, ref_name", [(MSD, "step"), (MIMO, "random"),
                                              (PENDULUM, "swing"), (UNICYCLE, "figure-eight")])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_runs_in_a_gym_loop(env_id, ref_name, name, linear_data, pendulum_data):
    data = linear_data.get(env_id, pendulum_data)
    if env_id == UNICYCLE:
        data = collect(UNICYCLE, 10, 60, seed=3)
    ref = make_reference(ref_name, env_id, 30)
    opts = {"deepc": {"t_ini": 3, "max_columns": 150},
            "oracle": {"max_iterations": 10, "warm_iterations": 3}}.get(name, {})
    if name == "oracle" and env_id in (MSD, MIMO):
        opts = {}
    try:
        ctrl = make_baseline(name, env_id, ref, Q, R, horizon=8, data=data, **opts)
    except NotApplicableError:
        assert (name, env_id) == ("lqr", UNICYCLE)
        return
    env = gym.make(env_id)
    obs, info = env.reset(seed=0)
    ctrl.reset(obs, info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no solver chatter in the loop
        for _ in range(6):
            action = ctrl.act(obs, info)
            assert action.shape == env.action_space.shape
            assert env.action_space.contains(action)
            assert ctrl.last_solve_time_s >= 0.0
            obs, _, terminated, _, info = env.step(action)
            assert not terminated
    assert ctrl.k == 6 and len(ctrl.inputs) == 6

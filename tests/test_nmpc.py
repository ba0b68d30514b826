"""The CasADi NMPC oracle: exact model, the LTI optimum, agreement with the shooting oracle."""

import sys

import numpy as np
import pytest

import ddcontrol  # noqa: F401  (registers the environments)
from ddcontrol.baselines import LinearOracle, ShootingOracle, make_baseline, make_oracle
from ddcontrol.baselines.nmpc import casadi_available, require_casadi
from ddcontrol.data import make_dynamics
from ddcontrol.tracking.cost import tracking_cost
from ddcontrol.tracking.reference import make_reference

MSD, MIMO = "ddcontrol/MassSpringDamper-v0", "ddcontrol/CoupledMasses-v0"
PENDULUM, UNICYCLE = "ddcontrol/DoublePendulum-v0", "ddcontrol/Unicycle-v0"
needs_casadi = pytest.mark.skipif(not casadi_available(), reason="CasADi not installed")


@needs_casadi
@pytest.mark.parametrize("env_id", [MSD, MIMO, PENDULUM, UNICYCLE])
def test_traced_model_is_the_simulator(env_id):
    from ddcontrol.baselines.nmpc import casadi_model

    dyn = make_dynamics(env_id)
    F, H = casadi_model(dyn)
    rng = np.random.default_rng(3)
    x = dyn.sample_initial_states(rng, 20)
    u = rng.uniform(-1, 1, size=(20, dyn.input_dim))
    np.testing.assert_allclose(np.array(F(x.T, u.T)).T, dyn.step(x, u), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.array(H(x.T, u.T)).T, dyn.output(x, u), rtol=0, atol=1e-14)


@needs_casadi
@pytest.mark.parametrize("env_id, ref_name", [(MSD, "step"), (MIMO, "random")])
def test_casadi_oracle_equals_the_exact_lti_qp(env_id, ref_name):
    from ddcontrol.baselines.nmpc import CasadiOracle

    dyn = make_dynamics(env_id)
    # A large step: the input bounds are active in the optimum.
    ref = make_reference(ref_name, env_id, 40, **({"amplitude": 4.0} if ref_name == "step" else
                                                  {"seed": 2}))
    N = 15
    qp = LinearOracle(dyn, ref, 1.0, 0.01, horizon=N)
    nl = CasadiOracle(dyn, ref, 1.0, 0.01, horizon=N)
    x0 = dyn.sample_initial_states(np.random.default_rng(0), 1)[0]
    u_qp, y_qp = qp.plan(x0, ref.window(0, N))
    u_nl, y_nl = nl.plan(x0, ref.window(0, N))
    if ref_name == "step":
        assert np.any(np.isclose(np.abs(u_qp), dyn.input_high[0]))  # bounds matter
    np.testing.assert_allclose(u_nl, u_qp, atol=1e-6)
    np.testing.assert_allclose(y_nl, y_qp, atol=1e-7)
    c_qp = tracking_cost(u_qp, y_qp, ref, 1.0, 0.01)
    c_nl = tracking_cost(u_nl, y_nl, ref, 1.0, 0.01)
    assert c_nl == pytest.approx(c_qp, rel=1e-9)
    assert nl.last_stats["success"]


@needs_casadi
@pytest.mark.parametrize("env_id, ref_name, R", [(PENDULUM, "swing", 0.1),
                                                 (UNICYCLE, "figure-eight", 0.001)])
def test_casadi_oracle_agrees_with_the_shooting_oracle(env_id, ref_name, R):
    from ddcontrol.baselines.nmpc import CasadiOracle

    dyn = make_dynamics(env_id)
    ref = make_reference(ref_name, env_id, 60)
    N = 10
    x0 = dyn.sample_initial_states(np.random.default_rng(1), 1)[0]
    u_prev = np.zeros(dyn.input_dim)
    sh = ShootingOracle(dyn, ref, 1.0, R, horizon=N, max_iterations=200, tol=1e-12)
    ca = CasadiOracle(dyn, ref, 1.0, R, horizon=N, tol=1e-10)
    u_sh, y_sh = sh.plan(x0, ref.window(5, N), u_prev=u_prev)
    u_ca, y_ca = ca.plan(x0, ref.window(5, N), u_prev=u_prev)
    # Outputs are those of the true simulator under the plan.
    y_true, _ = dyn.simulate(x0[None], u_ca[None])
    np.testing.assert_allclose(y_ca, y_true[0], atol=1e-12)
    r = ref.window(5, N)
    c_sh = float(tracking_cost(u_sh, y_sh[:, list(ref.channels)], r, 1.0, R))
    c_ca = float(tracking_cost(u_ca, y_ca[:, list(ref.channels)], r, 1.0, R))
    assert c_ca <= c_sh * (1 + 1e-7)
    assert c_ca == pytest.approx(c_sh, rel=1e-6)
    np.testing.assert_allclose(u_ca, u_sh, atol=1e-3 * np.max(dyn.input_high))


@needs_casadi
def test_oracle_name_uses_casadi_for_nonlinear_systems_and_warm_starts_in_closed_loop():
    import gymnasium as gym

    from ddcontrol.baselines.nmpc import CasadiOracle

    ref = make_reference("swing", PENDULUM, 30)
    ctrl = make_baseline("oracle", PENDULUM, ref, 1.0, 0.1, horizon=12)
    assert isinstance(ctrl, CasadiOracle)
    assert isinstance(make_baseline("oracle", MSD, make_reference("step", MSD, 30), 1.0, 0.01,
                                    horizon=8), LinearOracle)
    shooting = make_baseline("oracle-shooting", PENDULUM, ref, 1.0, 0.1, horizon=12)
    assert isinstance(shooting, ShootingOracle) and shooting.name == "oracle-shooting"
    assert isinstance(make_baseline("oracle-casadi", MSD, make_reference("step", MSD, 30), 1.0,
                                    0.01, horizon=8), CasadiOracle)
    env = gym.make(PENDULUM)
    obs, info = env.reset(seed=0)
    ctrl.reset(obs, info)
    for k in range(5):
        u = ctrl.act(obs, info)
        assert ctrl.last_stats["warm"] == (k > 0)
        assert env.action_space.contains(u.astype(np.float32))
        obs, _, _, _, info = env.step(u)
    # A warm solve takes a few iterations.
    assert ctrl.last_stats["iterations"] <= 15


def test_without_casadi_the_oracle_falls_back_and_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "casadi", None)  # import casadi -> ImportError
    assert not casadi_available()
    with pytest.raises(ImportError, match=r"ddcontrol\[baselines\]"):
        require_casadi()
    ref = make_reference("swing", PENDULUM, 30)
    oracle = make_oracle(make_dynamics(PENDULUM), ref, 1.0, 0.1, horizon=8)
    assert isinstance(oracle, ShootingOracle)
    with pytest.raises(ImportError, match="baselines"):
        make_baseline("oracle-casadi", PENDULUM, ref, 1.0, 0.1, horizon=8)


# -- SINDy-with-control MPC (NMPC on the identified model) ----------------------------------------
@needs_casadi
def test_sindy_with_a_linear_library_recovers_the_lti_optimum():
    from ddcontrol.baselines.sindy import SINDyMPC
    from ddcontrol.data import collect

    data = collect(MIMO, 60, 60, seed=0)
    test = collect(MIMO, 1, 60, seed=9)
    dyn = make_dynamics(MIMO)
    ref = make_reference("random", MIMO, 40, seed=3, amplitude=3.0)
    N, d, k = 10, 1, 20
    ctrl = SINDyMPC(data, ref, 1.0, 0.01, horizon=N, delays=d, library=("linear",),
                    threshold=0.0)
    xi = ctrl.dynamics.state_from_history(test.y[0, k - d:k + 1], test.u[0, k - d:k])
    u, y = ctrl.plan(xi, ref.window(0, N), u_prev=test.u[0, k - 1])
    u_opt, y_opt = LinearOracle(dyn, ref, 1.0, 0.01, horizon=N).plan(
        test.x[0, k], ref.window(0, N), u_prev=test.u[0, k - 1])
    np.testing.assert_allclose(u, u_opt, atol=1e-5)
    np.testing.assert_allclose(y, y_opt, atol=1e-6)


@needs_casadi
def test_sindy_on_the_pendulum_is_chosen_on_held_out_data_and_tracks():
    from ddcontrol.data import collect

    data = collect(PENDULUM, 100, 80, seed=2)
    ref = make_reference("swing", PENDULUM, 40)
    ctrl = make_baseline("sindy", PENDULUM, ref, 1.0, 0.1, horizon=10, data=data)
    rep = ctrl.selection
    assert rep["score"] < 0.2 and len(rep["candidates"]) > 4
    assert "trig" in rep["chosen"]["library"]  # the pendulum's physics
    assert not ctrl.uses_state and ctrl.name == "sindy"
    from ddcontrol.evaluate.closed_loop import episode_metrics, run_episode

    dyn = make_dynamics(PENDULUM)
    args = dict(input_low=dyn.input_low, input_high=dyn.input_high, score_from=2)
    ep = run_episode(PENDULUM, ctrl, 40, seed=0, warmup=2)
    assert ep.error is None and ctrl.failures == 0
    oracle = make_baseline("oracle", PENDULUM, ref, 1.0, 0.1, horizon=10)
    cost = episode_metrics(ep, ref, 1.0, 0.1, **args)["total_cost"]
    best = episode_metrics(run_episode(PENDULUM, oracle, 40, seed=0, warmup=2), ref, 1.0, 0.1,
                           **args)["total_cost"]
    assert cost < 1.5 * best  # (a short-horizon oracle is no closed-loop lower bound)

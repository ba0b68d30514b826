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

"""Koopman (EDMD) MPC and tuned DeePC: exact on LTI data, hyper-parameters from held-out data."""

import gymnasium as gym
import numpy as np
import pytest

import ddcontrol  # noqa: F401  (registers the environments)
from ddcontrol.baselines import DeePC, LinearOracle, make_baseline
from ddcontrol.baselines.koopman import KoopmanMPC, fit_edmd, prediction_error, select_edmd
from ddcontrol.baselines.tuning import DEFAULTS, tune_deepc
from ddcontrol.data import collect, make_dynamics
from ddcontrol.evaluate.closed_loop import episode_metrics, run_episode
from ddcontrol.tracking.reference import make_reference

MSD, MIMO = "ddcontrol/MassSpringDamper-v0", "ddcontrol/CoupledMasses-v0"
PENDULUM = "ddcontrol/DoublePendulum-v0"


@pytest.fixture(scope="module")
def lti():
    return {env: (collect(env, 60, 60, seed=0), collect(env, 2, 60, seed=7))
            for env in (MSD, MIMO)}


@pytest.mark.parametrize("env_id", [MSD, MIMO])
def test_koopman_with_linear_observables_recovers_the_lti_optimum(env_id, lti):
    data, test = lti[env_id]
    dyn = make_dynamics(env_id)
    ref = make_reference("random", env_id, 40, seed=3, amplitude=3.0)  # bounds become active
    N, d, k = 12, 2, 20
    ctrl = KoopmanMPC(data, ref, 1.0, 0.01, horizon=N, delays=d, observables=("linear",),
                      ridge=0.0)
    u, y = ctrl.plan(test.y[0, k - d:k + 1], test.u[0, k - d:k], ref.window(0, N))
    u_opt, y_opt = LinearOracle(dyn, ref, 1.0, 0.01, horizon=N).plan(
        test.x[0, k], ref.window(0, N), u_prev=test.u[0, k - 1])
    assert np.any(np.isclose(np.abs(u_opt), dyn.input_high))
    np.testing.assert_allclose(u, u_opt, atol=1e-6)
    np.testing.assert_allclose(y, y_opt, atol=1e-6)


def test_edmd_is_exact_on_lti_data_and_selection_prefers_the_simplest_exact_model(lti):
    data, test = lti[MIMO]
    model = fit_edmd(data.u, data.y, delays=1, ridge=0.0)
    assert prediction_error(model, test.u, test.y, horizon=30) < 1e-8
    chosen, report = select_edmd(data, horizon=15, delays=(1, 2, 4), ridges=(0.0, 1e-3))
    assert report["chosen"]["observables"] == ["linear"]
    assert report["chosen"]["delays"] == 1
    assert report["score"] <= min(r["heldout_error"] for r in report["candidates"]) * 1.02 + 1e-6
    assert prediction_error(chosen, test.u, test.y, horizon=30) < 1e-5


def test_koopman_mpc_in_closed_loop_matches_the_oracle_on_an_lti_system(lti):
    data, _ = lti[MSD]
    dyn = make_dynamics(MSD)
    ref = make_reference("random", MSD, 80, seed=1)
    kw = dict(horizon=15, data=data)
    ep_k = run_episode(MSD, make_baseline("koopman", MSD, ref, 1.0, 0.01, **kw), 80, seed=0,
                       warmup=4)
    ep_o = run_episode(MSD, make_baseline("oracle", MSD, ref, 1.0, 0.01, **kw), 80, seed=0,
                       warmup=4)
    args = dict(input_low=dyn.input_low, input_high=dyn.input_high, score_from=4)
    c_k = episode_metrics(ep_k, ref, 1.0, 0.01, **args)["total_cost"]
    c_o = episode_metrics(ep_o, ref, 1.0, 0.01, **args)["total_cost"]
    assert c_k == pytest.approx(c_o, rel=1e-4)


def test_koopman_on_a_nonlinear_system_runs_and_chooses_on_held_out_data():
    data = collect(PENDULUM, 80, 80, seed=2)
    ref = make_reference("swing", PENDULUM, 30)
    ctrl = KoopmanMPC(data, ref, 1.0, 0.1, horizon=10)
    assert ctrl.selection is not None and np.isfinite(ctrl.selection["score"])
    assert len(ctrl.selection["candidates"]) > 1
    env = gym.make(PENDULUM)
    obs, info = env.reset(seed=0)
    ctrl.reset(obs, info)
    for _ in range(ctrl.model.delays + 3):
        u = ctrl.act(obs, info)
        obs, *_, info = env.step(u)
    assert ctrl.failures == 0 and ctrl.last_status.startswith("optimal")


def test_tuned_deepc_beats_or_equals_the_default_on_held_out_data():
    data = collect(PENDULUM, 60, 80, seed=4)
    res = tune_deepc(data, horizon=10, grid={"t_ini": (2, 4), "lambda_g": (1e-2, 1.0, 1e2),
                                              "lambda_y": (1e3, 1e5), "max_columns": (500,)})
    assert res.score <= res.default_score + 1e-12  # the defaults are among the candidates
    assert res.params["hankel_depth"] == res.params["t_ini"] + 10
    assert {r["t_ini"] for r in res.candidates} == {2, 4}
    assert res.to_dict()["default"]["t_ini"] == DEFAULTS["t_ini"]


def test_tuned_deepc_through_the_registry(lti):
    data, _ = lti[MSD]
    ref = make_reference("random", MSD, 40, seed=1)
    ctrl = make_baseline("deepc-tuned", MSD, ref, 1.0, 0.01, horizon=10, data=data)
    assert isinstance(ctrl, DeePC) and ctrl.name == "deepc-tuned"
    assert ctrl.t_ini == ctrl.tuning.params["t_ini"]
    assert ctrl.tuning.score < 1e-6  # noise-free LTI data: the predictor is exact
    fixed = make_baseline("deepc", MSD, ref, 1.0, 0.01, horizon=10, data=data, tune=True,
                          t_ini=3)
    assert fixed.t_ini == 3 and fixed.name == "deepc"
    assert fixed.lambda_g == fixed.tuning.params["lambda_g"]

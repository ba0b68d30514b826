"""The simulators: Gymnasium compliance, determinism, physics sanity, and bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.dynamics import DoublePendulumDynamics, UnicycleDynamics, linear_preset
from envs.errors import EnvConfigurationError, InvalidActionError, InvalidStateError

ENV_IDS = list(envs.ENV_IDS)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_rollout(env_id):
    def rollout():
        env = gym.make(env_id)
        obs, info = env.reset(seed=123)
        env.action_space.seed(7)
        out = [obs]
        for _ in range(20):
            obs, *_ = env.step(env.action_space.sample())
            out.append(obs)
        return np.array(out), info["state"]

    (a, sa), (b, sb) = rollout(), rollout()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_returns_rgb_picture(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.std() > 0  # something was drawn


def test_reset_with_state_and_info_holds_true_state():
    env = gym.make("ddcontrol/DoublePendulum-v0")
    s = np.array([0.3, 0.0, -0.2, 0.1])
    obs, info = env.reset(options={"state": s})
    np.testing.assert_allclose(obs, [0.3, -0.2])
    np.testing.assert_allclose(info["state"], s)


def test_env_matches_batched_dynamics():
    env = gym.make("ddcontrol/Unicycle-v0")
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(0)
    u = rng.uniform(-3, 3, size=(15, 2))
    ys = [obs]
    for k in range(15):
        obs, *_ = env.step(u[k])
        ys.append(obs)
    y_batch, x_batch = env.unwrapped.dynamics.simulate(info["state"][None], u[None])
    np.testing.assert_allclose(np.array(ys[:15]), y_batch[0], atol=1e-12)
    np.testing.assert_allclose(env.unwrapped.state, x_batch[0, -1], atol=1e-12)


def test_double_pendulum_conserves_energy_without_damping_or_torque():
    dyn = DoublePendulumDynamics(d1=0.0, d2=0.0, dt=0.01, substeps=2)

    def energy(s):
        th1, w1, th2, w2 = s.T
        m1, m2, l1, l2, g = dyn.m1, dyn.m2, dyn.l1, dyn.l2, dyn.g
        kin = 0.5 * (m1 + m2) * l1**2 * w1**2 + 0.5 * m2 * l2**2 * w2**2 \
            + m2 * l1 * l2 * w1 * w2 * np.cos(th1 - th2)
        pot = -(m1 + m2) * g * l1 * np.cos(th1) - m2 * g * l2 * np.cos(th2)
        return kin + pot

    x0 = np.array([[1.0, 0.0, -0.5, 0.3]])
    _, xs = dyn.simulate(x0, np.zeros((1, 500, 1)))
    e = energy(xs[0])
    assert np.max(np.abs(e - e[0])) < 1e-6


def test_double_pendulum_damping_dissipates_energy_and_hangs_down():
    dyn = DoublePendulumDynamics()
    _, xs = dyn.simulate(np.array([[0.5, 0.0, 0.5, 0.0]]), np.zeros((1, 2000, 1)))
    assert np.max(np.abs(xs[0, -1])) < 0.05


def test_unicycle_straight_line_and_circle():
    dyn = UnicycleDynamics()
    # Constant speed 2 m/s along heading 0 for 1 s covers 2 m.
    _, xs = dyn.simulate(np.array([[0, 0, 0, 0, 2.0]]), np.zeros((1, 20, 2)))
    np.testing.assert_allclose(xs[0, -1], [2.0, 0, 0, 0, 2.0], atol=1e-12)
    # Constant turn rate 1 rad/s at 1 m/s is a unit circle: back to the start after 2π s.
    steps = int(round(2 * np.pi / dyn.dt))
    dyn_fine = UnicycleDynamics(dt=2 * np.pi / steps)
    _, xs = dyn_fine.simulate(np.array([[0, 0, 0, 1.0, 1.0]]), np.zeros((1, steps, 2)))
    np.testing.assert_allclose(xs[0, -1, :2], [0.0, 0.0], atol=1e-6)


def test_unicycle_position_only_outputs():
    env = gym.make("ddcontrol/Unicycle-v0", outputs=["x", "y"])
    obs, info = env.reset(seed=0)
    assert obs.shape == (2,)
    np.testing.assert_allclose(obs, info["state"][:2])
    with pytest.raises(EnvConfigurationError):
        gym.make("ddcontrol/Unicycle-v0", outputs=["speed"])


def test_linear_env_from_matrices_statespace_and_noise():
    import control

    sys = control.ss([[0, 1], [-2, -0.3]], [[0], [1]], [[1, 0]], [[0]])
    env = gym.make("ddcontrol/LinearSystem-v0", sys=sys, dt=0.1)
    dyn = env.unwrapped.dynamics
    dsys = control.c2d(sys, 0.1)
    np.testing.assert_allclose(dyn.A, dsys.A, atol=1e-12)
    np.testing.assert_allclose(dyn.B, dsys.B, atol=1e-12)
    env = gym.make("ddcontrol/LinearSystem-v0", A=np.eye(2) * 0.9, B=[[1.0], [0.0]],
                   C=[[1.0, 1.0]], dt=0.5, input_limit=1.0, measurement_noise_std=0.1)
    obs1, _ = env.reset(seed=1, options={"state": [1.0, 0.0]})
    obs2, _ = env.reset(seed=2, options={"state": [1.0, 0.0]})
    assert obs1 != obs2  # measurement noise
    with pytest.raises(EnvConfigurationError):
        gym.make("ddcontrol/LinearSystem-v0", A=np.eye(2), B=np.ones((3, 1)), C=np.eye(2))
    with pytest.raises(EnvConfigurationError):
        linear_preset("no-such-system")


def test_preset_ids_are_the_presets():
    msd = gym.make("ddcontrol/MassSpringDamper-v0").unwrapped.dynamics
    mimo = gym.make("ddcontrol/CoupledMasses-v0").unwrapped.dynamics
    assert (msd.input_dim, msd.output_dim, msd.state_dim) == (1, 1, 2)
    assert (mimo.input_dim, mimo.output_dim, mimo.state_dim) == (2, 2, 4)
    # Discretised stable continuous systems stay stable.
    assert np.max(np.abs(np.linalg.eigvals(msd.A))) < 1
    assert np.max(np.abs(np.linalg.eigvals(mimo.A))) < 1


def test_actions_are_saturated():
    env = gym.make("ddcontrol/Unicycle-v0")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([100.0, -100.0]))
    np.testing.assert_allclose(info["applied_action"], [10.0, -5.0])


@pytest.mark.parametrize("bad", [np.zeros(3), np.array([np.nan, 0.0]), "left", np.zeros((2, 1))])
def test_bad_actions_raise(bad):
    env = gym.make("ddcontrol/Unicycle-v0")
    env.reset(seed=0)
    with pytest.raises(InvalidActionError):
        env.step(bad)


def test_bad_initial_state_raises():
    env = gym.make("ddcontrol/DoublePendulum-v0")
    with pytest.raises(InvalidStateError):
        env.reset(options={"state": [0.0, 0.0]})
    with pytest.raises(InvalidStateError):
        env.reset(options={"state": [0.0, np.inf, 0.0, 0.0]})


def test_unknown_env_id_is_a_gym_error():
    with pytest.raises(gym.error.Error):
        gym.make("ddcontrol/NoSuchSystem-v0")


def test_dynamics_work_on_torch_tensors_with_gradients():
    torch = pytest.importorskip("torch")
    for dyn in (DoublePendulumDynamics(), UnicycleDynamics(), linear_preset("coupled-masses")):
        x = torch.zeros(3, dyn.state_dim, dtype=torch.float64)
        u = torch.full((3, dyn.input_dim), 0.5, dtype=torch.float64, requires_grad=True)
        x1 = dyn.step(x + 0.1, u)
        x1.sum().backward()
        np.testing.assert_allclose(x1.detach().numpy(),
                                   dyn.step(np.zeros((3, dyn.state_dim)) + 0.1,
                                            np.full((3, dyn.input_dim), 0.5)), atol=1e-12)
        assert u.grad is not None and torch.all(torch.isfinite(u.grad))

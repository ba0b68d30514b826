"""TrackingProblem.for_env and make_controller("denoising", ...) on Gymnasium environments that
ddcontrol did not write (Box action spaces), given as an id, an Env instance or a factory."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from ddcontrol.errors import DimensionError
from ddcontrol.tracking import TrackingProblem
from ddcontrol.tracking.defaults import GENERIC, system_defaults
from ddcontrol.tracking.reference import Reference
from envs.registry import make_dynamics

PENDULUM = "Pendulum-v1"
MSD = "ddcontrol/MassSpringDamper-v0"
T_INI, HORIZON = 3, 5


def _brake(steps: int = T_INI + HORIZON) -> Reference:
    """θ̇ (output 2 of Pendulum-v1's (cos θ, sin θ, θ̇)) to zero."""
    return Reference(np.zeros((steps, 1)), channels=(2,), output_dim=3, dt=0.05, name="brake")


def _check_pendulum(problem: TrackingProblem) -> None:
    assert problem.input_dim == 1
    np.testing.assert_array_equal(problem.input_low, [-2.0])
    np.testing.assert_array_equal(problem.input_high, [2.0])
    assert problem.env_id == PENDULUM and problem.env_kwargs is None
    assert system_defaults(problem.env_id) is GENERIC


def test_for_env_takes_input_count_and_bounds_from_a_gymnasium_id():
    _check_pendulum(TrackingProblem.for_env(PENDULUM, _brake(), HORIZON, t_ini=T_INI))
    car = TrackingProblem.for_env("MountainCarContinuous-v0",
                                  Reference(np.zeros((8, 1)), channels=(1,), output_dim=2),
                                  HORIZON, env_kwargs={"goal_velocity": 0.1})
    assert car.input_dim == 1 and car.env_kwargs == {"goal_velocity": 0.1}
    np.testing.assert_array_equal([car.input_low, car.input_high], [[-1.0], [1.0]])


def test_for_env_takes_an_instance_without_closing_it_and_a_factory():
    env = gym.make(PENDULUM)
    _check_pendulum(TrackingProblem.for_env(env, _brake(), HORIZON))
    env.reset(seed=0)  # still usable: for_env did not close it
    env.step(np.zeros(1, dtype=np.float32))
    env.close()
    _check_pendulum(TrackingProblem.for_env(lambda: gym.make(PENDULUM), _brake(), HORIZON))


def test_for_env_flattens_the_box_and_leaves_infinite_bounds_unbounded():
    class Plant(gym.Env):
        action_space = gym.spaces.Box(np.array([[-1.0, -np.inf]]), np.array([[1.0, np.inf]]),
                                      dtype=np.float64)
        observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), dtype=np.float64)

    ref = Reference(np.zeros((8, 1)), channels=(0,), output_dim=2)
    problem = TrackingProblem.for_env(Plant, ref, HORIZON)
    assert problem.input_dim == 2 and problem.env_id is None  # no spec: generic defaults
    np.testing.assert_array_equal(problem.input_low, [-1.0, -np.inf])
    np.testing.assert_array_equal(problem.input_high, [1.0, np.inf])

    class Free(Plant):
        action_space = gym.spaces.Box(-np.inf, np.inf, (3,), dtype=np.float64)

    free = TrackingProblem.for_env(Free(), ref, HORIZON)
    assert free.input_dim == 3 and free.input_low is None and free.input_high is None


def test_for_env_on_a_ddcontrol_id_is_unchanged():
    ref = Reference(np.zeros((8, 1)), channels=(0,), output_dim=1)
    problem = TrackingProblem.for_env(MSD, ref, HORIZON, Q=2.0, R=0.1, t_ini=T_INI)
    dyn = make_dynamics(MSD)
    assert problem.input_dim == dyn.input_dim and problem.env_id == MSD
    np.testing.assert_array_equal(problem.input_low, dyn.input_low)
    np.testing.assert_array_equal(problem.input_high, dyn.input_high)
    assert problem.t_ini == T_INI and problem.env_kwargs is None


def test_for_env_rejects_a_discrete_action_space_by_name():
    ref = Reference(np.zeros((8, 1)), channels=(0,), output_dim=4)
    with pytest.raises(DimensionError, match=r"CartPole-v1.*Box.*Discrete\(2\)"):
        TrackingProblem.for_env("CartPole-v1", ref, HORIZON)


def test_make_controller_builds_a_denoising_tracker_for_pendulum(tmp_path):
    from ddcontrol.data import collect
    from ddcontrol.evaluate import make_controller
    from ddcontrol.score import TrainConfig, train

    data = collect(PENDULUM, 6, T_INI + HORIZON + 2, seed=0)
    assert data.metadata["env_id"] == PENDULUM
    cfg = TrainConfig(out=str(tmp_path), window=T_INI + HORIZON, steps=4, batch_size=8,
                      width=16, depth=1, emb_dim=8, progress=False, val_every=0,
                      checkpoint_every=0, warmup_steps=1, select_sigma=False)
    model = train(cfg, data)
    problem = TrackingProblem.for_env(PENDULUM, _brake(), HORIZON, t_ini=T_INI)
    tracker = make_controller("denoising", problem, data=data, model=model,
                              options={"sigma": 0.1, "iterations": 2, "iterations_per_step": 2,
                                       "num_starts": 1, "step_time_budget": None})
    # The older form (environment id, reference, weights) builds the same problem.
    older = make_controller("denoising", PENDULUM, _brake(), 1.0, 0.01, horizon=HORIZON,
                            data=data, model=model, options={"sigma": 0.1})
    assert older.problem.input_dim == 1 and older.problem.env_id == PENDULUM
    env = gym.make(PENDULUM)
    try:
        obs, info = env.reset(seed=1)
        tracker.reset(obs, info)
        for _ in range(T_INI + 1):  # the measured past, then the first planned input
            u = np.asarray(tracker.act(obs, info), dtype=float)
            assert u.shape == (1,) and np.all(np.isfinite(u))
            assert np.all((u >= -2.0) & (u <= 2.0))
            obs, *_ = env.step(u.astype(np.float32))
        assert tracker.last_plan is not None
    finally:
        env.close()


def test_best_window_baseline_takes_the_data_bounds_on_a_gymnasium_env():
    from ddcontrol.data import collect
    from ddcontrol.evaluate import make_controller

    data = collect(PENDULUM, 6, T_INI + HORIZON + 2, seed=0)
    problem = TrackingProblem.for_env(PENDULUM, _brake(), HORIZON, t_ini=T_INI)
    best = make_controller("best-window", problem, data=data)  # no ddcontrol dynamics needed
    env = gym.make(PENDULUM)
    try:
        obs, info = env.reset(seed=1)
        best.reset(obs, info)
        u = np.asarray(best.act(obs, info), dtype=float)
        assert u.shape == (1,) and -2.0 <= u[0] <= 2.0
    finally:
        env.close()

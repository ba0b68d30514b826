"""Bring your own system: collection, replay and closed loop on Gymnasium envs nobody here wrote."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from ddcontrol.data import EnvSimulator, TrajectoryDataset, collect
from ddcontrol.data.gym_env import StateAccess, env_spec
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.evaluate import compare, run_episode
from ddcontrol.evaluate.replay import replay_from_dataset, simulator_for, verify_dataset
from ddcontrol.tracking import TrackingProblem
from ddcontrol.tracking.reference import Reference


class HiddenIntegrator(gym.Env):
    """x_{k+1} = x_k + 0.1 u_k, observed as (x, x²); the state is private, so ddcontrol must fall
    back to the observations. Terminates when |x| > ``limit``."""

    def __init__(self, limit: float = np.inf) -> None:
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.limit = limit
        self._x = 0.0

    def _obs(self) -> np.ndarray:
        return np.array([self._x, self._x ** 2])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x = float(self.np_random.uniform(-1, 1))
        return self._obs(), {}

    def step(self, action):
        self._x += 0.1 * float(action[0])
        return self._obs(), 0.0, abs(self._x) > self.limit, False, {}


class Constant:
    """A closed-loop policy applying a fixed input."""

    def __init__(self, value: float, name: str = "constant") -> None:
        self.value, self.name, self.last_solve_time_s = value, name, 0.0

    def reset(self, observation, info=None) -> None:
        pass

    def act(self, observation, info=None) -> np.ndarray:
        return np.array([self.value])


def test_pendulum_collect_from_id_instance_and_factory_agree():
    by_id = collect("Pendulum-v1", 3, 12, seed=5)
    env = gym.make("Pendulum-v1")
    by_instance = collect(env, 3, 12, seed=5)
    by_factory = collect(lambda: gym.make("Pendulum-v1"), 3, 12, seed=5)
    env.close()
    for other in (by_instance, by_factory):
        np.testing.assert_array_equal(other.u, by_id.u)
        np.testing.assert_array_equal(other.y, by_id.y)
    meta = by_id.metadata
    assert (by_id.u.shape, by_id.y.shape, by_id.x.shape) == ((3, 12, 1), (3, 12, 3), (3, 13, 2))
    assert meta["env_id"] == "Pendulum-v1" and meta["dt"] == pytest.approx(0.05)
    assert meta["state_source"] == "attribute" and meta["dropped_episodes"] == 0
    assert len(meta["episode_seeds"]) == 3
    # The state is the env's own (θ, θ̇): cos/sin of θ are the first two observations.
    np.testing.assert_allclose(np.cos(by_id.x[:, :12, 0]), by_id.y[..., 0], atol=1e-6)
    # Inputs are recorded as applied: inside the action space, exactly representable in float32.
    assert np.all(np.abs(by_id.u) <= 2.0)
    np.testing.assert_array_equal(by_id.u.astype(np.float32).astype(np.float64), by_id.u)


def test_pendulum_replay_reproduces_recorded_outputs_exactly(tmp_path):
    data = collect("Pendulum-v1", 4, 30, seed=2)
    data = TrajectoryDataset.load(data.save(tmp_path / "pendulum.npz"))  # survives the file
    by_seed = verify_dataset(data)
    by_state = verify_dataset(data, from_state=True)
    assert by_seed == {"max_output_error": 0.0, "max_state_error": 0.0, "trajectories": 4}
    assert by_state["max_output_error"] == 0.0 and by_state["max_state_error"] == 0.0
    # A plan continuing a recorded trajectory, replayed by seed + prefix (start 0) and by
    # setting the recorded state (start 10): re-applying the recorded inputs gives y exactly.
    ref = Reference(np.zeros((30, 1)), channels=(2,), output_dim=3, dt=data.dt)
    sim = simulator_for(data)
    assert isinstance(sim, EnvSimulator) and sim.can_set_state
    for start in (0, 10):
        problem = TrackingProblem.for_dataset(data, ref, 30 - start)
        rep = replay_from_dataset(problem, sim, data, 1, start, data.u[1, start:],
                                  data.y[1, start:])
        np.testing.assert_array_equal(rep.outputs, data.y[1, start:])
        assert rep.manifold_deviation == 0.0 and not rep.skipped
    sim.close()


def test_replay_detects_a_different_input():
    data = collect("Pendulum-v1", 1, 20, seed=0)
    ref = Reference(np.zeros((20, 1)), channels=(2,), output_dim=3, dt=data.dt)
    problem = TrackingProblem.for_dataset(data, ref, 20)
    with EnvSimulator("Pendulum-v1") as sim:
        rep = replay_from_dataset(problem, sim, data, 0, 0, -data.u[0], data.y[0])
    assert rep.manifold_deviation > 1e-3


def test_mountain_car_replays_from_seed_without_settable_state():
    data = collect("MountainCarContinuous-v0", 2, 40, seed=1)
    assert data.metadata["state_source"] == "attribute"
    assert data.metadata["dt_known"] is False and data.dt == 1.0
    sim = simulator_for(data)
    assert not sim.can_set_state
    ref = Reference(np.zeros((40, 1)), channels=(0,), output_dim=2)
    problem = TrackingProblem.for_dataset(data, ref, 25)
    rep = replay_from_dataset(problem, sim, data, 1, 15, data.u[1, 15:], data.y[1, 15:])
    np.testing.assert_array_equal(rep.outputs, data.y[1, 15:])
    sim.close()
    assert verify_dataset(data)["max_output_error"] == 0.0


def test_env_without_state_records_observations_and_says_so():
    data = collect(HiddenIntegrator, 3, 8, seed=0, output_names=["x", "x2"])
    assert data.metadata["state_source"] == "observations"
    assert data.metadata["env_id"] == "HiddenIntegrator"
    np.testing.assert_array_equal(data.x[:, :8], data.y)
    np.testing.assert_allclose(data.x[:, 8, 0], data.y[:, 7, 0] + 0.1 * data.u[:, 7, 0])
    assert not StateAccess(HiddenIntegrator()).can_set
    assert verify_dataset(data, HiddenIntegrator)["max_output_error"] == 0.0
    with pytest.raises(ConfigurationError, match="cannot be set"):
        verify_dataset(data, HiddenIntegrator, from_state=True)


def test_episodes_that_end_early_are_dropped_and_counted():
    data = collect(lambda: HiddenIntegrator(limit=1.0), 5, 30, seed=0,
                   excitation="uniform-hold")
    assert data.num_trajectories == 5 and data.metadata["dropped_episodes"] > 0
    assert len(data.metadata["episode_seeds"]) == 5
    assert np.all(np.abs(data.x[..., 0]) <= 1.0)  # only complete episodes were kept
    assert verify_dataset(data, lambda: HiddenIntegrator(limit=1.0))["max_output_error"] == 0.0
    with pytest.raises(ConfigurationError, match="ended early"):
        collect(lambda: HiddenIntegrator(limit=0.0), 2, 5, seed=0, max_attempts=6)
    with pytest.raises(ConfigurationError, match="ended early"):
        collect("Pendulum-v1", 1, 250, seed=0)  # TimeLimit: 200 steps


def test_spaces_are_checked():
    class Discrete(HiddenIntegrator):
        def __init__(self):
            super().__init__()
            self.action_space = gym.spaces.Discrete(3)

    with pytest.raises(DimensionError, match="1-D gymnasium.spaces.Box"):
        collect(Discrete, 1, 5)
    with pytest.raises(DimensionError, match="input_names"):
        collect("Pendulum-v1", 1, 5, input_names=["a", "b"])
    with pytest.raises(ConfigurationError, match="not to an Env instance"):
        collect(gym.make("Pendulum-v1"), 1, 5, env_kwargs={"g": 9.81})


def test_run_episode_takes_an_id_an_instance_or_a_factory():
    runs = [run_episode(env, Constant(0.5), 15, seed=7)
            for env in ("Pendulum-v1", gym.make("Pendulum-v1"), lambda: gym.make("Pendulum-v1"))]
    assert runs[0].sigma is None  # a controller without a projection σ
    for ep in runs[1:]:
        np.testing.assert_array_equal(ep.outputs, runs[0].outputs)
    ep = runs[0]
    assert ep.error is None and ep.ended is None and ep.state_source == "attribute"
    assert ep.outputs.shape == (15, 3) and ep.states.shape == (16, 2)
    with EnvSimulator("Pendulum-v1") as sim:
        r = sim.run(np.full((15, 1), 0.5), seed=7)
    np.testing.assert_array_equal(ep.outputs, r.outputs)
    # Out-of-range requests are clipped by the actuator and counted as violations.
    clipped = run_episode("Pendulum-v1", Constant(5.0), 3, seed=0)
    assert np.all(clipped.inputs == 2.0) and np.all(clipped.requested == 5.0)


def test_run_episode_on_a_terminating_env_ends_without_error():
    ep = run_episode(lambda: HiddenIntegrator(limit=1.5), Constant(1.0), 100, seed=0)
    assert ep.ended == "terminated" and ep.error is None and not ep.failed
    assert len(ep.outputs) < 100 and ep.state_source == "observations"


def test_compare_on_a_gymnasium_env_factory(tmp_path):
    from ddcontrol.evaluate.compare import write_comparison

    ref = Reference(np.zeros((20, 1)), channels=(2,), output_dim=3, dt=0.05, name="rest")
    result = compare(lambda: gym.make("Pendulum-v1"),
                     {"zero": lambda: Constant(0.0, "zero"), "push": lambda: Constant(1.0)},
                     ref, Q=1.0, R=0.01, seeds=[0, 1], progress=False)
    assert result.env_id == "Pendulum-v1"
    assert {r["controller"] for r in result.rows} == {"zero", "push"}
    assert all(not r["failed"] for r in result.rows)
    paths = write_comparison(result, tmp_path)
    assert paths["table"].is_file() and paths["outputs"].is_file()
    # Scores match a manual computation on the same seeds.
    with EnvSimulator("Pendulum-v1") as sim:
        y = sim.run(np.zeros((20, 1)), seed=1).outputs
    assert result.episodes["zero"][1].outputs.tolist() == y.tolist()
    assert env_spec(gym.make("Pendulum-v1")).dt == pytest.approx(0.05)


def test_mujoco_state_is_recorded_and_set_when_mujoco_is_installed():
    pytest.importorskip("mujoco", reason="mujoco is not installed (it is not a ddcontrol "
                                         "dependency; bench_byos.py uses it when present)")
    try:
        gym.make("Reacher-v5").close()
    except Exception as exc:  # noqa: BLE001 - e.g. gymnasium's MuJoCo extras missing
        pytest.skip(f"Reacher-v5 cannot be made here: {exc}")
    data = collect("Reacher-v5", 3, 10, seed=0)
    assert data.metadata["state_source"] == "mujoco" and data.x.shape == (3, 11, 8)
    assert data.metadata["state_names"][:2] == ["qpos0", "qpos1"]
    for from_state in (False, True):
        check = verify_dataset(data, from_state=from_state)
        assert check["max_output_error"] == 0.0 and check["max_state_error"] == 0.0

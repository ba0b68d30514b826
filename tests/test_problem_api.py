"""One TrackingProblem from end to end: built once, taken by make_controller, run_episode,
episode_metrics and compare, with the same numbers as the older separate-argument forms."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from ddcontrol.data import collect
from ddcontrol.errors import ConfigurationError
from ddcontrol.evaluate import compare, episode_metrics, make_controller, make_tracker, run_episode
from ddcontrol.tracking import TrackingProblem, make_reference
from envs.registry import make_dynamics

MSD = "ddcontrol/MassSpringDamper-v0"
T_INI, HORIZON, LENGTH = 4, 8, 20


@pytest.fixture(scope="module")
def setup():
    data = collect(MSD, 30, length=40, seed=0, noise=False)
    ref = make_reference("sine", MSD, length=LENGTH)
    problem = TrackingProblem.for_env(MSD, ref, HORIZON, Q=1.0, R=0.01, t_ini=T_INI)
    return data, ref, problem


class _Zero:
    name, last_solve_time_s = "zero", 0.0

    def reset(self, observation, info=None):
        pass

    def act(self, observation, info=None):
        return np.zeros(1)


class _Window:
    """What make_controller reads of a model: its window length (T_ini + horizon)."""

    def __init__(self, window_length):
        self.window_length = window_length

    def check_dataset(self, data):
        pass


def _without_times(rows):
    return [{k: v for k, v in r.items() if "solve" not in k} for r in rows]


def test_compare_with_the_problem_equals_the_older_form(setup):
    data, ref, problem = setup
    names = ("oracle", "deepc", "lqr")
    new = compare(problem, {n: (lambda n=n: make_controller(n, problem, data=data))
                            for n in names}, seeds=[0, 1], progress=False)
    old = compare(MSD, {n: (lambda n=n: make_controller(n, MSD, ref, 1.0, 0.01, horizon=HORIZON,
                                                        data=data, t_ini=T_INI))
                        for n in names}, ref, Q=1.0, R=0.01, seeds=[0, 1], score_from=T_INI,
                  progress=False)
    assert new.score_from == T_INI  # the warm-up is the problem's T_ini, not worked out by hand
    assert _without_times(new.rows) == _without_times(old.rows)
    assert not any(r["failed"] for r in new.rows)
    for n in names:
        for a, b in zip(new.episodes[n], old.episodes[n]):
            np.testing.assert_array_equal(a.outputs, b.outputs)
    # An explicit score_from still wins over the problem's.
    later = compare(problem, {"lqr": lambda: make_controller("lqr", problem)}, score_from=6,
                    progress=False)
    assert later.score_from == 6 and later.episodes["lqr"][0].metrics["steps"] == LENGTH - 6


def test_run_episode_and_metrics_take_the_problem(setup):
    _, ref, problem = setup
    ctrl = make_controller("lqr", problem)
    new = run_episode(problem, ctrl, seed=2)  # length: the reference's; warm-up: T_ini
    old = run_episode(MSD, ctrl, LENGTH, seed=2, warmup=T_INI)
    np.testing.assert_array_equal(new.outputs, old.outputs)
    assert len(new.outputs) == LENGTH and np.all(new.inputs[:T_INI] == 0.0)
    assert np.any(new.inputs[T_INI:] != 0.0)
    dyn = make_dynamics(MSD)
    m_new = episode_metrics(new, problem)
    m_old = episode_metrics(new, ref, 1.0, 0.01, input_low=dyn.input_low,
                            input_high=dyn.input_high, score_from=T_INI)
    assert m_new == m_old and m_new["steps"] == LENGTH - T_INI


def test_t_ini_comes_from_the_call_the_problem_or_the_model(setup):
    data, ref, problem = setup
    free = TrackingProblem.for_env(MSD, ref, HORIZON)  # no T_ini: the model's, else DeePC's 4
    assert make_controller("deepc", problem, data=data).t_ini == T_INI
    assert make_controller("deepc", problem, data=data, t_ini=2).t_ini == 2
    assert make_controller("deepc", free, data=data, model=_Window(HORIZON + 3)).t_ini == 3
    # The tracker's T_ini is its model's window less the horizon: a different one is refused.
    with pytest.raises(ConfigurationError, match=r"t_ini=4 but the model's windows \(11 steps\) "
                                                 r"hold T_ini = 3"):
        make_controller("denoising", problem, data=data, model=_Window(HORIZON + 3))
    with pytest.raises(ConfigurationError, match="t_ini=4"):
        make_tracker(_Window(HORIZON + 3), data, problem)


def test_a_problem_and_its_terms_again_are_refused(setup):
    data, ref, problem = setup
    with pytest.raises(ConfigurationError, match="already holds reference"):
        make_controller("lqr", problem, ref)
    with pytest.raises(ConfigurationError, match="already holds Q, R"):
        compare(problem, {}, Q=1.0, R=0.01, progress=False)
    with pytest.raises(ConfigurationError, match="already holds env_id"):
        make_tracker(_Window(HORIZON + T_INI), data, problem, env_id=MSD)
    with pytest.raises(ConfigurationError, match="already holds env_kwargs"):
        run_episode(problem, _Zero(), env_kwargs={})
    with pytest.raises(ConfigurationError, match="already holds Q and R"):
        episode_metrics(run_episode(problem, _Zero()), problem, 1.0)
    with pytest.raises(ConfigurationError, match="Q, R"):  # the older form needs them all
        compare(MSD, {}, ref, progress=False)
    with pytest.raises(ConfigurationError, match="horizon"):
        make_controller("lqr", MSD, ref, 1.0, 0.01)


def test_a_problem_without_an_environment(setup):
    data, ref, _ = setup
    bare = TrackingProblem(ref, HORIZON, 1, t_ini=2)
    with pytest.raises(ConfigurationError, match="names no environment"):
        compare(bare, {"zero": _Zero}, progress=False)
    res = compare(bare, {"zero": _Zero}, env=lambda: gym.make(MSD), progress=False)
    assert res.score_from == 2 and res.row("zero")["failed"] is False
    with pytest.raises(ConfigurationError, match="not a function of time"):
        compare(TrackingProblem(lambda t: [0.0], HORIZON, 1, output_dim=1, env_id=MSD),
                {"zero": _Zero}, progress=False)
    # A dataset names its environment: the problem built from it runs there.
    from_data = TrackingProblem.for_dataset(data, ref, HORIZON, t_ini=3)
    assert from_data.env_id == MSD and from_data.t_ini == 3
    np.testing.assert_array_equal(run_episode(from_data, _Zero(), seed=4).outputs,
                                  run_episode(MSD, _Zero(), LENGTH, seed=4).outputs)
    with pytest.raises(ConfigurationError, match="t_ini"):
        TrackingProblem(ref, HORIZON, 1, t_ini=-1)


def test_bounds_of_the_problem_count_violations_one_sided_too(setup):
    from ddcontrol.evaluate import Episode

    _, ref, _ = setup
    asked = np.array([[-2.0], [0.5], [3.0], [-0.5]])
    ep = Episode("x", np.zeros((4, 1)), np.clip(asked, -1, None), asked, np.zeros((5, 1)),
                 np.zeros(4))
    open_ = TrackingProblem(ref, HORIZON, 1)
    below = TrackingProblem(ref, HORIZON, 1, input_low=-1.0)  # no upper bound
    both = TrackingProblem(ref, HORIZON, 1, input_low=-1.0, input_high=1.0)
    assert episode_metrics(ep, open_)["bound_violations"] == 0
    assert episode_metrics(ep, below)["bound_violations"] == 1
    assert episode_metrics(ep, both)["bound_violations"] == 2

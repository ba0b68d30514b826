"""Closed-loop harness, comparison table, and the track / compare / demo commands end to end."""

from __future__ import annotations

import json
import time

import gymnasium as gym
import numpy as np
import pytest

from ddcontrol.baselines import make_baseline
from ddcontrol.cli import main
from ddcontrol.data import collect
from ddcontrol.errors import ConfigurationError
from ddcontrol.evaluate.closed_loop import run_episode
from ddcontrol.evaluate.compare import COLUMNS, compare, write_comparison
from ddcontrol.evaluate.controllers import make_controller
from ddcontrol.tracking.reference import make_reference

MIMO = "ddcontrol/CoupledMasses-v0"
MSD = "ddcontrol/MassSpringDamper-v0"


class NaNController:
    name = "nan"
    last_solve_time_s = 0.0

    def reset(self, observation, info=None):
        self.k = 0

    def act(self, observation, info=None):
        self.k += 1
        return np.full(2, np.nan) if self.k > 3 else np.zeros(2)


class RaisingController(NaNController):
    def act(self, observation, info=None):
        raise RuntimeError("solver exploded")


def test_compare_table_one_row_per_controller_and_failures_reported(tmp_path):
    data = collect(MIMO, 100, 60, seed=0, noise=False)
    ref = make_reference("random", MIMO, 40, seed=1)

    def baseline(name, **kw):
        return lambda: make_baseline(name, MIMO, ref, 1.0, 0.01, horizon=15, data=data, **kw)

    controllers = {"oracle": baseline("oracle"), "deepc": baseline("deepc", lambda_g=1e-6),
                   "lqr": baseline("lqr"), "nan": NaNController, "raises": RaisingController,
                   "unbuildable": lambda: make_baseline("lqr", "ddcontrol/Unicycle-v0", ref,
                                                        1.0, 0.01)}
    res = compare(MIMO, controllers, ref, Q=1.0, R=0.01, seeds=[0, 1], score_from=4,
                  progress=False)
    assert [r["controller"] for r in res.rows] == list(controllers)
    assert set(COLUMNS) <= set(res.rows[0])
    # Noise-free LTI data: DeePC (unregularised) coincides with the model-based oracle.
    assert res.row("oracle")["cost_ratio"] == pytest.approx(1.0)
    assert res.row("deepc")["cost_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert res.row("lqr")["cost_ratio"] > 1.0
    for name in ("nan", "raises", "unbuildable"):
        assert res.row(name)["failed"] and res.row(name)["error"]
    assert "solver exploded" in res.row("raises")["error"]
    assert not res.row("oracle")["failed"]
    paths = write_comparison(res, tmp_path)
    for key in ("outputs", "inputs", "solve_times", "table", "results"):
        assert paths[key].exists()
    table = paths["table"].read_text()
    assert table.count("\n") == len(controllers) + 2 and "FAILED" in table
    payload = json.loads(paths["results"].read_text())
    assert len(payload["table"]) == len(controllers)


def test_warmup_applies_zero_input_and_same_seed_same_start():
    ref = make_reference("step", MSD, 20)
    ctrl = make_baseline("oracle", MSD, ref, 1.0, 0.01, horizon=10)
    a = run_episode(MSD, ctrl, 20, seed=3, warmup=5)
    b = run_episode(MSD, ctrl, 20, seed=3, warmup=5)
    np.testing.assert_array_equal(a.inputs[:5], 0.0)
    assert np.any(a.inputs[5:] != 0.0)
    np.testing.assert_allclose(a.states, b.states)


class ClockController:
    """Records the wall-clock time of every call; acts in ``work`` seconds."""

    name = "clock"

    def __init__(self, work: float = 0.0) -> None:
        self.work, self.calls = work, []

    def reset(self, observation, info=None):
        self.calls = []

    def act(self, observation, info=None):
        self.calls.append(time.perf_counter())
        time.sleep(self.work)
        return np.zeros(1)


def test_paced_episode_takes_a_sample_per_sampling_time():
    dt = gym.make(MSD).unwrapped.dt  # 0.1 s
    fast = ClockController()
    run_episode(MSD, fast, 4, paced=True)
    gaps = np.diff(fast.calls)
    assert gaps.min() >= dt - 1e-3  # a sample per dt, not as fast as the loop goes
    run_episode(MSD, fast, 4)
    assert np.diff(fast.calls).max() < dt / 2  # unpaced: the next sample at once
    # A controller slower than dt delays the next sample; nothing is caught up later.
    slow = ClockController(work=1.5 * dt)
    episode = run_episode(MSD, slow, 3, paced=True)
    assert np.diff(slow.calls).min() >= 1.5 * dt and episode.solve_times.min() >= 1.5 * dt
    with pytest.raises(ConfigurationError, match="sampling time"):
        run_episode(NoSamplingTimeEnv, fast, 2, paced=True)


class NoSamplingTimeEnv(gym.Env):
    """A minimal Gymnasium env that declares no sampling time."""

    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float64)
    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1), {}

    def step(self, action):
        return np.zeros(1), 0.0, False, False, {}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A dataset and a tiny model (a few seconds of training): pipeline plumbing, not quality."""
    root = tmp_path_factory.mktemp("tiny")
    data_path = root / "msd.npz"
    assert main(["generate", "--env", MSD, "--trajectories", "80", "--length", "40",
                 "--out", str(data_path), "--quiet"]) == 0
    assert main(["train", "--data", str(data_path), "--out", str(root / "model"), "--window",
                 "15", "--steps", "60", "--width", "64", "--depth", "2", "--no-progress",
                 "--val-every", "0"]) == 0
    return data_path, root / "model"


def test_track_cli_finite_horizon_and_closed_loop(tiny_model, tmp_path):
    data_path, model_dir = tiny_model
    out = tmp_path / "fh"
    assert main(["track", "--model", str(model_dir), "--reference", "sine", "--horizon", "10",
                 "--iterations", "20", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("predicted_cost", "replay_cost", "best_training_cost", "manifold_deviation",
                "iterations", "solve_time_s"):
        assert key in res and np.isfinite(res[key])
    assert res["t_ini"] == 5
    for png in ("outputs.png", "inputs.png", "cost_per_iteration.png"):
        assert (out / png).stat().st_size > 1000
    out = tmp_path / "cl"
    assert main(["track", "--model", str(model_dir), "--reference", "step", "--horizon", "10",
                 "--closed-loop", "12", "--iterations", "10", "--iterations-per-step", "3",
                 "--step-time-budget", "5", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["per_step"]["solve_time_s"]) == 12 and not res["failed"]
    # One results.json holds the summary and the comparison (it was overwritten without them).
    assert [r["controller"] for r in res["table"]] == ["denoising"]
    assert not res["table"][0]["failed"] and len(res["episodes"]["denoising"][0]["outputs"]) == 12
    assert (out / "table.md").read_text().count("| ok |") == 1
    with pytest.raises(SystemExit, match="--threads"):
        main(["track", "--model", str(model_dir), "--reference", "step", "--threads", "0",
              "--out", str(out)])


def test_compare_cli_with_the_tracker(tiny_model, tmp_path, monkeypatch):
    import importlib

    cli = importlib.import_module("ddcontrol.cli.compare")
    built = []

    def spy(name, *args, **kwargs):
        controller = make_controller(name, *args, **kwargs)
        built.append(controller)
        return controller

    monkeypatch.setattr(cli, "make_controller", spy)
    data_path, model_dir = tiny_model
    out = tmp_path / "cmp"
    rc = main(["compare", "--env", MSD, "--data", str(data_path), "--model", str(model_dir),
               "--controllers", "denoising,deepc,oracle", "--reference", "sine", "--length", "15",
               "--horizon", "10", "--iterations-per-step", "3", "--on-ood", "escalate",
               "--out", str(out), "--quiet"])
    assert rc == 0
    payload = json.loads((out / "results.json").read_text())
    assert [r["controller"] for r in payload["table"]] == ["denoising", "deepc", "oracle"]
    # The policy reached the tracker; none escalated (the count is in every row).
    assert [c.on_ood for c in built if c.name == "denoising"] == ["escalate"]
    assert [r["escalated"] for r in payload["table"]] == [0, 0, 0]
    # A controller that crashes still gets a row: none of these may have failed.
    assert [r["error"] for r in payload["table"] if r["failed"]] == []
    assert all(np.isfinite(r["rms_error"]) for r in payload["table"])
    assert (out / "outputs.png").exists()


def test_compare_cli_paced_runs_episodes_against_the_wall_clock(tiny_model, tmp_path,
                                                               monkeypatch):
    import importlib

    compare_module = importlib.import_module("ddcontrol.evaluate.compare")  # not the function
    data_path, _ = tiny_model
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("paced"))
        return run_episode(*args, **kwargs)

    monkeypatch.setattr(compare_module, "run_episode", spy)
    for flag in ([], ["--paced"]):
        assert main(["compare", "--env", MSD, "--data", str(data_path), "--controllers",
                     "oracle", "--reference", "step", "--length", "4", "--horizon", "3",
                     "--warmup", "0", "--out", str(tmp_path / "paced"), "--quiet", *flag]) == 0
    assert seen == [False, True]


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["controller"] for r in res["table"]} == {"denoising", "deepc", "lqr", "lqr-id",
                                                       "oracle"}
    assert [r["controller"] for r in res["table"] if r["failed"]] == []
    assert "finite_horizon" in res and "timings" in res
    for png in ("outputs.png", "inputs.png", "training_loss.png", "dataset.png",
                "finite_horizon/cost_per_iteration.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "table.md").read_text().startswith("| controller")


def test_demo_defaults_to_the_double_pendulum_from_rest(tmp_path):
    from ddcontrol.cli.demo import DEFAULT_ENV, PRESETS

    assert DEFAULT_ENV == "ddcontrol/DoublePendulum-v0" and PRESETS[DEFAULT_ENV].from_rest
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["finite_horizon"]["env_id"] == DEFAULT_ENV
    # Every controller starts from the pendulum at rest: the first measured outputs are 0.
    for episodes in res["episodes"].values():
        np.testing.assert_allclose(episodes[0]["outputs"][0], 0.0, atol=1e-12)
    # The model is trained with the system's own training options (its noise range).
    from ddcontrol.score import load_model
    from ddcontrol.tracking.defaults import system_defaults

    options = system_defaults(DEFAULT_ENV).train_options
    assert options == {"sigma_min": 0.015, "sigma_max": 0.5}
    config = load_model(out / "model").config
    assert {k: config[k] for k in options} == options


def test_finite_horizon_verdict_labels_what_the_numbers_mean():
    from ddcontrol.cli.demo import finite_horizon_verdict

    base = {"predicted_cost": 1.0, "replay_cost": 1.1, "manifold_deviation": 0.02,
            "estimated_deviation": 0.03, "drifted": False, "ood": False,
            "best_training_cost": 2.0, "best_training_window_same_start": True,
            "replay_beats_best_window": True}
    ok = finite_horizon_verdict(base)
    assert "NOT TRUSTED" not in ok and "beats the best training window" in ok
    bad = finite_horizon_verdict({**base, "drifted": True, "replay_beats_best_window": False})
    assert "PLAN NOT TRUSTED" in bad and "DOES NOT beat" in bad
    assert "out of the data" in finite_horizon_verdict({**base, "ood": True})
    assert "a scale, not an alternative" in finite_horizon_verdict(
        {**base, "best_training_window_same_start": False})

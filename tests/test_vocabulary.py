"""One vocabulary: ``length`` is a trajectory's, ``horizon`` the plan's; old spellings warn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ddcontrol.cli import main
from ddcontrol.data import TrajectoryDataset, collect
from ddcontrol.errors import ConfigurationError

MSD = "ddcontrol/MassSpringDamper-v0"


def test_collect_takes_length_and_warns_on_horizon():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns about nothing
        new = collect(MSD, 3, length=8, seed=2)
    assert new.length == 8 and new.u.shape == (3, 8, 1)
    with pytest.warns(DeprecationWarning, match="horizon= is deprecated, use length="):
        old = collect(MSD, 3, horizon=8, seed=2)
    np.testing.assert_array_equal(old.y, new.y)
    with pytest.raises(ConfigurationError, match="length= only"):
        collect(MSD, 3, 8, horizon=8)
    with pytest.raises(ConfigurationError, match="length is required"):
        collect(MSD, 3)


def test_dataset_length_is_the_trajectory_length():
    data = TrajectoryDataset.from_arrays(np.zeros((2, 5, 1)), np.zeros((2, 5, 2)), dt=0.1)
    assert data.length == 5 and data.windows(5).shape == (2, 5, 3)
    with pytest.warns(DeprecationWarning, match=r"TrajectoryDataset.horizon is deprecated"):
        assert data.horizon == 5  # the old name, for one release


def test_generate_cli_length_and_deprecated_horizon(tmp_path):
    base = ["generate", "--env", MSD, "--trajectories", "2", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert main([*base, "--length", "6", "--out", str(tmp_path / "a.npz")]) == 0
    with pytest.warns(DeprecationWarning, match="--horizon is deprecated, use --length"):
        assert main([*base, "--horizon", "6", "--out", str(tmp_path / "b.npz")]) == 0
    a, b = (TrajectoryDataset.load(tmp_path / f"{n}.npz") for n in "ab")
    assert a.length == b.length == 6
    np.testing.assert_array_equal(a.y, b.y)
    with pytest.raises(SystemExit):  # both, or neither: argparse refuses
        main([*base, "--length", "6", "--horizon", "6", "--out", str(tmp_path / "c.npz")])
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "c.npz")])


# -- T_ini is ``t_ini`` everywhere public; ``past_length=`` still works, with a warning ----------
class _IdentityModel:
    """The smallest model σ selection and the trust estimator accept: a linear D(x, σ)."""

    window_length, input_dim, sigma, config = 8, 1, None, {"val_fraction": 0.5}

    def __init__(self, data):
        self.normalizer = data.normalizer

    @staticmethod
    def denoiser(x, sigma):
        return 0.9 * x  # differentiable, shrinks towards the data mean


@pytest.fixture(scope="module")
def msd_data():
    return collect(MSD, 6, length=12, seed=0)


def _windows(data, length=8):
    return data.normalizer.normalize(data.windows(length, stride=4))


def _both(call, new, old, match):
    """``call`` with the new keywords (no warning) and with the old ones (a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        a = call(**new)
    with pytest.warns(DeprecationWarning, match=match):
        b = call(**old)
    return a, b


def test_window_cost_takes_t_ini(msd_data):
    import torch

    from ddcontrol.tracking import TrackingProblem, make_reference

    prob = TrackingProblem.for_env(MSD, make_reference("sine", MSD, length=20), 5)
    x = torch.as_tensor(_windows(msd_data, 8)[:3], dtype=torch.float32)
    a, b = _both(lambda **kw: prob.window_cost(msd_data.normalizer, **kw), {"t_ini": 3},
                 {"past_length": 3}, r"window_cost: past_length= is deprecated, use t_ini=")
    assert a.past_length == b.past_length == 3
    torch.testing.assert_close(a(x), b(x))
    # The problem's own T_ini is the default, and the positional form is unchanged.
    with_t = TrackingProblem.for_env(MSD, make_reference("sine", MSD, length=20), 5, t_ini=3)
    assert with_t.window_cost(msd_data.normalizer).past_length == 3
    assert prob.window_cost(msd_data.normalizer, 3).past_length == 3
    with pytest.raises(ConfigurationError, match="t_ini= only"):
        prob.window_cost(msd_data.normalizer, t_ini=3, past_length=3)


def test_sigma_selection_takes_t_ini(msd_data):
    import torch

    from ddcontrol.score.sigma import (
        conditioned_prediction,
        conditioned_prediction_error,
        resolve_sigma,
        select_sigma,
        select_sigma_windows,
    )

    model = _IdentityModel(msd_data)
    w = _windows(msd_data)
    x = torch.as_tensor(w, dtype=torch.float64)
    kw = {"input_dim": 1, "iterations": 2}
    a, b = _both(lambda **k: conditioned_prediction(model.denoiser, x, 0.1, **kw, **k),
                 {"t_ini": 3}, {"past_length": 3}, "conditioned_prediction: past_length=")
    torch.testing.assert_close(a, b)
    ones = torch.ones(2, dtype=torch.float64)
    a, b = _both(lambda **k: conditioned_prediction_error(model.denoiser, x, 0.1, std=ones,
                                                          mean=0 * ones, **kw, **k),
                 {"t_ini": 3}, {"past_length": 3}, "conditioned_prediction_error: past_length=")
    torch.testing.assert_close(a, b)
    a, b = _both(lambda **k: select_sigma_windows(model.denoiser, w, grid=(0.1, 0.2), **kw, **k),
                 {"t_ini": 3}, {"past_length": 3}, "select_sigma_windows: past_length=")
    assert a == b and a.t_ini == 3
    a, b = _both(lambda **k: select_sigma(model, msd_data, grid=(0.1, 0.2), iterations=2, **k),
                 {"t_ini": 2}, {"past_length": 2}, "select_sigma: past_length=")
    assert a == b and a.t_ini == 2
    a, b = _both(lambda **k: resolve_sigma(model, msd_data, **k), {"t_ini": 2},
                 {"past_length": 2}, "resolve_sigma: past_length=")
    assert a == b


def test_trust_estimator_takes_t_ini(msd_data):
    from ddcontrol.trust import TrustEstimator

    model = _IdentityModel(msd_data)
    w = _windows(msd_data)
    a, b = _both(lambda **k: TrustEstimator(model.denoiser, w, input_dim=1, **k), {"t_ini": 3},
                 {"past_length": 3}, r"TrustEstimator: past_length= is deprecated, use t_ini=")
    assert a.t_ini == a.past_length == b.t_ini == 3
    a, b = _both(lambda **k: TrustEstimator.from_model(model, msd_data, **k), {"t_ini": 2},
                 {"past_length": 2}, "TrustEstimator.from_model: past_length=")
    assert a.t_ini == b.t_ini == 2 and a.window_length == b.window_length == 8


def test_plan_confidence_takes_t_ini(msd_data):
    from types import SimpleNamespace

    from ddcontrol.evaluate.replay import plan_confidence

    w = _windows(msd_data)
    plan = SimpleNamespace(manifold_distance=0.1, window=w[0] + 5.0)
    a, b = _both(lambda **k: plan_confidence(plan, w, **k), {"t_ini": 3}, {"past_length": 3},
                 "plan_confidence: past_length=")
    assert a == b and a["future_outside_data"] > 0


# -- ``length`` for a reference's and an episode's samples; ``steps=`` / ``--steps`` warn --------
def test_make_reference_and_run_episode_take_length():
    from ddcontrol.baselines import make_baseline
    from ddcontrol.evaluate import run_episode
    from ddcontrol.tracking import make_reference

    a, b = _both(lambda **k: make_reference("random", MSD, seed=3, **k), {"length": 9},
                 {"steps": 9}, r"make_reference: steps= is deprecated, use length=")
    np.testing.assert_array_equal(a.values, b.values)
    assert a.length == a.steps == 9
    ctrl = make_baseline("lqr", MSD, a, 1.0, 0.01)
    a, b = _both(lambda **k: run_episode(MSD, ctrl, seed=1, **k), {"length": 7}, {"steps": 7},
                 "run_episode: steps= is deprecated")
    np.testing.assert_array_equal(a.outputs, b.outputs)
    assert len(a.outputs) == 7


def test_compare_cli_length_and_deprecated_steps(msd_data, tmp_path):
    import json

    data = msd_data.save(tmp_path / "d.npz")
    base = ["compare", "--env", MSD, "--data", str(data), "--controllers", "lqr",
            "--horizon", "5", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert main([*base, "--length", "8", "--out", str(tmp_path / "a")]) == 0
    with pytest.warns(DeprecationWarning, match="--steps is deprecated, use --length"):
        assert main([*base, "--steps", "8", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in "ab")
    assert a["steps"] == b["steps"] == 8
    same = [[{k: v for k, v in row.items() if "solve" not in k} for row in r["table"]]
            for r in (a, b)]
    assert same[0] == same[1] and a["episodes"]["lqr"][0]["outputs"] == b["episodes"]["lqr"][0][
        "outputs"]
    with pytest.raises(SystemExit):  # both: argparse refuses
        main([*base, "--length", "8", "--steps", "8", "--out", str(tmp_path / "c")])

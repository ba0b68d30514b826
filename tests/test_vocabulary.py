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
    assert new.length == new.horizon == 8 and new.u.shape == (3, 8, 1)
    with pytest.warns(DeprecationWarning, match="horizon= is deprecated, use length="):
        old = collect(MSD, 3, horizon=8, seed=2)
    np.testing.assert_array_equal(old.y, new.y)
    with pytest.raises(ConfigurationError, match="length= only"):
        collect(MSD, 3, 8, horizon=8)
    with pytest.raises(ConfigurationError, match="length is required"):
        collect(MSD, 3)


def test_dataset_length_is_the_trajectory_length():
    data = TrajectoryDataset.from_arrays(np.zeros((2, 5, 1)), np.zeros((2, 5, 2)), dt=0.1)
    assert data.length == 5 and data.horizon == 5 and data.windows(5).shape == (2, 5, 3)


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

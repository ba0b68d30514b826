"""Minari import / export round trip on a small dataset created here (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

from ddcontrol.data import TrajectoryDataset, collect
from ddcontrol.errors import DataFormatError, DimensionError

minari = pytest.importorskip(
    "minari", reason="Minari is an optional dependency (pip install 'ddcontrol[minari]'); "
                     "CI installs it, so this round trip runs there")

from ddcontrol.data.minari_io import from_minari, to_minari  # noqa: E402


@pytest.fixture(autouse=True)
def local_store(tmp_path, monkeypatch):
    """Every test gets its own empty local Minari store."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def test_round_trip_of_a_pendulum_dataset_and_replay_of_the_import():
    data = collect("Pendulum-v1", 3, 15, seed=4)
    exported = to_minari(data, "ddcontrol/pendulum-test-v0")
    # A true state has no observation after the last input: T - 1 steps are written.
    assert exported.total_episodes == 3 and exported.total_steps == 3 * 14
    back = TrajectoryDataset.from_minari("ddcontrol/pendulum-test-v0")
    np.testing.assert_array_equal(back.u, data.u[:, :14])
    np.testing.assert_array_equal(back.y, data.y[:, :14])
    np.testing.assert_array_equal(back.x[:, 14], data.y[:, 14])  # the final observation
    meta = back.metadata
    assert meta["state_source"] == "observations" and meta["env_id"] == "Pendulum-v1"
    assert meta["episode_seeds"] == data.metadata["episode_seeds"]
    assert meta["dt"] == pytest.approx(0.05) and meta["input_low"] == [-2.0]
    # The import keeps the seeds, so the episodes replay in the env exactly.
    from ddcontrol.evaluate.replay import verify_dataset

    assert verify_dataset(back)["max_output_error"] == 0.0
    # With observations as x, export writes every step: a second round trip is exact.
    again = from_minari(to_minari(back, "ddcontrol/pendulum-test-again-v0"))
    for name in ("u", "y", "x"):
        np.testing.assert_array_equal(getattr(again, name), getattr(back, name))


def test_measured_data_round_trip_and_errors():
    rng = np.random.default_rng(0)
    u, y = rng.normal(size=(2, 9, 2)), rng.normal(size=(2, 9, 3))
    data = TrajectoryDataset.from_arrays(u, y, dt=0.2)
    to_minari(data, "ddcontrol/measured-v0")
    back = from_minari("ddcontrol/measured-v0", dt=0.2)
    np.testing.assert_array_equal(back.u, u[:, :8])
    np.testing.assert_array_equal(back.y, y[:, :8])
    assert back.metadata["simulator"] == "none" and back.dt == 0.2
    with pytest.raises(ValueError, match="exists"):
        to_minari(data, "ddcontrol/measured-v0")
    with pytest.raises(DataFormatError, match="never downloads"):
        from_minari("ddcontrol/not-here-v0")


@pytest.mark.filterwarnings("ignore::UserWarning")  # minari nags about missing metadata
def test_ragged_minari_episodes_need_truncate():
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, steps in enumerate((5, 7)):
        buffers.append(EpisodeBuffer(
            id=i, observations=list(np.arange(steps + 1, dtype=np.float64)[:, None]),
            actions=list(np.ones((steps, 1))), rewards=[0.0] * steps,
            terminations=[False] * steps, truncations=[False] * (steps - 1) + [True]))
    minari.create_dataset_from_buffers(
        "ddcontrol/ragged-v0", buffers, action_space=gym.spaces.Box(-1, 1, (1,), np.float64),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (1,), np.float64), author="test",
        author_email="test@example.org", code_permalink="none", algorithm_name="test",
        description="ragged episodes")
    with pytest.raises(DimensionError, match="ragged lengths: the episodes have 5 to 7 steps"):
        from_minari("ddcontrol/ragged-v0")
    cut = from_minari("ddcontrol/ragged-v0", truncate=True)
    assert cut.length == 5 and cut.metadata["simulator"] == "none"

"""Measured data without a simulator: arrays, CSV, data frames; training, planning and the tracker
as a policy with replay skipped."""

from __future__ import annotations

import numpy as np
import pytest

from ddcontrol.data import TrajectoryDataset, collect
from ddcontrol.errors import ConfigurationError, DataFormatError, DimensionError, NonFiniteError

MSD = "ddcontrol/MassSpringDamper-v0"


def measured(n: int = 6, t: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and outputs of the mass-spring-damper, kept as plain arrays (the simulator is then
    forgotten, as for a real machine)."""
    sim = collect(MSD, n, t, seed=seed)
    return sim.u, sim.y


def write_csv(path, header, rows) -> str:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# -- arrays --------------------------------------------------------------------------------------
def test_from_arrays_builds_a_dataset_without_a_simulator(tmp_path):
    u, y = measured()
    data = TrajectoryDataset.from_arrays(u, y, dt=0.1, input_names=["force"],
                                         output_names=["position"], input_low=-5, input_high=5)
    assert (data.u.shape, data.y.shape, data.x.shape) == ((6, 20, 1), (6, 20, 1), (6, 21, 0))
    meta = data.metadata
    assert meta["simulator"] == "none" and meta["state_source"] == "none"
    assert meta["env_id"] is None and meta["dt"] == 0.1 and meta["input_low"] == [-5.0]
    assert meta["input_bounds"] == "given"
    back = TrajectoryDataset.load(data.save(tmp_path / "measured.npz"))
    np.testing.assert_array_equal(back.y, y)
    assert back.metadata["simulator"] == "none"
    # One experiment as (T, m), lists of experiments, and bounds from the data's range.
    one = TrajectoryDataset.from_arrays(u[0], y[0])
    assert one.u.shape == (1, 20, 1) and one.metadata["input_names"] == ["u0"]
    listed = TrajectoryDataset.from_arrays(list(u), list(y))
    np.testing.assert_array_equal(listed.u, u)
    assert listed.metadata["input_bounds"] == "data range"
    assert listed.metadata["input_low"] == [float(u.min())]
    # The bounds every data-driven baseline plans within: the recorded ones, ±inf without.
    low, high = data.input_bounds
    np.testing.assert_array_equal(np.stack([low, high]), [[-5.0], [5.0]])
    bare = TrajectoryDataset(data.u, data.y, data.x)
    np.testing.assert_array_equal(np.stack(bare.input_bounds), [[-np.inf], [np.inf]])


def test_from_arrays_validation_errors():
    u, y = measured(3, 10)
    with pytest.raises(DimensionError, match="ragged lengths.*#0: 10, #1: 9"):
        TrajectoryDataset.from_arrays([u[0], u[1, :9]], [y[0], y[1, :9]])
    cut = TrajectoryDataset.from_arrays([u[0], u[1, :9]], [y[0], y[1, :9]], truncate=True)
    assert cut.length == 9
    bad = y.copy()
    bad[2, 4, 0] = np.nan
    with pytest.raises(NonFiniteError, match="experiment 2, sample 4, channel 'y0'"):
        TrajectoryDataset.from_arrays(u, bad)
    with pytest.raises(DimensionError, match="disagree"):
        TrajectoryDataset.from_arrays(u, y[:2])
    with pytest.raises(DimensionError, match="2 names for 1 channels"):
        TrajectoryDataset.from_arrays(u, y, input_names=["a", "b"])
    with pytest.raises(ConfigurationError, match="dt must be a positive"):
        TrajectoryDataset.from_arrays(u, y, dt=0.0)
    with pytest.raises(ConfigurationError, match="exceeds"):
        TrajectoryDataset.from_arrays(u, y, input_low=1.0, input_high=-1.0)
    with pytest.raises(DimensionError, match="must be"):
        TrajectoryDataset.from_arrays(np.zeros((2, 3, 4, 5)), y)


# -- CSV -----------------------------------------------------------------------------------------
def test_csv_one_file_with_episode_column_and_files_per_experiment(tmp_path):
    u, y = measured(3, 12)
    rows = [(e, round(0.1 * k, 10), u[e, k, 0], y[e, k, 0]) for e in range(3) for k in range(12)]
    path = write_csv(tmp_path / "all.csv", ["episode", "t", "force", "pos"], rows)
    data = TrajectoryDataset.from_csv(path, inputs="force", outputs="pos", time="t",
                                      episode="episode")
    np.testing.assert_array_equal(data.u, u)
    np.testing.assert_array_equal(data.y, y)
    assert data.dt == pytest.approx(0.1) and data.metadata["source"] == "csv"
    assert data.metadata["experiments"][1].endswith("episode 1")
    files = [write_csv(tmp_path / f"run{e}.csv", ["pos", "force"],
                       [(y[e, k, 0], u[e, k, 0]) for k in range(12)]) for e in range(3)]
    per_file = TrajectoryDataset.from_csv(files, inputs=["force"], outputs=["pos"], dt=0.1)
    np.testing.assert_array_equal(per_file.y, y)
    assert per_file.metadata["input_names"] == ["force"] and per_file.dt == 0.1
    assert TrajectoryDataset.from_csv(files[0], inputs="force", outputs="pos").metadata[
        "dt_known"] is False


def test_csv_validation_errors(tmp_path):
    header = ["t", "a", "b", "c"]
    good = [(0.1 * k, k, 2 * k, 3 * k) for k in range(6)]
    path = write_csv(tmp_path / "good.csv", header, good)
    with pytest.raises(DataFormatError, match="missing column 'z'; it has \\['t', 'a', 'b', 'c'\\]"):
        TrajectoryDataset.from_csv(path, inputs="a,z", outputs="c")
    with pytest.raises(ConfigurationError, match="as inputs and as outputs"):
        TrajectoryDataset.from_csv(path, inputs="a,b", outputs="b")
    uneven = [(0.0, 1, 1, 1), (0.1, 1, 1, 1), (0.25, 1, 1, 1), (0.35, 1, 1, 1)]
    with pytest.raises(DataFormatError, match="non-uniform sampling.*rows 1 and 2"):
        TrajectoryDataset.from_csv(write_csv(tmp_path / "uneven.csv", header, uneven),
                                   inputs="a", outputs="b", time="t")
    with pytest.raises(DataFormatError, match="steps by 0.1 s, dt=0.2"):
        TrajectoryDataset.from_csv(path, inputs="a", outputs="b", time="t", dt=0.2)
    gap = [list(r) for r in good]
    gap[3][2] = ""
    with pytest.raises(NonFiniteError, match="column 'b' has NaN or an empty cell at row 3"):
        TrajectoryDataset.from_csv(write_csv(tmp_path / "gap.csv", header, gap), inputs="a",
                                   outputs="b")
    text = [list(r) for r in good]
    text[2][1] = "high"
    with pytest.raises(DataFormatError, match="line 4, column 'a': 'high' is not a number"):
        TrajectoryDataset.from_csv(write_csv(tmp_path / "text.csv", header, text), inputs="a",
                                   outputs="b")
    short = write_csv(tmp_path / "short.csv", header, good[:4])
    with pytest.raises(DimensionError, match="ragged lengths"):
        TrajectoryDataset.from_csv([path, short], inputs="a", outputs="b")
    assert TrajectoryDataset.from_csv([path, short], inputs="a", outputs="b",
                                      truncate=True).length == 4
    (tmp_path / "cells.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataFormatError, match="line 3: 1 cells, the header has 2"):
        TrajectoryDataset.from_csv(tmp_path / "cells.csv", inputs="a", outputs="b")
    with pytest.raises(DataFormatError, match="not found"):
        TrajectoryDataset.from_csv(tmp_path / "nope.csv", inputs="a", outputs="b")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataFormatError, match="empty or has no header"):
        TrajectoryDataset.from_csv(tmp_path / "empty.csv", inputs="a", outputs="b")


class FakeFrame:
    """The part of a pandas DataFrame that the import reads (no pandas needed)."""

    def __init__(self, columns: dict) -> None:
        self._cols = {k: np.asarray(v) for k, v in columns.items()}
        self.columns = list(columns)

    def __getitem__(self, name):
        col = self._cols[name]

        class Series:
            def to_numpy(self):
                return col

        return Series()


def test_dataframe_import_without_pandas_and_with_it():
    u, y = measured(2, 10)
    frames = [FakeFrame({"u": u[e, :, 0], "y": y[e, :, 0]}) for e in range(2)]
    data = TrajectoryDataset.from_dataframe(frames, inputs="u", outputs="y", dt=0.1)
    np.testing.assert_array_equal(data.y, y)
    assert data.metadata["source"] == "dataframe"
    with pytest.raises(DataFormatError, match="missing column 'v'"):
        TrajectoryDataset.from_dataframe(frames[0], inputs="v", outputs="y")
    pd = pytest.importorskip("pandas", reason="pandas is optional; the duck-typed frame above "
                                              "covers the import without it")
    frame = pd.DataFrame({"run": np.repeat([0, 1], 10), "u": u[..., 0].ravel(),
                          "y": y[..., 0].ravel()})
    again = TrajectoryDataset.from_dataframe(frame, inputs="u", outputs="y", episode="run")
    np.testing.assert_array_equal(again.u, u)


# -- training, planning and the tracker from measured data ---------------------------------------
def test_train_plan_and_track_from_measured_data_skip_replay(tmp_path):
    from ddcontrol.cli import main
    from ddcontrol.evaluate.finite_horizon import finite_horizon_experiment
    from ddcontrol.evaluate.replay import plan_confidence
    from ddcontrol.score import load_model
    from ddcontrol.tracking import DenoisingTracker, TrackingProblem
    from ddcontrol.tracking.reference import Reference

    u, y = measured(8, 16)
    rows = [(e, u[e, k, 0], y[e, k, 0]) for e in range(8) for k in range(16)]
    csv_path = write_csv(tmp_path / "plant.csv", ["exp", "force", "pos"], rows)
    out = tmp_path / "model"
    rc = main(["train", "--data", csv_path, "--inputs", "force", "--outputs", "pos",
               "--episode-column", "exp", "--dt", "0.1", "--input-low", "-5", "--input-high",
               "5", "--out", str(out), "--window", "8", "--steps", "3", "--batch-size", "8",
               "--width", "16", "--depth", "1", "--emb-dim", "8", "--val-every", "0",
               "--no-progress"])
    assert rc == 0 and (out / "checkpoint.pt").is_file() and (out / "data.npz").is_file()
    model = load_model(out)
    data = TrajectoryDataset.load(model.config["data"])
    np.testing.assert_array_equal(data.u, u)
    assert data.metadata["simulator"] == "none" and model.env_id is None

    ref = Reference(np.full((8, 1), 0.5), channels=(0,), output_dim=1, dt=0.1, name="hold")
    res = finite_horizon_experiment(model, data, ref, horizon=5, iterations=5)
    s = res.summary
    assert s["replay"].startswith("skipped: measured data without a simulator")
    assert res.replay.skipped and np.isnan(s["replay_cost"]) and s["replay_beats_best_window"] is None
    assert np.isfinite(s["predicted_cost"]) and s["confidence"]["nearest_window_rms"] >= 0
    assert np.all(np.abs(res.plan.inputs) <= 5.0)
    with pytest.raises(ConfigurationError, match="sigma must be a number"):
        finite_horizon_experiment(model, data, ref, horizon=5, iterations=5, sigma=None)

    # The tracker as a policy on measured outputs only: no environment anywhere.
    problem = TrackingProblem.for_dataset(data, ref, 5)
    tracker = DenoisingTracker.from_model(model, problem, data, iterations=5,
                                          iterations_per_step=2)
    tracker.reset(y[0, 0])
    actions = [tracker.act(y[0, k]) for k in range(6)]
    assert all(a.shape == (1,) and np.all(np.abs(a) <= 5.0) for a in actions)
    # A plan that *is* a training window is at distance 0 from the data.
    conf = plan_confidence(res.plan, res.plan.window[None])
    assert conf["nearest_window_rms"] == 0.0 and conf["future_outside_data"] == 0.0


def test_train_cli_csv_flags_are_checked(tmp_path, capsys):
    from ddcontrol.cli import main

    path = write_csv(tmp_path / "d.csv", ["a", "b"], [(k, k) for k in range(10)])
    with pytest.raises(SystemExit, match="needs --inputs and --outputs"):
        main(["train", "--data", path, "--out", str(tmp_path / "m")])
    with pytest.raises(SystemExit, match="apply to a CSV file"):
        main(["train", "--data", str(tmp_path / "d.npz"), "--inputs", "a", "--out",
              str(tmp_path / "m")])
    assert main(["train", "--data", path, "--inputs", "a", "--outputs", "zz", "--out",
                 str(tmp_path / "m")]) == 1
    assert "missing column 'zz'" in capsys.readouterr().err

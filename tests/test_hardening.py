"""Issue 19: every bad input ends in one clear line and an honest exit code, never a traceback or
a silently wrong result; written files honour the umask; killed writes leave nothing for long.

CLI cases run in-process through ``ddcontrol.cli.main`` (a usage error is argparse's
``SystemExit(2)``; an error the command reports is exit code 1 with one ``error:`` line).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol._io import atomic_write, remove_stale_temporaries
from ddcontrol.cli import main
from ddcontrol.data import TrajectoryDataset, collect
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import (
    CheckpointError,
    ConfigurationError,
    DataFormatError,
    NonFiniteError,
    TrainingInterrupted,
    WriteError,
)
from ddcontrol.score import TrainConfig, load_model, train
from ddcontrol.score.checkpoint import read_checkpoint
from ddcontrol.tracking import DenoisingTracker, TrackingProblem
from ddcontrol.tracking.reference import make_reference
from envs.errors import EnvConfigurationError, InvalidActionError, InvalidStateError

MSD = "ddcontrol/MassSpringDamper-v0"
UNI = "ddcontrol/Unicycle-v0"
TINY = ["--width", "32", "--depth", "1", "--emb-dim", "16", "--batch-size", "32",
        "--no-progress", "--val-every", "0"]


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Run ``ddcontrol ARGS`` in-process: (exit code, stderr). Any exception but SystemExit
    propagates (and fails the test): that is what a user would see as a traceback."""
    try:
        rc = main(args)
        code_msg = ""
    except SystemExit as exc:  # argparse usage errors (2), or SystemExit("message") (1)
        rc = exc.code if isinstance(exc.code, int) else 1
        code_msg = "" if isinstance(exc.code, int) or exc.code is None else str(exc.code)
    err = capsys.readouterr().err + code_msg
    assert "Traceback" not in err
    return rc, err


def error_line(err: str) -> str:
    """The one line that names the problem (progress bars and warnings aside)."""
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An MSD dataset and a tiny model trained on it, a unicycle dataset, a plain file."""
    root = tmp_path_factory.mktemp("hardening")
    msd = collect(MSD, 40, 30, seed=0, noise=False)
    msd.save(root / "msd.npz")
    collect(UNI, 10, 30, seed=0).save(root / "uni.npz")
    train(TrainConfig(data=str(root / "msd.npz"), out=str(root / "model"), window=15, steps=20,
                      width=32, depth=1, emb_dim=16, batch_size=32, val_every=0,
                      progress=False))
    (root / "afile").write_text("not a folder")
    return {"root": root, "data": root / "msd.npz", "uni": root / "uni.npz",
            "model": root / "model", "file": root / "afile"}


# -- 1. non-finite statistics and losses ------------------------------------------------------
def _rewrite(src: Path, dst: Path, **changes) -> Path:
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


@pytest.mark.parametrize("std", [0.0, -1.0, np.nan, np.inf])
def test_dataset_with_bad_normalisation_std_is_rejected(files, tmp_path, capsys, std):
    bad = _rewrite(files["data"], tmp_path / "bad.npz", norm_std=np.array([1.0, std]))
    with pytest.raises(DataFormatError, match="norm_std must be finite and > 0; channels \\[1\\]"):
        TrajectoryDataset.load(bad)
    rc, err = cli(["train", "--data", str(bad), "--out", str(tmp_path / "m"), "--steps", "5",
                   "--window", "5", *TINY], capsys)
    assert rc == 1 and "norm_std" in error_line(err)
    assert not (tmp_path / "m" / "checkpoint.pt").exists()
    d = TrajectoryDataset.load(files["data"])
    with pytest.raises(ConfigurationError, match="norm_std"):
        TrajectoryDataset(d.u, d.y, d.x, d.metadata,
                          Normalizer(d.normalizer.mean, np.array([1.0, std]), 1))


def test_dataset_with_nan_mean_is_rejected(files, tmp_path):
    bad = _rewrite(files["data"], tmp_path / "bad.npz", norm_mean=np.array([0.0, np.nan]))
    with pytest.raises(DataFormatError, match="norm_mean"):
        TrajectoryDataset.load(bad)


def test_training_stops_with_a_clear_error_on_a_non_finite_loss(files, tmp_path):
    data = TrajectoryDataset.load(files["data"])
    cfg = TrainConfig(out=str(tmp_path / "m"), window=5, steps=40, lr=1e12, grad_clip=0.0,
                      warmup_steps=0, log_every=10, width=16, depth=1, emb_dim=16,
                      batch_size=32, val_every=0, checkpoint_every=0, progress=False)
    with pytest.raises(NonFiniteError, match="training loss is nan at step 10"):
        train(cfg, data)
    assert not (tmp_path / "m" / "checkpoint.pt").exists()  # no NaN model saved as a result


# -- 2. callable references are checked at every evaluated time -------------------------------
def test_callable_reference_returning_nan_after_t0_is_reported():
    def ref(t: float) -> list[float]:
        return [np.nan if t > 0.25 else 0.0]

    problem = TrackingProblem(ref, horizon=10, input_dim=1, output_dim=1, dt=0.1)
    np.testing.assert_array_equal(problem.reference_values(0, 3), np.zeros((3, 1)))
    with pytest.raises(NonFiniteError, match="at t=0.3 s"):
        problem.reference_values(0, 10)
    with pytest.raises(NonFiniteError):
        problem.cost(np.zeros((10, 1)), np.zeros((10, 1)))
    with pytest.raises(NonFiniteError):
        problem.window_cost(Normalizer(np.zeros(2), np.ones(2), 1), 0, 0)


def test_callable_reference_with_wrong_size_later_is_reported():
    problem = TrackingProblem(lambda t: [0.0] if t < 0.5 else [0.0, 1.0], horizon=10,
                              input_dim=1, output_dim=1, dt=0.1)
    with pytest.raises(ValueError, match="must return 1 values"):
        problem.reference_values(0, 10)


# -- 3. zero is rejected or honoured, never replaced by the default ---------------------------
@pytest.mark.parametrize("flag", ["--horizon", "--closed-loop", "--iterations", "--starts"])
def test_track_zero_is_a_usage_error(files, tmp_path, capsys, flag):
    rc, err = cli(["track", "--model", str(files["model"]), "--reference", "step",
                   "--out", str(tmp_path / "t"), flag, "0"], capsys)
    assert rc == 2 and f"argument {flag}: must be >= 1, got 0" in err
    assert not (tmp_path / "t").exists()


def test_plan_iterations_zero_is_an_error_and_small_counts_are_honoured(files):
    model = load_model(files["model"])
    data = TrajectoryDataset.load(files["data"])
    ref = make_reference("step", MSD, 15)
    problem = TrackingProblem.for_env(MSD, ref, 15)
    tracker = DenoisingTracker.from_model(model, problem, data, iterations=50,
                                          refine_iterations=0)
    with pytest.raises(ConfigurationError, match="iterations must be > 0, got 0"):
        tracker.plan(iterations=0)
    assert tracker.plan(iterations=2).iterations == 2


def test_from_model_takes_the_systems_defaults(files):
    """The Python API's tracker is real-time by default: settings not given are the system's
    (per-step budget, iterations, cold starts, damping, solver); given ones win."""
    from ddcontrol.tracking.defaults import system_defaults

    model = load_model(files["model"])
    data = TrajectoryDataset.load(files["data"])
    problem = TrackingProblem.for_env(MSD, make_reference("step", MSD, 15), 15)
    d = system_defaults(MSD)
    tracker = DenoisingTracker.from_model(model, problem, data, trust=None)
    assert tracker.step_time_budget == pytest.approx(d.step_time_fraction * problem.dt)
    assert (tracker.iterations_per_step, tracker.num_starts, tracker.damping,
            tracker.solver_name) == (d.iterations_per_step, d.num_starts, d.damping, d.solver)
    given = DenoisingTracker.from_model(model, problem, data, trust=None, num_starts=1,
                                        step_time_budget=None, solver="drgd")
    assert (given.step_time_budget, given.num_starts, given.solver_name) == (None, 1, "drgd")


def test_the_plans_confidence_refits_the_past_as_the_plan_does(files, monkeypatch):
    from ddcontrol.tracking.defaults import system_defaults
    from ddcontrol.trust import TrustEstimator

    model = load_model(files["model"])
    data = TrajectoryDataset.load(files["data"])
    problem = TrackingProblem.for_env(MSD, make_reference("step", MSD, 15), 15)
    tuned = DenoisingTracker.from_model(model, problem, data, damping=0.03, iterations=5,
                                        refine_iterations=2)
    assert tuned.trust.repredict_damping == 0.03 and tuned.trust.repredict_sigma == tuned.sigma
    # Without one given, the damping is the system's (from_model applies its defaults).
    plain = DenoisingTracker.from_model(model, problem, data, iterations=5, refine_iterations=2)
    assert plain.damping == system_defaults(MSD).damping != 0.03
    assert plain.trust.repredict_damping == plain.damping
    # The reprediction pins the current output when the plan measured it, and only then.
    calls = []
    original = TrustEstimator.__call__

    def spy(self, plan, repredict=None, current_output=False):
        calls.append((repredict, current_output))
        return original(self, plan, repredict=repredict, current_output=current_output)

    monkeypatch.setattr(TrustEstimator, "__call__", spy)
    rng = np.random.default_rng(0)
    t = tuned.t_ini
    past_u, past_y = rng.normal(size=(t, 1)) * 0.1, rng.normal(size=(t, 1)) * 0.1
    tuned.plan(past_u, past_y, current_y=np.array([0.05]))
    tuned.plan(past_u, past_y)
    tuned.plan(past_u, past_y, current_y=np.array([0.05]), refine=False)
    assert calls == [(True, True), (True, False), (False, False)]


def test_current_measured_reads_the_current_outputs_row():
    from ddcontrol.tracking.measured import current_measured

    block = torch.zeros(4, 3)  # T_ini = 3, m = 1, p = 2
    assert current_measured(block, 3, 1) and not current_measured(None, 3, 1)
    assert not current_measured(block[:3], 3, 1)  # no current row
    block[3, 2] = float("nan")
    assert not current_measured(block, 3, 1)
    block[3, 0] = float("nan")  # the current input is never measured; only the outputs count
    block[3, 2] = 0.0
    assert current_measured(block, 3, 1)
    batch = torch.zeros(2, 4, 3)
    batch[1, 3, 1] = float("nan")  # a batch's mask is its first block's (as pinned())
    assert current_measured(batch, 3, 1)


# -- 4. written files honour the umask (shareable) --------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_datasets_and_checkpoints_honour_the_umask(files, tmp_path, mask):
    old = os.umask(mask)
    try:
        path = TrajectoryDataset.load(files["data"]).save(tmp_path / "d.npz")
        ckpt = atomic_write(tmp_path / "c.pt", lambda fh: torch.save({"a": 1}, fh))
    finally:
        os.umask(old)
    for p in (path, ckpt):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_replacing_a_file_keeps_its_mode(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640


# -- unwritable outputs and unreadable inputs --------------------------------------------------
@pytest.mark.parametrize("command", ["generate", "train", "track", "compare"])
def test_output_under_a_file_is_one_line(files, capsys, command):
    bad = str(files["file"] / "sub" / "out.npz")
    args = {
        "generate": ["generate", "--env", MSD, "--trajectories", "2", "--horizon", "5",
                     "--out", bad, "--quiet"],
        "train": ["train", "--data", str(files["data"]), "--out", bad, "--steps", "2",
                  "--window", "5", *TINY],
        "track": ["track", "--model", str(files["model"]), "--reference", "step",
                  "--out", bad],
        "compare": ["compare", "--env", MSD, "--data", str(files["data"]), "--controllers",
                    "lqr", "--out", bad, "--quiet"],
    }[command]
    rc, err = cli(args, capsys)
    assert rc == 1 and f"{files['file']} is a file, not a folder" in error_line(err)


def test_read_only_output_folder_is_one_line(files, tmp_path, capsys, monkeypatch):
    import ddcontrol._io as io_mod

    folder = tmp_path / "ro"
    folder.mkdir()
    # Root ignores permission bits, so the check is exercised through os.access as well.
    monkeypatch.setattr(io_mod.os, "access", lambda path, mode: Path(path) != folder)
    rc, err = cli(["generate", "--env", MSD, "--trajectories", "2", "--horizon", "5",
                   "--out", str(folder / "d.npz"), "--quiet"], capsys)
    assert rc == 1 and "permission denied" in error_line(err)
    rc, err = cli(["track", "--model", str(files["model"]), "--reference", "step",
                   "--out", str(folder)], capsys)
    assert rc == 1 and "permission denied" in error_line(err)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root (or non-POSIX) ignores permission bits")
def test_read_only_folder_for_real(tmp_path, capsys):  # pragma: no cover - CI as non-root
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="permission denied"):
            atomic_write(folder / "x.bin", lambda fh: fh.write(b"x"))
    finally:
        folder.chmod(0o755)


def test_permission_errors_during_the_write_are_write_errors(tmp_path, monkeypatch):
    import ddcontrol._io as io_mod

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", denied)
    with pytest.raises(WriteError, match="permission denied"):
        atomic_write(tmp_path / "x.bin", lambda fh: fh.write(b"x"))


def test_unreadable_checkpoint_and_dataset_say_so(files, monkeypatch, capsys):
    import ddcontrol.data.dataset as dataset_mod
    import ddcontrol.score.checkpoint as ckpt_mod

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ckpt_mod, "open", denied, raising=False)
    with pytest.raises(CheckpointError, match="cannot open checkpoint .*Permission denied") as e:
        read_checkpoint(files["model"])
    assert "corrupt" not in str(e.value)
    monkeypatch.setattr(dataset_mod, "open", denied, raising=False)
    with pytest.raises(DataFormatError, match="cannot open dataset .*Permission denied") as e:
        TrajectoryDataset.load(files["data"])
    assert "corrupt" not in str(e.value)
    rc, err = cli(["compare", "--env", MSD, "--data", str(files["data"]), "--controllers",
                   "lqr", "--out", str(files["root"] / "cmp_denied"), "--quiet"], capsys)
    assert rc == 1 and "Permission denied" in error_line(err)


# -- environment keyword arguments --------------------------------------------------------------
@pytest.mark.parametrize("env,kwargs,match", [
    (MSD, {"bogus": 1}, "unexpected keyword argument 'bogus'"),
    (UNI, {"outputs": ["zz"]}, "unicycle outputs must be"),
])
def test_bad_env_kwargs_are_one_line(tmp_path, capsys, env, kwargs, match):
    rc, err = cli(["generate", "--env", env, "--trajectories", "2", "--horizon", "5",
                   "--out", str(tmp_path / "d.npz"), "--quiet", "--env-kwargs",
                   json.dumps(kwargs)], capsys)
    line = error_line(err)
    assert rc == 1 and "--env-kwargs" in line and match in line


# -- track: the model's system, the window, the device -----------------------------------------
def test_track_with_a_model_of_another_system(files, tmp_path, capsys):
    rc, err = cli(["track", "--model", str(files["model"]), "--data", str(files["uni"]),
                   "--reference", "step", "--out", str(tmp_path / "t")], capsys)
    assert rc == 1 and f"this model was trained on {MSD}" in error_line(err)
    rc, err = cli(["track", "--model", str(files["model"]), "--env", UNI, "--reference",
                   "step", "--out", str(tmp_path / "t")], capsys)
    assert rc == 1 and f"this model was trained on {MSD}, not {UNI}" in error_line(err)


@pytest.mark.parametrize("mode", [[], ["--closed-loop", "5"]])
def test_track_horizon_longer_than_the_window(files, tmp_path, capsys, mode):
    rc, err = cli(["track", "--model", str(files["model"]), "--reference", "step",
                   "--horizon", "45", *mode, "--out", str(tmp_path / "t")], capsys)
    line = error_line(err)
    assert rc == 1 and "--horizon 45 is longer than the model's window (15 steps)" in line


@pytest.mark.parametrize("device", ["bogus", "cuda:99", "meta"]
                         + ([] if torch.cuda.is_available() else ["cuda"]))
def test_bad_device_is_one_line_in_the_cli_and_an_error_in_the_api(files, tmp_path, capsys,
                                                                   device):
    rc, err = cli(["track", "--model", str(files["model"]), "--reference", "step",
                   "--device", device, "--out", str(tmp_path / "t")], capsys)
    assert rc == 1 and "--device" in error_line(err)
    with pytest.raises(ConfigurationError, match="device"):
        load_model(files["model"], device=device)
    model = load_model(files["model"])
    problem = TrackingProblem.for_env(MSD, make_reference("step", MSD, 15), 15)
    with pytest.raises(ConfigurationError, match="device"):
        DenoisingTracker.from_model(model, problem, device=device)


# -- compare: controller names and counts are checked before anything runs -----------------------
@pytest.mark.parametrize("names,match", [
    ("lqr,bogus", "unknown controller(s) 'bogus'"),
    ("", "--controllers is empty"),
    (" , ", "--controllers is empty"),
    ("lqr,lqr", "more than once"),
    ("denoising", "needs --model"),
])
def test_compare_bad_controller_names(files, tmp_path, capsys, names, match):
    out = tmp_path / "c"
    rc, err = cli(["compare", "--env", MSD, "--data", str(files["data"]), "--controllers",
                   names, "--length", "5", "--out", str(out), "--quiet"], capsys)
    assert rc == 1 and match in error_line(err)
    assert not out.exists()  # nothing ran


@pytest.mark.parametrize("flag,value", [("--seeds", "0"), ("--length", "0"), ("--steps", "0"),
                                        ("--horizon", "0"), ("--warmup", "-1"), ("--Q", "nan"),
                                        ("--R", "-1")])
def test_compare_bad_counts_are_usage_errors(files, tmp_path, capsys, flag, value):
    rc, err = cli(["compare", "--env", MSD, "--data", str(files["data"]), "--controllers",
                   "lqr", flag, value, "--out", str(tmp_path / "c"), "--quiet"], capsys)
    assert rc == 2 and f"argument {flag}" in err


def test_compare_data_from_another_system(files, tmp_path, capsys):
    rc, err = cli(["compare", "--env", MSD, "--data", str(files["uni"]), "--controllers", "lqr",
                   "--out", str(tmp_path / "c"), "--quiet"], capsys)
    assert rc == 1 and f"is from {UNI}, not {MSD}" in error_line(err)


# -- generate: seeds, sizes, folders -------------------------------------------------------------
def test_generate_negative_seed(tmp_path, capsys):
    rc, err = cli(["generate", "--env", MSD, "--trajectories", "2", "--horizon", "5",
                   "--seed", "-1", "--out", str(tmp_path / "d.npz"), "--quiet"], capsys)
    assert rc == 2 and "argument --seed: must be >= 0, got -1" in err


def test_generate_refuses_absurd_sizes_with_the_figure(tmp_path, capsys):
    rc, err = cli(["generate", "--env", MSD, "--trajectories", "1000000000", "--horizon",
                   "100000", "--out", str(tmp_path / "d.npz"), "--quiet"], capsys)
    line = error_line(err)
    # MSD: m + p = 2 channels, n_x = 2 states: 8 B * 1e9 * (1e5 * 2 + 100001 * 2) = 2.98e6 GiB.
    assert rc == 1 and "dataset 2.98e+06 GiB" in line and "GiB available" in line
    from ddcontrol.cli._args import check_env
    from ddcontrol.cli.generate import MEMORY_FACTOR, check_size, estimated_bytes

    info = check_env(MSD)
    assert estimated_bytes(info, 10, 20) == 8 * 10 * (20 * 2 + 21 * 2)
    check_size(info, 10, 20, available=int(MEMORY_FACTOR * 8 * 10 * 82))  # fits exactly
    with pytest.raises(ConfigurationError, match="GiB"):
        check_size(info, 10, 20, available=int(MEMORY_FACTOR * 8 * 10 * 82) - 1)


@pytest.mark.parametrize("trailing", ["/", ""])
def test_generate_into_an_existing_folder_is_refused(tmp_path, capsys, trailing):
    folder = tmp_path / "runs"
    folder.mkdir()
    rc, err = cli(["generate", "--env", MSD, "--trajectories", "2", "--horizon", "5",
                   "--out", str(folder) + trailing, "--quiet"], capsys)
    assert rc == 1 and "is a folder; give a file name" in error_line(err)
    assert not (tmp_path / "runs.npz").exists() and not any(folder.iterdir())
    with pytest.raises(WriteError, match="is a folder"):
        collect(MSD, 2, 5).save(folder)
    assert not (tmp_path / "runs.npz").exists()


# -- crafted files: each a DataFormatError naming the field ---------------------------------------
@pytest.mark.parametrize("change,match", [
    ({"metadata": np.array(json.dumps([1, 2]))}, "metadata must be a JSON object, got list"),
    ({"metadata": np.array(json.dumps({"format_version": 1, "dt": "fast"}))}, "metadata 'dt'"),
    ({"metadata": np.array(json.dumps({"format_version": 1, "env_id": 3}))}, "'env_id'"),
    ({"metadata": np.array(json.dumps({"format_version": 1, "output_names": ["a", "b"]}))},
     "'output_names' must be 1 strings"),
    ({"u": np.full((40, 30, 1), "abc")}, "u must hold real numbers"),
    ({"u": np.zeros((40, 30, 1), dtype=complex)}, "u must hold real numbers"),
    ({"norm_std": np.array(["1", "2"])}, "norm_std must hold real numbers"),
    ({"u": np.zeros((0, 30, 1)), "y": np.zeros((0, 30, 1)), "x": np.zeros((0, 31, 2))},
     "u has shape \\(0, 30, 1\\): zero trajectories"),
    ({"y": np.zeros((40, 0, 1))}, "y has shape \\(40, 0, 1\\): zero time steps"),
    ({"u": np.zeros(3)}, "u must have 3 dimension"),
    ({"norm_mean": np.float64(0.0)}, "norm_mean must have 1 dimension"),
])
def test_crafted_dataset_files(files, tmp_path, capsys, change, match):
    bad = _rewrite(files["data"], tmp_path / "bad.npz", **change)
    with pytest.raises(DataFormatError, match=match):
        TrajectoryDataset.load(bad)
    rc, err = cli(["train", "--data", str(bad), "--out", str(tmp_path / "m"), "--steps", "2",
                   "--window", "5", *TINY], capsys)
    assert rc == 1 and "bad.npz" in error_line(err)


# -- Ctrl-C during training ------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_during_training_prints_one_line_with_the_cli_flag(files, tmp_path, capsys):
    out = tmp_path / "m"
    ckpt = out / "checkpoint.pt"

    def interrupt_once_a_checkpoint_exists() -> None:
        deadline = time.time() + 60
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # the training loop's handler is installed by now

    thread = threading.Thread(target=interrupt_once_a_checkpoint_exists, daemon=True)
    thread.start()
    rc, err = cli(["train", "--data", str(files["data"]), "--out", str(out), "--window", "5",
                   "--steps", "100000", "--checkpoint-every", "5", *TINY], capsys)
    thread.join()
    line = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert rc == 130 and len(line) == 1
    assert "--resume" in line[0] and "resume=True" not in err and str(ckpt) in line[0]
    step = int(line[0].split("interrupted at step ")[1].split(";")[0])
    assert read_checkpoint(ckpt)["step"] == step
    exc = TrainingInterrupted(7, None)
    assert isinstance(exc, KeyboardInterrupt) and "nothing saved" in str(exc)


# -- simulator boundary: reset / step / bounds ------------------------------------------------------
@pytest.mark.parametrize("state", ["abcde", ["1", "2"], [1 + 1j, 0.0], [[1.0], [2.0, 3.0]],
                                   [True, False]])
def test_reset_rejects_non_real_states(state):
    env = gym.make(MSD)
    with pytest.raises(InvalidStateError, match="initial state"):
        env.reset(options={"state": state})


@pytest.mark.parametrize("action", [np.array([1 + 2j]), np.array(["0.5"]), "abc", [True]])
def test_step_rejects_complex_and_non_numeric_actions(action):
    env = gym.make(MSD)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="action must hold real numbers"):
        env.step(action)
    obs, *_ = env.step(np.array([0.5]))  # real ones still pass
    assert np.all(np.isfinite(obs))


def test_inverted_input_bounds_are_rejected_at_construction():
    with pytest.raises(EnvConfigurationError, match="input_low must be <= input_high"):
        gym.make(MSD, input_limit=-1.0)
    ref = make_reference("step", MSD, 10)
    with pytest.raises(ConfigurationError, match="input_low must be <= input_high"):
        TrackingProblem(ref, 10, 1, input_low=1.0, input_high=-1.0)
    TrackingProblem(ref, 10, 1, input_low=-1.0, input_high=-1.0)  # equal bounds are fine


# -- temporary files of killed writes -----------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_writes_are_removed_on_the_next_write(tmp_path):
    from ddcontrol._io import _writer_tag

    host = _writer_tag().split("@")[1]
    target = tmp_path / "data.npz"
    dead = tmp_path / f".data.npz.{_dead_pid()}@{host}.abcd1234.tmp"  # killed writer, here
    alive = tmp_path / f".data.npz.{os.getpid()}@{host}.efgh5678.tmp"  # a write in progress
    remote = tmp_path / f".data.npz.{_dead_pid()}@zz999999.ijkl9012.tmp"  # another machine's
    remote_old = tmp_path / f".data.npz.{_dead_pid()}@zz999999.mnop3456.tmp"
    legacy = tmp_path / ".data.npz.k2j3h4g5.tmp"  # an older ddcontrol's name, 2 hours old
    other = tmp_path / f".other.npz.{_dead_pid()}@{host}.abcd1234.tmp"  # another target's
    for p in (dead, alive, remote, remote_old, legacy, other):
        p.write_bytes(b"partial")
    for p in (remote_old, legacy):
        os.utime(p, (time.time() - 7200,) * 2)
    atomic_write(target, lambda fh: fh.write(b"complete"))
    assert not dead.exists() and not remote_old.exists() and not legacy.exists()
    assert alive.exists() and remote.exists() and other.exists()
    assert target.read_bytes() == b"complete"
    assert sorted(tmp_path.glob(".data.npz.*.tmp")) == sorted([alive, remote])
    assert remove_stale_temporaries(tmp_path / "other.npz") == [other]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_killed_write_leaves_the_old_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "c.bin"
    target.write_bytes(b"old")

    def killed(fh) -> None:
        fh.write(b"partial")
        fh.flush()
        os._exit(9)  # as SIGKILL: no Python cleanup runs

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        atomic_write(target, killed)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9
    (tmp,) = tmp_path.glob(".c.bin.*.tmp")
    assert target.read_bytes() == b"old" and tmp.read_bytes() == b"partial"
    atomic_write(target, lambda fh: fh.write(b"new"))
    assert not tmp.exists() and target.read_bytes() == b"new"

"""DSM training, checkpoints (save/load/resume/corruption) and the ``ddcontrol train`` command."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from ddcontrol.cli import main
from ddcontrol.data import TrajectoryDataset, collect
from ddcontrol.errors import CheckpointError, ConfigurationError, UnknownNameError
from ddcontrol.score.checkpoint import load_model, read_checkpoint
from ddcontrol.score.train import TrainConfig, lr_factor, train

TINY = {"width": 32, "depth": 1, "emb_dim": 16, "batch_size": 32, "val_windows": 32,
        "window": 10, "stride": 2, "progress": False, "num_threads": 1}


@pytest.fixture(scope="module")
def msd() -> TrajectoryDataset:
    return collect("ddcontrol/MassSpringDamper-v0", 12, 40, seed=0)


def circle(n: int, seed: int) -> TrajectoryDataset:
    """Points (cos θ, sin θ) as one-step windows: u = cos θ, y = sin θ."""
    theta = np.random.default_rng(seed).uniform(0, 2 * np.pi, n)
    return TrajectoryDataset(u=np.cos(theta)[:, None, None], y=np.sin(theta)[:, None, None],
                             x=np.zeros((n, 2, 1)), metadata={"env_id": "circle"})


def test_learns_a_circle_and_denoises_toward_it() -> None:
    data = circle(2000, seed=0)
    losses: list[float] = []
    cfg = TrainConfig(window=1, steps=400, batch_size=128, lr=2e-3, width=64, depth=2,
                      emb_dim=32, sigma_min=0.02, sigma_max=1.0, warmup_steps=20,
                      val_every=0, val_windows=256, progress=False, seed=0, num_threads=1)
    model = train(cfg, data, callback=lambda step, rec: losses.append(rec["loss"]))
    assert np.mean(losses[-50:]) < 0.8 * np.mean(losses[:20])
    assert "mean" in model.metadata["val"] and len(model.metadata["val"]) == 5  # 4 bands + mean

    # Normalised circle has radius sqrt(2) (each coordinate has std 1/sqrt(2)).
    radius = np.sqrt(2.0)
    test = torch.as_tensor(circle(512, seed=1).windows(1, normalized=True), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    sigma = 0.1
    noisy = test + sigma * torch.randn(test.shape, generator=gen)
    with torch.no_grad():
        den = model.denoiser(noisy, sigma)

    def dist(z: torch.Tensor) -> float:
        return float((z.reshape(-1, 2).norm(dim=1) - radius).abs().mean())

    assert dist(den) < 0.5 * dist(noisy)


def test_lr_schedule() -> None:
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)


def test_checkpoint_roundtrip_and_metadata(msd: TrajectoryDataset, tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, steps=30, out=str(tmp_path), val_every=10)
    model = train(cfg, msd)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint.pt", "log.jsonl"]  # no temporary file left behind
    loaded = load_model(tmp_path, dataset=msd)
    assert not loaded.denoiser.training
    assert not any(p.requires_grad for p in loaded.denoiser.parameters())
    x = torch.randn(4, 10, 2)
    assert torch.equal(loaded.denoiser(x, 0.1), model.denoiser(x, 0.1))
    assert torch.equal(load_model(tmp_path / "checkpoint.pt").denoiser(x, 0.3),
                       model.denoiser(x, 0.3))
    assert not torch.equal(load_model(tmp_path, ema=False).denoiser(x, 0.3),
                           model.denoiser(x, 0.3))
    assert (loaded.window_length, loaded.input_dim, loaded.output_dim) == (10, 1, 1)
    assert loaded.env_id == "ddcontrol/MassSpringDamper-v0"
    assert loaded.metadata["fingerprint"] == msd.fingerprint()
    assert loaded.metadata["step"] == 30
    np.testing.assert_array_equal(loaded.normalizer.mean, msd.normalizer.mean)
    np.testing.assert_array_equal(loaded.normalizer.std, msd.normalizer.std)
    raw = read_checkpoint(tmp_path)
    assert {"optimizer", "scheduler", "rng"} <= set(raw)
    assert raw["config"]["window"] == 10
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and records[-1]["event"] == "done"
    assert [r["step"] for r in records if "val" in r] == [10, 20, 30]


def _train_state(path: Path) -> dict:
    raw = read_checkpoint(path)
    return {"weights": raw["weights"], "ema": raw["ema"], "rng": raw["rng"],
            "exp_avg": [s["exp_avg"] for s in raw["optimizer"]["state"].values()],
            "step": raw["step"]}


def test_resume_equals_uninterrupted_run(msd: TrajectoryDataset, tmp_path: Path) -> None:
    base = {**TINY, "steps": 40, "checkpoint_every": 10, "val_every": 10, "seed": 3}
    train(TrainConfig(**base, out=str(tmp_path / "a")), msd)
    stopped = train(TrainConfig(**base, out=str(tmp_path / "b")), msd,
                    callback=lambda step, rec: step == 17)
    assert stopped.metadata["step"] == 17
    train(TrainConfig(**base, out=str(tmp_path / "b"), resume=True), msd)
    a, b = _train_state(tmp_path / "a"), _train_state(tmp_path / "b")
    assert a["step"] == b["step"] == 40
    assert torch.equal(a["rng"], b["rng"])
    for key in ("weights", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    for ta, tb in zip(a["exp_avg"], b["exp_avg"]):
        assert torch.equal(ta, tb)


def test_resume_keeps_the_checkpoint_run_definition(msd: TrajectoryDataset,
                                                     tmp_path: Path) -> None:
    train(TrainConfig(**TINY, steps=10, out=str(tmp_path)), msd)
    with pytest.warns(UserWarning, match="lr"):
        model = train(TrainConfig(**TINY, steps=15, lr=0.5, out=str(tmp_path), resume=True), msd)
    assert model.config["lr"] == TrainConfig().lr and model.metadata["step"] == 15


def test_ctrl_c_saves_a_resumable_checkpoint(msd: TrajectoryDataset, tmp_path: Path) -> None:
    def interrupt(step: int, rec: dict) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**TINY, steps=20, out=str(tmp_path)), msd, callback=interrupt)
    assert read_checkpoint(tmp_path)["step"] == 5


def test_checkpoint_errors(msd: TrajectoryDataset, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(TrainConfig(**TINY, steps=5, out=str(out)), msd)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path)  # a folder without checkpoint.pt
    blob = (out / "checkpoint.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path / "truncated.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "text.pt")
    torch.save({"weights": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "foreign.pt")
    mimo = collect("ddcontrol/CoupledMasses-v0", 2, 20, seed=0)
    with pytest.raises(CheckpointError, match="m=1 inputs and p=1 outputs"):
        load_model(out, dataset=mimo)
    with pytest.raises(CheckpointError, match="10 steps long"):
        load_model(out, dataset=collect("ddcontrol/MassSpringDamper-v0", 2, 8, seed=0))
    other = collect("ddcontrol/MassSpringDamper-v0", 12, 40, seed=1)
    with pytest.raises(CheckpointError, match="other data"):
        train(TrainConfig(**TINY, steps=10, out=str(out), resume=True), other)
    with pytest.raises(ConfigurationError, match="exists"):
        train(TrainConfig(**TINY, steps=10, out=str(out)), msd)


def test_configuration_errors(msd: TrajectoryDataset) -> None:
    with pytest.raises(ConfigurationError, match="sigma_min"):
        train(TrainConfig(**TINY, sigma_min=1.0, sigma_max=0.5), msd)
    with pytest.raises(UnknownNameError):
        train(TrainConfig(**{**TINY, "window": 10}, arch="rnn"), msd)
    with pytest.raises(ConfigurationError, match="longer than"):
        train(TrainConfig(**{**TINY, "window": 50}), msd)
    with pytest.raises(ConfigurationError, match="dataset"):
        train(TrainConfig(**TINY))


def test_measured_sigma_data_and_unet(msd: TrajectoryDataset) -> None:
    # No σ selection: through the U-Net's autograd it took about 19 of this test's 22 s, and
    # test_sigma covers the selection of a U-Net.
    model = train(TrainConfig(**{**TINY, "window": 9}, arch="unet", base_channels=8, steps=3,
                              sigma_data=None, select_sigma=False), msd)
    assert 0.5 < model.sigma_data < 2.0
    assert model.denoiser(torch.randn(2, 9, 2), 0.1).shape == (2, 9, 2)


def test_cli_train_end_to_end(msd: TrajectoryDataset, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    data = msd.save(tmp_path / "msd.npz")
    out = tmp_path / "model"
    args = ["train", "--data", str(data), "--out", str(out), "--steps", "20", "--window", "10",
            "--stride", "2", "--width", "32", "--depth", "1", "--emb-dim", "16",
            "--batch-size", "32", "--val-windows", "32", "--no-progress", "--seed", "1",
            "--num-threads", "1"]
    assert main(args) == 0
    assert "trained 20 steps" in capsys.readouterr().out
    model = load_model(out, dataset=TrajectoryDataset.load(data))
    assert model.config["seed"] == 1 and model.config["width"] == 32
    assert main(args) == 1  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    assert main([*args[:5], "--steps", "25", *args[7:], "--resume"]) == 0
    assert load_model(out).metadata["step"] == 25

"""The asynchronous training loop gives the same weights as a synchronous, per-step reference."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddcontrol.data import TrajectoryDataset, collect
from ddcontrol.score.checkpoint import build_denoiser, read_checkpoint
from ddcontrol.score.train import TrainConfig, _free_threads, _model_spec, lr_factor, train

CFG = {"width": 32, "depth": 2, "emb_dim": 16, "batch_size": 16, "window": 8, "stride": 3,
       "steps": 12, "warmup_steps": 3, "val_fraction": 0.0, "val_every": 0,
       "checkpoint_every": 0, "progress": False, "num_threads": 1, "seed": 3}


@pytest.fixture(scope="module")
def msd() -> TrajectoryDataset:
    return collect("ddcontrol/MassSpringDamper-v0", 6, 30, seed=1)


def trained_state(data: TrajectoryDataset, out: Path, **kw) -> dict:
    train(TrainConfig(**{**CFG, **kw}, out=str(out)), data)
    return read_checkpoint(out / "checkpoint.pt")


def reference_weights(data: TrajectoryDataset) -> tuple[dict, dict]:
    """The pre-change loop, written out: a host sync (``float(loss)``) after every step, the
    per-parameter AdamW and a per-parameter EMA loop."""
    cfg = TrainConfig(**CFG)
    windows = torch.as_tensor(data.windows(cfg.window, cfg.stride, normalized=True),
                              dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_denoiser(_model_spec(cfg, data, 1.0))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.final_lr_fraction))
    gen = torch.Generator().manual_seed(cfg.seed)
    lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    model.train()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(windows.shape[0], (cfg.batch_size,), generator=gen)
        sigma = torch.exp(lo + (hi - lo) * torch.rand(cfg.batch_size, generator=gen))
        clean = windows[idx]
        noise = torch.randn(clean.shape, generator=gen)
        loss = model.loss(clean, sigma, noise).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=False)
        opt.step()
        sched.step()
        assert math.isfinite(float(loss.detach()))  # the old per-step host sync
        decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
    return model.state_dict(), ema.state_dict()


def test_same_weights_as_the_synchronous_reference(msd: TrajectoryDataset, tmp_path: Path
                                                   ) -> None:
    state = trained_state(msd, tmp_path, log_every=5)
    weights, ema = reference_weights(msd)
    assert state["step"] == CFG["steps"]
    for ours, ref in ((state["weights"], weights), (state["ema"], ema)):
        assert ours.keys() == ref.keys()
        for k in ref:
            # The fused AdamW kernel rounds differently from the per-parameter one.
            torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    # The weights moved: the comparison is not between two initialisations.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CFG["seed"])
        init = build_denoiser(_model_spec(TrainConfig(**CFG), msd, 1.0)).state_dict()
    assert max(float((weights[k] - init[k]).abs().max()) for k in init) > 1e-3


def test_log_interval_does_not_change_the_weights(msd: TrajectoryDataset, tmp_path: Path
                                                  ) -> None:
    every_step = trained_state(msd, tmp_path / "a", log_every=1)
    rarely = trained_state(msd, tmp_path / "b", log_every=7)
    for key in ("weights", "ema"):
        for k, v in every_step[key].items():
            assert torch.equal(v, rarely[key][k]), (key, k)


def test_callback_gets_the_device_loss_and_the_log_its_interval_mean(
        msd: TrajectoryDataset, tmp_path: Path) -> None:
    losses: list[torch.Tensor] = []
    train(TrainConfig(**CFG, log_every=4, out=str(tmp_path)), msd,
          callback=lambda step, rec: losses.append(rec["loss"]))
    assert len(losses) == CFG["steps"]
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad
               for v in losses)
    logged = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "log.jsonl").open())
              if "loss" in r}
    values = np.array([float(v) for v in losses])
    assert sorted(logged) == [4, 8, 12]
    for step, mean in logged.items():
        assert mean == pytest.approx(values[step - 4:step].mean(), rel=1e-6)


@pytest.mark.parametrize(("cores", "load", "threads"),
                         [(2, 0.9, 2), (2, 1.6, 1), (2, 11.4, 1), (16, 3.0, 14), (1, 0.0, 1)])
def test_default_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                load: float, threads: int) -> None:
    monkeypatch.setattr("os.getloadavg", lambda: (load, load, load))
    assert _free_threads(cores) == threads

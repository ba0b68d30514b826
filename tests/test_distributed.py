"""Data-parallel training with 2 gloo processes on CPU: same result as one process, one
checkpoint, and a killed worker fails the run with a message instead of hanging."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from ddcontrol.data import collect
from ddcontrol.errors import ConfigurationError
from ddcontrol.score.checkpoint import load_model, read_checkpoint
from ddcontrol.score.distributed import DistributedError, context_from_env, shard_bounds
from ddcontrol.score.train import TrainConfig, train

TINY = {"width": 32, "depth": 1, "emb_dim": 16, "batch_size": 32, "val_windows": 32,
        "window": 10, "stride": 2, "progress": False, "num_threads": 1, "log_every": 2,
        "val_every": 3, "checkpoint_every": 3, "warmup_steps": 2}


@pytest.fixture(scope="module")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = collect("ddcontrol/MassSpringDamper-v0", 12, 40, seed=0)
    return data.save(tmp_path_factory.mktemp("data") / "msd.npz")


def test_shard_bounds_partition_the_global_batch() -> None:
    parts = [shard_bounds(12, r, 3) for r in range(3)]
    assert parts == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ConfigurationError, match="not divisible"):
        shard_bounds(10, 0, 3)


def test_environment_without_world_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert context_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigurationError, match="RANK=2"):
        context_from_env()


def test_two_gloo_processes_equal_one_process(data_path: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, steps=4, data=str(data_path), seed=5)
    longer = {"steps": 6, "resume": True}
    single, dist = tmp_path / "single", tmp_path / "dist"
    train(TrainConfig(**{**cfg.__dict__, "out": str(single)}))
    train(TrainConfig(**{**cfg.__dict__, "out": str(dist), "nproc": 2}))
    # (b) rank 0 alone wrote: one checkpoint, one log, nothing else (no temporary files).
    assert sorted(p.name for p in dist.iterdir()) == ["checkpoint.pt", "log.jsonl"]
    records = [json.loads(line) for line in (dist / "log.jsonl").open()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert sum(r.get("event") == "start" for r in records) == 1
    saved = read_checkpoint(dist / "checkpoint.pt")
    assert saved["step"] == 4 and saved["config"]["batch_size"] == 32
    assert load_model(dist).window_length == 10
    # (a) each rank trained on its half of the same global batch: DDP's averaged gradient is
    # the single-process gradient, so the weights agree up to float summation order.
    ref = read_checkpoint(single / "checkpoint.pt")
    for key in ("weights", "ema"):
        for k, v in ref[key].items():
            torch.testing.assert_close(saved[key][k], v, rtol=1e-4, atol=1e-5, msg=k)
    # --resume continues exactly: the generator state is the same on every rank.
    one = train(TrainConfig(**{**cfg.__dict__, "out": str(single), **longer}))
    two = train(TrainConfig(**{**cfg.__dict__, "out": str(dist), "nproc": 2, **longer}))
    assert read_checkpoint(dist / "checkpoint.pt")["step"] == 6
    for k, v in one.denoiser.state_dict().items():
        torch.testing.assert_close(two.denoiser.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert two.metadata["val"]["mean"] == pytest.approx(one.metadata["val"]["mean"], rel=1e-4)


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (started by any of its threads)."""
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killed_worker_fails_the_run_with_a_message(data_path: Path, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture) -> None:
    cfg = TrainConfig(**{**TINY, "log_every": 1, "val_every": 0, "checkpoint_every": 0},
                      steps=1_000_000, data=str(data_path), out=str(tmp_path), nproc=2,
                      dist_timeout=20.0)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            train(cfg)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    launcher = threading.Thread(target=run, daemon=True)
    launcher.start()
    log = tmp_path / "log.jsonl"
    deadline = time.monotonic() + 90
    while not (log.exists() and '"loss"' in log.read_text()):  # both ranks are training
        assert launcher.is_alive(), failure
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    workers = {_rank_of(p): p for p in _children(os.getpid())}
    try:
        os.kill(workers[1], signal.SIGKILL)
        launcher.join(timeout=45)
    finally:
        for pid in workers.values():
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
    assert not launcher.is_alive(), "the run hangs after a worker was killed"
    assert len(failure) == 1 and isinstance(failure[0], DistributedError)
    assert "rank 1 of 2 failed (killed by SIGKILL)" in str(failure[0])
    assert "--resume" in str(failure[0])
    # Rank 0 noticed the dead peer in its collective and said so before exiting.
    assert "rank 0 of 2: a collective operation failed" in capfd.readouterr().err


def test_launch_is_refused_before_any_worker_starts(data_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not divisible by the number of workers 3"):
        train(TrainConfig(**TINY, steps=2, data=str(data_path), out=str(tmp_path), nproc=3))
    with pytest.raises(ConfigurationError, match="needs config.data"):
        train(TrainConfig(**TINY, steps=2, nproc=2), collect("ddcontrol/MassSpringDamper-v0",
                                                             4, 20, seed=0))
    assert not any(tmp_path.iterdir())

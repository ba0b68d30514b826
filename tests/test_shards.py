"""Sharded datasets: round trip, streaming generation, validation of damaged or foreign shards,
and training that reads windows from shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ddcontrol.cli import main
from ddcontrol.data import TrajectoryDataset, collect
from ddcontrol.data.normalize import Normalizer
from ddcontrol.data.shards import MANIFEST_NAME, ShardedDataset, ShardWriter, load_dataset
from ddcontrol.errors import ConfigurationError, DataFormatError
from ddcontrol.score.train import TrainConfig, train


@pytest.fixture(scope="module")
def msd() -> TrajectoryDataset:
    return collect("ddcontrol/MassSpringDamper-v0", 10, 25, seed=0)


def write(data: TrajectoryDataset, folder: Path, shard_size: int = 4) -> ShardedDataset:
    writer = ShardWriter(folder, shard_size)
    writer.add(data.u[:3], data.y[:3], data.x[:3])  # chunks that straddle shard boundaries
    writer.add(data.u[3:], data.y[3:], data.x[3:])
    writer.close(data.metadata)
    return ShardedDataset.open(folder)


def test_round_trip(msd: TrajectoryDataset, tmp_path: Path) -> None:
    sharded = write(msd, tmp_path / "d")
    assert sharded.num_shards == 3 and len(sharded) == 10  # 4 + 4 + 2
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [MANIFEST_NAME] + sorted(
        f"shard-{i:05d}.{k}.npy" for i in range(3) for k in ("uy", "x"))
    back = sharded.to_dataset()
    np.testing.assert_array_equal(back.u, msd.u)
    np.testing.assert_array_equal(back.y, msd.y)
    np.testing.assert_array_equal(back.x, msd.x)
    assert back.metadata["env_id"] == msd.metadata["env_id"]
    # Streaming statistics equal the in-memory ones.
    np.testing.assert_allclose(sharded.normalizer.mean, msd.normalizer.mean, rtol=1e-12)
    np.testing.assert_allclose(sharded.normalizer.std, msd.normalizer.std, rtol=1e-12)
    # Windows read on demand are those of TrajectoryDataset.windows, in its order.
    ids = np.array([7, 2, 9])
    source = sharded.window_source(6, 4, ids, msd.normalizer)
    expected = msd.subset(ids).windows(6, 4, normalized=True)
    assert source.shape == expected.shape
    pick = np.array([len(source) - 1, 0, 5, 5])
    np.testing.assert_allclose(source.numpy(pick), expected[pick], rtol=0, atol=1e-12)
    assert source.gather(torch.as_tensor(pick)).dtype == torch.float32
    assert isinstance(load_dataset(tmp_path / "d"), ShardedDataset)
    assert sharded.fingerprint() == write(msd, tmp_path / "again").fingerprint()


def test_writer_refuses_to_mix_datasets(msd: TrajectoryDataset, tmp_path: Path) -> None:
    write(msd, tmp_path)
    with pytest.raises(ConfigurationError, match="already holds"):
        ShardWriter(tmp_path, 4)
    writer = ShardWriter(tmp_path, 5, overwrite=True)
    writer.add(msd.u, msd.y, msd.x)
    with pytest.raises(ConfigurationError, match="do not match"):
        writer.add(msd.u[:, :10], msd.y[:, :10], msd.x[:, :11])
    writer.close(msd.metadata)
    assert ShardedDataset.open(tmp_path).num_shards == 2


def test_damaged_or_foreign_shards_are_named(msd: TrajectoryDataset, tmp_path: Path) -> None:
    good = tmp_path / "good"
    write(msd, good)
    other = collect("ddcontrol/MassSpringDamper-v0", 10, 25, seed=1)
    write(other, tmp_path / "other")

    def broken(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        return folder

    folder = broken("truncated")
    shard = folder / "shard-00001.uy.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"shard-00001\.uy\.npy is truncated"):
        ShardedDataset.open(folder)

    folder = broken("foreign")
    shutil.copy(tmp_path / "other" / "shard-00002.x.npy", folder / "shard-00002.x.npy")
    with pytest.raises(DataFormatError, match=r"shard-00002\.x\.npy is not the one the manifest"):
        ShardedDataset.open(folder)

    # Same size, changed in the middle of a shard larger than the probe (2 x 64 KiB): only
    # the full hash (verify=True) sees it.
    folder = tmp_path / "flipped"
    big = collect("ddcontrol/MassSpringDamper-v0", 400, 25, seed=2)
    write(big, folder, shard_size=400)
    shard = folder / "shard-00000.uy.npy"
    assert shard.stat().st_size > 2 * 65536
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    ShardedDataset.open(folder)
    with pytest.raises(DataFormatError, match=r"shard-00000\.uy\.npy is not the one"):
        ShardedDataset.open(folder, verify=True)

    folder = broken("missing")
    (folder / "shard-00001.x.npy").unlink()
    with pytest.raises(DataFormatError, match=r"shard-00001\.x\.npy is missing"):
        ShardedDataset.open(folder)

    folder = broken("unfinished")
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(DataFormatError, match="manifest.json is missing"):
        load_dataset(folder)

    folder = broken("version")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    (folder / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DataFormatError, match="format version 99"):
        ShardedDataset.open(folder)


def test_generate_streams_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "uni"
    assert main(["generate", "--env", "ddcontrol/Unicycle-v0", "--trajectories", "11",
                 "--length", "12", "--shard-size", "4", "--out", str(out), "--quiet"]) == 0
    assert "3 shards" in capsys.readouterr().out
    data = ShardedDataset.open(out, verify=True)
    assert (len(data), data.length, data.num_shards) == (11, 12, 3)
    assert data.metadata["env_id"] == "ddcontrol/Unicycle-v0" and data.metadata["seed"] == 0
    # The same seed and shard size give the same data; each shard is one seeded collect.
    again = tmp_path / "again"
    main(["generate", "--env", "ddcontrol/Unicycle-v0", "--trajectories", "11", "--length",
          "12", "--shard-size", "4", "--out", str(again), "--quiet"])
    assert ShardedDataset.open(again).fingerprint() == data.fingerprint()
    np.testing.assert_array_equal(ShardedDataset.open(again).read(np.arange(11))[0],
                                  data.read(np.arange(11))[0])


def test_training_from_shards_equals_training_in_memory(msd: TrajectoryDataset,
                                                        tmp_path: Path) -> None:
    sharded = write(msd, tmp_path / "d")
    cfg = TrainConfig(width=32, depth=1, emb_dim=16, batch_size=16, window=8, stride=3, steps=6,
                      val_windows=16, val_every=0, progress=False, num_threads=1, seed=2,
                      data=str(tmp_path / "d"), out=str(tmp_path / "run"))
    from_disk = train(cfg)
    in_memory = train(TrainConfig(**{**cfg.__dict__, "data": None, "out": None}),
                      sharded.to_dataset())
    for k, v in in_memory.denoiser.state_dict().items():
        torch.testing.assert_close(from_disk.denoiser.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    assert from_disk.metadata["val"]["mean"] == pytest.approx(in_memory.metadata["val"]["mean"])
    assert from_disk.metadata["fingerprint"] == sharded.fingerprint()
    assert isinstance(Normalizer.from_dict(json.loads(json.dumps(
        from_disk.normalizer.to_dict()))), Normalizer)

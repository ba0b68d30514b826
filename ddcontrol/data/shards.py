"""Datasets larger than memory: a directory of fixed-size shards with one manifest.

Layout (format version 1), next to the single-file ``.npz`` of :mod:`ddcontrol.data.dataset`::

    DIR/manifest.json          written last, atomically: what the directory holds
    DIR/shard-00000.uy.npy     (K, T, m + p) float64, channels (u, y), y[:, k] before u[:, k]
    DIR/shard-00000.x.npy      (K, T + 1, n_x) float64 true states (replay verification only)
    DIR/shard-00001.uy.npy ...

Every shard holds ``shard_size`` = K trajectories (the last one may hold fewer) and each file is
written atomically (:func:`ddcontrol._io.atomic_write`). ``manifest.json`` holds the format
version, the dataset's metadata (as in an ``.npz``), the normaliser's statistics (computed while
streaming), the fingerprint and, per file, its size, its SHA-256 and a *probe* hash (of its size
and its first and last 64 KiB). :meth:`ShardedDataset.open` checks every file against the
manifest (size, ``.npy`` header, probe), so a truncated shard, or one copied from another
dataset, is a :class:`~ddcontrol.errors.DataFormatError` naming the file; ``verify=True`` also
checks the full SHA-256.

Training reads windows on demand (:class:`ShardWindows`): only the trajectories a batch draws
are read (``pread`` of their rows, no memory map, so the process's memory does not grow with the
dataset: 388 MiB peak while training on 1,000,000 unicycle trajectories), never a whole dataset.
:func:`generate_shards` (``ddcontrol generate --shard-size K``) simulates and writes one shard at
a time, so its memory is bounded by K.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddcontrol._deprecation import warn_renamed_attribute
from ddcontrol._io import atomic_write
from ddcontrol._validation import check_positive_int
from ddcontrol.data.dataset import TrajectoryDataset, _json_default
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, DataFormatError

__all__ = ["SHARD_FORMAT_VERSION", "MANIFEST_NAME", "ShardWriter", "ShardedDataset",
           "ShardWindows", "generate_shards", "load_dataset"]

SHARD_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_FORMAT = "ddcontrol-shards"
_PROBE_BYTES = 65536
_HASH_CHUNK = 1 << 24


def _shard_name(index: int, kind: str) -> str:
    return f"shard-{index:05d}.{kind}.npy"


def _probe(path: Path) -> str:
    """SHA-256 of a file's size and its first and last 64 KiB (cheap identity check)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(_PROBE_BYTES))
        fh.seek(max(0, size - _PROBE_BYTES))
        h.update(fh.read(_PROBE_BYTES))
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _RunningMoments:
    """Per-channel mean and variance over streamed samples (Chan et al.'s pairwise update)."""

    def __init__(self, channels: int) -> None:
        self.n = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def update(self, samples: np.ndarray) -> None:
        flat = samples.reshape(-1, samples.shape[-1])
        n_b = flat.shape[0]
        mean_b = flat.mean(axis=0)
        m2_b = ((flat - mean_b) ** 2).sum(axis=0)
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / total
        self.m2 = self.m2 + m2_b + delta ** 2 * self.n * n_b / total
        self.n = total

    def normalizer(self, input_dim: int, min_std: float = 1e-8) -> Normalizer:
        std = np.maximum(np.sqrt(self.m2 / max(self.n, 1)), min_std)
        return Normalizer(mean=self.mean.copy(), std=std, input_dim=input_dim)


class ShardWriter:
    """Write trajectories into a shard directory, one fixed-size shard at a time.

    Parameters
    ----------
    path : path
        The directory (created; it must not hold a manifest or shards unless ``overwrite``).
    shard_size : int
        Trajectories per shard K.
    overwrite : bool
        Remove an existing manifest and shards (only those files) first.

    Notes
    -----
    ``add(u, y, x)`` buffers at most one shard; :meth:`close` writes the last shard and then the
    manifest, so a directory without ``manifest.json`` is an unfinished write.
    """

    def __init__(self, path: str | os.PathLike, shard_size: int, *,
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        self.shard_size = check_positive_int(shard_size, "shard_size")
        if self.path.exists() and not self.path.is_dir():
            raise ConfigurationError(f"{self.path} exists and is not a directory")
        old = sorted(self.path.glob("shard-*.npy")) + sorted(self.path.glob(MANIFEST_NAME))
        if old and not overwrite:
            raise ConfigurationError(f"{self.path} already holds a sharded dataset; choose "
                                     "another folder or overwrite it")
        for f in old:
            f.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._shards: list[dict[str, Any]] = []
        self._moments: _RunningMoments | None = None
        self._dims: tuple[int, int, int, int] | None = None
        self.num_trajectories = 0

    def add(self, u: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        """Append trajectories u (n, T, m), y (n, T, p), x (n, T + 1, n_x)."""
        data = TrajectoryDataset(u, y, x)  # validates shapes and finiteness
        dims = (data.length, data.input_dim, data.output_dim, data.state_dim)
        if self._dims is None:
            self._dims = dims
            self._moments = _RunningMoments(data.channels)
        elif dims != self._dims:
            raise ConfigurationError(f"trajectories of shape (T, m, p, n_x) = {dims} do not "
                                     f"match the dataset's {self._dims}")
        self._buffer.append((data.u, data.y, data.x))
        self._buffered += data.num_trajectories
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, count: int) -> None:
        u, y, x = (np.concatenate(parts, axis=0) for parts in zip(*self._buffer))
        rest = (u[count:], y[count:], x[count:])
        uy = np.concatenate([u[:count], y[:count]], axis=-1)
        self._moments.update(uy)
        index = len(self._shards)
        files = {}
        for kind, arr in (("uy", uy), ("x", x[:count])):
            target = self.path / _shard_name(index, kind)

            def write(fh: Any, arr: np.ndarray = arr) -> None:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr, dtype=np.float64))

            atomic_write(target, write)
            files[kind] = {"name": target.name, "shape": list(arr.shape),
                           "bytes": target.stat().st_size, "sha256": _sha256(target),
                           "probe": _probe(target)}
        self._shards.append({"index": index, "trajectories": count, "files": files})
        self.num_trajectories += count
        self._buffer = [rest] if rest[0].shape[0] else []
        self._buffered -= count

    def close(self, metadata: dict[str, Any]) -> Path:
        """Write the last (partial) shard and the manifest; return the manifest's path."""
        if self._buffered:
            self._flush(self._buffered)
        if not self._shards:
            raise ConfigurationError("no trajectories were added")
        horizon, m, p, n_x = self._dims
        norm = self._moments.normalizer(m)
        h = hashlib.sha256()
        for shard in self._shards:
            h.update(shard["files"]["uy"]["sha256"].encode())
        h.update(json.dumps({k: metadata.get(k) for k in ("env_id", "env_kwargs")},
                            sort_keys=True, default=str).encode())
        manifest = {"format": _FORMAT, "format_version": SHARD_FORMAT_VERSION,
                    "num_trajectories": self.num_trajectories, "horizon": horizon,
                    "input_dim": m, "output_dim": p, "state_dim": n_x,
                    "shard_size": self.shard_size, "fingerprint": h.hexdigest()[:16],
                    "normalizer": norm.to_dict(), "metadata": metadata, "shards": self._shards}
        text = json.dumps(manifest, indent=1, default=_json_default).encode()
        return atomic_write(self.path / MANIFEST_NAME, lambda fh: fh.write(text))


@dataclass(frozen=True)
class _ShardFile:
    """Where a shard file's rows are: ``path``, byte ``offset`` of row 0, ``shape``
    (K, ...) of its float64 array."""

    path: Path
    offset: int
    shape: tuple[int, ...]

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (sorted or not) of the array, read with ``pread``: no memory map, so
        the process holds only what it asked for (the page cache keeps the rest)."""
        row_shape = self.shape[1:]
        row_bytes = 8 * int(np.prod(row_shape))
        out = np.empty((len(index), *row_shape))
        flat = out.reshape(len(index), -1)
        with open(self.path, "rb", buffering=0) as fh:
            fd = fh.fileno()
            for j, r in enumerate(index.tolist()):
                where = self.offset + r * row_bytes
                if hasattr(os, "pread"):
                    buf = os.pread(fd, row_bytes, where)
                else:  # Windows
                    fh.seek(where)
                    buf = fh.read(row_bytes)
                if len(buf) != row_bytes:
                    raise DataFormatError(f"shard file {self.path} is truncated (row {r})")
                flat[j] = np.frombuffer(buf, dtype="<f8")
        return out


@dataclass(frozen=True)
class _Shard:
    uy: _ShardFile  # (K, T, m + p)
    x: _ShardFile   # (K, T + 1, n_x)


class ShardedDataset:
    """A sharded dataset opened for reading (validated against its manifest; rows are read
    from the shard files on demand).

    Offers the parts of :class:`~ddcontrol.data.dataset.TrajectoryDataset` that do not need the
    data in memory (sizes, metadata, normaliser, fingerprint, :meth:`split_indices`), windows
    through :meth:`window_source`, and :meth:`subset` / :meth:`to_dataset` to load trajectories.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[_Shard]) -> None:
        self.path = path
        self.manifest = manifest
        self._shards = shards
        self.metadata: dict[str, Any] = dict(manifest["metadata"])
        self.normalizer = Normalizer.from_dict(manifest["normalizer"])
        self.shard_size = int(manifest["shard_size"])

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = False) -> ShardedDataset:
        """Open and validate the shard directory ``path``.

        Parameters
        ----------
        verify : bool
            Also check every file's full SHA-256 (reads the whole dataset once).

        Raises
        ------
        DataFormatError
            No or unreadable manifest, another format or version, or a shard file that is
            missing, truncated, of another shape, or not the one the manifest lists (named).
        """
        path = Path(path)
        mpath = path / MANIFEST_NAME
        if not mpath.is_file():
            raise DataFormatError(f"{path} is not a sharded dataset: {MANIFEST_NAME} is missing "
                                  "(an unfinished write leaves no manifest)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFormatError(f"{mpath}: cannot read the manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise DataFormatError(f"{mpath} is not a ddcontrol shard manifest")
        if manifest.get("format_version") != SHARD_FORMAT_VERSION:
            raise DataFormatError(f"{mpath}: format version {manifest.get('format_version')}, "
                                  f"this ddcontrol reads version {SHARD_FORMAT_VERSION}")
        try:
            horizon, m, p = manifest["horizon"], manifest["input_dim"], manifest["output_dim"]
            n_x, size = manifest["state_dim"], manifest["shard_size"]
            entries = manifest["shards"]
            expected = {"uy": lambda k: (k, horizon, m + p),
                        "x": lambda k: (k, horizon + 1, n_x)}
            shards, total = [], 0
            for i, entry in enumerate(entries):
                count = int(entry["trajectories"])
                if entry["index"] != i or not 0 < count <= size or (
                        count < size and i != len(entries) - 1):
                    raise DataFormatError(f"{mpath}: shard {i} is listed with "
                                          f"{count} trajectories (shard size {size})")
                maps = {kind: _open_file(path, entry["files"][kind], expected[kind](count),
                                         verify) for kind in ("uy", "x")}
                shards.append(_Shard(**maps))
                total += count
            if total != manifest["num_trajectories"]:
                raise DataFormatError(f"{mpath}: shards hold {total} trajectories, the "
                                      f"manifest says {manifest['num_trajectories']}")
            return cls(path, manifest, shards)
        except (KeyError, TypeError) as exc:
            raise DataFormatError(f"{mpath}: incomplete manifest ({type(exc).__name__}: "
                                  f"{exc})") from exc

    # -- sizes (as TrajectoryDataset) -----------------------------------------------------------
    @property
    def num_trajectories(self) -> int:
        return int(self.manifest["num_trajectories"])

    @property
    def length(self) -> int:
        """T, the number of samples of each trajectory."""
        return int(self.manifest["horizon"])

    @property
    def horizon(self) -> int:
        """Deprecated name of :attr:`length` ("horizon" is the planning horizon)."""
        warn_renamed_attribute("ShardedDataset", "horizon", "length")
        return self.length

    @property
    def input_dim(self) -> int:
        return int(self.manifest["input_dim"])

    @property
    def output_dim(self) -> int:
        return int(self.manifest["output_dim"])

    @property
    def state_dim(self) -> int:
        return int(self.manifest["state_dim"])

    @property
    def channels(self) -> int:
        return self.input_dim + self.output_dim

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    @property
    def dt(self) -> float:
        return float(self.metadata.get("dt", 1.0))

    def __len__(self) -> int:
        return self.num_trajectories

    def __repr__(self) -> str:
        return (f"ShardedDataset({str(self.path)!r}, env={self.metadata.get('env_id')!r}, "
                f"N={self.num_trajectories}, T={self.length}, shards={self.num_shards})")

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the shards' contents and the environment, from the
        manifest (a sharded dataset and an ``.npz`` of the same data have different ones)."""
        return str(self.manifest["fingerprint"])

    # -- reading --------------------------------------------------------------------------
    def read(self, index: np.ndarray, states: bool = True
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """Trajectories ``index`` (any order): uy (n, T, m + p) and x (n, T + 1, n_x) (None
        unless ``states``). Only these rows are read from disk."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.num_trajectories):
            raise ConfigurationError(f"trajectory index out of range [0, "
                                     f"{self.num_trajectories})")
        uy = np.empty((index.size, self.length, self.channels))
        x = np.empty((index.size, self.length + 1, self.state_dim)) if states else None
        shard_of, row = np.divmod(index, self.shard_size)
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            uy[sel] = self._shards[s].uy.rows(row[sel])
            if x is not None:
                x[sel] = self._shards[s].x.rows(row[sel])
        return uy, x

    def subset(self, index: np.ndarray) -> TrajectoryDataset:
        """Trajectories ``index`` loaded into memory, with this dataset's normaliser."""
        uy, x = self.read(index)
        m = self.input_dim
        return TrajectoryDataset(uy[..., :m], uy[..., m:], x, dict(self.metadata),
                                 self.normalizer)

    def to_dataset(self) -> TrajectoryDataset:
        """The whole dataset in memory (only for data that fit)."""
        return self.subset(np.arange(self.num_trajectories))

    def split_indices(self, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Trajectory ids of the random split that ``TrajectoryDataset.split`` makes."""
        if not 0.0 < fraction < 1.0:
            raise ConfigurationError(f"fraction must be in (0, 1), got {fraction}")
        n = self.num_trajectories
        perm = np.random.default_rng(seed).permutation(n)
        k = max(1, min(n - 1, int(round(fraction * n))))
        return perm[:k], perm[k:]

    def window_source(self, length: int, stride: int, trajectories: np.ndarray,
                      normalizer: Normalizer, symmetry: Any = None, device: Any = "cpu"
                      ) -> ShardWindows:
        """Windows of ``trajectories`` read on demand (see :class:`ShardWindows`)."""
        return ShardWindows(self, length, stride, trajectories, normalizer, symmetry, device)


def _open_file(folder: Path, entry: dict[str, Any], shape: tuple[int, ...], verify: bool
               ) -> _ShardFile:
    name = entry["name"]
    path = folder / name
    if Path(name).name != name or not path.is_file():
        raise DataFormatError(f"shard file {path} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DataFormatError(f"shard file {path} is truncated or damaged: {size} bytes, the "
                              f"manifest says {entry['bytes']}")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version}")
            found, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise DataFormatError(f"shard file {path} is not a readable .npy array ({exc})") from exc
    if found != shape or dtype != np.dtype("<f8") or fortran:
        raise DataFormatError(f"shard file {path} holds {dtype} {found}, the manifest says "
                              f"float64 {shape}")
    if offset + 8 * int(np.prod(shape)) != size:
        raise DataFormatError(f"shard file {path} is truncated: {size} bytes for {shape}")
    if _probe(path) != entry["probe"] or (verify and _sha256(path) != entry["sha256"]):
        raise DataFormatError(f"shard file {path} is not the one the manifest lists (its "
                              "content hash differs): it belongs to another dataset or was "
                              "modified")
    return _ShardFile(path, offset, shape)


class ShardWindows:
    """Windows of some trajectories of a :class:`ShardedDataset`, gathered on demand.

    Window ``i`` is trajectory ``trajectories[i // S]`` from step ``starts[i % S]`` (``S``
    starts each), the order of ``TrajectoryDataset.windows`` on ``subset(trajectories)``.
    :meth:`gather` returns them in the model's units: canonical frame (``symmetry``), then
    ``normalizer``; float32 on ``device``.

    Attributes
    ----------
    shape : tuple
        ``(num_windows, length, m + p)``.
    """

    def __init__(self, data: ShardedDataset, length: int, stride: int,
                 trajectories: np.ndarray, normalizer: Normalizer, symmetry: Any = None,
                 device: Any = "cpu") -> None:
        length = check_positive_int(length, "window length")
        stride = check_positive_int(stride, "stride")
        if length > data.length:
            raise ConfigurationError(f"window length {length} exceeds the trajectory length "
                                     f"{data.length}")
        self.data, self.length = data, length
        self.trajectories = np.asarray(trajectories, dtype=np.int64)
        self.starts = np.arange(0, data.length - length + 1, stride)
        self.normalizer, self.symmetry, self.device = normalizer, symmetry, device
        self.shape = (self.trajectories.size * self.starts.size, length, data.channels)

    def __len__(self) -> int:
        return self.shape[0]

    def physical(self, idx: np.ndarray) -> np.ndarray:
        """Windows ``idx`` in physical units, shape (len(idx), L, m + p), float64."""
        idx = np.asarray(idx, dtype=np.int64)
        traj, start = np.divmod(idx, self.starts.size)
        uy, _ = self.data.read(self.trajectories[traj], states=False)
        steps = self.starts[start][:, None] + np.arange(self.length)[None, :]
        return uy[np.arange(idx.size)[:, None], steps]

    def numpy(self, idx: np.ndarray) -> np.ndarray:
        """Windows ``idx`` in the model's units (canonical frame, normalised), float64."""
        w = self.physical(idx)
        if self.symmetry is not None and not self.symmetry.is_identity:
            w = self.symmetry.canonicalize(w)[0]
        return self.normalizer.normalize(w)

    def gather(self, idx: Any) -> Any:
        """Windows ``idx`` (a tensor or array of window numbers) as a float32 tensor on the
        device, shape (len(idx), L, m + p)."""
        import torch

        host = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        return torch.as_tensor(self.numpy(host), dtype=torch.float32, device=self.device)

    def std(self, sample: int = 100_000, seed: int = 0) -> float:
        """Standard deviation of the windows' normalised values, from an evenly spread sample."""
        n = min(sample, len(self))
        return float(self.numpy(np.linspace(0, len(self) - 1, n).astype(np.int64)).std())


def load_dataset(path: str | os.PathLike) -> TrajectoryDataset | ShardedDataset:
    """A dataset file (``.npz``) loaded into memory, or a shard directory opened for streaming.

    Raises
    ------
    DataFormatError
        Missing, unreadable or invalid (see :meth:`TrajectoryDataset.load` and
        :meth:`ShardedDataset.open`).
    """
    path = Path(path)
    if path.is_dir():
        return ShardedDataset.open(path)
    return TrajectoryDataset.load(path)


def generate_shards(env_id: str, num_trajectories: int, horizon: int, out: str | os.PathLike,
                    shard_size: int, *, seed: int = 0, overwrite: bool = False,
                    progress: bool = False, **collect_kwargs: Any) -> ShardedDataset:
    """Simulate ``num_trajectories`` trajectories one shard at a time and write them to ``out``.

    Memory stays bounded by one shard (``shard_size`` trajectories) whatever the total.
    Shard ``i`` is ``collect(env_id, k_i, horizon, seed=s_i, ...)`` with
    ``s_i = SeedSequence([seed, i]).generate_state(1)[0]``: the same seed and shard size give
    the same data (a single ``collect`` of all trajectories draws differently).

    Parameters
    ----------
    collect_kwargs
        ``excitation``, ``excitation_params``, ``env_kwargs``, ``noise``: as for ``collect``.

    Returns
    -------
    ShardedDataset
        The written dataset, opened.
    """
    from ddcontrol.data.collect import collect

    n = check_positive_int(num_trajectories, "num_trajectories")
    shard_size = check_positive_int(shard_size, "shard_size")
    writer = ShardWriter(out, shard_size, overwrite=overwrite)
    metadata: dict[str, Any] = {}
    counts = [min(shard_size, n - start) for start in range(0, n, shard_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="simulating", unit="traj")
    for i, count in enumerate(counts):
        shard_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        part = collect(env_id, count, horizon, seed=shard_seed, **collect_kwargs)
        writer.add(part.u, part.y, part.x)
        metadata = part.metadata
        if bar is not None:
            bar.update(count)
    if bar is not None:
        bar.close()
    metadata = {**metadata, "seed": seed, "shard_seeding": "shard i: collect(seed="
                "SeedSequence([seed, i]).generate_state(1)[0])"}
    writer.close(metadata)
    return ShardedDataset.open(out)

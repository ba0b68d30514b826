"""Trajectory datasets: arrays, windows, normalisation and the on-disk format.

File format (``.npz``, format version 1), all arrays float64:

=================  ====================  ===============================================
key                shape                 meaning
=================  ====================  ===============================================
``u``              (N, T, m)             applied inputs (physical units)
``y``              (N, T, p)             measured outputs, ``y[:, k]`` sampled before ``u[:, k]``
``x``              (N, T + 1, n_x)       true states (for replay verification only); what they
                                         are is ``metadata["state_source"]``: a foreign
                                         env's observations (``"observations"``), or
                                         nothing (n_x = 0, ``"none"``: measured data)
``norm_mean``      (m + p,)              per-channel mean of (u, y)
``norm_std``       (m + p,)              per-channel standard deviation of (u, y)
``metadata``       () str                JSON: env id and kwargs, dt, channel names, excitation
                                         and parameters, seed, package version, format version
=================  ====================  ===============================================
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddcontrol._deprecation import warn_renamed_attribute
from ddcontrol._io import atomic_write
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import (
    ConfigurationError,
    DataFormatError,
    DimensionError,
    NonFiniteError,
    WriteError,
)

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("u", "y", "x", "norm_mean", "norm_std", "metadata")


@dataclass
class TrajectoryDataset:
    """Input-output trajectories of one system, with the true states kept for verification.

    Attributes
    ----------
    u : ndarray, shape (N, T, m)
        Inputs in physical units.
    y : ndarray, shape (N, T, p)
        Measured outputs; ``y[:, k]`` is measured at step k, before ``u[:, k]`` is applied.
    x : ndarray, shape (N, T + 1, n_x)
        True states. Learning code must not use them; replay verification does.
    metadata : dict
        ``env_id``, ``env_kwargs``, ``dt`` (s), ``input_names``, ``output_names``, ``excitation``,
        ``excitation_params``, ``seed``, ``ddcontrol_version``.
    """

    u: np.ndarray
    y: np.ndarray
    x: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    normalizer: Normalizer | None = None

    def __post_init__(self) -> None:
        self.u = np.asarray(self.u, dtype=np.float64)
        self.y = np.asarray(self.y, dtype=np.float64)
        self.x = np.asarray(self.x, dtype=np.float64)
        for name in ("u", "y", "x"):
            arr = getattr(self, name)
            if arr.ndim != 3:
                raise DimensionError(f"{name} must be 3-D (trajectories, time, channels), "
                                     f"got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise NonFiniteError(f"{name} contains NaN or inf")
        n, t, _ = self.u.shape
        if self.y.shape[:2] != (n, t):
            raise DimensionError(f"u {self.u.shape} and y {self.y.shape} disagree on "
                                 "(trajectories, time)")
        if self.x.shape[:2] != (n, t + 1):
            raise DimensionError(f"x must have shape ({n}, {t + 1}, n_x), got {self.x.shape}")
        if self.normalizer is None:
            self.normalizer = Normalizer.fit(np.concatenate([self.u, self.y], axis=-1),
                                             input_dim=self.input_dim)
        elif self.normalizer.channels != self.channels:
            raise DimensionError(f"normaliser has {self.normalizer.channels} channels, data has "
                                 f"{self.channels}")
        else:
            _check_statistics(self.normalizer)

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_trajectories(self) -> int:
        return int(self.u.shape[0])

    @property
    def length(self) -> int:
        """T, the number of samples of each trajectory."""
        return int(self.u.shape[1])

    @property
    def horizon(self) -> int:
        """Deprecated name of :attr:`length` ("horizon" is the planning horizon)."""
        warn_renamed_attribute("TrajectoryDataset", "horizon", "length")
        return self.length

    @property
    def input_dim(self) -> int:
        return int(self.u.shape[2])

    @property
    def output_dim(self) -> int:
        return int(self.y.shape[2])

    @property
    def input_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), each (m,), in the inputs' units: the actuator limits the data were
        collected under (``metadata["input_low"/"input_high"]``), ±inf where none is recorded."""
        m = self.input_dim
        low = np.asarray(self.metadata.get("input_low", [-np.inf] * m), dtype=np.float64)
        high = np.asarray(self.metadata.get("input_high", [np.inf] * m), dtype=np.float64)
        return np.broadcast_to(low, (m,)).copy(), np.broadcast_to(high, (m,)).copy()

    @property
    def state_dim(self) -> int:
        return int(self.x.shape[2])

    @property
    def channels(self) -> int:
        return self.input_dim + self.output_dim

    @property
    def dt(self) -> float:
        return float(self.metadata.get("dt", 1.0))

    def __len__(self) -> int:
        return self.num_trajectories

    def __repr__(self) -> str:
        return (f"TrajectoryDataset(env={self.metadata.get('env_id')!r}, N={self.num_trajectories}, "
                f"T={self.length}, m={self.input_dim}, p={self.output_dim})")

    # -- windows ------------------------------------------------------------------------------
    def _starts(self, length: int, stride: int) -> np.ndarray:
        if not isinstance(length, (int, np.integer)) or length < 1:
            raise ConfigurationError(f"window length must be a positive integer, got {length!r}")
        if length > self.length:
            raise ConfigurationError(f"window length {length} exceeds the trajectory length "
                                     f"{self.length}")
        if not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ConfigurationError(f"stride must be a positive integer, got {stride!r}")
        return np.arange(0, self.length - length + 1, stride)

    def windows(self, length: int, stride: int = 1, normalized: bool = False) -> np.ndarray:
        """All windows of ``length`` steps, channels ``(u, y)``.

        Returns
        -------
        ndarray, shape (N * S, length, m + p)
            Window ``i * S + j`` is trajectory ``i`` from step ``starts[j]``, ``S`` starts each.
        """
        starts = self._starts(length, stride)
        w = np.concatenate([self.u, self.y], axis=-1)
        idx = starts[:, None] + np.arange(length)[None, :]
        out = w[:, idx].reshape(-1, length, self.channels)
        return self.normalizer.normalize(out) if normalized else out

    def window_initial_conditions(self, length: int, stride: int = 1
                                  ) -> tuple[np.ndarray, np.ndarray]:
        """True state and previously held input at the start of each window of :meth:`windows`.

        Returns
        -------
        x0 : ndarray, shape (N * S, n_x)
        u_prev : ndarray, shape (N * S, m)
            The input applied just before the window (zero at a trajectory's start).
        """
        starts = self._starts(length, stride)
        x0 = self.x[:, starts].reshape(-1, self.state_dim)
        u_pad = np.concatenate([np.zeros_like(self.u[:, :1]), self.u], axis=1)
        u_prev = u_pad[:, starts].reshape(-1, self.input_dim)
        return x0, u_prev

    def split(self, fraction: float, seed: int = 0) -> tuple[TrajectoryDataset, TrajectoryDataset]:
        """Random split by trajectory into (first, second) with ``fraction`` in the first."""
        if not 0.0 < fraction < 1.0:
            raise ConfigurationError(f"fraction must be in (0, 1), got {fraction}")
        perm = np.random.default_rng(seed).permutation(self.num_trajectories)
        k = max(1, min(self.num_trajectories - 1, int(round(fraction * self.num_trajectories))))
        return self.subset(perm[:k]), self.subset(perm[k:])

    def subset(self, index: np.ndarray) -> TrajectoryDataset:
        """Trajectories ``index``; keeps this dataset's normaliser."""
        return TrajectoryDataset(self.u[index], self.y[index], self.x[index],
                                 dict(self.metadata), self.normalizer)

    # -- identity -----------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short SHA-256 of the arrays and the environment, to tie models to their data."""
        h = hashlib.sha256()
        for arr in (self.u, self.y):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps({k: self.metadata.get(k) for k in ("env_id", "env_kwargs")},
                            sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    # -- measured data (no simulator; see ddcontrol.data.tabular) ------------------------------
    @classmethod
    def from_arrays(cls, u: Any, y: Any, *, dt: float = 1.0, input_names: Any = None,
                    output_names: Any = None, input_low: Any = None, input_high: Any = None,
                    truncate: bool = False, metadata: dict[str, Any] | None = None
                    ) -> TrajectoryDataset:
        """Measured inputs ``u`` (N, T, m) and outputs ``y`` (N, T, p) (or one (T, ·) experiment,
        or lists of (T_i, ·) arrays): see :func:`ddcontrol.data.tabular.dataset_from_arrays`."""
        from ddcontrol.data.tabular import dataset_from_arrays

        return dataset_from_arrays(u, y, dt=dt, input_names=input_names,
                                   output_names=output_names, input_low=input_low,
                                   input_high=input_high, truncate=truncate, metadata=metadata)

    @classmethod
    def from_csv(cls, paths: Any, *, inputs: Any, outputs: Any, time: str | None = None,
                 episode: str | None = None, dt: float | None = None, input_low: Any = None,
                 input_high: Any = None, truncate: bool = False) -> TrajectoryDataset:
        """One CSV file per experiment, or one with an ``episode`` column; columns by name: see
        :func:`ddcontrol.data.tabular.dataset_from_csv` (no pandas needed)."""
        from ddcontrol.data.tabular import dataset_from_csv

        return dataset_from_csv(paths, inputs=inputs, outputs=outputs, time=time,
                                episode=episode, dt=dt, input_low=input_low,
                                input_high=input_high, truncate=truncate)

    @classmethod
    def from_dataframe(cls, frames: Any, *, inputs: Any, outputs: Any, time: str | None = None,
                       episode: str | None = None, dt: float | None = None,
                       input_low: Any = None, input_high: Any = None, truncate: bool = False
                       ) -> TrajectoryDataset:
        """One pandas frame per experiment, or one with an ``episode`` column: see
        :func:`ddcontrol.data.tabular.dataset_from_frames`."""
        from ddcontrol.data.tabular import dataset_from_frames

        return dataset_from_frames(frames, inputs=inputs, outputs=outputs, time=time,
                                   episode=episode, dt=dt, input_low=input_low,
                                   input_high=input_high, truncate=truncate)

    @classmethod
    def from_minari(cls, dataset: Any, **kwargs: Any) -> TrajectoryDataset:
        """A Minari dataset (an id of a locally stored one, or a ``MinariDataset``): see
        :func:`ddcontrol.data.minari_io.from_minari` (needs ``pip install ddcontrol[minari]``)."""
        from ddcontrol.data.minari_io import from_minari

        return from_minari(dataset, **kwargs)

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        if path.is_dir():  # not DIR.npz beside it
            raise WriteError(f"cannot save the dataset to {path}: it is a folder; give a file "
                             "name")
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(
                ".npz")
        meta = {**self.metadata, "format_version": FORMAT_VERSION}
        arrays = {"u": self.u, "y": self.y, "x": self.x, "norm_mean": self.normalizer.mean,
                  "norm_std": self.normalizer.std,
                  "metadata": np.array(json.dumps(meta, default=_json_default))}
        return atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrajectoryDataset:
        """Read and validate a dataset written by :meth:`save`.

        Raises
        ------
        DataFormatError
            The file is missing, not an npz archive, truncated, lacks a key, has another format
            version, or holds inconsistent or non-finite arrays.
        """
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(f"dataset file not found: {path}")
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise DataFormatError(f"cannot open dataset {path}: {exc.strerror or exc}") from exc
        try:
            with fh, np.load(fh, allow_pickle=False) as npz:
                missing = [k for k in _REQUIRED_KEYS if k not in npz.files]
                if missing:
                    raise DataFormatError(f"{path} is not a ddcontrol dataset: missing {missing}")
                arrays = {k: npz[k] for k in _REQUIRED_KEYS}
        except DataFormatError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
            raise DataFormatError(f"cannot read dataset {path}: truncated or corrupt "
                                  f"({type(exc).__name__}: {exc})") from exc
        try:
            meta = json.loads(str(arrays["metadata"]))
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: metadata is not valid JSON") from exc
        if not isinstance(meta, dict):
            raise DataFormatError(f"{path}: metadata must be a JSON object, got "
                                  f"{type(meta).__name__}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise DataFormatError(f"{path}: format version {version}, this ddcontrol reads "
                                  f"version {FORMAT_VERSION}; regenerate the dataset")
        _check_file_contents(path, arrays, meta)
        try:
            norm = Normalizer(mean=arrays["norm_mean"].astype(np.float64),
                              std=arrays["norm_std"].astype(np.float64),
                              input_dim=int(arrays["u"].shape[-1]))
            return cls(arrays["u"], arrays["y"], arrays["x"], meta, norm)
        except (DimensionError, NonFiniteError, ConfigurationError) as exc:
            raise DataFormatError(f"{path}: {exc}") from exc


def _check_statistics(norm: Normalizer) -> None:
    """A given normaliser must map data to finite values: finite means, finite std > 0."""
    mean, std = np.asarray(norm.mean), np.asarray(norm.std)
    if mean.shape != std.shape:
        raise DimensionError(f"norm_mean {mean.shape} and norm_std {std.shape} disagree")
    if not np.all(np.isfinite(mean)):
        raise NonFiniteError(f"norm_mean contains NaN or inf (channels "
                             f"{np.flatnonzero(~np.isfinite(mean)).tolist()})")
    bad = np.flatnonzero(~(np.isfinite(std) & (std > 0)))
    if bad.size:
        raise ConfigurationError(f"norm_std must be finite and > 0; channels {bad.tolist()} have "
                                 f"{std[bad].tolist()} (a normalisation by them turns every "
                                 "window into NaN or inf)")


# Metadata entries the package reads, and the JSON types they must have.
_META_TYPES: dict[str, tuple[type, ...]] = {
    "env_id": (str,), "env_kwargs": (dict,), "dt": (int, float), "input_names": (list,),
    "output_names": (list,), "input_low": (list, int, float), "input_high": (list, int, float),
}


def _check_file_contents(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Raise ``DataFormatError`` naming the field of a crafted or damaged file's first defect."""
    for key in ("u", "y", "x", "norm_mean", "norm_std"):
        if arrays[key].dtype.kind not in "biuf":
            raise DataFormatError(f"{path}: {key} must hold real numbers, got dtype "
                                  f"{arrays[key].dtype}")
    for key, ndim in (("u", 3), ("y", 3), ("x", 3), ("norm_mean", 1), ("norm_std", 1)):
        if arrays[key].ndim != ndim:
            raise DataFormatError(f"{path}: {key} must have {ndim} dimension(s), got shape "
                                  f"{arrays[key].shape}")
    for key in ("u", "y", "x"):
        shape = arrays[key].shape
        if 0 in shape[: 2 if key == "x" else 3]:  # x may have no channels (measured data)
            what = ("trajectories", "time steps", "channels")[shape.index(0)]
            raise DataFormatError(f"{path}: {key} has shape {shape}: zero {what}")
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise DataFormatError(f"{path}: metadata {key!r} must be of JSON type "
                                  f"{' or '.join(t.__name__ for t in types)}, got "
                                  f"{type(value).__name__}")
    dt = meta.get("dt")
    if dt is not None and not (np.isfinite(dt) and dt > 0):
        raise DataFormatError(f"{path}: metadata 'dt' must be finite and > 0, got {dt}")
    for key, arr in (("input_names", arrays["u"]), ("output_names", arrays["y"])):
        names = meta.get(key)
        if names is not None and (len(names) != arr.shape[-1]
                                  or not all(isinstance(n, str) for n in names)):
            raise DataFormatError(f"{path}: metadata {key!r} must be {arr.shape[-1]} strings, "
                                  f"got {names!r}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)

"""Trajectory datasets: arrays, windows, normalisation and the on-disk format.

File format (``.npz``, format version 1), all arrays float64:

=================  ====================  ===============================================
key                shape                 meaning
=================  ====================  ===============================================
``u``              (N, T, m)             applied inputs (physical units)
``y``              (N, T, p)             measured outputs, ``y[:, k]`` sampled before ``u[:, k]``
``x``              (N, T + 1, n_x)       true states (for replay verification only)
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

from ddcontrol._io import atomic_write
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, DataFormatError, DimensionError, NonFiniteError

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

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_trajectories(self) -> int:
        return int(self.u.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.u.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.u.shape[2])

    @property
    def output_dim(self) -> int:
        return int(self.y.shape[2])

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
                f"T={self.horizon}, m={self.input_dim}, p={self.output_dim})")

    # -- windows ------------------------------------------------------------------------------
    def _starts(self, length: int, stride: int) -> np.ndarray:
        if not isinstance(length, (int, np.integer)) or length < 1:
            raise ConfigurationError(f"window length must be a positive integer, got {length!r}")
        if length > self.horizon:
            raise ConfigurationError(f"window length {length} exceeds the trajectory length "
                                     f"{self.horizon}")
        if not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ConfigurationError(f"stride must be a positive integer, got {stride!r}")
        return np.arange(0, self.horizon - length + 1, stride)

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

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
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
            with np.load(path, allow_pickle=False) as npz:
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
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise DataFormatError(f"{path}: format version {version}, this ddcontrol reads "
                                  f"version {FORMAT_VERSION}; regenerate the dataset")
        try:
            norm = Normalizer(mean=arrays["norm_mean"], std=arrays["norm_std"],
                              input_dim=int(arrays["u"].shape[-1]))
            return cls(arrays["u"], arrays["y"], arrays["x"], meta, norm)
        except (DimensionError, NonFiniteError) as exc:
            raise DataFormatError(f"{path}: {exc}") from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)

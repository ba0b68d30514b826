"""Per-channel affine normalisation of trajectory windows (travels with datasets and models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ddcontrol.errors import DimensionError


@dataclass(frozen=True)
class Normalizer:
    """Maps physical channel values ``w`` to normalised units ``(w - mean) / std``.

    Channels are ordered ``(u_1..u_m, y_1..y_p)``, the layout of a window's last axis.

    Attributes
    ----------
    mean, std : ndarray, shape (m + p,)
        Per-channel statistics in physical units; ``std`` is strictly positive.
    input_dim : int
        Number of input channels m (the first m channels).
    """

    mean: np.ndarray
    std: np.ndarray
    input_dim: int

    @classmethod
    def fit(cls, windows: np.ndarray, input_dim: int, min_std: float = 1e-8) -> Normalizer:
        """Statistics of ``windows`` (..., m + p) over every leading axis."""
        flat = np.asarray(windows, dtype=np.float64).reshape(-1, windows.shape[-1])
        std = np.maximum(flat.std(axis=0), min_std)
        return cls(mean=flat.mean(axis=0), std=std, input_dim=int(input_dim))

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def _check(self, w: Any) -> None:
        if w.shape[-1] != self.channels:
            raise DimensionError(f"expected {self.channels} channels on the last axis, "
                                 f"got shape {tuple(w.shape)}")

    def normalize(self, w: Any) -> Any:
        """Physical (..., C) -> normalised (..., C); numpy arrays or torch tensors."""
        self._check(w)
        mean, std = self._like(w)
        return (w - mean) / std

    def denormalize(self, w: Any) -> Any:
        """Normalised (..., C) -> physical (..., C); numpy arrays or torch tensors."""
        self._check(w)
        mean, std = self._like(w)
        return w * std + mean

    def _like(self, w: Any) -> tuple[Any, Any]:
        if type(w).__module__.startswith("torch"):
            import torch

            return (torch.as_tensor(self.mean, dtype=w.dtype, device=w.device),
                    torch.as_tensor(self.std, dtype=w.dtype, device=w.device))
        return self.mean, self.std

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "input_dim": self.input_dim}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        return cls(mean=np.asarray(d["mean"], float), std=np.asarray(d["std"], float),
                   input_dim=int(d["input_dim"]))

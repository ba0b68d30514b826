"""The denoiser protocol every ddcontrol module relies on, and the σ-broadcasting helper.

A denoiser is any callable ``D(x, sigma) -> Tensor`` returning the posterior mean
E[clean | noisy = x] = x + σ² ∇log p_σ(x) for a batch ``x`` of shape ``(B, *event_shape)``.
Trained networks (``torch.nn.Module``) and the closed-form denoisers both satisfy it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ddcontrol.errors import ConfigurationError, DimensionError

__all__ = ["Denoiser", "SigmaLike", "sigma_column", "check_sigma"]

SigmaLike = float | Tensor
"""A noise level: a python float or a tensor of shape ``(B,)`` (or a 0-d tensor)."""


@runtime_checkable
class Denoiser(Protocol):
    """Callable ``D(x, sigma)`` returning the posterior mean of the clean sample.

    Parameters
    ----------
    x : Tensor, shape (B, *event_shape)
        Noisy samples, in the (normalised) units of the data.
    sigma : float or Tensor of shape (B,)
        Noise standard deviation, same units as ``x``; one per batch element or shared.

    Returns
    -------
    Tensor, shape (B, *event_shape)
        D(x, σ) = x + σ² ∇log p_σ(x).
    """

    def __call__(self, x: Tensor, sigma: SigmaLike) -> Tensor: ...


def sigma_column(sigma: SigmaLike, x: Tensor) -> Tensor | float:
    """Return ``sigma`` shaped to broadcast against ``x`` (``(B, 1, ..., 1)``), floats unchanged.

    Parameters
    ----------
    sigma : float or Tensor of shape (), (B,) or (B, 1, ..., 1)
    x : Tensor, shape (B, *event_shape)
    """
    if not isinstance(sigma, Tensor):
        return float(sigma)
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma.reshape((1,) * x.ndim)
    return sigma.reshape((-1,) + (1,) * (x.ndim - 1))


def check_sigma(sigma: SigmaLike, batch: int, name: str = "sigma") -> None:
    """Raise unless ``sigma`` is a positive finite float or a positive tensor of shape () / (B,).

    This synchronises with the device for tensors; call it at public boundaries only.
    """
    if isinstance(sigma, Tensor):
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] not in (1, batch)):
            raise DimensionError(f"{name} must be a float or of shape ({batch},), "
                                 f"got shape {tuple(sigma.shape)}")
        if not bool(torch.all(torch.isfinite(sigma) & (sigma > 0))):
            raise ConfigurationError(f"{name} must be finite and > 0")
        return
    try:
        val = float(sigma)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} must be a number, got {sigma!r}") from exc
    if not (val > 0 and val < float("inf")):
        raise ConfigurationError(f"{name} must be finite and > 0, got {sigma!r}")

"""EDM preconditioning: the denoiser D(x, σ) = c_skip x + c_out F(c_in x, c_noise) and its DSM loss.

Karras et al. 2022, "Elucidating the design space of diffusion-based generative models", Table 1:
c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = log(σ)/4, and the
loss weight λ(σ) = (σ²+σ_d²)/(σσ_d)², so that λ c_out² = 1 and the inner network F regresses a
unit-variance target at every σ. As σ → 0, c_skip → 1 and c_out → 0, so D(x, σ) → x for any
bounded F; the MLP's 1/σ-gain linear branch (see :class:`~ddcontrol.score.networks.ResidualMLP`)
is not bounded on purpose, and makes D tend to its learned affine projection instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddcontrol._validation import check_positive_float
from ddcontrol.errors import ConfigurationError
from ddcontrol.score.base import SigmaLike
from ddcontrol.score.frozen import ExplicitLinearization, FrozenResidualMLP
from ddcontrol.score.networks import ResidualMLP, check_window

__all__ = ["edm_scalings", "BehaviorDenoiser"]


def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape), EDM Table 1."""
    s2, d2 = sigma * sigma, sigma_data * sigma_data
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1.0 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


class BehaviorDenoiser(nn.Module):
    """Preconditioned denoiser of behaviour windows, ``D(x, sigma) -> Tensor``.

    Parameters
    ----------
    net : nn.Module
        Inner network ``F(x, c_noise)`` mapping (B, L, C) and (B,) to (B, L, C).
    window_length, channels : int
        L and C = m + p of the windows it was built for (checked on every call).
    sigma_data : float
        Standard deviation σ_d of the clean data per element (1 for normalised windows).

    Notes
    -----
    ``x`` may be of any floating dtype: it is computed in the parameters' dtype and returned in
    the dtype of ``x``; autograd flows through the casts, so ``D`` is differentiable w.r.t. ``x``.
    """

    def __init__(self, net: nn.Module, window_length: int, channels: int,
                 sigma_data: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.window_length = int(window_length)
        self.channels = int(channels)
        self.sigma_data = check_positive_float(sigma_data, "sigma_data")

    def _param_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def _sigma_vector(self, sigma: SigmaLike, x: Tensor) -> Tensor:
        """σ as a (B,) tensor on x's device, in the parameters' dtype."""
        dtype = self._param_dtype()
        if isinstance(sigma, Tensor):
            s = sigma.to(device=x.device, dtype=dtype).reshape(-1)
            return s.expand(x.shape[0]) if s.numel() == 1 else s
        value = float(sigma)
        if not 0.0 < value < float("inf"):
            raise ConfigurationError(f"sigma must be finite and > 0, got {sigma!r}")
        return torch.full((x.shape[0],), value, device=x.device, dtype=dtype)

    def forward(self, x: Tensor, sigma: SigmaLike) -> Tensor:
        """Posterior-mean estimate of the clean window.

        Parameters
        ----------
        x : Tensor, shape (B, L, C)
            Noisy windows in normalised units.
        sigma : float or Tensor of shape (B,)
            Noise standard deviation in normalised units.

        Returns
        -------
        Tensor, shape (B, L, C), dtype of ``x``
        """
        check_window(x, self.window_length, self.channels, type(self).__name__)
        if not torch.is_grad_enabled() and isinstance(sigma, (float, int)):
            frozen = self.frozen(sigma)
            if frozen is not None:
                return frozen(x)
        s = self._sigma_vector(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_scalings(s, self.sigma_data)
        xf = x.to(self._param_dtype())
        col = (-1, 1, 1)
        out = c_skip.view(col) * xf + c_out.view(col) * self.net(c_in.view(col) * xf, c_noise)
        return out.to(x.dtype)

    _FROZEN_CACHE = 8  # σ levels kept (an annealed solve visits many, each used for a while)

    def frozen(self, sigma: float) -> FrozenResidualMLP | None:
        """This denoiser at the fixed noise level ``sigma`` as plain matrix products with explicit
        VJPs (:mod:`ddcontrol.score.frozen`), for a residual-MLP inner network; None for others.
        Cached per σ until a parameter changes (in place or by a move to another device)."""
        if not isinstance(self.net, ResidualMLP):
            return None
        value = float(sigma)
        if not 0.0 < value < float("inf"):
            raise ConfigurationError(f"sigma must be finite and > 0, got {sigma!r}")
        # In-place updates (optimiser steps, load_state_dict) bump a parameter's version and a
        # move to another device or dtype changes its storage; they touch the first and last
        # parameters as well as the others, and checking two keeps the lookup cheap.
        first, last = self._ends()
        key = (value, first.data_ptr(), first._version, last.data_ptr(), last._version)
        cache: dict = self.__dict__.setdefault("_frozen", {})
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= self._FROZEN_CACHE:
                cache.pop(next(iter(cache)))
            hit = cache[key] = FrozenResidualMLP(self, value)
        return hit

    def _ends(self) -> tuple[Tensor, Tensor]:
        params = self.__dict__.get("_param_ends")
        if params is None or params[0] is not next(self.net.parameters()):
            ps = list(self.net.parameters())
            params = self.__dict__["_param_ends"] = (ps[0], ps[-1])
        return params

    def linearize(self, x: Tensor, sigma: SigmaLike) -> ExplicitLinearization | None:
        """v(x) = D(x, σ) and its VJPs without autograd (see :meth:`frozen`); None when σ is a
        tensor or the inner network is not a residual MLP (the caller then uses autograd)."""
        if not isinstance(sigma, (float, int)):
            return None
        frozen = self.frozen(sigma)
        return None if frozen is None else ExplicitLinearization(frozen, x)

    def loss(self, clean: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
        """Per-sample EDM-weighted denoising score-matching loss, mean over elements.

        λ(σ) ‖D(clean + σ n, σ) − clean‖² is computed in its equivalent form
        ‖F(c_in x, c_noise) − (clean − c_skip x)/c_out‖² (λ c_out² = 1), which avoids the
        cancellation in D − clean at small σ.

        Parameters
        ----------
        clean : Tensor, shape (B, L, C)
        sigma : Tensor, shape (B,)
        noise : Tensor, shape (B, L, C), standard normal

        Returns
        -------
        Tensor, shape (B,)
        """
        col = (-1, 1, 1)
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        x = clean + sigma.view(col) * noise
        target = (clean - c_skip.view(col) * x) / c_out.view(col)
        pred = self.net(c_in.view(col) * x, c_noise)
        return (pred - target).pow(2).mean(dim=(1, 2))

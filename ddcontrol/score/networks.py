"""Inner networks F(x, c_noise) of the preconditioned denoiser, chosen by name.

Both map a batch of windows ``x`` of shape ``(B, L, C)`` (already scaled by c_in) and a noise
embedding input ``c_noise`` of shape ``(B,)`` to a tensor of the shape of ``x``. Their last layer
is zero-initialised, so an untrained denoiser is D(x, σ) = c_skip(σ) x (EDM's choice), which
keeps the first steps of training stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddcontrol._validation import check_positive_int
from ddcontrol.errors import ConfigurationError, DimensionError, UnknownNameError

__all__ = ["NoiseEmbedding", "ResidualMLP", "TemporalUNet", "ARCHITECTURES", "build_network"]


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise = log(σ)/4 followed by a two-layer MLP.

    The frequencies are geometric in [0.5, 32] rad per unit of c_noise: c_noise spans about 2 units
    over σ in [0.005, 5], so the slowest feature is monotone over the range and the fastest resolves
    a factor of about 1.1 in σ. The raw c_noise is appended so that a purely linear dependence on
    log σ is one weight away.
    """

    def __init__(self, dim: int, num_frequencies: int = 16) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(0.5), math.log(32.0), num_frequencies))
        self.register_buffer("freqs", freqs)
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies + 1, dim), nn.SiLU(),
                                 nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        """(B,) -> (B, dim)."""
        arg = c_noise[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([arg.sin(), arg.cos(), c_noise[:, None]], dim=1))


class _MLPBlock(nn.Module):
    """Pre-activation residual block h + W2 SiLU(W1 SiLU(h) + E emb).

    No normalisation layer: the off-manifold component that the network must amplify by 1/σ is a
    tiny part of ‖h‖ at small σ, and layer norm would tie it to the on-manifold magnitude.
    """

    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(h)) + self.emb(emb)))


class ResidualMLP(nn.Module):
    """Residual MLP over the flattened window, conditioned on σ by additive embeddings.

    Parameters
    ----------
    window_length : int
        L, the number of time steps of a window.
    channels : int
        C = m + p channels per step.
    width : int
        Hidden width (default 256).
    depth : int
        Number of residual blocks (default 4).
    emb_dim : int
        Size of the noise embedding.
    linear_skip : bool
        Add a linear map of the window with gain (1/σ)·exp(g(σ)), g learned and zero at init.

    Notes
    -----
    Why the linear skip: at small σ the ideal F is about −P⊥(x − π(x))/σ, of rank d − k (the
    normal dimension, e.g. 495 for 100-step unicycle windows), while the MLP's output layer
    has rank at most ``width``. A linear map with a 1/σ gain represents the best affine
    approximation of that (for a linear system, exactly: the gain on normal directions in
    c_in-scaled coordinates is σ_d/σ at every σ), and the MLP only learns the corrections.
    """

    def __init__(self, window_length: int, channels: int, width: int = 256, depth: int = 4,
                 emb_dim: int = 128, linear_skip: bool = True) -> None:
        super().__init__()
        self.window_length = check_positive_int(window_length, "window_length")
        self.channels = check_positive_int(channels, "channels")
        width = check_positive_int(width, "width")
        depth = check_positive_int(depth, "depth")
        d = self.window_length * self.channels
        self.embed = NoiseEmbedding(emb_dim)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(_MLPBlock(width, emb_dim) for _ in range(depth))
        self.out = nn.Linear(width, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.skip: nn.Linear | None = None
        if linear_skip:
            self.skip = nn.Linear(d, d)
            self.skip_gain = nn.Linear(emb_dim, 1)
            for layer in (self.skip, self.skip_gain):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """x (B, L, C), c_noise (B,) -> (B, L, C)."""
        emb = self.embed(c_noise)
        flat = x.reshape(x.shape[0], -1)
        h = self.inp(flat)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(F.silu(h))
        if self.skip is not None:
            # exp(-4 c_noise) = 1/σ: the gain the normal components need, learned around it.
            gain = torch.exp(self.skip_gain(emb) - 4.0 * c_noise[:, None])
            out = out + gain * self.skip(flat)
        return out.reshape(x.shape)


def _groups(channels: int) -> int:
    # Up to 8 groups that divide the channel count (GroupNorm requires it).
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _ResBlock1d(nn.Module):
    """GroupNorm-SiLU-conv twice, with the noise embedding as a per-channel scale and shift."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.emb(emb)[:, :, None].chunk(2, dim=1)
        z = F.silu(self.norm2(z) * (1 + scale) + shift)
        return self.skip(h) + self.conv2(z)


class TemporalUNet(nn.Module):
    """1-D convolutional U-Net over time; channels of the window are the conv channels.

    Windows whose length is not a multiple of 2^(levels-1) are padded at the end by repeating the
    last sample (less of an edge than zeros) and the output is cropped back.

    Parameters
    ----------
    window_length, channels : int
        L and C of the windows.
    base_channels : int
        Feature channels at full resolution (default 32 for CPU; 64 on a GPU).
    channel_mult : tuple of int
        Multiplier per level; each level but the last halves the time resolution.
    emb_dim : int
        Size of the noise embedding.
    """

    def __init__(self, window_length: int, channels: int, base_channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2, 4), emb_dim: int = 128) -> None:
        super().__init__()
        self.window_length = check_positive_int(window_length, "window_length")
        self.channels = check_positive_int(channels, "channels")
        base = check_positive_int(base_channels, "base_channels")
        mult = tuple(int(m) for m in channel_mult)
        if not mult or min(mult) < 1:
            raise ConfigurationError(f"channel_mult must be positive integers, got {channel_mult}")
        self.multiple = 2 ** (len(mult) - 1)
        self.embed = NoiseEmbedding(emb_dim)
        self.conv_in = nn.Conv1d(self.channels, base, 3, padding=1)
        widths = [base * m for m in mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = base
        for i, w in enumerate(widths):
            self.down.append(_ResBlock1d(prev, w, emb_dim))
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv1d(w, w, 3, stride=2, padding=1))
            prev = w
        self.mid = _ResBlock1d(prev, prev, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(_ResBlock1d(prev + w, w, emb_dim))
            if i > 0:
                self.upsample.append(nn.Conv1d(w, widths[i - 1], 3, padding=1))
                prev = widths[i - 1]
            else:
                prev = w
        self.norm_out = nn.GroupNorm(_groups(prev), prev)
        self.conv_out = nn.Conv1d(prev, self.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """x (B, L, C), c_noise (B,) -> (B, L, C)."""
        length = x.shape[1]
        pad = (-length) % self.multiple
        h = x.transpose(1, 2)
        if pad:
            h = F.pad(h, (0, pad), mode="replicate")
        emb = self.embed(c_noise)
        h = self.conv_in(h)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[:, :, :length].transpose(1, 2)


ARCHITECTURES = ("mlp", "unet")


def build_network(arch: str, window_length: int, channels: int, *, width: int = 256,
                  depth: int = 4, linear_skip: bool = True, base_channels: int = 32,
                  channel_mult: tuple[int, ...] = (1, 2, 4), emb_dim: int = 128) -> nn.Module:
    """The inner network called ``arch`` (``"mlp"`` or ``"unet"``) for (L, C) windows.

    ``width``/``depth``/``linear_skip`` configure the MLP, ``base_channels``/``channel_mult``
    the U-Net.
    """
    if arch == "mlp":
        return ResidualMLP(window_length, channels, width, depth, emb_dim, linear_skip)
    if arch == "unet":
        return TemporalUNet(window_length, channels, base_channels, tuple(channel_mult), emb_dim)
    raise UnknownNameError(f"unknown architecture {arch!r}; choose one of {list(ARCHITECTURES)}")


def check_window(x: Tensor, window_length: int, channels: int, who: str) -> None:
    """Raise ``DimensionError`` unless ``x`` has shape (B, window_length, channels)."""
    if x.ndim != 3 or x.shape[1] != window_length or x.shape[2] != channels:
        raise DimensionError(f"{who} expects windows of shape (B, {window_length}, {channels}), "
                             f"got {tuple(x.shape)}")

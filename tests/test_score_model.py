"""Preconditioned denoiser networks: scalings, shapes, dtypes, differentiability, errors."""

from __future__ import annotations

import math

import pytest
import torch

from ddcontrol.errors import ConfigurationError, DimensionError, UnknownNameError
from ddcontrol.score.base import Denoiser
from ddcontrol.score.checkpoint import build_denoiser
from ddcontrol.score.networks import ResidualMLP, TemporalUNet, build_network
from ddcontrol.score.precond import BehaviorDenoiser, edm_scalings

SMALL = {"mlp": {"width": 32, "depth": 2, "emb_dim": 16},
         "unet": {"base_channels": 8, "channel_mult": (1, 2, 4), "emb_dim": 16}}


def make(arch: str, length: int = 12, m: int = 1, p: int = 2, seed: int = 0,
         randomise_output: bool = True) -> BehaviorDenoiser:
    """A small denoiser; the zero-initialised last layer is randomised so F is not trivially 0."""
    torch.manual_seed(seed)
    den = build_denoiser({"arch": arch, "window_length": length, "input_dim": m,
                          "output_dim": p, "sigma_data": 1.0, "net_kwargs": SMALL[arch]})
    if randomise_output:
        last = den.net.out if arch == "mlp" else den.net.conv_out
        torch.nn.init.normal_(last.weight, std=0.1)
        torch.nn.init.normal_(last.bias, std=0.1)
    return den


def test_edm_scalings_match_table_and_limits() -> None:
    sigma = torch.tensor([1e-8, 0.5, 1.0, 100.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 1.0)
    torch.testing.assert_close(c_skip, 1.0 / (sigma ** 2 + 1.0))
    torch.testing.assert_close(c_out, sigma / (sigma ** 2 + 1.0).sqrt())
    torch.testing.assert_close(c_in, 1.0 / (sigma ** 2 + 1.0).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    assert c_skip[0] == pytest.approx(1.0) and c_out[0] == pytest.approx(0.0, abs=1e-7)
    # EDM weighting λ(σ) c_out² = 1 at every σ (so the loss on F is unweighted).
    lam = (sigma ** 2 + 1.0) / sigma ** 2
    torch.testing.assert_close(lam * c_out ** 2, torch.ones_like(sigma))


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_small_sigma_returns_input(arch: str) -> None:
    den = make(arch).eval()
    x = torch.randn(4, 12, 3)
    with torch.no_grad():
        out = den(x, 1e-6)
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)
    with torch.no_grad():  # and it is not the identity at a large σ
        assert (den(x, 1.0) - x).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["mlp", "unet"])
@pytest.mark.parametrize("length", [1, 5, 7, 12, 30])
def test_shapes_for_odd_lengths(arch: str, length: int) -> None:
    den = make(arch, length=length)
    x = torch.randn(3, length, 3)
    assert den(x, 0.3).shape == x.shape
    assert den(x, torch.tensor([0.1, 0.2, 0.3])).shape == x.shape
    assert den(x, torch.tensor(0.2)).shape == x.shape


def test_mlp_linear_skip_option() -> None:
    plain = ResidualMLP(12, 3, width=16, depth=1, emb_dim=8, linear_skip=False)
    skip = ResidualMLP(12, 3, width=16, depth=1, emb_dim=8)
    assert plain.skip is None and skip.skip is not None
    x, c = torch.randn(2, 12, 3), torch.log(torch.tensor([0.01, 1.0])) / 4
    assert plain(x, c).shape == skip(x, c).shape == x.shape
    # The skip's gain is 1/σ at initialisation (exp(0 - log σ)).
    torch.nn.init.eye_(skip.skip.weight)
    torch.nn.init.zeros_(skip.out.weight)
    torch.testing.assert_close(skip(x, c), x / torch.tensor([0.01, 1.0]).view(-1, 1, 1))


def test_per_sample_sigma_matches_scalar_sigma() -> None:
    den = make("mlp").eval()
    x = torch.randn(3, 12, 3)
    sig = torch.tensor([0.05, 0.5, 2.0])
    batched = den(x, sig)
    for i in range(3):
        torch.testing.assert_close(batched[i:i + 1], den(x[i:i + 1], float(sig[i])))


def test_input_dtype_is_preserved_and_protocol_holds() -> None:
    den = make("mlp")
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    assert den(x, 0.1).dtype == torch.float64
    assert isinstance(den, Denoiser)


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_differentiable_wrt_input(arch: str) -> None:
    den = make(arch, length=6).double().requires_grad_(False)
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.1, 0.3], dtype=torch.float64)
    # VJP w.r.t. x with frozen parameters, the way the solvers use it, against a central
    # finite difference of <g, D(x)> along a random direction.
    g, v = torch.randn_like(x), torch.randn_like(x)
    (vjp,) = torch.autograd.grad((den(x, sigma) * g).sum(), x)
    h = 1e-6
    with torch.no_grad():
        fd = ((den(x + h * v, sigma) - den(x - h * v, sigma)) * g).sum() / (2 * h)
    assert torch.isfinite(vjp).all() and vjp.abs().sum() > 0
    assert float((vjp * v).sum()) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


def test_gradcheck_mlp() -> None:
    den = make("mlp", length=4).double().requires_grad_(False)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: den(z, 0.2), (x,), eps=1e-6, atol=1e-5)


def test_loss_is_the_edm_weighted_denoising_error() -> None:
    den = make("mlp").double()
    clean = torch.randn(5, 12, 3, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0], dtype=torch.float64)
    noise = torch.randn_like(clean)
    loss = den.loss(clean, sigma, noise)
    d = den(clean + sigma.view(-1, 1, 1) * noise, sigma)
    lam = (sigma ** 2 + 1) / sigma ** 2
    direct = lam * (d - clean).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(loss, direct, rtol=1e-6, atol=1e-9)


def test_untrained_denoiser_is_c_skip_times_x() -> None:
    den = make("unet", randomise_output=False)
    x = torch.randn(2, 12, 3)
    torch.testing.assert_close(den(x, 2.0), x / 5.0)


def test_errors() -> None:
    den = make("mlp")
    with pytest.raises(DimensionError, match=r"\(B, 12, 3\)"):
        den(torch.randn(2, 11, 3), 0.1)
    with pytest.raises(DimensionError):
        den(torch.randn(12, 3), 0.1)
    with pytest.raises(ConfigurationError):
        den(torch.randn(2, 12, 3), 0.0)
    with pytest.raises(ConfigurationError):
        den(torch.randn(2, 12, 3), math.inf)
    with pytest.raises(UnknownNameError, match="mlp"):
        build_network("transformer", 12, 3)
    with pytest.raises(ConfigurationError):
        ResidualMLP(0, 3)
    with pytest.raises(ConfigurationError):
        TemporalUNet(12, 3, channel_mult=())

"""Closed-form denoisers: exactness against brute force, chunking, limits, errors."""

import math

import pytest
import torch

from ddcontrol.errors import DimensionError, NonFiniteError
from ddcontrol.score import Denoiser, EmpiricalDenoiser, LinearGaussianDenoiser

DT = torch.float64


def brute_force_posterior_mean(data: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor):
    """Σ_i N(x; w_i, σ²I) w_i / Σ_i N(x; w_i, σ²I), in float64, by explicit mixture weights."""
    w = data.reshape(data.shape[0], -1)
    xf = x.reshape(x.shape[0], -1)
    sq = ((xf[:, None, :] - w[None, :, :]) ** 2).sum(-1)  # (B, N)
    logw = -sq / (2 * sigma.reshape(-1, 1) ** 2)
    weights = torch.exp(logw - logw.max(dim=1, keepdim=True).values)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return (weights @ w).reshape(x.shape)


@pytest.fixture
def small_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(37, 4, 3, generator=g, dtype=DT)


def test_protocol():
    data = torch.randn(5, 2, dtype=DT)
    assert isinstance(EmpiricalDenoiser(data), Denoiser)
    assert isinstance(LinearGaussianDenoiser.from_samples(data), Denoiser)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_empirical_matches_brute_force(small_data, sigma):
    g = torch.Generator().manual_seed(1)
    x = small_data[:6] + sigma * torch.randn(6, 4, 3, generator=g, dtype=DT)
    den = EmpiricalDenoiser(small_data)
    expected = brute_force_posterior_mean(small_data, x, torch.full((6,), sigma, dtype=DT))
    torch.testing.assert_close(den(x, sigma), expected, rtol=1e-10, atol=1e-10)


def test_empirical_per_sample_sigma_and_chunking(small_data):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, 3, generator=g, dtype=DT)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 7.0], dtype=DT)
    expected = brute_force_posterior_mean(small_data, x, sigma)
    for chunk in (1, 5, 36, 37, 1000):
        out = EmpiricalDenoiser(small_data, chunk_size=chunk)(x, sigma)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_empirical_gradient_chunk_invariant(small_data):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 3, generator=g, dtype=DT)
    u = torch.randn(3, 4, 3, generator=g, dtype=DT)
    grads = []
    for chunk in (4, 1000):
        xg = x.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(EmpiricalDenoiser(small_data, chunk_size=chunk)(xg, 0.8), xg, u)
        grads.append(gr)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_empirical_jacobian_is_posterior_covariance(small_data):
    # Tweedie: D'(x) = Cov[w | x] / σ², symmetric positive semidefinite.
    den = EmpiricalDenoiser(small_data.reshape(37, -1))
    x = torch.randn(1, 12, dtype=DT)
    sigma = 0.9
    jac = torch.autograd.functional.jacobian(lambda z: den(z, sigma), x).reshape(12, 12)
    w = small_data.reshape(37, -1)
    logw = -((x - w) ** 2).sum(1) / (2 * sigma**2)
    p = torch.softmax(logw, 0)
    mean = p @ w
    cov = (w - mean).T @ ((w - mean) * p[:, None])
    torch.testing.assert_close(jac, cov / sigma**2, rtol=1e-9, atol=1e-10)


def test_empirical_large_dataset_float32_memory_path():
    # 20,000 windows of 100x7 with a batch of 64: chunked, float32, finite, right shape.
    g = torch.Generator().manual_seed(4)
    data = torch.randn(20_000, 100, 7, generator=g)
    den = EmpiricalDenoiser(data, chunk_size=4096)
    x = data[:64] + 0.1 * torch.randn(64, 100, 7, generator=g)
    out = den(x, 0.5)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Each noisy window is far closer to its own clean window than to any other.
    torch.testing.assert_close(out, data[:64], rtol=0, atol=1e-4)


def test_linear_gaussian_formula_and_shapes():
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(3, 4, generator=g, dtype=DT)
    basis = torch.randn(12, 5, generator=g, dtype=DT)
    scales = torch.rand(5, generator=g, dtype=DT) + 0.5
    den = LinearGaussianDenoiser(mean, basis, scales, isotropic_var=0.01)
    cov = (basis * scales**2) @ basis.T + 0.01 * torch.eye(12, dtype=DT)
    torch.testing.assert_close(den.covariance(), cov)
    x = torch.randn(4, 3, 4, generator=g, dtype=DT)
    sigma = torch.tensor([0.1, 0.2, 0.5, 1.0], dtype=DT)
    expected = torch.stack([
        mean.reshape(-1) + cov @ torch.linalg.solve(cov + s**2 * torch.eye(12, dtype=DT),
                                                    xi.reshape(-1) - mean.reshape(-1))
        for xi, s in zip(x, sigma)]).reshape(4, 3, 4)
    torch.testing.assert_close(den(x, sigma), expected)


@pytest.mark.parametrize("sigma", [1e-1, 1e-2, 1e-3])
def test_linear_gaussian_jacobian_tends_to_projector(sigma):
    g = torch.Generator().manual_seed(6)
    basis = torch.randn(8, 3, generator=g, dtype=DT)
    den = LinearGaussianDenoiser(torch.zeros(8, dtype=DT), basis)
    x = torch.randn(1, 8, generator=g, dtype=DT)
    jac = torch.autograd.functional.jacobian(lambda z: den(z, sigma), x).reshape(8, 8)
    q, _ = torch.linalg.qr(basis)
    proj = q @ q.T
    torch.testing.assert_close(den.projector(), proj)
    # ‖D' − P‖₂ = max_i σ²/(λ_i + σ²) ≤ σ²/λ_min: O(σ²).
    lam_min = torch.linalg.svdvals(basis).min() ** 2
    assert torch.linalg.matrix_norm(jac - proj, ord=2) <= 1.01 * sigma**2 / lam_min


def test_from_samples_recovers_subspace():
    g = torch.Generator().manual_seed(7)
    basis = torch.randn(10, 4, generator=g, dtype=DT)
    mean = torch.randn(10, generator=g, dtype=DT)
    data = mean + torch.randn(500, 4, generator=g, dtype=DT) @ basis.T
    den = LinearGaussianDenoiser.from_samples(data)
    assert den.rank == 4
    q, _ = torch.linalg.qr(basis)
    torch.testing.assert_close(den.projector(), q @ q.T)
    torch.testing.assert_close(den(data[:3], 1e-9), data[:3])
    assert LinearGaussianDenoiser.from_samples(data, rank=2).rank == 2
    cov = torch.cov(data.T)
    den_cov = LinearGaussianDenoiser.from_covariance(data.mean(0), cov)
    assert den_cov.rank == 4
    torch.testing.assert_close(den_cov.covariance(), cov)


def test_modules_move_with_to():
    den = EmpiricalDenoiser(torch.randn(10, 3))
    assert {n for n, _ in den.named_buffers()} == {"center", "points", "sq_norms"}
    den64 = den.to(DT)
    assert den64.points.dtype == DT
    lg = LinearGaussianDenoiser.from_samples(torch.randn(10, 3)).to(DT)
    assert lg.vectors.dtype == DT


def test_errors():
    with pytest.raises(DimensionError):
        EmpiricalDenoiser(torch.randn(5))
    with pytest.raises(NonFiniteError):
        EmpiricalDenoiser(torch.tensor([[math.nan, 1.0]]))
    with pytest.raises(TypeError):
        EmpiricalDenoiser([[1.0, 2.0]])
    den = EmpiricalDenoiser(torch.randn(5, 3))
    with pytest.raises(DimensionError):
        den(torch.randn(2, 4), 0.1)
    with pytest.raises(DimensionError):
        LinearGaussianDenoiser(torch.zeros(3), torch.randn(4, 2))
    with pytest.raises(DimensionError):
        LinearGaussianDenoiser(torch.zeros(3), torch.randn(3, 2), torch.ones(3))
    with pytest.raises(DimensionError):
        LinearGaussianDenoiser.from_samples(torch.randn(10, 3), rank=4)

"""BehaviorManifold: projection, VJP against explicit Jacobians, no parameter gradients, errors."""

import math

import pytest
import torch

from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError
from ddcontrol.manifold import BehaviorManifold
from ddcontrol.score import EmpiricalDenoiser, LinearGaussianDenoiser

DT = torch.float64


class TinyNet(torch.nn.Module):
    """A small smooth network denoiser with trainable parameters (requires_grad=True)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, d)).to(DT)

    def forward(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]).reshape(-1, 1)
        return x + self.net(torch.cat([x, s], dim=1))


@pytest.fixture(params=["empirical", "linear", "net"])
def manifold(request):
    g = torch.Generator().manual_seed(0)
    if request.param == "empirical":
        den = EmpiricalDenoiser(torch.randn(50, 6, generator=g, dtype=DT), chunk_size=16)
    elif request.param == "linear":
        den = LinearGaussianDenoiser.from_samples(torch.randn(50, 3, generator=g, dtype=DT)
                                                  @ torch.randn(3, 6, generator=g, dtype=DT))
    else:
        den = TinyNet(6)
    return BehaviorManifold(den, sigma=0.7)


def test_proju_equals_explicit_jacobian_transpose(manifold):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=DT)
    u = torch.randn(4, 6, generator=g, dtype=DT)
    jac = torch.autograd.functional.jacobian(
        lambda z: manifold.denoiser(z, manifold.sigma), x)  # (4, 6, 4, 6)
    expected = torch.stack([jac[b, :, b, :].T @ u[b] for b in range(4)])
    torch.testing.assert_close(manifold.proju(x, u), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(manifold.egrad2rgrad(x, u), expected, rtol=1e-6, atol=1e-6)


def test_projx_and_vjp_is_one_landing_evaluation(manifold):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, generator=g, dtype=DT)
    c = torch.randn(6, generator=g, dtype=DT)

    def grad_f(p):  # ∇ of f(p) = ½‖p − c‖², via autograd to check g_fn may use it
        pg = p.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(0.5 * ((pg - c) ** 2).sum(), pg)
        return gr

    p, r = manifold.projx_and_vjp(x, grad_f)
    torch.testing.assert_close(p, manifold.projx(x))
    torch.testing.assert_close(r, manifold.proju(x, p - c))
    assert not p.requires_grad and not r.requires_grad


def test_no_parameter_gradients():
    den = TinyNet(6)
    man = BehaviorManifold(den, 0.5)
    x = torch.randn(2, 6, dtype=DT)
    man.proju(x, torch.ones_like(x))
    man.projx_and_vjp(x, lambda p: p)
    assert all(p.grad is None for p in den.parameters())
    assert all(p.requires_grad for p in den.parameters())


def test_dist_retr_and_membership():
    basis = torch.eye(4, dtype=DT)[:, :2]
    man = BehaviorManifold(LinearGaussianDenoiser(torch.zeros(4, dtype=DT), basis), 1e-8)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 0.0, 0.0]], dtype=DT)
    torch.testing.assert_close(man.dist(x), torch.tensor([5.0, 0.0], dtype=DT))
    assert not man.check_point_on_manifold(x)
    assert man.check_point_on_manifold(x[1:])
    torch.testing.assert_close(man.retr(x[1:], torch.ones(1, 4, dtype=DT)),
                               torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=DT))
    # Per-sample sigma override.
    out = man.projx(x, sigma=torch.tensor([1e-8, 1e-8], dtype=DT))
    torch.testing.assert_close(out[:, 2:], torch.zeros(2, 2, dtype=DT))


def test_errors():
    den = EmpiricalDenoiser(torch.randn(5, 3))
    with pytest.raises(ConfigurationError):
        BehaviorManifold(den, 0.0)
    with pytest.raises(ConfigurationError):
        BehaviorManifold(den, -1.0)
    with pytest.raises(ConfigurationError):
        BehaviorManifold(den, math.nan)
    with pytest.raises(TypeError):
        BehaviorManifold("not callable", 0.1)
    man = BehaviorManifold(den, 0.1)
    with pytest.raises(DimensionError):
        man.projx(torch.randn(3))
    with pytest.raises(NonFiniteError):
        man.projx(torch.tensor([[math.nan, 0.0, 0.0]]))
    with pytest.raises(DimensionError):
        man.proju(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(DimensionError):
        man.projx(torch.randn(2, 3), sigma=torch.ones(3))
    with pytest.raises(ConfigurationError):
        man.projx(torch.randn(2, 3), sigma=torch.tensor([0.1, -0.1]))
    bad = BehaviorManifold(lambda x, s: x[:, :1], 0.1)
    with pytest.raises(DimensionError):
        bad.projx(torch.randn(2, 3))
    detached = BehaviorManifold(lambda x, s: x.detach() * 0.5, 0.1)
    with pytest.raises(ConfigurationError):
        detached.proju(torch.randn(2, 3), torch.randn(2, 3))

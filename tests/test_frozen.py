"""The residual MLP at a fixed σ with hand-written VJPs equals autograd through the module."""

from __future__ import annotations

import pytest
import torch

from ddcontrol.errors import DimensionError
from ddcontrol.manifold import BehaviorManifold, Linearization
from ddcontrol.score.checkpoint import build_denoiser
from ddcontrol.score.frozen import ExplicitLinearization


def make(linear_skip: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    den = build_denoiser({"arch": "mlp", "window_length": 6, "input_dim": 1, "output_dim": 2,
                          "sigma_data": 1.0,
                          "net_kwargs": {"width": 16, "depth": 3, "emb_dim": 8,
                                         "linear_skip": linear_skip}})
    net = den.net
    # Every zero-initialised layer randomised, so that each term of the chain rule is exercised.
    for layer in [net.out] + ([net.skip, net.skip_gain] if linear_skip else []):
        torch.nn.init.normal_(layer.weight, std=0.3)
        torch.nn.init.normal_(layer.bias, std=0.3)
    return den.double()


def autograd_linearization(den: torch.nn.Module, x: torch.Tensor, sigma: float) -> Linearization:
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        return Linearization(xg, den(xg, sigma))


@pytest.mark.parametrize("linear_skip", [True, False])
@pytest.mark.parametrize("sigma", [0.02, 0.3, 2.0])
def test_forward_and_vjps_equal_autograd(linear_skip: bool, sigma: float) -> None:
    den = make(linear_skip)
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    fast = den.linearize(x, sigma)
    ref = autograd_linearization(den, x, sigma)
    assert isinstance(fast, ExplicitLinearization)
    torch.testing.assert_close(fast.point, ref.point, rtol=1e-12, atol=1e-12)
    u = torch.randn(4, 3, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(fast.vjps(u), ref.vjps(u, retain_graph=True), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(fast.vjp(u[0]), ref.vjp(u[0]), rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the no-grad forward at a float σ takes the same path
        torch.testing.assert_close(den(x, sigma), ref.point, rtol=1e-12, atol=1e-12)


def test_vjps_in_chunks_equal_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cotangents split into chunks of rows (a large batch of pinned rows) give the same
    numbers as one product over all of them, including a last, shorter chunk."""
    import ddcontrol.score.frozen as frozen_module

    den = make()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    u = torch.randn(7, 5, 6, 3, dtype=torch.float64)
    lin = den.linearize(x, 0.1)
    whole = lin.vjps(u)
    for rows in (1, 10, 15, 34):  # 1 and 2 cotangents per chunk (5 rows each), 3, 6
        monkeypatch.setattr(frozen_module, "VJP_ROWS", rows)
        torch.testing.assert_close(lin.vjps(u), whole, rtol=0, atol=1e-14)
    ref = autograd_linearization(den, x, 0.1)
    torch.testing.assert_close(whole, ref.vjps(u, retain_graph=True), rtol=1e-10, atol=1e-12)


def test_full_jacobian_matches_torch_func() -> None:
    den = make()
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    jac = torch.func.jacrev(lambda z: den(z, 0.1))(x.clone().requires_grad_(True))
    jac = jac.reshape(18, 18)
    eye = torch.eye(18, dtype=torch.float64).reshape(18, 1, 6, 3)
    rows = den.linearize(x, 0.1).vjps(eye).reshape(18, 18)  # row i: e_iᵀ v'(x)
    torch.testing.assert_close(rows, jac, rtol=1e-10, atol=1e-12)


def test_manifold_uses_it_and_cache_follows_parameter_updates() -> None:
    den = make()
    manifold = BehaviorManifold(den, 0.1)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    assert isinstance(manifold.linearize(x), ExplicitLinearization)
    # A tensor σ (per-sample noise levels) takes autograd.
    assert isinstance(manifold.linearize(x, torch.full((2,), 0.1, dtype=torch.float64)),
                      Linearization)
    before = den.linearize(x, 0.1).point
    with torch.no_grad():  # an in-place update, as an optimiser step makes
        for p in den.parameters():
            p.add_(0.01)
    after = den.linearize(x, 0.1).point
    torch.testing.assert_close(after, autograd_linearization(den, x, 0.1).point, rtol=1e-12,
                               atol=1e-12)
    assert not torch.allclose(before, after)


def test_float32_model_keeps_input_dtype_and_shapes_are_checked() -> None:
    den = make().float()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    lin = den.linearize(x, 0.1)
    assert lin.point.dtype == torch.float64
    assert lin.vjp(torch.ones_like(x)).dtype == torch.float64
    with pytest.raises(DimensionError):
        den.linearize(torch.randn(2, 5, 3), 0.1)
    with pytest.raises(DimensionError):
        lin.vjps(torch.ones(2, 6, 3))


def test_unet_has_no_explicit_path() -> None:
    den = build_denoiser({"arch": "unet", "window_length": 8, "input_dim": 1, "output_dim": 1,
                          "sigma_data": 1.0,
                          "net_kwargs": {"base_channels": 8, "channel_mult": (1, 2),
                                         "emb_dim": 8}})
    assert den.linearize(torch.randn(1, 8, 2), 0.1) is None
    assert isinstance(BehaviorManifold(den, 0.1).linearize(torch.randn(1, 8, 2)), Linearization)


@pytest.mark.parametrize("batch", [1, 4])
def test_rows_equal_the_vjps_of_unit_cotangents(batch: int, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    """The Jacobian's rows at scattered coordinates, computed from gathers of the output and
    skip layers, equal the VJPs of the unit cotangents: exactly in the network's dtype (also
    split into chunks of rows), and to bfloat16's rounding of the hidden layers' products."""
    import ddcontrol.score.frozen as frozen_module

    den = make()
    x = torch.randn(batch, 6, 3, dtype=torch.float64)
    lin = den.linearize(x, 0.2)
    index = torch.tensor([0, 4, 5, 11, 17])
    cot = torch.zeros(index.numel(), batch, 18, dtype=torch.float64)
    cot[torch.arange(index.numel()), :, index] = 1.0
    ref = lin.vjps(cot.reshape(-1, batch, 6, 3))
    rows = lin.rows(index)
    assert rows.shape == (index.numel(), batch, 6, 3) and rows.dtype == torch.float64
    torch.testing.assert_close(rows, ref, rtol=0, atol=1e-12)
    monkeypatch.setattr(frozen_module, "VJP_ROWS", 2 * batch)  # chunks of 2 rows, one of 1
    torch.testing.assert_close(lin.rows(index), ref, rtol=0, atol=1e-12)
    low = lin.rows(index, torch.bfloat16)
    assert low.dtype == torch.float64
    # The identity part (c_skip on the diagonal) is exact; the network part is within
    # bfloat16's relative precision (2^-8) of its own size.
    network = ref - den.frozen(0.2).c_skip * cot.reshape(ref.shape)
    err = (low - ref).abs().max()
    assert 0 < err <= 2 ** -7 * network.abs().max()

"""The conditioned solver's batched Jacobian rows: equal to one VJP per row, same iterates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddcontrol.errors import DimensionError, UnknownNameError
from ddcontrol.manifold import BehaviorManifold, Linearization
from ddcontrol.score import EmpiricalDenoiser, LinearGaussianDenoiser
from ddcontrol.solvers import Problem
from ddcontrol.solvers.conditioned import ConditionedDRGD

DT = torch.float64
L, C = 6, 2  # window length and channels of the toy windows


def _denoisers() -> dict[str, torch.nn.Module]:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(40, L, C, generator=g, dtype=DT)
    basis = torch.linalg.qr(torch.randn(L * C, 5, generator=g, dtype=DT))[0]
    return {"empirical": EmpiricalDenoiser(data),
            "linear": LinearGaussianDenoiser(torch.zeros(L, C, dtype=DT), basis,
                                             torch.full((5,), 2.0, dtype=DT))}


def _pinned_problem(seed: int, lower: torch.Tensor | None = None):
    """The empirical denoiser's manifold at σ 0.3, a quadratic cost toward a random target, the
    first two rows pinned to random values, and a random generator for start points."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(L, C, generator=g, dtype=DT)
    mask = torch.zeros(L, C, dtype=torch.bool)
    mask[:2] = True
    values = torch.randn(L, C, generator=g, dtype=DT)
    upper = None if lower is None else -lower
    problem = Problem(BehaviorManifold(_denoisers()["empirical"], 0.3),
                      lambda x: ((x - target) ** 2).sum(dim=(1, 2)), lambda x: 2 * (x - target),
                      lower=lower, upper=upper)
    return problem, mask, values, g


class _NoVmap(torch.autograd.Function):
    """Identity whose backward branches on a tensor's value, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad if bool((grad == grad).all()) else grad * 0


@pytest.mark.parametrize("name", ["empirical", "linear"])
def test_batched_jacobian_rows_equal_one_vjp_per_row(name):
    den = _denoisers()[name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, L, C, generator=g, dtype=DT)
    mask = torch.zeros(L, C, dtype=torch.bool)
    mask[:2] = True
    mask[2, 1] = True
    index = mask.reshape(-1).nonzero().squeeze(1)
    cot = torch.zeros(index.numel() + 1, 3, L * C, dtype=DT)
    cot[0] = torch.randn(3, L * C, generator=g, dtype=DT)
    cot[torch.arange(1, index.numel() + 1), :, index] = 1.0
    cot = cot.reshape(-1, 3, L, C)
    lin = BehaviorManifold(den, 0.3).linearize(x)
    batched = lin.vjps(cot, retain_graph=True)
    loop = lin.vjps(cot, vectorize=False)
    assert batched.shape == cot.shape
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-10)
    # And both are the rows of the full Jacobian (per batch element).
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: den(z[None], 0.3)[0], x[b])
        rows = jac.reshape(L * C, L * C)[index]
        torch.testing.assert_close(loop[1:, b].reshape(-1, L * C), rows, rtol=0, atol=1e-10)
    with pytest.raises(DimensionError):
        lin.vjps(cot[:, :2])


@pytest.mark.parametrize("momentum, jacobian_every, chord", [
    (0.0, 1, "exact"), (0.9, 1, "exact"), (0.9, 3, "exact"), (0.9, 3, "reused")])
def test_solver_iterates_equal_the_loop_version(momentum, jacobian_every, chord, monkeypatch):
    lower = torch.full((L, C), -torch.inf, dtype=DT)
    lower[2:, 0] = -0.2
    problem, mask, values, g = _pinned_problem(2, lower)
    x0 = torch.randn(2, L, C, generator=g, dtype=DT)

    def solve():
        solver = ConditionedDRGD(mask, values, step_size=0.2, momentum=momentum, damping=0.05,
                                 max_step=0.5, jacobian_every=jacobian_every, chord=chord,
                                 max_iterations=25, min_gradient_norm=0.0, check_every=10)
        return solver.run(problem, initial_point=x0)

    fast = solve()
    vjps = Linearization.vjps
    calls: list[bool] = []

    def loop_only(self, u, *, vectorize=True, retain_graph=False):
        calls.append(vectorize)
        return vjps(self, u, vectorize=False, retain_graph=retain_graph)

    monkeypatch.setattr(Linearization, "vjps", loop_only)
    slow = solve()
    # One backward per exact iteration; two (∇f, momentum, pull; then the Eᵀλ) per "exact"
    # chord one, one per "reused" chord one.
    extra = (sum(1 for k in range(26) if k % jacobian_every)
             if jacobian_every > 1 and chord == "exact" else 0)
    assert len(calls) == 26 + extra
    torch.testing.assert_close(fast.point, slow.point, rtol=0, atol=1e-10)
    for key in ("cost", "rgrad_norm", "dist"):
        torch.testing.assert_close(torch.as_tensor(fast.history[key]),
                                   torch.as_tensor(slow.history[key]), rtol=0, atol=1e-10)
    assert float((fast.point - x0).abs().max()) > 1e-2  # the solver did move


def test_denoiser_that_vmap_cannot_batch_falls_back_to_the_loop():
    den = _denoisers()["linear"]

    def wrapped(x, sigma):
        return den(_NoVmap.apply(x), sigma)

    x = torch.randn(2, L, C, generator=torch.Generator().manual_seed(3), dtype=DT)
    cot = torch.randn(4, 2, L, C, generator=torch.Generator().manual_seed(4), dtype=DT)
    lin = BehaviorManifold(wrapped, 0.3).linearize(x)
    with pytest.raises(RuntimeError):
        lin.vjps(cot, retain_graph=True)
    target = torch.zeros(L, C, dtype=DT)
    mask = torch.zeros(L, C, dtype=torch.bool)
    mask[0] = True
    kwargs = {"step_size": 0.2, "max_iterations": 10, "min_gradient_norm": 0.0}
    cost = lambda z: ((z - target) ** 2).sum(dim=(1, 2))  # noqa: E731
    got = ConditionedDRGD(mask, x[0], **kwargs).run(
        Problem(BehaviorManifold(wrapped, 0.3), cost), initial_point=x)
    ref = ConditionedDRGD(mask, x[0], **kwargs).run(
        Problem(BehaviorManifold(den, 0.3), cost), initial_point=x)
    torch.testing.assert_close(got.point, ref.point, rtol=0, atol=1e-10)


@pytest.mark.parametrize("momentum, chord", [(0.0, "exact"), (0.9, "exact"), (0.0, "reused"),
                                             (0.9, "reused")])
def test_chord_iterations_keep_exact_directions(momentum, chord):
    """Reusing the k × k inverse (``jacobian_every > 1``; with ``chord="reused"`` the rows too)
    changes nothing where the Jacobian is constant (a linear-Gaussian manifold); on a curved one
    (a smooth empirical density) the path differs but the fixed point, where the rows are
    refreshed at the point itself, is the same."""
    g = torch.Generator().manual_seed(5)
    target = torch.randn(L, C, generator=g, dtype=DT)
    mask = torch.zeros(L, C, dtype=torch.bool)
    mask[:2] = True
    mask[2, 1] = True
    values = torch.randn(L, C, generator=g, dtype=DT)
    x0 = torch.randn(3, L, C, generator=g, dtype=DT)
    points = {}
    for name, sigma in (("linear", 0.3), ("empirical", 2.0)):
        problem = Problem(BehaviorManifold(_denoisers()[name], sigma),
                          lambda x: ((x - target) ** 2).sum(dim=(1, 2)), lambda x: 2 * (x - target))
        for every, iterations in ((1, 3), (4, 3), (1, 40), (4, 40)):
            solver = ConditionedDRGD(mask, values, step_size=0.2, momentum=momentum,
                                     damping=0.05, jacobian_every=every, chord=chord,
                                     max_iterations=iterations, min_gradient_norm=0.0)
            points[name, every, iterations] = solver.run(problem, initial_point=x0).point
    for n in (3, 40):
        torch.testing.assert_close(points["linear", 4, n], points["linear", 1, n], rtol=0,
                                   atol=1e-10)
    assert float((points["linear", 1, 40] - x0).abs().max()) > 1e-2
    assert float((points["empirical", 4, 3] - points["empirical", 1, 3]).abs().max()) > 1e-3
    torch.testing.assert_close(points["empirical", 4, 40], points["empirical", 1, 40], rtol=0,
                               atol=1e-5)


def _strict_solve(monkeypatch):
    """torch.linalg.solve that raises on a non-finite matrix, as LAPACK's invalid pivots make
    it do on CPU for some batch sizes and k of a few hundred (not reproducibly)."""
    solve = torch.linalg.solve

    def strict(a, b, *args, **kwargs):
        if not bool(torch.isfinite(a).all()):
            raise RuntimeError("Pivots given to lu_solve must all be greater or equal to 1")
        return solve(a, b, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "solve", strict)


def test_damped_pinv_gives_a_non_finite_block_nan_and_the_others_their_inverse(monkeypatch):
    from ddcontrol.solvers.conditioned import damped_pinv

    _strict_solve(monkeypatch)
    g = torch.Generator().manual_seed(0)
    k = 30
    gram = torch.randn(4, k, k, generator=g, dtype=DT)
    bad = gram.clone()
    bad[1, 3, 4] = float("nan")
    bad[2] = float("inf")
    out = damped_pinv(bad, 0.05)
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).all()
    assert torch.equal(out[[0, 3]], damped_pinv(gram[[0, 3]], 0.05))
    gt = gram[0].T
    exact = torch.linalg.solve(gt @ gram[0] + 0.05 ** 2 * torch.eye(k, dtype=DT), gt)
    torch.testing.assert_close(out[0], exact, rtol=0, atol=1e-12)


def test_damped_pinv_treats_an_overflowing_float32_block_as_diverged(monkeypatch):
    """Finite entries whose products overflow inside the factorisation count as diverged."""
    from ddcontrol.solvers.conditioned import damped_pinv

    _strict_solve(monkeypatch)
    gram = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    gram[1] *= 1e17  # GᵀG ~ 1e34: finite in float32, its LU's products are not
    out = damped_pinv(gram, 0.05)
    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("dtype, damping", [(torch.float32, 0.05), (torch.float32, 0.01),
                                            (torch.float32, 1e-3), (torch.float64, 1e-3)])
def test_damped_pinv_matches_the_normal_equations_on_rank_deficient_blocks(dtype, damping):
    """Cholesky where the damping dominates the dtype's rounding, LU below (float32 at 1e-3):
    rank-deficient blocks, as redundant pinned coordinates give, stay finite either way and
    match a float64 solve of the normal equations to the accuracy the conditioning allows."""
    from ddcontrol.solvers.conditioned import CHOLESKY_MIN_DAMPING_EPS, damped_pinv

    g = torch.Generator().manual_seed(2)
    k, rank = 40, 20
    a = torch.randn(64, k, rank, generator=g, dtype=torch.float64) @ torch.randn(
        64, rank, k, generator=g, dtype=torch.float64)
    gram = a / a.abs().amax(dim=(1, 2), keepdim=True)  # a projector block's scale: entries <= 1
    out = damped_pinv(gram.to(dtype), damping)
    assert torch.isfinite(out).all()
    gt = gram.transpose(1, 2)
    exact = torch.linalg.solve(gt @ gram + damping ** 2 * torch.eye(k, dtype=torch.float64), gt)
    # The damped system's conditioning is about 1/λ²: the dtype's rounding grows by that much
    # (float32 at 1e-3 has no accurate answer at all, by either factorisation: finite only).
    bound = 50 * torch.finfo(dtype).eps / damping ** 2
    if bound < 1:
        assert (out.double() - exact).abs().max() <= bound * exact.abs().max()
    cholesky = damping ** 2 >= CHOLESKY_MIN_DAMPING_EPS * torch.finfo(dtype).eps
    assert cholesky == (damping >= 0.01 or dtype == torch.float64)
    if not cholesky:
        # where Cholesky would have failed: the reason for the LU path
        lhs = gt.to(dtype) @ gram.to(dtype) + damping ** 2 * torch.eye(k, dtype=dtype)
        assert (torch.linalg.cholesky_ex(lhs)[1] != 0).any()


@pytest.mark.parametrize("jacobian_every", [1, 3])
def test_a_problem_whose_denoiser_diverges_does_not_stop_the_batch(monkeypatch, jacobian_every):
    # One problem's denoiser output turns NaN after a few calls: the solve finishes, reports
    # that problem diverged (with its best finite iterate) and the others as if alone.
    _strict_solve(monkeypatch)
    den = _denoisers()["linear"]
    mask = torch.zeros(L, C, dtype=torch.bool)
    mask[:2] = True
    calls = {"n": 0}

    def breaking(x, sigma):
        calls["n"] += 1
        out = den(x, sigma)
        if calls["n"] > 3:
            out = torch.cat((out[:1], out[1:2] * torch.nan, out[2:]))
        return out

    x0 = torch.randn(3, L, C, generator=torch.Generator().manual_seed(3), dtype=DT)
    zero = lambda z: torch.zeros(z.shape[0], dtype=z.dtype)  # noqa: E731

    def solve(denoiser, x):
        solver = ConditionedDRGD(mask, x.clone(), step_size=1.0, max_iterations=12,
                                 min_gradient_norm=0.0, record_history=False, check_every=4,
                                 jacobian_every=jacobian_every)
        return solver.run(Problem(BehaviorManifold(denoiser, 0.1), zero, torch.zeros_like),
                          initial_point=x)

    res = solve(breaking, x0)
    assert res.stop_reasons[1] == "diverged"
    assert torch.isfinite(res.point).all()
    alone = solve(den, x0[[0, 2]])
    torch.testing.assert_close(res.point[[0, 2]], alone.point, rtol=0, atol=1e-12)


def test_conditioned_solver_rejects_an_unknown_chord():
    from ddcontrol.errors import UnknownNameError

    mask = torch.zeros(L, C, dtype=torch.bool)
    mask[0] = True
    with pytest.raises(UnknownNameError, match="chord must be one of"):
        ConditionedDRGD(mask, torch.zeros(L, C, dtype=DT), jacobian_every=3, chord="stale")


def test_final_gradient_off_skips_the_last_backward_pass_only(monkeypatch):
    """``final_gradient=False``: the same iterates and point, one backward pass fewer, and a NaN
    gradient norm for the last iterate only."""
    problem, mask, values, g = _pinned_problem(7)
    x0 = torch.randn(2, L, C, generator=g, dtype=DT)
    vjps = Linearization.vjps
    calls: list[int] = []

    def counting(self, u, **kwargs):
        calls.append(u.shape[0])
        return vjps(self, u, **kwargs)

    monkeypatch.setattr(Linearization, "vjps", counting)
    runs = {}
    for final in (True, False):
        calls.clear()
        solver = ConditionedDRGD(mask, values, step_size=0.2, momentum=0.9, damping=0.05,
                                 jacobian_every=3, chord="reused", final_gradient=final,
                                 max_iterations=7, min_gradient_norm=0.0)
        runs[final] = (solver.run(problem, initial_point=x0), len(calls))
    (full, n_full), (short, n_short) = runs[True], runs[False]
    assert n_short == n_full - 1
    torch.testing.assert_close(short.point, full.point, rtol=0, atol=0)
    np.testing.assert_array_equal(short.history["cost"], full.history["cost"])
    np.testing.assert_array_equal(short.history["rgrad_norm"][:-1], full.history["rgrad_norm"][:-1])
    assert np.isnan(short.history["rgrad_norm"][-1]).all()
    assert np.isfinite(full.history["rgrad_norm"]).all()


def test_rows_in_bfloat16_reach_the_exact_rows_fixed_point(monkeypatch):
    """A trained-network-like denoiser with explicit rows: the pinned rows' products in
    bfloat16 perturb only the directions, so the iterates stay within bfloat16's rounding of
    the exact ones and the pinned coordinates still land on their values; below ROWS_MIN rows
    they ride with the gradient's pass in the network's dtype (the same iterates); 'auto'
    resolves to the machine's fast dtype, and an unknown value is rejected."""
    import ddcontrol.solvers.conditioned as conditioned_module
    from ddcontrol.score.checkpoint import build_denoiser
    from ddcontrol.solvers.conditioned import fast_row_dtype

    torch.manual_seed(0)
    den = build_denoiser({"arch": "mlp", "window_length": L, "input_dim": 1, "output_dim": 1,
                          "sigma_data": 1.0, "net_kwargs": {"width": 32, "depth": 2}})
    for layer in den.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.5 / layer.in_features ** 0.5)
    den.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    target = torch.randn(L, C, generator=g)
    mask = torch.zeros(L, C, dtype=torch.bool)
    mask[:2] = True
    values = 0.3 * torch.randn(L, C, generator=g)
    problem = Problem(BehaviorManifold(den, 0.1), lambda x: ((x - target) ** 2).sum(dim=(1, 2)),
                      lambda x: 2 * (x - target))
    x0 = 0.3 * torch.randn(3, L, C, generator=g)

    def solve(row_dtype, damping=0.05):
        return ConditionedDRGD(mask, values, step_size=0.2, momentum=0.9, damping=damping,
                               max_step=0.5, row_dtype=row_dtype, max_iterations=40,
                               min_gradient_norm=0.0).run(problem, initial_point=x0)

    exact, low = solve(None), solve(torch.bfloat16)
    assert mask.sum() * x0.shape[0] < conditioned_module.ROWS_MIN
    torch.testing.assert_close(low.point, exact.point, rtol=0, atol=0)  # 12 rows: no own pass
    monkeypatch.setattr(conditioned_module, "ROWS_MIN", 1)
    explicit, low = solve(None), solve(torch.bfloat16)
    torch.testing.assert_close(explicit.point, exact.point, rtol=0, atol=1e-5)
    assert float((exact.point - x0).abs().max()) > 0.1  # it moved
    assert float((low.point - exact.point).abs().max()) < 1e-2
    assert float((low.point[:, mask] - values[mask]).abs().max()) < 1e-2
    assert float((low.point - exact.point).abs().max()) > 0  # the bfloat16 path did run
    expected = fast_row_dtype("cpu")
    assert expected in (None, torch.bfloat16)
    torch.testing.assert_close(solve("auto").point, solve(expected).point, rtol=0, atol=0)
    # Below AUTO_ROW_DAMPING (a lightly damped solve amplifies the rounding) and in float64,
    # "auto" keeps the network's dtype.
    light = conditioned_module.AUTO_ROW_DAMPING / 5
    torch.testing.assert_close(solve("auto", light).point, solve(None, light).point, rtol=0,
                               atol=0)
    assert float((solve(torch.bfloat16, light).point - solve(None, light).point).abs().max()) > 0
    with pytest.raises(UnknownNameError):
        ConditionedDRGD(mask, values, row_dtype="half-ish")
    # The tracker's rule (one function): names accepted, non-floating dtypes rejected.
    assert ConditionedDRGD(mask, values, row_dtype="bfloat16").row_dtype is torch.bfloat16
    with pytest.raises(UnknownNameError, match="row_dtype"):
        ConditionedDRGD(mask, values, row_dtype=torch.int64)

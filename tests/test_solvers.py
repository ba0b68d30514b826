"""Solvers converge to known constrained minimisers; bounds, batches, divergence and errors."""

import math

import numpy as np
import pytest
import torch

from ddcontrol.errors import ConfigurationError, DimensionError, NonFiniteError
from ddcontrol.manifold import BehaviorManifold
from ddcontrol.score import EmpiricalDenoiser, LinearGaussianDenoiser
from ddcontrol.solvers import DLF, DRGD, AcceleratedDRGD, Problem, SolverResult

DT = torch.float64


D_AMB, K_SUB, BATCH = 12, 4, 3


def make_solver(name: str, step: float, **kw):
    """The solvers under test, each with a step ≈ 1/L."""
    if name == "drgd":
        return DRGD(step, **kw)
    if name == "drgd_exact":
        return DRGD(step, exact_vjp=True, **kw)
    if name == "drgd_armijo":
        return DRGD(step, line_search=True, **kw)
    if name == "dlf":
        return DLF(step, landing=0.5 / step, **kw)
    if name == "nesterov":
        return AcceleratedDRGD(step, **kw)
    if name == "heavy_ball":
        return AcceleratedDRGD(step, momentum=0.9, nesterov=False, **kw)
    raise ValueError(name)


SOLVERS = ["drgd", "drgd_exact", "drgd_armijo", "dlf", "nesterov", "heavy_ball"]


@pytest.fixture(scope="module")
def subspace_quadratic():
    """min ½(x − c_b)ᵀA(x − c_b) over the affine subspace x = mean + U z, one c_b per problem.

    The closed-form denoiser has prior std 10 on the subspace (λ = 100) and σ = 1e-3. At finite σ
    it shrinks toward the mean, D = mean + S(x − mean) with S = U diag(λ/(λ+σ²)) Uᵀ, so a
    fixed point of DRGD, p = v(p − γ S ∇f(p)), solves ∇f + (1 − s)/(γ s²) (p − mean) = 0 on the
    subspace: the true minimiser of f plus a ridge of weight ≈ σ²/(λγ) = 1e-8/γ. With γ = 1/L
    that is 1e-8·L, and it moves the minimiser by a relative 1e-8·κ ≈ 1e-6 ≪ 1e-3 (κ ≤ 100 the
    condition number on the subspace). DLF gets the same order with the opposite sign
    (weight −η σ²/λ, η h < 2), and momentum a smaller one (the ridge is divided by 1/(1 − β)).
    """
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D_AMB, K_SUB, generator=g, dtype=DT))[0]
    mean = torch.randn(D_AMB, generator=g, dtype=DT)
    den = LinearGaussianDenoiser(mean, basis, scales=torch.full((K_SUB,), 10.0, dtype=DT))
    man = BehaviorManifold(den, sigma=1e-3)
    q = torch.linalg.qr(torch.randn(D_AMB, D_AMB, generator=g, dtype=DT))[0]
    a = q @ torch.diag(torch.logspace(0, 2, D_AMB, dtype=DT)) @ q.T
    c = 3 * torch.randn(BATCH, D_AMB, generator=g, dtype=DT)
    # KKT: x = mean + U z with UᵀA U z = UᵀA (c − mean).
    h = basis.T @ a @ basis
    z = torch.linalg.solve(h, (basis.T @ a @ (c - mean).T)).T
    x_star = mean + z @ basis.T
    lip = float(torch.linalg.eigvalsh(h).max())

    def cost(x):
        r = x - c
        return 0.5 * ((r @ a) * r).sum(dim=1)

    return man, cost, (lambda x: (x - c) @ a), x_star, lip


@pytest.mark.parametrize("name", SOLVERS)
def test_subspace_quadratic_reaches_kkt_minimiser(subspace_quadratic, name):
    man, cost, egrad, x_star, lip = subspace_quadratic
    x0 = torch.zeros(BATCH, D_AMB, dtype=DT)  # off the subspace: the first projection lands it
    # The ridge bias leaves ‖rgrad‖ ≈ 1e-8·L·‖p − mean‖ ≈ 3e-6 at the fixed point: stop above.
    solver = make_solver(name, 1.0 / lip, max_iterations=3000, min_gradient_norm=1e-4)
    res = solver.run(Problem(man, cost, egrad), initial_point=x0)
    assert isinstance(res, SolverResult)
    assert res.stop_reason == "min_gradient_norm", res.stop_reasons
    rel = torch.linalg.vector_norm(res.point - x_star, dim=1) / torch.linalg.vector_norm(x_star,
                                                                                          dim=1)
    assert rel.max() < 1e-3, (name, rel)
    torch.testing.assert_close(res.cost, cost(res.point))


def test_autograd_cost_matches_explicit_gradient(subspace_quadratic):
    man, cost, egrad, x_star, lip = subspace_quadratic
    x0 = torch.zeros(BATCH, D_AMB, dtype=DT)
    kw = dict(max_iterations=50, min_gradient_norm=0.0)
    a = DRGD(1 / lip, **kw).run(Problem(man, cost), initial_point=x0)
    b = DRGD(1 / lip, **kw).run(Problem(man, cost, egrad), initial_point=x0)
    torch.testing.assert_close(a.point, b.point)
    np.testing.assert_allclose(a.history["cost"], b.history["cost"], rtol=1e-12)


@pytest.fixture(scope="module")
def circle():
    """Unit circle sampled every h = 2π/720 rad, EmpiricalDenoiser at σ = 0.1 (float64)."""
    theta = torch.arange(720, dtype=DT) * (2 * math.pi / 720)
    den = EmpiricalDenoiser(torch.stack([theta.cos(), theta.sin()], dim=1))
    return BehaviorManifold(den, sigma=0.1)


@pytest.mark.parametrize("name", SOLVERS)
def test_circle_linear_cost_reaches_minus_c_direction(circle, name):
    """Minimise ⟨c, x⟩ on the unit circle; the answer is −c/‖c‖.

    Tolerance. For x = r(cos φ, sin φ), −‖x − w_i‖²/2σ² = r cos(θ_i − φ)/σ² + const, so the
    posterior over the sample angles is a von Mises law with κ = r/σ², sampled every h. By
    Poisson summation the sampling changes its moments by O(exp(−2π²σ²/h²)) ≈ e^-2600: nothing.
    In the continuum, D(x) = A(κ)(cos φ, sin φ), A(κ) = I₁(κ)/I₀(κ) = 1 − 1/2κ − 1/8κ² + …:
    v keeps the direction and maps to radius ρ = 1 − σ²/2r − σ⁴/8 + O(σ⁶). Iterates have
    r = ‖p − γd‖ = ρ + O(γ²‖d‖²), so at the solution ρ = 1 − σ²/2 − 3σ⁴/8 + …, i.e.
    |ρ − (1 − σ²/2)| ≤ σ⁴ (= 1e-4) and the direction is exactly −ĉ up to the stopping tolerance:
    So ‖p + ĉ‖ ≤ σ²/2 + σ⁴ + 1e-5: the O(σ) bias of the paper's Theorem 1, here σ²/2.

    Stopping. ‖v'(y)ᵀc‖ does not vanish at the solution: D' = Cov/σ² has a radial eigenvalue
    Var[cos]/σ² ≈ σ²/2, and c is radial there, so ‖rgrad‖ → σ²‖c‖/2. The displacement of p per
    iteration does vanish: with contraction 1 − γρ‖c_b‖ ≤ 1 − 0.03 per step, a move below 1e-10
    puts p within ~3e-9 of its fixed point (direction tolerance 1e-5 is generous).

    Step offset. That radial part of d also offsets the pre-image y = p − γd outward by
    γσ²‖c‖/2, which raises the radius of v(y) by (σ²/2)·that: at most (σ²/2)²·γ_max‖c‖ with
    γ_max = 10·step the largest step any solver here takes (Armijo's cap), so the radius
    tolerance is σ⁴ + (σ²/2)²·γ_max‖c‖. Armijo's γ keeps cycling on this offset (see DRGD
    Notes), so it runs to max_iterations instead of stopping on the step size.
    """
    sigma = circle.sigma
    c = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.2, -0.1], [-1.0, -1.0]], dtype=DT)
    c_hat = c / torch.linalg.vector_norm(c, dim=1, keepdim=True)
    ang = torch.atan2(c[:, 1], c[:, 0]) + 2.5  # start well away from the maximiser ĉ
    x0 = torch.stack([ang.cos(), ang.sin()], dim=1)
    step = 0.5 / float(torch.linalg.vector_norm(c, dim=1).max())
    solver = make_solver(name, step, max_iterations=4000, min_gradient_norm=0.0,
                         min_step_size=1e-10)
    if name == "drgd_armijo":
        solver.max_iterations = 1500
    res = solver.run(Problem(circle, lambda x: (x * c).sum(1)), initial_point=x0)
    if name != "drgd_armijo":
        assert res.stop_reason == "min_step_size", (res.stop_reasons, res.iterations)
    # ‖rgrad‖ stalls at the order of σ²‖c‖/2 (the radial eigenvalue is σ²/2r², r = ‖y‖ < 1).
    ratio = res.history["rgrad_norm"][-1] / (sigma**2 / 2 * c.norm(dim=1).numpy())
    assert (ratio > 0.5).all() and (ratio < 3).all(), ratio
    radius = torch.linalg.vector_norm(res.point, dim=1)
    direction = res.point / radius[:, None]
    assert (direction + c_hat).norm(dim=1).max() < 1e-5
    tol_r = sigma**4 + (sigma**2 / 2) ** 2 * 10 * step * float(c.norm(dim=1).max())
    assert (radius - (1 - sigma**2 / 2)).abs().max() < tol_r
    assert (res.point + c_hat).norm(dim=1).max() < sigma**2 / 2 + tol_r + 1e-5


@pytest.mark.parametrize("name", SOLVERS)
def test_box_constraints_hold_and_solve_separable_problem(name):
    """On the whole space (identity-like denoiser), min ½‖x − c‖² in a box is clamp(c)."""
    d = 6
    den = LinearGaussianDenoiser(torch.zeros(d, dtype=DT), torch.eye(d, dtype=DT),
                                 scales=torch.full((d,), 100.0, dtype=DT))
    man = BehaviorManifold(den, 1e-4)
    c = torch.tensor([[2.0, -2.0, 0.5, 0.0, 3.0, -0.2], [-5.0, 5.0, 0.1, 0.9, -0.9, 0.3]], dtype=DT)
    lower = torch.tensor([-1.0, -1.0, -1.0, -math.inf, 0.0, 0.0], dtype=DT)
    upper = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, math.inf], dtype=DT)
    prob = Problem(man, lambda x: 0.5 * ((x - c) ** 2).sum(1), lower=lower, upper=upper)
    x0 = torch.full((2, d), 10.0, dtype=DT)
    res = make_solver(name, 0.5, max_iterations=2000, min_gradient_norm=1e-9).run(
        prob, initial_point=x0)
    for pt in (res.point, res.best_point):
        assert (pt >= lower).all() and (pt <= upper).all()
    torch.testing.assert_close(res.point, torch.clamp(c, lower, upper), rtol=0, atol=1e-6)
    assert res.stop_reason == "min_gradient_norm"


def test_bounds_broadcast_on_windows():
    """Bounds of shape (C,) on (L, C) windows: every returned point respects them."""
    g = torch.Generator().manual_seed(3)
    data = torch.randn(200, 5, 3, generator=g, dtype=DT)
    man = BehaviorManifold(EmpiricalDenoiser(data), 0.3)
    lower = torch.tensor([-0.2, -math.inf, -math.inf], dtype=DT)
    upper = torch.tensor([0.2, math.inf, 0.5], dtype=DT)
    target = torch.randn(4, 5, 3, generator=g, dtype=DT) * 3
    prob = Problem(man, lambda x: ((x - target) ** 2).sum((1, 2)), lower=lower, upper=upper)
    for solver in (DRGD(0.05, max_iterations=60), DLF(0.05, max_iterations=60),
                   AcceleratedDRGD(0.05, max_iterations=60)):
        res = solver.run(prob, initial_point=data[:4])
        for pt in (res.point, res.best_point):
            assert (pt >= lower).all() and (pt <= upper).all()


def test_batch_matches_individual_solves(subspace_quadratic):
    man, cost, egrad, x_star, lip = subspace_quadratic
    x0 = torch.zeros(BATCH, D_AMB, dtype=DT)
    kw = dict(max_iterations=3000, min_gradient_norm=1e-4, check_every=1)
    batched = AcceleratedDRGD(1 / lip, **kw).run(Problem(man, cost, egrad), initial_point=x0)
    a = x_star - x_star[1]  # distinct answers: solve problem 1 alone via a shifted cost
    assert a.norm() > 1
    alone = AcceleratedDRGD(1 / lip, **kw).run(
        Problem(man, lambda x: cost(x.expand(BATCH, -1))[1:2],
                lambda x: egrad(x.expand(BATCH, -1))[1:2]), initial_point=x0[1:2])
    torch.testing.assert_close(batched.point[1:2], alone.point, rtol=1e-10, atol=1e-10)
    assert batched.stop_iterations[1] == alone.stop_iterations[0]


def test_divergence_returns_best_finite_iterate(subspace_quadratic):
    man, cost, egrad, x_star, lip = subspace_quadratic
    x0 = x_star + 0.1  # near the optima, but with a step far above 2/L
    res = DRGD(10.0 / lip, max_iterations=2000).run(Problem(man, cost, egrad), initial_point=x0)
    assert res.stop_reason == "diverged"
    assert res.stop_reasons == ["diverged"] * BATCH
    assert torch.isfinite(res.point).all() and torch.isfinite(res.cost).all()
    torch.testing.assert_close(res.cost, cost(res.point))
    assert (res.cost <= torch.from_numpy(res.history["cost"][0])).all()
    assert res.iterations < 2000


def test_nan_cost_is_divergence_not_an_exception(circle):
    def cost(x):  # NaN as soon as the iterate enters the lower half-plane
        return torch.where(x[:, 1] < 0, torch.full_like(x[:, 0], math.nan), -x[:, 0])

    x0 = torch.tensor([[0.0, 1.0], [1.0, 0.1]], dtype=DT)
    res = DLF(0.5, max_iterations=500, check_every=5).run(
        Problem(circle, cost, lambda x: torch.tensor([[-1.0, 1e3]], dtype=DT).expand_as(x)),
        initial_point=x0)
    assert "diverged" in res.stop_reasons
    assert torch.isfinite(res.point).all()


def test_stopping_bookkeeping_and_annealing(subspace_quadratic):
    man, cost, egrad, x_star, lip = subspace_quadratic
    x0 = torch.zeros(BATCH, D_AMB, dtype=DT)
    solver = DRGD(1 / lip, max_iterations=3000, min_gradient_norm=1e-4, check_every=10,
                  sigma_start=0.5, anneal_iterations=40)
    res = solver.run(Problem(man, cost, egrad), initial_point=x0)
    n = res.iterations + 1
    assert all(v.shape == (n, BATCH) for k, v in res.history.items() if k != "sigma")
    assert res.history["sigma"][0] == 0.5 and res.history["sigma"][-1] == pytest.approx(1e-3)
    assert (res.stop_iterations % 10 == 0).all() and (res.stop_iterations >= 40).all()
    # Forward fill: a stopped problem's history is constant after its stop iteration.
    i = int(res.stop_iterations.min())
    j = int(np.argmin(res.stop_iterations))
    assert (res.history["cost"][i:, j] == res.history["cost"][i, j]).all()
    assert res.wall_time_s > 0 and res.converged.all()
    # Max iterations and max time.
    short = DRGD(1 / lip, max_iterations=7).run(Problem(man, cost, egrad), initial_point=x0)
    assert short.stop_reason == "max_iterations" and short.iterations == 7
    assert short.stop_reasons == ["max_iterations"] * BATCH
    timed = DRGD(1 / lip, max_iterations=10**6, max_time=0.05, min_gradient_norm=0).run(
        Problem(man, cost, egrad), initial_point=x0)
    assert timed.stop_reason == "max_time" and timed.iterations < 10**6


@pytest.mark.parametrize("name", ["drgd", "dlf", "nesterov"])
def test_min_step_size_stops(subspace_quadratic, name):
    man, cost, egrad, x_star, lip = subspace_quadratic
    solver = make_solver(name, 1 / lip, max_iterations=3000, min_gradient_norm=0.0,
                         min_step_size=1e-10)
    res = solver.run(Problem(man, cost, egrad), initial_point=torch.zeros(BATCH, D_AMB, dtype=DT))
    assert res.stop_reason == "min_step_size"


def test_bad_inputs_raise(subspace_quadratic):
    man, cost, egrad, x_star, lip = subspace_quadratic
    prob = Problem(man, cost, egrad)
    with pytest.raises(DimensionError):
        DRGD(0.1).run(prob, initial_point=torch.zeros(D_AMB, dtype=DT))
    with pytest.raises(DimensionError):  # wrong event shape reaches the denoiser
        DRGD(0.1).run(prob, initial_point=torch.zeros(BATCH, D_AMB + 1, dtype=DT))
    with pytest.raises(DimensionError):
        DRGD(0.1).run(Problem(man, lambda x: cost(x)[:1]), initial_point=x_star)
    with pytest.raises(DimensionError):
        DRGD(0.1).run(Problem(man, cost, lower=torch.zeros(5)), initial_point=x_star)
    with pytest.raises(ConfigurationError):
        DRGD(0.1).run(Problem(man, cost, lower=1.0, upper=0.0), initial_point=x_star)
    bad = x_star.clone()
    bad[1, 2] = math.nan
    with pytest.raises(NonFiniteError):
        DRGD(0.1).run(prob, initial_point=bad)
    with pytest.raises(NonFiniteError):
        Problem(man, cost, lower=torch.tensor([math.nan]))
    with pytest.raises(TypeError):
        DRGD(0.1).run(prob, initial_point=x_star.numpy())
    with pytest.raises(TypeError):
        DRGD(0.1).run("problem", initial_point=x_star)
    with pytest.raises(TypeError):
        Problem("manifold", cost)
    for make in (lambda: DRGD(0.0), lambda: DRGD(-1.0), lambda: DLF(math.nan),
                 lambda: DLF(1.0, landing=2.0), lambda: AcceleratedDRGD(0.1, momentum=1.0),
                 lambda: DRGD(0.1, line_search=True, shrink=1.5),
                 lambda: DRGD(0.1, max_iterations=-1), lambda: DRGD(0.1, check_every=0),
                 lambda: DRGD(0.1, sigma_start=-1.0), lambda: DRGD(0.1, max_time=0)):
        with pytest.raises(ConfigurationError):
            make()


def test_time_budget_predicts_each_iteration_from_the_longest_of_its_kind(monkeypatch):
    """Iterations of kind 1 (every 5th, as those refreshing a conditioned solve's Jacobian rows)
    take 5 s of a fake clock, the others 1 s. With 12 s the run takes iterations 0-4 and stops
    before the 5th (a kind-1 one that would end at 14 s); timing every iteration by the longest
    of any kind would have stopped after iteration 3."""
    import ddcontrol.solvers.base as base

    clock = [0.0]
    monkeypatch.setattr(base.time, "perf_counter", lambda: clock[0])

    class Timed(DRGD):
        def _iteration_kind(self, k):
            return int(k % 5 == 0)

        def _iterate(self, ctx, state, ev, k, sigma):
            clock[0] += 5.0 if self._iteration_kind(k) else 1.0
            return super()._iterate(ctx, state, ev, k, sigma)

    den = LinearGaussianDenoiser(torch.zeros(4, dtype=DT), torch.eye(4, dtype=DT)[:, :2],
                                 torch.ones(2, dtype=DT))
    problem = Problem(BehaviorManifold(den, 0.1), lambda x: (x ** 2).sum(dim=1),
                      lambda x: 2 * x)
    res = Timed(0.1, max_iterations=50, max_time=12.0, min_gradient_norm=0.0).run(
        problem, initial_point=torch.ones(1, 4, dtype=DT))
    assert res.stop_reason == "max_time" and res.iterations == 4
    assert clock[0] == 9.0
    # The first cheap iteration runs while any time is left (5 s of 5.5 s spent), not predicted
    # by the costly first one; the next would end past the budget.
    clock[0] = 0.0
    res = Timed(0.1, max_iterations=50, max_time=5.5, min_gradient_norm=0.0).run(
        problem, initial_point=torch.ones(1, 4, dtype=DT))
    assert res.stop_reason == "max_time" and res.iterations == 1 and clock[0] == 6.0

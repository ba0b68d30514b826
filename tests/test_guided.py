"""Guided diffusion sampling (look-ahead-loss guidance, inpainting) on exact linear geometry."""

import numpy as np
import pytest
import torch
from scipy.linalg import null_space

from ddcontrol.manifold import BehaviorManifold
from ddcontrol.score import LinearGaussianDenoiser
from ddcontrol.solvers import GuidedDiffusion, Problem, SolverResult, guided_plan
from ddcontrol.solvers.guided import karras_sigmas

D, K = 12, 4


@pytest.fixture(scope="module")
def subspace():
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(D, K, generator=gen, dtype=torch.float64)
    mean = 0.1 * torch.randn(D, generator=gen, dtype=torch.float64)
    target = 2.0 * torch.randn(D, generator=gen, dtype=torch.float64)  # off the subspace
    x0 = mean + (basis @ torch.randn(K, 16, generator=gen, dtype=torch.float64)).T
    return LinearGaussianDenoiser(mean, basis), basis, mean, target, x0


def off_subspace(den, mean, x):
    z = x - mean
    return torch.linalg.vector_norm(z - z @ den.projector(), dim=-1)


def quadratic(target, weight=None):
    w = torch.ones(D, dtype=torch.float64) if weight is None else weight
    return (lambda x: (((x - target) * w) ** 2).sum(-1)), (lambda x: 2 * (x - target) * w * w)


@pytest.mark.parametrize("sampler", ["euler", "heun", "ancestral"])
def test_guidance_lowers_the_cost_and_stays_on_the_subspace(subspace, sampler):
    den, basis, mean, target, x0 = subspace
    f, g = quadratic(target)
    problem = Problem(BehaviorManifold(den, 0.01), f, g)
    costs = {}
    for gamma in (0.0, 0.2):
        res = GuidedDiffusion(gamma, sampler=sampler, max_iterations=20).run(
            problem, initial_point=x0)
        assert isinstance(res, SolverResult) and res.iterations == 20
        assert float(off_subspace(den, mean, res.point).max()) < 1e-10
        costs[gamma] = res.cost
    z = torch.linalg.lstsq(basis, (target - mean)[:, None]).solution
    optimum = float(f(mean + (basis @ z).T))
    assert bool((costs[0.2] < costs[0.0]).all())  # every sample improves
    assert float(costs[0.2].mean()) < optimum * 1.05  # and lands near the best on the subspace
    assert float(costs[0.0].mean()) > optimum * 1.2


def test_inpainting_pins_the_measured_coordinates_and_reaches_the_conditioned_optimum(subspace):
    den, basis, mean, target, x0 = subspace
    mask = torch.zeros(D, dtype=torch.bool)
    mask[:3] = True
    values = x0[0]  # a point of the subspace: its first 3 coordinates are "measured"
    free = (~mask).to(torch.float64)
    f, g = quadratic(target, free)
    problem = Problem(BehaviorManifold(den, 0.01), f, g)
    res = {gamma: GuidedDiffusion(gamma, mask=mask, values=values, max_iterations=20).run(
        problem, initial_point=x0) for gamma in (0.0, 0.2)}
    for r in res.values():
        assert torch.equal(r.point[:, mask], values[mask].expand(16, -1))
        assert float(off_subspace(den, mean, r.point).max()) < 1e-2
    # Optimum over the slice {x = mean + B z, x[:3] = values[:3]}.
    B, m, t, v = basis.numpy(), mean.numpy(), target.numpy(), values.numpy()
    zp = np.linalg.lstsq(B[:3], v[:3] - m[:3], rcond=None)[0]
    N = null_space(B[:3])
    w = np.linalg.lstsq(B[3:] @ N, t[3:] - m[3:] - B[3:] @ zp, rcond=None)[0]
    x_opt = m + B @ (zp + N @ w)
    optimum = float(((x_opt - t)[3:] ** 2).sum())
    assert float(res[0.2].cost.mean()) == pytest.approx(optimum, rel=1e-2)
    assert float(res[0.0].cost.mean()) > 1.1 * optimum


def test_schedule_history_reproducibility_and_time_limit(subspace):
    den, basis, mean, target, x0 = subspace
    f, g = quadratic(target)
    problem = Problem(BehaviorManifold(den, 0.02), f, g)
    solver = GuidedDiffusion(0.1, sigma_max=0.8, max_iterations=10, seed=3)
    a = solver.run(problem, initial_point=x0[:4])
    b = solver.run(problem, initial_point=x0[:4])
    assert torch.equal(a.point, b.point)  # seeded noise
    sig = a.history["sigma"]
    assert sig[0] == pytest.approx(0.8) and sig[-1] == pytest.approx(0.02)
    assert np.all(np.diff(sig) < 0)
    assert a.history["cost"].shape == (11, 4)
    assert karras_sigmas(1, 0.1, 1.0) == [0.1]
    c = GuidedDiffusion(0.1, max_iterations=10_000, max_time=1e-4).run(problem,
                                                                       initial_point=x0[:2])
    assert c.stop_reason == "max_time" and c.iterations < 10_000


def test_guided_plan_returns_the_best_sample(subspace):
    den, basis, mean, target, x0 = subspace
    f, g = quadratic(target)
    problem = Problem(BehaviorManifold(den, 0.01), f, g, lower=-3.0, upper=3.0)
    window, res = guided_plan(problem, x0[0], num_samples=6, steps=15, step_size=0.2,
                              sampler="ancestral", event_ndim=1)
    assert res.point.shape == (6, D) and window.shape == (D,)
    assert float(f(window[None])) == pytest.approx(float(res.cost.min()))
    assert float(window.abs().max()) <= 3.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_guided_runs_on_cuda(subspace):
    den, basis, mean, target, x0 = subspace
    f, g = quadratic(target.cuda())
    problem = Problem(BehaviorManifold(den.cuda(), 0.01), f, g)
    cpu = GuidedDiffusion(0.2, max_iterations=10).run(
        Problem(BehaviorManifold(den.cpu(), 0.01), *quadratic(target)), initial_point=x0)
    gpu = GuidedDiffusion(0.2, max_iterations=10).run(problem, initial_point=x0.cuda())
    torch.testing.assert_close(gpu.point.cpu(), cpu.point, rtol=1e-9, atol=1e-9)


def test_accepts_the_drgd_annealing_keywords_as_its_schedule(subspace):
    den, basis, mean, target, x0 = subspace
    problem = Problem(BehaviorManifold(den, 0.01), *quadratic(target))
    res = GuidedDiffusion(0.1, sigma_start=0.7, anneal_iterations=5, max_iterations=8,
                          check_every=50, min_gradient_norm=0.0).run(problem,
                                                                      initial_point=x0[:2])
    assert res.history["sigma"][0] == pytest.approx(0.7) and res.iterations == 8


def test_tracker_solver_guided_plans_from_a_measured_past():
    """solver="guided" in the DenoisingTracker: the measured past is inpainted exactly, the
    guidance lowers the cost and, after the tracker's refinement, the replay is what the model
    predicted (exact linear geometry; the set-up of the ConditionedDRGD test in test_tracking)."""
    from ddcontrol.data import collect
    from ddcontrol.evaluate.replay import replay
    from ddcontrol.tracking import DenoisingTracker, TrackingProblem
    from envs.registry import make_dynamics

    env, t_ini, n_h, k = "ddcontrol/CoupledMasses-v0", 6, 20, 20
    data = collect(env, 300, 60, seed=0, noise=False)
    windows = data.windows(t_ini + n_h, stride=5, normalized=True)
    fit = LinearGaussianDenoiser.from_samples(torch.as_tensor(windows, dtype=torch.float64))
    den = LinearGaussianDenoiser(fit.mean.reshape(windows.shape[1:]), fit.vectors,
                                 torch.full((fit.rank,), 100.0, dtype=torch.float64))
    episode = collect(env, 1, 40, seed=5, noise=False)
    ref = np.stack([0.8 * np.sin(np.arange(60) * 0.1),
                    0.5 * np.sign(np.sin(np.arange(60) * 0.05))], axis=1)
    prob = TrackingProblem(ref, n_h, 2, 2, dt=0.1, Q=1.0, R=0.01, input_low=-5, input_high=5)
    def plan_with(step_scale):
        tracker = DenoisingTracker(den, data.normalizer, prob, candidates=windows,
                                   t_ini=t_ini, sigma=1e-3, solver="guided", iterations=30,
                                   dtype=torch.float64, damping=1e-3, max_step=None,
                                   step_scale=step_scale)
        return tracker.plan(episode.u[0, k - t_ini:k], episode.y[0, k - t_ini:k],
                            current_y=episode.y[0, k], start=k)

    plan = plan_with(1.0)
    # The guidance is what lowers the cost: sampling with (almost) none costs more.
    assert plan.predicted_cost < 0.9 * plan_with(1e-6).predicted_cost
    assert plan.solver_result.solver == "GuidedDiffusion"
    past = data.normalizer.denormalize(plan.window[:t_ini])
    np.testing.assert_allclose(past[:, :2], episode.u[0, k - t_ini:k], atol=1e-6)
    np.testing.assert_allclose(past[:, 2:], episode.y[0, k - t_ini:k], atol=1e-6)
    rep = replay(prob, make_dynamics(env), episode.x[0, k], plan.inputs, plan.predicted_outputs,
                 u_prev=episode.u[0, k - 1], start=k)
    assert rep.manifold_deviation < 1e-3

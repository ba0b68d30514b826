"""Many plans at once (ddcontrol.tracking.batch, ddcontrol.evaluate.fleet): a batch of K problems
gives the K single plans, closed-loop fleets give the K single episodes (closed-form denoisers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol.data import collect
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.evaluate.closed_loop import run_episode
from ddcontrol.evaluate.finite_horizon import finite_horizon_batch, finite_horizon_experiment
from ddcontrol.evaluate.fleet import run_fleet
from ddcontrol.score import EmpiricalDenoiser, LinearGaussianDenoiser
from ddcontrol.symmetry import symmetry_for
from ddcontrol.tracking import DenoisingTracker, TrackingProblem, make_reference
from ddcontrol.tracking import batch as batch_module
from ddcontrol.tracking import cold_start as cold_start_module
from ddcontrol.tracking.batch import BatchWindowCost, plan_batch
from ddcontrol.tracking.measured import measured_block, normalise_block
from ddcontrol.tracking.window_cost import FramedWindowCost
from ddcontrol.trust import TrustEstimator

MSD = "ddcontrol/MassSpringDamper-v0"
MIMO = "ddcontrol/CoupledMasses-v0"
UNI = "ddcontrol/Unicycle-v0"
F64 = torch.float64


def exact_projector(windows: np.ndarray) -> LinearGaussianDenoiser:
    """Projector onto the windows' affine span (as in test_tracking)."""
    fit = LinearGaussianDenoiser.from_samples(torch.as_tensor(windows, dtype=F64))
    return LinearGaussianDenoiser(fit.mean.reshape(windows.shape[1:]), fit.vectors,
                                  torch.full((fit.rank,), 100.0, dtype=F64))


def assert_same_plans(batch, singles, atol=1e-9):
    assert len(batch) == len(singles)
    for k, one in enumerate(singles):
        np.testing.assert_allclose(batch.inputs[k], one.inputs, atol=atol)
        np.testing.assert_allclose(batch.predicted_outputs[k], one.predicted_outputs, atol=atol)
        np.testing.assert_allclose(batch.windows[k], one.window, atol=atol)
        np.testing.assert_allclose(batch.frames[k], one.frame, atol=1e-12)
        assert batch.predicted_cost[k] == pytest.approx(one.predicted_cost, rel=1e-9, abs=1e-12)
        assert batch.initial_cost[k] == pytest.approx(one.initial_cost, rel=1e-9, abs=1e-12)
        assert batch.manifold_distance[k] == pytest.approx(one.manifold_distance, rel=1e-6,
                                                           abs=1e-9)


# -- the linear MIMO system: pinned past, per-problem references and starts ------------------------
@pytest.fixture(scope="module")
def mimo():
    t_ini, n_h = 6, 20
    data = collect(MIMO, 200, 60, seed=0, noise=False)
    windows = data.windows(t_ini + n_h, stride=5, normalized=True)
    episodes = collect(MIMO, 3, 40, seed=5, noise=False)
    refs = [np.stack([0.8 * np.sin(np.arange(60) * 0.1 + ph),
                      0.5 * np.cos(np.arange(60) * 0.07 + ph)], axis=1) for ph in (0.0, 1.0, 2.0)]
    ks = [20, 15, 25]
    past_u = np.stack([episodes.u[i, k - t_ini:k] for i, k in enumerate(ks)])
    past_y = np.stack([episodes.y[i, k - t_ini:k] for i, k in enumerate(ks)])
    current = np.stack([episodes.y[i, k] for i, k in enumerate(ks)])
    den = exact_projector(windows)

    def tracker(ref, **kw):
        prob = TrackingProblem(ref, n_h, 2, 2, dt=0.1, Q=1.0, R=0.01, input_low=-5,
                               input_high=5)
        opts = dict(candidates=windows, t_ini=t_ini, sigma=1e-3, solver="nesterov",
                    iterations=40, dtype=F64, damping=1e-3, max_step=None)
        opts.update(kw)
        return DenoisingTracker(den, data.normalizer, prob, **opts)

    return dict(tracker=tracker, refs=refs, ks=ks, past_u=past_u, past_y=past_y,
                current=current, t_ini=t_ini, n_h=n_h)


@pytest.mark.parametrize("conditioning, num_starts", [("pin", 2), ("penalty", 1)])
def test_batched_plans_equal_the_single_plans(mimo, conditioning, num_starts):
    m = mimo
    opts = dict(conditioning=conditioning, num_starts=num_starts)
    batch = m["tracker"](m["refs"][0], **opts).plan_batch(
        m["past_u"], m["past_y"], current_y=m["current"], start=m["ks"], references=m["refs"])
    singles = [m["tracker"](ref, **opts).plan(m["past_u"][i], m["past_y"][i],
                                              current_y=m["current"][i], start=m["ks"][i])
               for i, ref in enumerate(m["refs"])]
    assert_same_plans(batch, singles)
    assert batch.solver_result.point.shape[0] == 3 * num_starts
    # The solve moved the plans, and the refinement pinned each one's own measured past.
    assert np.all(np.abs(batch.predicted_cost - batch.initial_cost) > 1.0)
    past = mimo["tracker"](m["refs"][0]).normalizer.denormalize(batch.windows[:, : m["t_ini"]])
    np.testing.assert_allclose(past[..., :2], m["past_u"], atol=1e-9)
    np.testing.assert_allclose(past[..., 2:], m["past_y"], atol=1e-9)
    one = batch.plan(1)
    assert one.predicted_cost == batch.predicted_cost[1] and one.iterations == batch.iterations
    assert [p.predicted_cost for p in batch.plans()] == list(batch.predicted_cost)


def test_warm_starts_and_the_fallback_cold_start_search_equal_single_plans(mimo, monkeypatch):
    m = mimo
    tr = m["tracker"](m["refs"][0])
    kw = dict(current_y=m["current"], start=m["ks"], references=m["refs"])
    cold = tr.plan_batch(m["past_u"], m["past_y"], iterations=5, refine=False, **kw)
    # Warm starts (K, L, C), as the receding horizon passes them.
    warm = tr.plan_batch(m["past_u"], m["past_y"], initial_point=cold.windows, iterations=7,
                         refine=False, **kw)
    singles = [m["tracker"](ref).plan(m["past_u"][i], m["past_y"][i],
                                      current_y=m["current"][i], start=m["ks"][i],
                                      initial_point=cold.windows[i], iterations=7, refine=False)
               for i, ref in enumerate(m["refs"])]
    assert_same_plans(warm, singles)
    # With a trust estimator every plan gets its measures, the single plan's (the
    # past-sensitivity probe perturbs every plan's past by the same fixed noise).
    trust = TrustEstimator(tr.denoiser, tr.candidates, input_dim=2, t_ini=m["t_ini"],
                           dtype=F64, repredict_iterations=0)
    tr.trust = trust
    rated = tr.plan_batch(m["past_u"], m["past_y"], initial_point=cold.windows, iterations=7,
                          refine=False, **kw)
    assert rated.estimated_deviation.shape == (3,) and rated.ood.dtype == bool
    quiet = tr.plan_batch(m["past_u"], m["past_y"], initial_point=cold.windows, iterations=7,
                          refine=False, confidence=False, **kw)
    assert quiet.estimated_deviation is None and quiet.trust is None
    np.testing.assert_allclose(quiet.inputs, rated.inputs, atol=1e-12)
    for i, ref in enumerate(m["refs"]):
        one = m["tracker"](ref, trust=trust).plan(
            m["past_u"][i], m["past_y"][i], current_y=m["current"][i], start=m["ks"][i],
            initial_point=cold.windows[i], iterations=7, refine=False)
        for name in ("residual", "sigma_shift", "support", "local_support", "sensitivity",
                     "estimated_deviation"):
            assert rated.trust[i][name] == pytest.approx(one.trust[name], rel=1e-9, abs=1e-12)
    # The search that scores each problem with its own cost (symmetries that are not affine
    # per sample) picks the same starts as the moment-based one.
    monkeypatch.setattr(cold_start_module, "frame_maps", lambda tracker, frames: None)
    again = tr.plan_batch(m["past_u"], m["past_y"], iterations=5, refine=False, **kw)
    np.testing.assert_allclose(again.windows, cold.windows, atol=1e-12)


# -- the unicycle: K frames of the planar symmetry --------------------------------------------------
def test_batched_plans_with_a_symmetry_equal_single_plans_in_their_frames():
    t_ini, n_h = 2, 6
    data = collect(UNI, 40, 16, seed=3, noise=False, excitation="gaussian")
    sym = symmetry_for(data.metadata, 2)
    norm = sym.fit_normalizer(sym.windows(data, t_ini + n_h, 2), 2)
    cand = norm.normalize(sym.windows(data, t_ini + n_h, 2))
    den = EmpiricalDenoiser(torch.tensor(cand))
    rng = np.random.default_rng(4)
    frames = [np.zeros(3), np.array([8.0, -3.0, 2.3]), np.array([-2.0, 5.0, -1.0])]
    raw = data.windows(t_ini + 1, 1)
    pasts = np.stack([sym.act(g, raw[s]) for g, s in zip(frames, [5, 17, 40])])
    refs = [p[-1, 2:4] + np.cumsum(rng.normal(size=(40, 2)) * 0.05, axis=0) for p in pasts]
    starts = [0, 3, 7]

    def tracker(ref):
        prob = TrackingProblem(ref, n_h, 2, 5, dt=0.05, channels=[0, 1], R=0.01,
                               input_low=[-10, -5], input_high=[10, 5])
        # A wide σ: the empirical denoiser is smooth enough there for the solve to move.
        return DenoisingTracker(den, norm, prob, candidates=cand, t_ini=t_ini, sigma=1.5,
                                iterations=20, symmetry=sym, dtype=F64, solver="nesterov",
                                num_starts=2)

    batch = tracker(refs[0]).plan_batch(pasts[:, :t_ini, :2], pasts[:, :t_ini, 2:],
                                        current_y=pasts[:, t_ini, 2:], start=starts,
                                        references=refs)
    singles = [tracker(ref).plan(pasts[i, :t_ini, :2], pasts[i, :t_ini, 2:],
                                 current_y=pasts[i, t_ini, 2:], start=starts[i])
               for i, ref in enumerate(refs)]
    assert_same_plans(batch, singles)
    assert np.any(batch.predicted_cost < batch.initial_cost - 1e-3)
    # Each plan sits in its own measured frame (the first measured sample's pose).
    np.testing.assert_allclose(batch.frames, pasts[:, 0, 2:5], atol=1e-12)
    # The cold start's moment-based scores are the single rule's (cost in the problem's frame,
    # the solve's past penalty and 1e3 · past mismatch), problem by problem.
    tr = tracker(refs[0])
    blocks = measured_block(t_ini, 2, 5, pasts[:, :t_ini, :2], pasts[:, :t_ini, 2:],
                            pasts[:, t_ini, 2:], batch=3)
    measured, g = normalise_block(sym, norm, blocks, np.zeros((3, 3)), F64, "cpu")
    refs_now = np.stack([r[s:s + n_h] for r, s in zip(refs, starts)])
    maps = cold_start_module.frame_maps(tr, g)
    assert maps is not None
    fast = cold_start_module.affine_scorer(tr, maps, refs_now, measured)(tr.candidates)
    each = batch_module._each_scorer(tr, refs_now, g, measured)(tr.candidates)
    np.testing.assert_allclose(fast.numpy(), each.numpy(), rtol=1e-9)


def test_batch_cost_is_k_single_costs_and_their_gradients():
    data = collect(UNI, 20, 12, seed=0, noise=False)
    sym = symmetry_for(data.metadata, 2)
    norm = sym.fit_normalizer(sym.windows(data, 7), 2)
    ref = np.random.default_rng(0).normal(size=(20, 2)) * 5
    prob = TrackingProblem(ref, 5, 2, 5, dt=0.05, channels=[0, 1], Q=[1.0, 2.0], R=0.01)
    rng = np.random.default_rng(3)
    starts, frames = [0, 4, 9], rng.normal(size=(3, 3)) * [4.0, 4.0, 1.0]
    refs = np.stack([prob.reference_values(s, 5) for s in starts])
    x = torch.tensor(rng.normal(size=(3, 7, 7)))
    plain = BatchWindowCost(prob, norm, 2, refs, F64, "cpu")
    framed = FramedWindowCost(BatchWindowCost(prob, norm, 2, refs, F64, "cpu"), sym, norm)
    framed.set_frame(frames)
    for k in range(3):
        one = prob.window_cost(norm, 2, starts[k], F64)
        np.testing.assert_allclose(plain(x)[k].item(), one(x[k:k + 1]).item(), rtol=1e-12)
        np.testing.assert_allclose(plain.egrad(x)[k], one.egrad(x[k:k + 1])[0], rtol=1e-12)
        one_framed = FramedWindowCost(one, sym, norm)
        one_framed.set_frame(frames[k])
        np.testing.assert_allclose(framed(x)[k].item(), one_framed(x[k:k + 1]).item(),
                                   rtol=1e-12)
        np.testing.assert_allclose(framed.egrad(x)[k], one_framed.egrad(x[k:k + 1])[0],
                                   rtol=1e-10, atol=1e-12)
    assert plain.lipschitz() == pytest.approx(prob.window_cost(norm, 2, 0, F64).lipschitz())
    with pytest.raises(DimensionError, match="3 references"):
        plain(x[:2])
    with pytest.raises(DimensionError, match="references must be"):
        BatchWindowCost(prob, norm, 2, refs[:, :4], F64, "cpu")


def test_invalid_batches_are_rejected_with_clear_errors(mimo):
    m = mimo
    tr = m["tracker"](m["refs"][0])
    pu, py, cy = m["past_u"], m["past_y"], m["current"]
    with pytest.raises(DimensionError, match="disagree on their number"):
        tr.plan_batch(pu, py, current_y=cy, references=m["refs"][:2])
    with pytest.raises(DimensionError, match="past_u must be"):
        tr.plan_batch(pu[:, :3], py, current_y=cy)
    with pytest.raises(DimensionError, match="current_y must be"):
        tr.plan_batch(pu, py, current_y=cy[:, :1])
    with pytest.raises(DimensionError, match="required"):
        tr.plan_batch(None, None, current_y=cy)
    with pytest.raises(DimensionError, match="initial_point"):
        tr.plan_batch(pu, py, current_y=cy, initial_point=np.zeros((3, 5, 4)))
    with pytest.raises(ConfigurationError, match="start"):
        tr.plan_batch(pu, py, current_y=cy, start=[1, -2, 3])
    other = TrackingProblem(m["refs"][1], m["n_h"], 2, 2, dt=0.1, Q=2.0, R=0.01,
                            input_low=-5, input_high=5)
    with pytest.raises(ConfigurationError, match="only the reference"):
        tr.plan_batch(pu, py, current_y=cy, references=[other] * 3)
    with pytest.raises(TypeError, match="references"):
        tr.plan_batch(pu, py, current_y=cy, references=[object()] * 3)
    with pytest.raises(ConfigurationError, match="clamp"):
        m["tracker"](m["refs"][0], conditioning="clamp").plan_batch(pu, py, current_y=cy)
    with pytest.raises(ConfigurationError, match="cold start needs candidate"):
        DenoisingTracker(tr.denoiser, tr.normalizer, tr.problem, t_ini=m["t_ini"],
                         sigma=1e-3, dtype=F64).plan_batch(pu, py, current_y=cy)


def test_nothing_measured_needs_a_batch_size_and_takes_per_problem_frames():
    n = 12
    data = collect(MSD, 60, n, seed=0, initial_states=np.array([0.5, 0.0]), noise=False)
    windows = data.windows(n, normalized=True)
    refs = [0.8 * np.sin(np.linspace(0, 2 * np.pi, n) + ph)[:, None] for ph in (0.0, 1.0)]

    def tracker(ref):
        prob = TrackingProblem(ref, n, 1, 1, dt=0.1, Q=1.0, R=0.01)
        return DenoisingTracker(exact_projector(windows), data.normalizer, prob,
                                candidates=windows, sigma=1e-3, iterations=30, dtype=F64)

    with pytest.raises(ConfigurationError, match="number of problems"):
        tracker(refs[0]).plan_batch()
    batch = plan_batch(tracker(refs[0]), references=refs)
    assert_same_plans(batch, [tracker(ref).plan() for ref in refs])
    assert batch.frames.shape == (2, 0) and list(batch.starts) == [0, 0]


# -- closed loop and the finite-horizon experiment --------------------------------------------------
def test_a_fleet_runs_k_episodes_that_equal_single_episodes():
    t_ini, n_h = 4, 10
    data = collect(MSD, 100, 40, seed=0, noise=False)
    windows = data.windows(t_ini + n_h, stride=3, normalized=True)
    den = exact_projector(windows)
    refs = [make_reference("random", MSD, 20, seed=s) for s in (1, 2, 3)]

    def tracker(ref, **kw):
        prob = TrackingProblem.for_env(MSD, ref, n_h, Q=1.0, R=0.01)
        return DenoisingTracker(den, data.normalizer, prob, candidates=windows,
                                t_ini=t_ini, sigma=1e-3, iterations=30,
                                iterations_per_step=5, dtype=F64, damping=1e-3, max_step=None,
                                **kw)

    episodes = run_fleet(tracker(refs[0]), MSD, refs, seeds=[0, 1, 2])
    assert len(episodes) == 3
    for i, (ep, ref) in enumerate(zip(episodes, refs)):
        alone = run_episode(MSD, tracker(ref), 20, seed=i)
        assert ep.error is None and len(ep.inputs) == 20 and ep.solve_times.shape == (20,)
        np.testing.assert_allclose(ep.inputs, alone.inputs, atol=1e-9)
        np.testing.assert_allclose(ep.outputs, alone.outputs, atol=1e-9)
        assert ep.metrics["steps"] == 20 - t_ini and np.isfinite(ep.metrics["total_cost"])
        assert ep.sigma == alone.sigma == 1e-3  # the projection σ each episode planned with
    assert len({ep.metrics["total_cost"] for ep in episodes}) == 3  # three different problems
    with pytest.raises(DimensionError, match="seeds"):
        run_fleet(tracker(refs[0]), MSD, refs, 5, seeds=[0, 1])
    with pytest.raises(TypeError, match="Reference"):
        run_fleet(tracker(refs[0]), MSD, [np.zeros((20, 1))], 5)
    with pytest.raises(ConfigurationError, match="length="):
        run_fleet(tracker(refs[0]), MSD, [refs[0], make_reference("random", MSD, 12, seed=1)])
    fallback = tracker(refs[0], on_ood="fallback", fallback=tracker(refs[0]))
    with pytest.raises(ConfigurationError, match="fallback"):
        run_fleet(fallback, MSD, refs, 5)


def test_finite_horizon_batch_equals_one_experiment_per_trajectory():
    t_ini, n_h = 4, 10
    data = collect(MSD, 60, 30, seed=0, noise=False)

    class Model:  # the smallest thing the experiment accepts: a closed-form denoiser
        window_length, symmetry, normalizer = t_ini + n_h, None, data.normalizer
        denoiser = exact_projector(data.windows(t_ini + n_h, stride=2, normalized=True))

        def check_dataset(self, dataset):
            pass

    refs = [make_reference("random", MSD, 30, seed=s) for s in (1, 2)]
    opts = dict(iterations=20, sigma=1e-3, dtype=F64, damping=1e-3, max_step=None, trust=None)
    batch = finite_horizon_batch(Model(), data, refs, horizon=n_h, trajectories=[3, 7], **opts)
    for res, ref, i in zip(batch, refs, [3, 7]):
        one = finite_horizon_experiment(Model(), data, ref, horizon=n_h, trajectory=i, **opts)
        np.testing.assert_allclose(res.plan.inputs, one.plan.inputs, atol=1e-9)
        assert res.summary["replay_cost"] == pytest.approx(one.summary["replay_cost"], rel=1e-8)
        assert res.summary["trajectory"] == i and res.summary["reference"] == ref.name
    with pytest.raises(DimensionError, match="references"):
        finite_horizon_batch(Model(), data, refs, horizon=n_h, trajectories=[1, 2, 3], **opts)

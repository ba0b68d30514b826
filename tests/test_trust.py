"""Model-intrinsic plan confidence (ddcontrol.trust) on closed-form denoisers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ddcontrol.trust as trust_module
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.score.closed_form import EmpiricalDenoiser, LinearGaussianDenoiser
from ddcontrol.trust import TrustEstimator, nearest_distance

L, M, P = 10, 1, 1


def _subspace(seed: int = 0, k: int = 12, n: int = 2000):
    """Gaussian windows (n, L, 2) on a random k-dimensional subspace, and its denoiser."""
    gen = torch.Generator().manual_seed(seed)
    d = L * (M + P)
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    scales = torch.full((k,), 3.0, dtype=torch.float64)
    z = torch.randn(n, k, generator=gen, dtype=torch.float64) * scales
    windows = (z @ basis.T).reshape(n, L, M + P)
    den = LinearGaussianDenoiser(torch.zeros(L, M + P, dtype=torch.float64), basis, scales)
    return windows, den, basis


def test_on_subspace_near_zero_off_subspace_large():
    # 8 dimensions under 10 pinned inputs: the inputs determine the outputs, as the past and
    # the inputs do for a plan (with more, the model itself cannot tell the outputs: see
    # test_reprediction_flags_outputs_the_inputs_do_not_determine).
    windows, den, basis = _subspace(k=8)
    est = TrustEstimator(den, windows[:1800], held_out=windows[1800:], input_dim=M,
                         dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    on = (torch.randn(8, basis.shape[1], generator=gen, dtype=torch.float64) * 3.0 @ basis.T)
    on = on.reshape(8, L, M + P)
    rep = est(on)
    assert rep.estimated_deviation.max() < 0.02
    assert rep.residual.max() < 1e-3
    assert not rep.ood.any()
    # Push off the subspace by an orthogonal component of about the data's size.
    normal = torch.randn(8, L * (M + P), generator=gen, dtype=torch.float64)
    normal = normal - (normal @ basis) @ basis.T
    normal = 3.0 * normal / normal.norm(dim=1, keepdim=True) * np.sqrt(L * (M + P))
    off = on + normal.reshape(8, L, M + P)
    rep_off = est(off)
    assert rep_off.estimated_deviation.min() > 0.3
    assert rep_off.ood.all()
    assert rep_off.sigma_shift.min() > 10 * rep.sigma_shift.max()


def _toy_windows(n: int, seed: int) -> np.ndarray:
    """Windows of y_{k+1} = 0.8 y_k + 0.5 u_k from y_0 = 0, inputs uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1.0, 1.0, size=(n, L))
    y = np.zeros((n, L))
    for k in range(L - 1):
        y[:, k + 1] = 0.8 * y[:, k] + 0.5 * u[:, k]
    return np.stack([u, y], axis=-1)


def test_reprediction_flags_outputs_the_inputs_do_not_determine():
    # 12 dimensions under 10 pinned inputs (T_ini = 0): a 2-dimensional family of outputs fits
    # the inputs, the plan's is one guess among them, and the model's own predictions from the
    # two starts land elsewhere.
    windows, den, basis = _subspace(k=12)
    est = TrustEstimator(den, windows[:1800], held_out=windows[1800:], input_dim=M,
                         dtype=torch.float64)
    rep = est(windows[1800:1808])
    assert rep.residual.max() < 1e-3 and rep.estimated_deviation.min() > 0.1
    assert rep.ood.all()


def test_nearest_start_takes_the_outputs_of_the_nearest_training_window():
    windows, den, _ = _subspace(seed=4, n=600)
    est = TrustEstimator(den, windows[:500], held_out=windows[500:], input_dim=M,
                         dtype=torch.float64, max_windows=10_000)
    plans = windows[:5].clone()
    plans[..., M:] += 5.0                         # outputs moved, inputs kept
    start = est._nearest_outputs(plans)
    assert torch.equal(start[..., :M], plans[..., :M])
    assert torch.allclose(start[..., M:], windows[:5, :, M:])


def test_sigma_shift_flags_a_plan_the_reprediction_agrees_with():
    # The inputs fix the outputs (8 dimensions under 10 inputs), so the reprediction at a tiny σ
    # returns the plan's own outputs; but the model's variance along its subspace (0.1² per
    # direction) is small against the probe σ (0.2²), so its prediction moves by most of itself
    # once it may pull at the probe σ: the model doubts the plan, and the estimate says so.
    windows, den, basis = _subspace(k=8)
    unsure = LinearGaussianDenoiser(torch.zeros(L, M + P, dtype=torch.float64), basis,
                                    torch.full((8,), 0.1, dtype=torch.float64))
    est = TrustEstimator(unsure, windows[:1800], held_out=windows[1800:], input_dim=M,
                         repredict_sigma=1e-3, dtype=torch.float64)
    rep = est(windows[1800:1808])
    assert rep.reprediction.max() < 1e-3 and rep.sigma_shift.min() > 0.5
    assert np.allclose(rep.estimated_deviation, np.maximum(rep.reprediction, rep.sigma_shift))
    assert rep.ood.all()
    # The same plans under the confident model (scales 3): both small, nothing flagged.
    sure = TrustEstimator(den, windows[:1800], held_out=windows[1800:], input_dim=M,
                          repredict_sigma=1e-3, dtype=torch.float64)(windows[1800:1808])
    assert sure.estimated_deviation.max() < 0.02 and not sure.ood.any()


def test_ood_flag_fires_far_outside_a_toy_dataset_only():
    data = _toy_windows(3000, 0)
    den = EmpiricalDenoiser(torch.as_tensor(data[:2700])).double()
    # Support alone decides here (the reprediction's conditioned solve is tested below).
    est = TrustEstimator(den, data[:2700], held_out=data[2700:], input_dim=M,
                         repredict_iterations=0, dtype=torch.float64)
    inside = torch.as_tensor(data[:20]) + 1e-3 * torch.randn(20, L, 2, dtype=torch.float64,
                                                             generator=torch.Generator()
                                                             .manual_seed(0))
    rep_in = est(inside)
    assert not rep_in.ood.any()
    # The plan's outputs follow a reference at 5x the largest output in the data.
    far = torch.as_tensor(data[2700:2720]).clone()
    far[..., 1] = 5.0 * float(np.abs(data[..., 1]).max()) * torch.linspace(0, 1, L)
    rep_far = est(far)
    assert rep_far.ood.all()
    assert rep_far.local_support.min() > 2.0
    assert rep_far.estimated_deviation.min() > 10 * rep_in.estimated_deviation.max()


def test_batched_equals_single_and_numpy_input():
    windows, den, _ = _subspace(seed=2, n=600)
    est = TrustEstimator(den, windows[:500], held_out=windows[500:], input_dim=M,
                         dtype=torch.float64)
    x = windows[500:504]
    batch = est(x)
    for i in range(4):
        single = est(x[i].numpy())
        assert single.estimated_deviation[0] == pytest.approx(batch.estimated_deviation[i],
                                                              rel=1e-9)
        assert single.local_support[0] == pytest.approx(batch.local_support[i], rel=1e-9)
    item = batch.item(0)
    assert set(item) >= {"estimated_deviation", "ood", "support", "threshold"}


def test_sensitivity_to_the_past_on_linear_subspace():
    windows, den, _ = _subspace(seed=3, n=600)
    est = TrustEstimator(den, windows[:500], held_out=windows[500:], input_dim=M,
                         t_ini=4, noise_std=0.01, dtype=torch.float64)
    rep = est(windows[500:510])
    # A linear projector moves the future by at most the perturbation (norm ≤ 0.01·√(4·2)).
    assert 0 < rep.sensitivity.max() < 0.05


def test_nearest_distance_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    q, pool = torch.randn(7, 5, generator=gen), torch.randn(50, 5, generator=gen)
    brute = torch.cdist(q, pool).min(dim=1).values
    assert torch.allclose(nearest_distance(q, pool, chunk=8), brute)
    d_self = nearest_distance(pool, pool, chunk=16, exclude_self=True)
    full = torch.cdist(pool, pool) + torch.diag(torch.full((50,), torch.inf))
    assert torch.allclose(d_self, full.min(dim=1).values)


@pytest.mark.parametrize("tile", [50, 120, 1 << 20])
def test_nearest_distance_with_pool_norms_in_blocks(monkeypatch, tile):
    """The precomputed-norm path gives the brute-force distances whether the queries fit one
    block of distances or several (tile 50: one query per block; 120: two, the last short)."""
    monkeypatch.setattr(trust_module, "NEAREST_TILE", tile)
    gen = torch.Generator().manual_seed(1)
    q, pool = torch.randn(7, 5, generator=gen, dtype=torch.float64), \
        torch.randn(50, 5, generator=gen, dtype=torch.float64)
    brute = torch.cdist(q, pool).min(dim=1).values
    got = nearest_distance(q, pool, pool_sq=(pool * pool).sum(dim=1))
    assert got.shape == (7,)
    assert torch.allclose(got, brute, atol=1e-10)
    none = nearest_distance(q[:0], pool, pool_sq=(pool * pool).sum(dim=1))
    assert none.shape == (0,)


@pytest.mark.parametrize("block,seeds", [(16, 1), (16, 2), (7, 3), (10_000, 2)])
def test_farthest_nearest_equals_the_full_search(block, seeds):
    """The block-pruned search returns the full search's per-group maximum (to round-off: a
    matrix product's rounding depends on its shape, nothing else differs): groups
    near the pool (most queries settled by the first block), a group with one far query, a
    group of one query and of fewer queries than seeds, a query on a pool point, a pool of one
    block (block 10,000: the full search itself)."""
    gen = torch.Generator().manual_seed(3)
    pool = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    pool_sq = (pool * pool).sum(dim=1)
    near = pool[torch.randint(0, 200, (5, 9), generator=gen)] + 0.05 * torch.randn(
        5, 9, 4, generator=gen, dtype=torch.float64)
    near[1, 4] += 6.0                     # one query far from everything
    near[2, 0] = pool[17]                 # a query on a pool point
    full = nearest_distance(near.reshape(-1, 4), pool, pool_sq=pool_sq).reshape(5, 9)
    got = trust_module.farthest_nearest(near, pool, pool_sq, seeds=seeds, block=block)
    assert torch.allclose(got, full.amax(dim=1), rtol=1e-12, atol=1e-12)
    assert got[1] > 5.0
    for s in (1, 2):
        few = near[:, :s]
        assert torch.allclose(trust_module.farthest_nearest(few, pool, pool_sq, seeds=seeds,
                                                            block=block),
                              full[:, :s].amax(dim=1), rtol=1e-12, atol=1e-12)


def test_farthest_nearest_searches_a_query_its_seed_did_not_settle():
    """A group whose farthest query (0.12 from the pool) has a smaller first-block bound than a
    query whose nearest point lies in a later block (0.10, the seed): the farthest one must be
    searched on, not dismissed against the seed's distance."""
    gen = torch.Generator().manual_seed(5)
    pool = 3.0 * torch.randn(200, 4, generator=gen, dtype=torch.float64)
    pool_sq = (pool * pool).sum(dim=1)
    e = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    group = torch.stack([pool[150] + 0.10 * e,            # seed: far from block 0, nn 0.10
                         pool[5] + 0.12 * e,              # the answer: nn in block 0, 0.12
                         pool[3] + 0.01 * e, pool[9] + 0.01 * e])[None]
    full = nearest_distance(group[0], pool, pool_sq=pool_sq)
    assert torch.allclose(full, torch.tensor([0.10, 0.12, 0.01, 0.01], dtype=torch.float64))
    got = trust_module.farthest_nearest(group, pool, pool_sq, seeds=1, block=16)
    assert torch.allclose(got, torch.tensor([0.12], dtype=torch.float64), atol=1e-12)

def test_local_support_through_the_pruned_search_equals_the_full_one(monkeypatch):
    """The estimator's local support (blocks of 64 snippets, so that the pruned search runs)
    equals the full search's largest nearest-snippet distance of each plan."""
    monkeypatch.setattr(trust_module, "NEAREST_BLOCK", 64)
    data = _toy_windows(600, 2)
    den = EmpiricalDenoiser(torch.as_tensor(data[:500])).double()
    est = TrustEstimator(den, data[:500], held_out=data[500:], input_dim=M,
                         repredict_iterations=0, dtype=torch.float64)
    assert est.snippet_pool.shape[0] > 4 * 64
    plans = torch.as_tensor(data[500:520]).clone()
    plans[3, 4:, 1] += 3.0                       # one plan with snippets far from the data
    rep = est(plans)
    snip = trust_module._snippets(plans, est.snippet)
    full = nearest_distance(snip.reshape(-1, snip.shape[-1]), est.snippet_pool,
                            pool_sq=(est.snippet_pool ** 2).sum(dim=1)).reshape(20, -1)
    expect = (full.amax(dim=1) / est.snippet_scale).numpy()
    assert np.allclose(rep.local_support, expect, rtol=1e-10, atol=1e-12)
    assert rep.local_support[3] > 2 * np.delete(rep.local_support, 3).max()

def test_validation():
    windows, den, _ = _subspace(seed=4, n=100)
    with pytest.raises(DimensionError):
        TrustEstimator(den, windows[:, :, :1], input_dim=1)
    with pytest.raises(DimensionError):
        TrustEstimator(den, windows, input_dim=M, t_ini=L)
    est = TrustEstimator(den, windows, input_dim=M, dtype=torch.float64)
    with pytest.raises(DimensionError):
        est(torch.zeros(2, L + 1, M + P, dtype=torch.float64))
    with pytest.raises(DimensionError):
        est(torch.full((1, L, M + P), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError):
        est([1.0, 2.0])


class _CountingFallback:
    """A fallback controller that records its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.resets = 0

    def reset(self, observation, info=None) -> None:
        self.resets += 1

    def act(self, observation, info=None) -> np.ndarray:
        self.calls += 1
        return np.array([0.25])


def _closed_loop_tracker(threshold: float, on_ood: str, fallback=None, **options):
    from ddcontrol.data import collect
    from ddcontrol.tracking import DenoisingTracker, TrackingProblem

    t_ini, n_h = 3, 8
    data = collect("ddcontrol/MassSpringDamper-v0", 60, 30, seed=1, noise=False)
    windows = data.windows(t_ini + n_h, stride=3, normalized=True)
    fit = LinearGaussianDenoiser.from_samples(torch.as_tensor(windows, dtype=torch.float64))
    den = LinearGaussianDenoiser(fit.mean.reshape(windows.shape[1:]), fit.vectors,
                                 torch.full((fit.rank,), 100.0, dtype=torch.float64))
    trust = TrustEstimator(den, windows, input_dim=1, t_ini=t_ini,
                           mean=data.normalizer.mean, std=data.normalizer.std,
                           threshold=threshold, dtype=torch.float64)
    prob = TrackingProblem(np.full((40, 1), 0.3), n_h, 1, 1, dt=0.1, Q=1.0, R=0.01,
                           input_low=-5, input_high=5)
    return DenoisingTracker(den, data.normalizer, prob, candidates=windows, t_ini=t_ini,
                            sigma=1e-3, iterations=30, iterations_per_step=5,
                            refine_iterations=0, dtype=torch.float64, damping=1e-3,
                            max_step=None, trust=trust, on_ood=on_ood, fallback=fallback,
                            **options)


def _run(tracker, steps: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    tracker.reset(np.zeros(1), {})
    return [tracker.act(rng.normal(size=1) * 0.1) for _ in range(steps)]


def test_closed_loop_fallback_is_called_when_the_flag_fires_and_counted():
    from ddcontrol.trust import OutOfDistributionError

    fb = _CountingFallback()
    flagged = _closed_loop_tracker(1e-12, "fallback", fb)  # every plan is flagged
    actions = _run(flagged)
    planned = 10 - flagged.t_ini
    assert flagged.ood_steps == planned and fb.calls == planned and fb.resets == 1
    assert flagged.flagged_steps == list(range(flagged.t_ini, 10))
    assert all(a[0] == 0.25 for a in actions[flagged.t_ini:])
    assert flagged.last_plan.ood and flagged.last_plan.estimated_deviation is not None
    fb_quiet = _CountingFallback()
    quiet = _closed_loop_tracker(1e9, "fallback", fb_quiet)   # nothing is flagged
    _run(quiet)
    assert quiet.ood_steps == 0 and fb_quiet.calls == 0
    assert quiet.last_plan.ood is False
    with pytest.raises(OutOfDistributionError):
        _run(_closed_loop_tracker(1e-12, "raise"))
    warned = _closed_loop_tracker(1e-12, "warn")
    with pytest.warns(RuntimeWarning, match="flagged"):
        # Under "warn" the estimate runs in the background: its warning comes at the next
        # step, or when the count is read (as the closed loop does at the end of an episode).
        _run(warned, steps=4)
        assert warned.ood_steps == 1
    assert warned.last_plan.ood and warned.last_plan.estimated_deviation is not None
    held = _closed_loop_tracker(1e-12, "hold")
    acts = _run(held, steps=5)
    # No good plan yet: hold applies the warm-up input and counts the steps.
    assert held.ood_steps == 2 and all(a[0] == 0.0 for a in acts)


def test_background_rating_attaches_the_manifold_distance_of_the_plan():
    """Under "warn" a step's manifold distance is computed in the background with its
    confidence: NaN on the plan until the estimate is collected, then ‖v(x) − x‖ of its window
    at the plan's σ; under "hold" (rated with the plan) it is there at once."""
    warned = _closed_loop_tracker(1e9, "warn")
    _run(warned, steps=6)
    plan = warned.last_plan
    assert np.isnan(plan.manifold_distance) and plan.ood is None
    assert warned.ood_steps == 0  # waits for every estimate
    x = torch.as_tensor(plan.window, dtype=torch.float64)[None]
    assert plan.manifold_distance == pytest.approx(float(warned.manifold.dist(x)[0]), abs=1e-12)
    assert plan.ood is False
    held = _closed_loop_tracker(1e9, "hold")
    _run(held, steps=6)
    x = torch.as_tensor(held.last_plan.window, dtype=torch.float64)[None]
    assert held.last_plan.manifold_distance == pytest.approx(float(held.manifold.dist(x)[0]),
                                                            abs=1e-12)


def _record_plans(tracker):
    """Keep every plan the tracker rates in the background, in step order."""
    plans = []
    rate = tracker._rate_later

    def keep(k, plan):
        plans.append(plan)
        rate(k, plan)

    tracker._rate_later = keep
    return plans


@pytest.mark.parametrize("trust_batch", [3, 4])
def test_batched_background_ratings_equal_one_at_a_time(trust_batch):
    """trust_batch plans go to the background together (the rest when the flags are read): every
    applied plan gets the estimate, distance and flag it gets rated alone, and a flag arrives
    at most trust_batch steps late."""
    alone = _closed_loop_tracker(0.02, "warn", trust_batch=1)
    together = _closed_loop_tracker(0.02, "warn", trust_batch=trust_batch)
    assert together.trust_batch == trust_batch and alone.trust_batch == 1
    plans_alone, plans_together = _record_plans(alone), _record_plans(together)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        acts_alone, acts_together = _run(alone), _run(together)
        for a, b in zip(acts_alone, acts_together):
            np.testing.assert_array_equal(a, b)  # "warn" never changes an input
        # Before the flags are read: the batches submitted so far, not the queued rest.
        together._collect_trust(wait=False)
        for _, future in together._pending:
            future.result()
        together._collect_trust(wait=False)
        rated = sum(p.estimated_deviation is not None for p in plans_together)
        planned = len(plans_together)
        assert rated == planned - planned % trust_batch
        assert together.flagged_steps == alone.flagged_steps
    assert all(p.estimated_deviation is not None for p in plans_together)
    for a, b in zip(plans_alone, plans_together):
        assert b.estimated_deviation == pytest.approx(a.estimated_deviation, rel=1e-9)
        assert b.manifold_distance == pytest.approx(a.manifold_distance, rel=1e-9)
        assert b.ood == a.ood
    assert 0 < alone.ood_steps < len(plans_alone)  # the threshold splits the plans
    # Under "escalate" every plan goes alone: the next step waits for it.
    esc = _closed_loop_tracker(1e9, "escalate", trust_batch=trust_batch,
                               escalate_sigma=[1e-3, 2e-3])
    plans = _record_plans(esc)
    _run(esc, steps=6)
    assert not esc._unrated and all(p.estimated_deviation is not None for p in plans[:-1])
    with pytest.raises(ValueError, match="trust_batch"):
        _closed_loop_tracker(1e9, "warn", trust_batch=0)


def test_an_estimate_does_not_depend_on_the_batch_it_is_rated_in():
    """The sensitivity's perturbation of the measured past is the same for every plan."""
    windows, den, _ = _subspace(seed=3, n=600)
    est = TrustEstimator(den, windows[:500], held_out=windows[500:], input_dim=M,
                         t_ini=4, noise_std=0.01, dtype=torch.float64)
    x = torch.as_tensor(windows[500:506]).clone()
    x[:, 4:] += 0.05
    together = est(x, repredict=False)
    for i in range(6):
        alone = est(x[i:i + 1], repredict=False)
        assert alone.sensitivity[0] == pytest.approx(together.sensitivity[i], rel=1e-9)
        assert alone.estimated_deviation[0] == pytest.approx(together.estimated_deviation[i],
                                                             rel=1e-9)
    assert np.ptp(together.sensitivity) > 0


def test_tracker_rejects_bad_policies():
    from ddcontrol.errors import ConfigurationError, UnknownNameError

    with pytest.raises(UnknownNameError):
        _closed_loop_tracker(0.1, "ignore")
    with pytest.raises(ConfigurationError):
        _closed_loop_tracker(0.1, "fallback", None)


def test_escalation_counts_persistent_flags_over_the_last_horizon():
    from ddcontrol.symmetry import Identity
    from ddcontrol.tracking.receding import ESCALATION_FRACTION, EpisodeState, RecedingHorizon

    def rules(policy: str) -> RecedingHorizon:
        return RecedingHorizon(3, 1, 1, np.zeros(1), Identity(), None, 5, policy,
                               escalation_window=9)

    assert ESCALATION_FRACTION == pytest.approx(1 / 3)
    state = EpisodeState(outputs=[np.zeros(1)] * 12, flagged=[4, 11])  # k = 12
    assert not rules("escalate").should_escalate(state)  # 2 of the last 9 (4 is older)
    state.flagged.append(12)
    assert rules("escalate").should_escalate(state)  # 3 of 9: a third
    assert not rules("warn").should_escalate(state)  # only under "escalate"
    state.escalations.append(12)  # the first rung, climbed at step 12
    assert state.escalated_at == 12 and state.level == 1
    # Each rung is judged on its own plans: the flags before step 12 no longer count.
    assert not rules("escalate").should_escalate(state)
    state.flagged += [13, 14]
    state.outputs += [np.zeros(1)] * 2  # k = 14: steps 12, 13 and 14 flagged on this rung
    assert rules("escalate").should_escalate(state)


def _recorded_sigmas(tracker) -> list[tuple[int, float]]:
    """(step, σ of its plan) of every solve of ``tracker`` from now on."""
    sigmas = []
    solve = tracker._solve

    def recorded(request, **kw):
        sigmas.append((request.k, tracker.manifold.sigma))
        return solve(request, **kw)

    tracker._solve = recorded
    return sigmas


def test_escalate_climbs_the_sigma_ladder_while_flags_persist():
    from ddcontrol.score.sigma import SIGMA_GRID

    flagged = _closed_loop_tracker(1e-12, "escalate")  # every plan is flagged
    assert flagged.sigma == 1e-3 and flagged.escalate_sigma == SIGMA_GRID  # the grid above σ
    sigmas = _recorded_sigmas(flagged)
    with pytest.warns(RuntimeWarning, match="sigma 0.02 instead of 0.001 from this step on"):
        _run(flagged, steps=14)
    # A third of the 8-step horizon is 3 flagged steps: 3, 4 and 5, counted at step 6 (each
    # step awaits the previous step's estimate, which ran in the background); then 3 more on
    # each rung: 6, 7 and 8 at step 9, 9-11 at step 12.
    assert flagged.escalated_at == 6 and flagged.escalations == [6, 9, 12]
    rung = lambda step: sum(step >= e for e in (6, 9, 12))  # noqa: E731
    assert {k for k, _ in sigmas} >= set(range(flagged.t_ini, 14))  # every planned step
    assert [s for k, s in sigmas] == [(1e-3, 0.02, 0.03, 0.05)[rung(k)] for k, _ in sigmas]
    assert flagged.ood_steps == 14 - flagged.t_ini  # the flags are still counted
    flagged.reset(np.zeros(1), {})
    assert flagged.escalated_at is None and flagged.escalations == []
    assert flagged.manifold.sigma == 1e-3
    # One rung given: climbed once, then the plans stay there (nothing more conservative).
    once = _closed_loop_tracker(1e-12, "escalate", escalate_sigma=0.3)
    assert once.escalate_sigma == (0.3,)
    sigmas = _recorded_sigmas(once)
    with pytest.warns(RuntimeWarning, match="sigma 0.3 instead of 0.001 from this step on"):
        _run(once, steps=14)
    assert once.escalations == [6]
    assert [s for _, s in sigmas] == [0.3 if k >= 6 else 1e-3 for k, _ in sigmas]
    quiet = _closed_loop_tracker(1e9, "escalate")  # nothing flagged: exactly "warn"
    np.testing.assert_array_equal(_run(quiet, steps=14), _run(
        _closed_loop_tracker(1e9, "warn"), steps=14))
    assert quiet.escalated_at is None and quiet.ood_steps == 0
    # A conservative σ not above the plans' has nothing to offer: flags only.
    same = _closed_loop_tracker(1e-12, "escalate", escalate_sigma=1e-3)
    with pytest.warns(RuntimeWarning, match="flagged"):
        _run(same, steps=14)
    assert same.escalated_at is None and same.ood_steps == 14 - same.t_ini


def test_escalate_policy_is_checked_and_a_fleet_escalates_like_single_episodes():
    from ddcontrol.evaluate.fleet import run_fleet
    from ddcontrol.tracking import TrackerConfig

    with pytest.raises(ConfigurationError, match="escalate_sigma"):
        TrackerConfig(on_ood="escalate", escalate_sigma=-0.3)
    # A fleet escalates each episode as run_episode does (one batch per projection).
    from ddcontrol.evaluate.closed_loop import run_episode

    msd = "ddcontrol/MassSpringDamper-v0"
    tracker = _closed_loop_tracker(1e-12, "escalate")
    with pytest.warns(RuntimeWarning, match="from this step on"):
        fleet = run_fleet(tracker, msd, [tracker.reference] * 2, 14, seeds=[0, 1])
        alone = [run_episode(msd, _closed_loop_tracker(1e-12, "escalate"), 14, seed=i)
                 for i in (0, 1)]
    for ep, single in zip(fleet, alone):
        assert ep.escalated_at == single.escalated_at == 6
        assert ep.escalations == single.escalations == [6, 9, 12]
        assert ep.metrics["escalations"] == [6, 9, 12]
        np.testing.assert_allclose(ep.inputs, single.inputs, atol=1e-8)


def test_reprediction_recovers_the_model_response_on_a_subspace():
    # y_{k+1} = 0.8 y_k + 0.5 u_k from a random y_0: the past and the inputs fix the outputs.
    rng = np.random.default_rng(6)
    u = rng.standard_normal((600, L))
    y = np.zeros((600, L))
    y[:, 0] = rng.standard_normal(600)
    for k in range(L - 1):
        y[:, k + 1] = 0.8 * y[:, k] + 0.5 * u[:, k]
    windows = torch.as_tensor(np.stack([u, y], axis=-1))
    fit = LinearGaussianDenoiser.from_samples(windows, rank=L + 1)
    den = LinearGaussianDenoiser(fit.mean.reshape(L, 2), fit.vectors,
                                 torch.full((fit.rank,), 100.0, dtype=torch.float64))
    est = TrustEstimator(den, windows[:500], held_out=windows[500:], input_dim=M,
                         t_ini=2, repredict_iterations=10, repredict_sigma=1e-3,
                         dtype=torch.float64)
    plans = windows[500:506].clone()
    assert est(plans).reprediction.max() < 1e-3
    wrong = plans.clone()
    wrong[:, 2:, M:] += 2.0  # outputs the model would not predict for these inputs
    assert est(wrong).reprediction.min() > 0.1


def test_replay_drift_rule_catches_what_the_cost_ratio_missed():
    from ddcontrol.evaluate.replay import replay
    from ddcontrol.tracking import TrackingProblem
    from envs.dynamics import LinearDynamics

    dyn = LinearDynamics(np.array([[0.9]]), np.array([[1.0]]), np.array([[1.0]]),
                         np.zeros((1, 1)))
    u = np.ones((5, 1))
    y_true, _ = dyn.simulate(np.zeros((1, 1)), u[None])
    prob = TrackingProblem(np.full((5, 1), 10.0), 5, 1, 1, R=0.0)
    # A prediction 30 % off whose predicted cost is as high as the true one: the former rule
    # (true cost > 1.5x predicted) missed such plans.
    off = replay(prob, dyn, np.zeros(1), u, 0.7 * y_true[0])
    assert off.manifold_deviation > 0.1 and off.drifted
    exact = replay(prob, dyn, np.zeros(1), u, y_true[0])
    assert not exact.drifted
    worse = replay(prob, dyn, np.zeros(1), u, y_true[0], best_window_cost=exact.true_cost / 2)
    assert worse.drifted


def test_flagged_steps_reach_the_episode_and_the_plot(tmp_path):
    from ddcontrol.evaluate.plots import plot_tracking

    tracker = _closed_loop_tracker(1e-12, "warn")
    with pytest.warns(RuntimeWarning, match="flagged"):
        _run(tracker, steps=6)
        flagged = tracker.flagged_steps
    assert flagged == list(range(tracker.t_ini, 6)) and tracker.ood_steps == len(flagged)
    t = np.arange(6) * 0.1
    y = np.linspace(0, 1, 6)[:, None]
    import matplotlib.pyplot as plt

    calls = []
    original = plt.Axes.plot

    def spy(self, *args, **kwargs):
        calls.append((args, kwargs))
        return original(self, *args, **kwargs)

    plt.Axes.plot = spy
    try:
        plot_tracking(t, y, {"denoising": y}, tmp_path / "o.png", ["y"],
                      markers={"denoising": flagged})
    finally:
        plt.Axes.plot = original
    crosses = [a for a, k in calls if len(a) > 2 and a[2] == "x"]
    assert len(crosses) == 1 and list(crosses[0][0]) == list(t[flagged])
    assert (tmp_path / "o.png").stat().st_size > 1000


def _double_integrator(n: int, seed: int, h: float = 0.1) -> torch.Tensor:
    """Windows (n, L, 2) of p_{k+1} = p_k + h v_k, v_{k+1} = v_k + h u_k, output y = p: the
    velocity is seen through the past only as small differences of positions (weakly
    observable, as the mass-spring-damper's through 5 samples)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, L))
    p, v = np.zeros((n, L)), np.zeros((n, L))
    p[:, 0], v[:, 0] = rng.standard_normal(n), rng.standard_normal(n)
    for k in range(L - 1):
        p[:, k + 1] = p[:, k] + h * v[:, k]
        v[:, k + 1] = v[:, k] + h * u[:, k]
    return torch.as_tensor(np.stack([u, p], axis=-1))


def test_reprediction_fits_a_weakly_observable_past_with_the_plans_damping():
    windows = _double_integrator(800, 0)
    fit = LinearGaussianDenoiser.from_samples(windows, rank=L + 2)
    den = LinearGaussianDenoiser(fit.mean.reshape(L, 2), fit.vectors,
                                 torch.full((fit.rank,), 100.0, dtype=torch.float64))
    plans = _double_integrator(8, 1)  # exact behaviour: the model predicts them exactly

    def estimator(damping: float) -> TrustEstimator:
        return TrustEstimator(den, windows[:600], held_out=windows[600:], input_dim=M, t_ini=3,
                              repredict_iterations=20, repredict_sigma=1e-3,
                              repredict_damping=damping, dtype=torch.float64)

    # 20 pulls with a damping far above the past's small singular values leave its velocity
    # unfitted, and the reprediction flags exact plans; the plan's own small damping does not.
    loose, tight = estimator(0.05), estimator(1e-3)
    assert loose.repredict_damping == 0.05 and tight.repredict_damping == 1e-3
    assert loose(plans).reprediction.min() > 0.1 and loose(plans).ood.all()
    assert tight(plans).reprediction.max() < 1e-6 and not tight(plans).ood.any()
    # The measured current output pinned as the plan pins it: the position now fixes most of
    # what the past's velocity left open.
    pinned = loose(plans, current_output=True).reprediction
    assert pinned.max() < 0.05 < loose(plans).reprediction.min()
    assert tight(plans, current_output=True).reprediction.max() < 1e-6
    with pytest.raises(ConfigurationError, match="repredict_damping"):
        estimator(0.0)

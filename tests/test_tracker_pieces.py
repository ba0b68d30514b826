"""The DenoisingTracker's pieces (issue 18): settings, conditioning strategies, a solver object used
as given, the receding-horizon policy on the Controller base, shared by the batched fleet, and
``t_ini=`` as the name of T_ini (closed-form denoisers, no training)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol.baselines import Controller
from ddcontrol.data import collect
from ddcontrol.errors import ConfigurationError, UnknownNameError
from ddcontrol.evaluate.closed_loop import run_episode
from ddcontrol.evaluate.fleet import run_fleet
from ddcontrol.solvers import DRGD
from ddcontrol.tracking import DenoisingTracker, TrackingProblem, make_reference
from ddcontrol.tracking.conditioning import Clamp, Penalty, Pin, make_conditioning
from ddcontrol.tracking.config import TrackerConfig
from ddcontrol.tracking.controller import Controller as BaseController
from ddcontrol.tracking.receding import EpisodeState, RecedingHorizonPolicy
from ddcontrol.trust import TrustEstimator

MSD = "ddcontrol/MassSpringDamper-v0"
MIMO = "ddcontrol/CoupledMasses-v0"
F64 = torch.float64


@pytest.fixture(scope="module")
def msd(exact_projector):
    t_ini, n_h = 4, 10
    data = collect(MSD, 100, 40, seed=0, noise=False)
    windows = data.windows(t_ini + n_h, stride=3, normalized=True)
    episode = collect(MSD, 1, 30, seed=5, noise=False)
    return dict(t_ini=t_ini, n_h=n_h, data=data, windows=windows, den=exact_projector(windows),
                episode=episode)


def make(case, reference=None, **kw):
    ref = make_reference("random", MSD, 20, seed=1) if reference is None else reference
    prob = TrackingProblem.for_env(MSD, ref, case["n_h"], Q=1.0, R=0.01)
    opts = dict(candidates=case["windows"], t_ini=case["t_ini"], sigma=1e-3, iterations=30,
                iterations_per_step=5, dtype=F64, damping=1e-3, max_step=None)
    opts.update(kw)
    return DenoisingTracker(case["den"], case["data"].normalizer, prob, **opts)


def past(case, k=12):
    e, t = case["episode"], case["t_ini"]
    return e.u[0, k - t:k], e.y[0, k - t:k], e.y[0, k]


# -- T_ini is ``t_ini=``; ``past_length=`` still works, with a warning ---------------------------
def test_t_ini_is_the_keyword_and_past_length_warns(msd):
    pu, py, cy = past(msd)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = make(msd)
        plan_new = new.plan(pu, py, current_y=cy, start=12)
    opts = dict(candidates=msd["windows"], sigma=1e-3, iterations=30, dtype=F64, damping=1e-3,
                max_step=None)
    prob = new.problem
    with pytest.warns(DeprecationWarning,
                      match=r"DenoisingTracker: past_length= is deprecated, use t_ini="):
        old = DenoisingTracker(msd["den"], msd["data"].normalizer, prob,
                               past_length=msd["t_ini"], **opts)
    np.testing.assert_array_equal(old.plan(pu, py, current_y=cy, start=12).inputs,
                                  plan_new.inputs)
    assert new.t_ini == new.past_length == old.t_ini == msd["t_ini"]
    with pytest.raises(ConfigurationError, match="t_ini= only"):
        DenoisingTracker(msd["den"], msd["data"].normalizer, prob, t_ini=4, past_length=4,
                         **opts)
    # The problem's T_ini is the default; a different one given again is an error.
    with_t = dataclasses.replace(prob, t_ini=msd["t_ini"])
    assert DenoisingTracker(msd["den"], msd["data"].normalizer, with_t, **opts).t_ini == 4
    with pytest.raises(ConfigurationError, match="problem's is 4"):
        DenoisingTracker(msd["den"], msd["data"].normalizer, with_t, t_ini=3, **opts)


# -- settings ------------------------------------------------------------------------------------
def test_settings_are_one_checked_record_read_through_the_tracker(msd):
    tr = make(msd, jacobian_every=3, step_time_budget=0.5)
    assert isinstance(tr.config, TrackerConfig)
    assert (tr.sigma, tr.jacobian_every, tr.step_time_budget, tr.solver_name) == (
        1e-3, 3, 0.5, "drgd")
    assert tr.refine_sigma == 1e-3  # min(sigma, 0.02)
    assert tr.refine_sigma_start is None and tr.refinement.sigma_start == tr.sigma
    assert make(msd, refine_sigma_start=0.3).refinement.sigma_start == 0.3
    assert make(msd, sigma=0.5, refine_sigma_start=0.3).refinement.sigma_start == 0.5
    with pytest.raises(ConfigurationError):
        TrackerConfig(refine_sigma_start=-0.1)
    with pytest.raises(AttributeError, match="setting"):
        tr.sigma = 0.1
    with pytest.raises(ConfigurationError):
        dataclasses.replace(tr.config, iterations=0)
    with pytest.raises(UnknownNameError):
        TrackerConfig(on_ood="ignore")
    # The pinned rows' precision: "auto" by default, a dtype also by name (command line, JSON).
    assert tr.row_dtype == "auto"
    assert TrackerConfig(row_dtype="bfloat16").row_dtype is torch.bfloat16
    assert TrackerConfig(row_dtype=None).row_dtype is None
    for bad in ("bf16-ish", "int32", torch.int64, 16):
        with pytest.raises(UnknownNameError, match="row_dtype"):
            TrackerConfig(row_dtype=bad)
    solver = make(msd, row_dtype="float64").solvers.pinned(None, True, {"max_iterations": 2})
    assert solver.row_dtype is torch.float64
    with pytest.raises(UnknownNameError):
        make_conditioning("hope", 1.0)


def test_conditioning_strategies_own_their_cost_bounds_and_solver(msd):
    measured = torch.tensor([[0.5, np.nan], [np.nan, 2.0]], dtype=F64)
    lo, hi = torch.full((3, 2), -1.0, dtype=F64), torch.full((3, 2), 1.0, dtype=F64)
    clamp_lo, clamp_hi = Clamp(100.0).bounds(lo, hi, measured)
    assert clamp_lo[0, 0] == clamp_hi[0, 0] == 0.5 and clamp_lo[1, 1] == clamp_hi[1, 1] == 2.0
    assert lo[0, 0] == -1.0  # the input box is not changed in place
    assert Pin(100.0).bounds(lo, hi, measured) == (lo, hi)
    assert (Pin(7.0).past_weight, Penalty(7.0).past_weight, Clamp(7.0).past_weight) == (7.0, 7.0,
                                                                                        0.0)
    assert Penalty(100.0).lipschitz(3.0, t_ini=2) == 200.0 and Pin(100.0).lipschitz(3.0, 2) == 3.0
    assert Pin(1.0).pins(measured) and not Penalty(1.0).pins(measured)
    assert Penalty(1.0).pins(None) and Clamp(1.0).pins(None)
    # The solver each chooses: pinned where it pins, the plain one on its own cost otherwise.
    pu, py, cy = past(msd)
    tr = {c: make(msd, conditioning=c) for c in ("pin", "penalty", "clamp")}
    block = torch.full((msd["t_ini"] + 1, 2), 0.1, dtype=F64)
    kinds = {c: type(t.solvers.build(None, block)).__name__ for c, t in tr.items()}
    assert kinds == {"pin": "ConditionedDRGD", "penalty": "DRGD", "clamp": "DRGD"}
    assert type(tr["penalty"].solvers.build(None, None)).__name__ == "ConditionedDRGD"
    plans = {c: t.plan(pu, py, current_y=cy, start=12, refine=False) for c, t in tr.items()}
    measured = msd["data"].normalizer.normalize(np.concatenate([pu, py], axis=1))
    # Clamping holds the measured past exactly, pinning to the solver's tolerance.
    np.testing.assert_allclose(plans["clamp"].window[: msd["t_ini"]], measured, atol=1e-12)
    np.testing.assert_allclose(plans["pin"].window[: msd["t_ini"]], measured, atol=1e-5)


# -- a solver object is used as given ------------------------------------------------------------
def test_a_solver_object_is_used_as_given_and_never_changed(msd):
    pu, py, cy = past(msd)
    own = DRGD(step_size=0.05, max_iterations=7, min_gradient_norm=0.0)
    tr = make(msd, solver=own, conditioning="penalty", step_time_budget=10.0)
    plan = tr.plan(pu, py, current_y=cy, start=12)
    assert plan.iterations == 7  # its own max_iterations, not the tracker's 30
    with pytest.raises(ConfigurationError, match="its own max_iterations"):
        tr.plan(pu, py, current_y=cy, start=12, iterations=3)
    tr.reset(np.zeros(1))
    for _ in range(msd["t_ini"] + 2):
        tr.act(np.zeros(1))
    assert tr.last_plan.iterations == 7  # not iterations_per_step
    assert (own.max_iterations, own.max_time, own.step_size) == (7, float("inf"), 0.05)
    # It cannot pin the measured past: no silent switch to a penalty.
    with pytest.raises(ConfigurationError, match="cannot pin"):
        make(msd, solver=own)
    no_past = make(msd, solver=own, t_ini=0, candidates=None)
    with pytest.raises(ConfigurationError, match="cannot pin"):
        no_past.plan(current_y=cy, initial_point=np.zeros((msd["n_h"], 2)))


# -- the policy: a Controller, and the rules the fleet shares -------------------------------------
def test_the_tracker_is_a_controller_with_the_baselines_base(msd):
    tr = make(msd)
    assert Controller is BaseController
    assert isinstance(tr, RecedingHorizonPolicy) and isinstance(tr, Controller)
    assert tr.name == "denoising" and np.all(tr.input_low == tr.problem.input_low)
    tr.reset(np.zeros(1))
    assert tr.first_plan is not None and tr.k == tr.step_index == 0
    us = [tr.act(np.array([0.1 * i])) for i in range(msd["t_ini"] + 2)]
    assert tr.first_plan is None and tr.k == len(tr.inputs) == len(tr.outputs) == len(us)
    np.testing.assert_array_equal(us[0], tr.warmup_input)
    tr.reset()
    assert tr.k == 0 and tr.inputs == [] and tr.last_plan is None
    # A reference given as a function of time works (sampled for the base's attribute only).
    prob = TrackingProblem(lambda t: [0.3], msd["n_h"], 1, 1, dt=0.1, t_ini=msd["t_ini"])
    fn = DenoisingTracker(msd["den"], msd["data"].normalizer, prob, candidates=msd["windows"],
                          sigma=1e-3, iterations=10, dtype=F64)
    fn.reset(np.zeros(1))
    assert np.all(np.isfinite([fn.act(np.zeros(1)) for _ in range(6)]))
    assert EpisodeState().k == 0


# Thresholds far from every estimate: a batch's estimates differ slightly from single plans' (the
# noise of the past-sensitivity probe is drawn for the whole batch).
@pytest.mark.parametrize("threshold, on_ood", [(1e-12, "hold"), (1e9, "hold"), (1e-12, "warn"),
                                               (1e-12, "raise")])
def test_a_fleet_follows_the_same_out_of_distribution_rules_as_single_episodes(msd, threshold,
                                                                               on_ood):
    refs = [make_reference("random", MSD, 16, seed=s) for s in (1, 2)]
    trust = TrustEstimator(msd["den"], msd["windows"], input_dim=1, t_ini=msd["t_ini"],
                           mean=msd["data"].normalizer.mean, std=msd["data"].normalizer.std,
                           threshold=threshold, dtype=F64)

    def tracker(ref):
        return make(msd, ref, trust=trust, on_ood=on_ood, refine_iterations=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "warn" warns once per episode
        episodes = run_fleet(tracker(refs[0]), MSD, refs, seeds=[0, 1])
        alone_episodes = [run_episode(MSD, tracker(ref), 16, seed=i)
                          for i, ref in enumerate(refs)]
    for ep, alone in zip(episodes, alone_episodes):
        np.testing.assert_allclose(ep.inputs, alone.inputs, atol=1e-9)
        assert ep.flagged_steps == alone.flagged_steps and ep.ood_steps == alone.ood_steps
        # (The estimated deviation in a message is not compared: the batch draws the noise of
        # its past-sensitivity probe for all plans at once.)
        assert (ep.error is None) == (alone.error is None)
    flagged = threshold < 1.0
    expected = 0 if not flagged else 1 if on_ood == "raise" else 16 - msd["t_ini"]
    assert [ep.ood_steps for ep in episodes] == [expected, expected]
    if on_ood == "raise":
        assert all(ep.error.startswith("OutOfDistributionError") for ep in episodes)
    elif on_ood == "hold" and flagged:  # no good plan ever: the warm-up input throughout
        assert np.all(np.stack([ep.requested for ep in episodes]) == 0.0)


def test_batched_guided_plans_inpaint_each_problems_own_past(exact_projector):
    t_ini, n_h = 3, 8
    data = collect(MIMO, 100, 40, seed=0, noise=False)
    windows = data.windows(t_ini + n_h, stride=3, normalized=True)
    ep = collect(MIMO, 2, 30, seed=5, noise=False)
    ref = np.zeros((40, 2))
    prob = TrackingProblem(ref, n_h, 2, 2, dt=0.1, input_low=-5, input_high=5)
    tr = DenoisingTracker(exact_projector(windows), data.normalizer, prob, candidates=windows,
                          t_ini=t_ini, sigma=1e-3, solver="guided", iterations=6, dtype=F64,
                          refine_iterations=0)
    ks = [10, 20]
    pu = np.stack([ep.u[i, k - t_ini:k] for i, k in enumerate(ks)])
    py = np.stack([ep.y[i, k - t_ini:k] for i, k in enumerate(ks)])
    batch = tr.plan_batch(pu, py, start=ks)
    got = data.normalizer.denormalize(batch.windows[:, :t_ini])
    np.testing.assert_allclose(got, np.concatenate([pu, py], axis=-1), atol=1e-9)


def test_refinement_anneals_from_its_start_to_its_final_sigma():
    """``sigma_start`` above the final σ: the pull begins at the start and anneals down to the
    final σ (monotonically) over the first half; without it, every call is at the plan's σ."""
    from ddcontrol.tracking.refine import Refinement

    seen = []

    def shrink(x, sigma):  # the projection onto the subspace y = u, at every σ
        seen.append(float(sigma))
        mean = 0.5 * (x[..., :1] + x[..., 1:])
        return torch.cat([mean, mean], dim=-1)

    box = (torch.full((6, 2), -torch.inf, dtype=F64), torch.full((6, 2), torch.inf, dtype=F64))
    x = torch.randn(3, 6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = Refinement(shrink, 0.05, 0.05, 10, 0, 1, *box, sigma_start=0.3)(x, None)
    assert seen[0] == pytest.approx(0.3) and seen[-1] == pytest.approx(0.05)
    assert all(a >= b - 1e-12 for a, b in zip(seen, seen[1:]))
    # Inputs pinned; the outputs pulled onto y = u.
    assert torch.equal(out[..., :1], x[..., :1])
    assert torch.allclose(out[..., 1:], out[..., :1], atol=1e-6)
    seen.clear()
    Refinement(shrink, 0.05, 0.05, 10, 0, 1, *box)(x, None)
    assert set(seen) == {0.05}

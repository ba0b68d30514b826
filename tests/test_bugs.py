"""Regression tests of fixed bugs, and of paths that had no test (issue 18, item 5).

The ``track --closed-loop`` results file is checked in ``tests/test_evaluate.py`` (it needs the
trained model fixture there).
"""

from __future__ import annotations

import importlib
import json

import cvxpy as cp
import numpy as np
import pytest
import torch

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol.baselines import DeePC
from ddcontrol.baselines.errors import SolverFailedError
from ddcontrol.data import collect
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import CheckpointError
from ddcontrol.evaluate.compare import compare, write_comparison
from ddcontrol.evaluate.replay import replay
from ddcontrol.score import LinearGaussianDenoiser
from ddcontrol.score.checkpoint import build_denoiser, load_model, save_checkpoint
from ddcontrol.tracking import DenoisingTracker, TrackingProblem, make_reference
from envs.registry import make_dynamics

MSD = "ddcontrol/MassSpringDamper-v0"
MIMO = "ddcontrol/CoupledMasses-v0"
UNI = "ddcontrol/Unicycle-v0"
# The module (``ddcontrol.evaluate.compare`` as an attribute is the function it exports).
compare_module = importlib.import_module("ddcontrol.evaluate.compare")


class ZeroInput:
    """The smallest closed-loop controller: u = 0."""

    name = "zero"
    last_solve_time_s = 0.0

    def __init__(self, input_dim: int) -> None:
        self.input_dim = input_dim

    def reset(self, observation: np.ndarray, info: dict | None = None) -> None:
        pass

    def act(self, observation: np.ndarray, info: dict | None = None) -> np.ndarray:
        return np.zeros(self.input_dim)


def exact_projector(windows: np.ndarray) -> LinearGaussianDenoiser:
    """Linear-Gaussian denoiser of the windows' subspace (wide prior): at σ = 1e-3 it is the
    orthogonal projector onto the behaviour of a linear system to ~1e-10."""
    fit = LinearGaussianDenoiser.from_samples(torch.as_tensor(windows, dtype=torch.float64))
    return LinearGaussianDenoiser(fit.mean.reshape(windows.shape[1:]), fit.vectors,
                                  torch.full((fit.rank,), 100.0, dtype=torch.float64))


# -- write_comparison labels the outputs of the env as configured (env_kwargs) ------------------
def test_write_comparison_uses_the_env_kwargs_output_names(tmp_path, monkeypatch):
    kwargs = {"outputs": ["theta", "x", "y"]}  # the position is outputs 1 and 2, not 0 and 1
    ref = make_reference("figure-eight", UNI, 6, env_kwargs=kwargs)
    assert ref.channels == (1, 2)
    labels = []
    plot = compare_module.plot_tracking

    def spy(t, reference, outputs, path, channel_names=None, **kw):
        labels.append(list(channel_names))
        return plot(t, reference, outputs, path, channel_names, **kw)

    monkeypatch.setattr(compare_module, "plot_tracking", spy)
    result = compare(UNI, {"zero": lambda: ZeroInput(2)}, ref, Q=1.0, R=0.0, env_kwargs=kwargs,
                     progress=False)
    assert result.output_names == ["theta", "x", "y"]
    paths = write_comparison(result, tmp_path)
    # Without the env_kwargs the full-state names would give ["y", "theta"].
    assert labels == [["x", "y"]]
    payload = json.loads(paths["results"].read_text())
    assert [r["controller"] for r in payload["table"]] == ["zero"]
    assert not payload["table"][0]["failed"]
    assert np.asarray(payload["episodes"]["zero"][0]["outputs"]).shape == (6, 3)


# -- the tracker's conditioning strategies and solvers (clamp, penalty; drgd, dlf) --------------
T_INI, N_H, K = 4, 12, 12


@pytest.fixture(scope="module")
def mimo_case():
    """A linear MIMO system, its exact behaviour projector and a measured past."""
    data = collect(MIMO, 200, 40, seed=0, noise=False)
    windows = data.windows(T_INI + N_H, stride=4, normalized=True)
    episode = collect(MIMO, 1, 30, seed=5, noise=False)
    ref = np.stack([0.8 * np.sin(np.arange(40) * 0.1), 0.5 * np.ones(40)], axis=1)
    prob = TrackingProblem(ref, N_H, 2, 2, dt=0.1, Q=1.0, R=0.01, input_low=-5, input_high=5)
    past = np.concatenate([episode.u[0, K - T_INI:K], episode.y[0, K - T_INI:K]], axis=1)
    return data, windows, episode, prob, exact_projector(windows), data.normalizer.normalize(past)


def conditioned_plan(case, **kwargs):
    """Plan from the measured past (no refinement: it would pin the past) and replay it."""
    data, windows, episode, prob, den, _ = case
    opts = {"sigma": 1e-3, "iterations": 150, "dtype": torch.float64, "damping": 1e-3,
            "max_step": None, **kwargs}
    tracker = DenoisingTracker(den, data.normalizer, prob, candidates=windows, t_ini=T_INI,
                               **opts)
    plan = tracker.plan(episode.u[0, K - T_INI:K], episode.y[0, K - T_INI:K], start=K,
                        refine=False)
    rep = replay(prob, make_dynamics(MIMO), episode.x[0, K], plan.inputs, plan.predicted_outputs,
                 u_prev=episode.u[0, K - 1], start=K)
    return plan, rep


@pytest.mark.parametrize("solver", ["drgd", "dlf", "nesterov"])
def test_clamp_conditioning_keeps_the_measured_past_exactly(mimo_case, solver):
    plan, rep = conditioned_plan(mimo_case, solver=solver, conditioning="clamp")
    # The past is re-imposed after every projection (box bounds lower = upper) ...
    np.testing.assert_allclose(plan.window[:T_INI], mimo_case[5], atol=1e-12)
    # ... so the window ends off the manifold, where the projection wanted to move the past.
    assert plan.manifold_distance > 1e-2
    assert np.all(np.abs(plan.inputs) <= 5 + 1e-9)
    assert rep.true_cost < 0.5 * plan.initial_cost  # still far better than the cold start


@pytest.mark.parametrize("solver", ["drgd", "dlf"])
def test_penalty_conditioning_trades_past_fit_for_cost(mimo_case, solver):
    mismatch, predicted = [], []
    for lam in (1e-2, 1.0, 100.0):
        plan, rep = conditioned_plan(mimo_case, solver=solver, conditioning="penalty",
                                     penalty_weight=lam)
        assert plan.manifold_distance < 1e-6  # the window stays on the manifold
        assert rep.true_cost < 0.5 * plan.initial_cost
        mismatch.append(np.abs(plan.window[:T_INI] - mimo_case[5]).max())
        predicted.append(plan.predicted_cost)
    # A larger λ fits the measured past better, and buys less predicted cost with it.
    assert mismatch[0] > mismatch[1] > mismatch[2] > 0
    assert predicted[0] < predicted[1] < predicted[2]


def test_num_starts_solves_a_batch_and_keeps_the_best(mimo_case):
    one, _ = conditioned_plan(mimo_case, solver="drgd", num_starts=1, iterations=60)
    three, rep = conditioned_plan(mimo_case, solver="drgd", num_starts=3, iterations=60)
    assert one.solver_result.point.shape[0] == 1 and three.solver_result.point.shape[0] == 3
    costs = three.solver_result.cost.numpy()
    assert len(np.unique(np.round(costs, 9))) == 3  # three different starts
    # The kept plan is the batch's best, and no worse than the single (best-ranked) start.
    best = int(np.argmin(costs))
    np.testing.assert_allclose(three.window, three.solver_result.point[best].numpy(), atol=0)
    assert three.predicted_cost <= one.predicted_cost * (1 + 1e-9)


# -- callable references --------------------------------------------------------------------------
def test_callable_reference_plans_like_its_samples():
    n, dt = 16, 0.1
    data = collect(MSD, 100, n, seed=0, initial_states=np.array([0.5, 0.0]), noise=False)
    windows = data.windows(n, normalized=True)

    def target(t: float) -> list[float]:
        return [0.6 * np.sin(2.0 * t)]

    as_function = TrackingProblem(target, n, 1, 1, dt=dt, Q=1.0, R=0.01)
    samples = TrackingProblem(np.array([target(k * dt) for k in range(n + 5)]), n, 1, 1, dt=dt,
                              Q=1.0, R=0.01)
    np.testing.assert_allclose(as_function.reference_values(3, n),
                               samples.reference_values(3, n), atol=0)
    plans = []
    for prob in (as_function, samples):
        tracker = DenoisingTracker(exact_projector(windows), data.normalizer, prob,
                                   candidates=windows, sigma=1e-3, solver="drgd", iterations=40,
                                   dtype=torch.float64)
        plans.append(tracker.plan())
    np.testing.assert_allclose(plans[0].inputs, plans[1].inputs, atol=1e-12)
    assert plans[0].predicted_cost == pytest.approx(plans[1].predicted_cost, rel=1e-12)
    assert plans[0].predicted_cost < plans[0].initial_cost


# -- DeePC falls back to Clarabel when its QP solver fails ----------------------------------------
def test_deepc_falls_back_to_clarabel_when_osqp_fails(monkeypatch):
    data = collect(MSD, 20, 100, seed=1)
    ref = make_reference("sine", MSD, 10, amplitude=0.5)
    test = collect(MSD, 1, 20, seed=7)
    u_ini, y_ini = test.u[0, 6:10], test.y[0, 6:11]
    reference = DeePC(data, ref, 10.0, 0.1, horizon=10, max_columns=100)
    u_ref, _ = reference.plan(u_ini, y_ini, ref)

    deepc = DeePC(data, ref, 10.0, 0.1, horizon=10, max_columns=100)
    solve, used = deepc.problem.solve, []

    def failing_osqp(*args, solver=None, **kwargs):
        used.append(solver)
        if solver == "OSQP":
            raise cp.error.SolverError("OSQP failed (injected)")
        return solve(*args, solver=solver, **kwargs)

    monkeypatch.setattr(deepc.problem, "solve", failing_osqp)
    u, _ = deepc.plan(u_ini, y_ini, ref)
    assert used == ["OSQP", "CLARABEL"] and deepc.last_status in (cp.OPTIMAL,
                                                                   cp.OPTIMAL_INACCURATE)
    np.testing.assert_allclose(u, u_ref, atol=1e-3 * max(1.0, np.abs(u_ref).max()))

    def always_failing(*args, solver=None, **kwargs):
        raise cp.error.SolverError(f"{solver} failed (injected)")

    monkeypatch.setattr(deepc.problem, "solve", always_failing)
    with pytest.raises(SolverFailedError, match="CLARABEL failed"):
        deepc.plan(u_ini, y_ini, ref)


# -- checkpoints written before the optional entries existed --------------------------------------
def test_an_older_checkpoint_without_optional_entries_loads(tmp_path):
    spec = {"arch": "mlp", "window_length": 6, "input_dim": 1, "output_dim": 1,
            "sigma_data": 1.0, "net_kwargs": {"width": 16, "depth": 1}}
    torch.manual_seed(0)
    den = build_denoiser(spec)
    normalizer = Normalizer(np.array([0.1, -0.2]), np.array([2.0, 0.5]), input_dim=1)
    # Only the required entries: no sigma_selection, optimizer, scheduler, rng, nor the
    # metadata that later versions add (window_symmetry, fingerprint...).
    payload = {"model": spec, "ema": den.state_dict(), "weights": den.state_dict(), "step": 7,
               "config": {"window": 6}, "normalizer": normalizer.to_dict(),
               "metadata": {"env_id": MSD}}
    path = save_checkpoint(tmp_path / "checkpoint.pt", payload)
    model = load_model(tmp_path)
    assert model.sigma_selection is None and model.symmetry.is_identity
    assert model.env_id == MSD and model.metadata["step"] == 7 and model.window_length == 6
    x, sigma = torch.randn(3, 6, 2), torch.full((3,), 0.1)
    with torch.no_grad():
        torch.testing.assert_close(model.denoiser(x, sigma), den.eval()(x, sigma))
    # Another format version is refused with a clear error, not misread.
    stale = torch.load(path, weights_only=True)
    stale["format_version"] = 0
    torch.save(stale, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="format 0"):
        load_model(tmp_path / "old.pt")

"""σ selection from held-out data (ddcontrol.score.sigma) on closed forms, and its checkpoint entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.score.closed_form import LinearGaussianDenoiser
from ddcontrol.score.sigma import select_sigma_windows

L, M, P = 8, 1, 1
GRID = (0.02, 0.05, 0.1, 0.2, 0.3)


def _linear_system_windows(n: int, seed: int) -> tuple[np.ndarray, LinearGaussianDenoiser]:
    """Windows of y_{k+1} = 0.9 y_k + u_k (random y_0, Gaussian u): an (L + 1)-dim subspace."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, L))
    y = np.zeros((n, L))
    y[:, 0] = rng.standard_normal(n)
    for k in range(L - 1):
        y[:, k + 1] = 0.9 * y[:, k] + u[:, k]
    w = np.stack([u, y], axis=-1)
    den = LinearGaussianDenoiser.from_samples(torch.as_tensor(w), rank=L + 1)
    return w, den


class _NoisyAtSmallSigma(torch.nn.Module):
    """An exact denoiser plus an error that grows like 0.02/σ (a net undertrained at small σ)."""

    def __init__(self, inner: LinearGaussianDenoiser) -> None:
        super().__init__()
        self.inner = inner
        gen = torch.Generator().manual_seed(5)
        self.register_buffer("direction", torch.randn(L, M + P, generator=gen,
                                                      dtype=torch.float64))

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.inner(x, sigma) + (0.02 / float(sigma)) * self.direction


def test_exact_linear_geometry_selects_the_smallest_sigma():
    w, den = _linear_system_windows(400, 0)
    sel = select_sigma_windows(den, w[:64], input_dim=M, t_ini=3, grid=GRID,
                               dtype=torch.float64)
    assert sel.sigma == GRID[0]
    errors = np.array(sel.errors)
    # Shrinkage towards the mean grows with σ; at σ = 0.02 the prediction is exact.
    assert errors[0] < 1e-3
    assert np.all(np.diff(errors) > 0)
    assert sel.windows == 64 and sel.t_ini == sel.past_length == 3


def test_denoiser_unreliable_at_small_sigma_selects_a_larger_one():
    w, den = _linear_system_windows(400, 1)
    sel = select_sigma_windows(_NoisyAtSmallSigma(den), w[:64], input_dim=M, t_ini=3,
                               grid=GRID, dtype=torch.float64)
    assert sel.sigma > GRID[0]
    assert sel.errors[GRID.index(sel.sigma)] == min(sel.errors)
    assert sel.errors[0] > 2 * min(sel.errors)


def test_validation():
    w, den = _linear_system_windows(50, 2)
    with pytest.raises(DimensionError):
        select_sigma_windows(den, w, input_dim=M, t_ini=L)
    with pytest.raises(ConfigurationError):
        select_sigma_windows(den, w, input_dim=M, grid=(0.1, -1.0))
    with pytest.raises(DimensionError):
        select_sigma_windows(den, w, input_dim=2)


def test_checkpoint_stores_the_selection_and_old_checkpoints_still_load(tmp_path):
    from ddcontrol.data import collect
    from ddcontrol.score import TrainConfig, load_model, train
    from ddcontrol.score.sigma import select_sigma, store_sigma

    data = collect("ddcontrol/MassSpringDamper-v0", 12, 12, seed=0)
    cfg = TrainConfig(out=str(tmp_path), window=6, steps=3, batch_size=8, width=16, depth=1,
                      emb_dim=8, progress=False, val_every=0, checkpoint_every=0,
                      warmup_steps=1, select_sigma=False)  # a checkpoint without a σ
    train(cfg, data)
    old = load_model(tmp_path)
    assert old.sigma is None and old.sigma_selection is None
    sel = select_sigma(old, data, grid=(0.05, 0.2), iterations=2, max_windows=4)
    store_sigma(tmp_path, sel)
    new = load_model(tmp_path)
    assert new.sigma == sel.sigma
    assert new.sigma_selection["grid"] == [0.05, 0.2]
    assert len(new.sigma_selection["errors"]) == 2
    # The tracker's sigma="auto" takes the stored σ; without one it needs the dataset.
    from ddcontrol.tracking import DenoisingTracker, TrackingProblem

    prob = TrackingProblem(np.zeros((10, 1)), 4, 1, 1, input_low=-5, input_high=5)
    tracker = DenoisingTracker.from_model(new, prob, data, sigma="auto", trust=None)
    assert tracker.sigma == sel.sigma
    with pytest.raises(ConfigurationError):
        DenoisingTracker.from_model(old, prob, None, sigma="auto")
    chosen = DenoisingTracker.from_model(old, prob, data, sigma="auto", trust=None)
    assert chosen.sigma in (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)
    with pytest.raises(ConfigurationError):
        DenoisingTracker(new.denoiser, new.normalizer, prob, t_ini=2, sigma="auto")
    # "auto" is the default: without a sigma the stored one is used; with neither a stored σ
    # nor a dataset to select from, the constructor's.
    assert DenoisingTracker.from_model(new, prob, data, trust=None).sigma == sel.sigma
    assert DenoisingTracker.from_model(old, prob, None).sigma == 0.05
    from ddcontrol.tracking.defaults import system_defaults

    sd = system_defaults("ddcontrol/MassSpringDamper-v0")
    assert sd.sigma == "auto" and sd.resolve_sigma(new) == sel.sigma
    assert sd.tracker_options(0.1)["sigma"] == "auto"


def _tiny_config(out, **kw):
    from ddcontrol.score import TrainConfig

    return TrainConfig(out=str(out), window=8, steps=4, batch_size=8, width=16, depth=1,
                       emb_dim=8, progress=False, val_every=0, checkpoint_every=0,
                       warmup_steps=1, **kw)


def test_training_stores_the_selected_sigma_without_changing_the_weights(tmp_path):
    import json

    from ddcontrol.data import collect
    from ddcontrol.score import load_model, train
    from ddcontrol.score.sigma import AUTO_CRITERION, SIGMA_GRID, auto_sigma_selection, pick_sigma
    from ddcontrol.tracking import DenoisingTracker, TrackingProblem

    data = collect("ddcontrol/MassSpringDamper-v0", 20, 16, seed=0)
    returned = train(_tiny_config(tmp_path / "with"), data)
    train(_tiny_config(tmp_path / "without", select_sigma=False), data)
    model = load_model(tmp_path / "with")
    bare = load_model(tmp_path / "without")
    assert bare.sigma is None
    assert model.sigma in SIGMA_GRID and returned.sigma == model.sigma
    sel = model.sigma_selection
    # The criterion is training's, with the mass-spring-damper's rule (SystemDefaults).
    assert sel["criterion"] == AUTO_CRITERION.replace("robust", "interior")
    assert len(sel["errors"]) == len(SIGMA_GRID)
    assert sel["sigma"] == SIGMA_GRID[pick_sigma(sel["errors"], "interior")]
    # The mass-spring-damper's tracker pins T_ini = 5 steps (ddcontrol.tracking.defaults).
    assert sel["past_length"] == 5
    # The selection does not touch the trained weights, nor the rest of the checkpoint.
    for a, b in zip(model.denoiser.state_dict().values(), bare.denoiser.state_dict().values()):
        assert torch.equal(a, b)
    # The σ stored is the one the held-out trajectories give (what the benchmark recomputes
    # for checkpoints written before training stored one).
    _, held = data.split(0.9, seed=0)
    again = auto_sigma_selection(bare, held)
    assert again.sigma == model.sigma
    np.testing.assert_allclose(again.errors, sel["errors"], rtol=1e-5)
    log = [json.loads(x) for x in (tmp_path / "with" / "log.jsonl").read_text().splitlines()]
    assert log[-2]["event"] == "sigma" and log[-2]["sigma"] == model.sigma
    assert log[-1]["event"] == "done"  # still the last line of a finished run
    # sigma="auto" takes the stored σ (no dataset needed).
    prob = TrackingProblem(np.zeros((10, 1)), 3, 1, 1, input_low=-5, input_high=5)
    tracker = DenoisingTracker.from_model(model, prob, None, sigma="auto")
    assert tracker.sigma == model.sigma


def test_no_held_out_data_no_sigma(tmp_path):
    from ddcontrol.data import collect
    from ddcontrol.score import load_model, train

    data = collect("ddcontrol/MassSpringDamper-v0", 6, 16, seed=1)
    train(_tiny_config(tmp_path, val_fraction=0.0), data)
    assert load_model(tmp_path).sigma is None


def test_pick_sigma_prefers_a_basin_to_a_cliff_edge():
    from ddcontrol.score.sigma import pick_sigma

    cliff = [0.10, 0.05, 0.04, 0.035, 0.20]  # least error right next to a jump
    assert pick_sigma(cliff, "argmin") == 3
    assert pick_sigma(cliff, "robust") == 2
    falling = [0.3, 0.2, 0.15, 0.12]
    assert pick_sigma(falling, "robust") == pick_sigma(falling, "argmin") == 3
    assert pick_sigma([0.2, 0.1, 0.1, 0.1], "argmin") == 3  # ties: the larger σ
    assert pick_sigma([np.inf, np.nan, 0.5], "robust") == 2
    assert pick_sigma([np.inf, np.inf], "robust") == 1
    with pytest.raises(ConfigurationError):
        pick_sigma([0.1, 0.2], "nearest")


def test_interior_rule_never_picks_an_end_of_the_grid_it_cannot_show_a_basin_at():
    from ddcontrol.score.sigma import pick_sigma

    # The linear systems' shape: flat at the top of the grid, robust takes the end (a window
    # of two), interior the last point with both neighbours.
    flat_top = [0.72, 0.68, 0.661, 0.660]
    assert pick_sigma(flat_top, "robust") == 3
    assert pick_sigma(flat_top, "interior") == 2
    # Inside the grid both rules agree (the pendulum's shape).
    basin = [0.3, 0.12, 0.10, 0.11, 0.4]
    assert pick_sigma(basin, "interior") == pick_sigma(basin, "robust") == 2
    # Nothing finite inside: as robust; one or two points: as robust.
    assert pick_sigma([0.1, np.inf, 0.2], "interior") == pick_sigma([0.1, np.inf, 0.2], "robust")
    assert pick_sigma([0.2, 0.1], "interior") == pick_sigma([0.2, 0.1], "robust") == 1
    assert pick_sigma([0.3], "interior") == 0


def test_statistic_is_the_median_or_mean_of_the_per_window_errors():
    from ddcontrol.score.sigma import conditioned_prediction_error

    w, den = _linear_system_windows(400, 3)
    den = _NoisyAtSmallSigma(den)
    x = torch.as_tensor(w[:16])
    one = torch.zeros(M + P, dtype=torch.float64)
    per = [conditioned_prediction_error(den, x, s, input_dim=M, t_ini=3, std=one + 1,
                                        mean=one).numpy() for s in GRID]
    med = select_sigma_windows(den, w[:16], input_dim=M, t_ini=3, grid=GRID,
                               dtype=torch.float64)
    avg = select_sigma_windows(den, w[:16], input_dim=M, t_ini=3, grid=GRID,
                               dtype=torch.float64, statistic="mean", rule="argmin")
    np.testing.assert_allclose(med.errors, [np.median(e) for e in per], rtol=1e-9)
    np.testing.assert_allclose(avg.errors, [np.mean(e) for e in per], rtol=1e-9)
    assert med.criterion == "conditioned-median-robust"
    assert avg.criterion == "conditioned-mean-argmin"
    assert avg.sigma == GRID[int(np.argmin(avg.errors))]
    with pytest.raises(ConfigurationError):
        select_sigma_windows(den, w[:4], input_dim=M, t_ini=3, statistic="max")
    with pytest.raises(ConfigurationError):
        select_sigma_windows(den, w[:4], input_dim=M, t_ini=3, rule="min")


def test_plans_reach_reachable_references_and_fall_short_as_sigma_grows():
    from ddcontrol.score.sigma import plan_tracking_error

    w, den = _linear_system_windows(400, 0)
    x = torch.as_tensor(w[:32])
    one = torch.ones(M + P, dtype=torch.float64)
    med = [float(plan_tracking_error(den, x, s, input_dim=M, t_ini=3, std=one, mean=0 * one,
                                     Q=1.0, R=1e-4).median()) for s in GRID]
    # The reference (the window's own future outputs) is reachable: at small σ the exact
    # projection's plan tracks it; a larger σ shrinks plans towards the data's mean.
    assert med[0] < 1e-3
    assert np.all(np.diff(med) > 0) and med[-1] > 10 * med[0]


def test_selection_with_the_plan_term():
    w, den = _linear_system_windows(400, 0)
    exact = select_sigma_windows(den, w[:32], input_dim=M, t_ini=3, grid=GRID,
                                 dtype=torch.float64, plan=(1.0, 1e-4))
    assert exact.sigma == GRID[0]
    assert exact.criterion == "conditioned-plan-median-robust"
    d = exact.as_dict()
    assert len(d["plan_errors"]) == len(d["prediction_errors"]) == len(GRID)
    assert all(p > 0 for p in d["plan_errors"])
    # A net unreliable at small σ: both terms say so, the selection moves to larger σ.
    noisy = select_sigma_windows(_NoisyAtSmallSigma(den), w[:32], input_dim=M, t_ini=3,
                                 grid=GRID, dtype=torch.float64, plan=(1.0, 1e-4))
    assert noisy.sigma > GRID[1]
    with pytest.raises(ConfigurationError):
        select_sigma_windows(den, w[:4], input_dim=M, t_ini=3, plan=(0.0, 0.01))


def test_selection_uses_fewer_windows_without_explicit_vjps(tmp_path, monkeypatch):
    import ddcontrol.score.sigma as sigma_module
    from ddcontrol.data import collect
    from ddcontrol.score import load_model, train
    from ddcontrol.score.sigma import AUTO_WINDOWS, AUTO_WINDOWS_AUTOGRAD, auto_sigma_selection_windows

    # The window counts are under test, not the sweep: one σ and two iterations per solve keep
    # the U-Net's autograd selections to seconds (the whole grid took about 60 s of this test).
    real = sigma_module.select_sigma_windows
    monkeypatch.setattr(sigma_module, "select_sigma_windows", lambda *a, **k: real(
        *a, **{**k, "grid": (0.1,), "iterations": 2, "plan_iterations": 2}))
    data = collect("ddcontrol/MassSpringDamper-v0", 8, 16, seed=0)
    train(_tiny_config(tmp_path / "mlp", select_sigma=False), data)
    train(_tiny_config(tmp_path / "unet", select_sigma=False, arch="unet"), data)
    mlp, unet = load_model(tmp_path / "mlp"), load_model(tmp_path / "unet")
    windows = mlp.model_windows(data, 1)[:40]  # 40 held-out-like windows, model frame
    grid = dict(t_ini=3)
    assert AUTO_WINDOWS_AUTOGRAD < 40 < AUTO_WINDOWS
    # The residual MLP has explicit VJPs: every window (up to 128); the U-Net goes through
    # autograd: 32, which bounds the time the selection adds to the end of training.
    assert auto_sigma_selection_windows(mlp, windows, **grid).windows == 40
    assert auto_sigma_selection_windows(unet, windows, **grid).windows == AUTO_WINDOWS_AUTOGRAD
    assert auto_sigma_selection_windows(unet, windows, max_windows=8, **grid).windows == 8


def test_auto_sigma_uses_the_systems_rule_on_a_stored_selection():
    """A stored selection is re-picked from its stored errors with the system's rule: the linear
    systems' ``interior`` rule never takes the grid's end (the coupled masses' errors below,
    flat from 0.1 to 0.3, give 0.2 there and 0.3 under the robust rule)."""
    from ddcontrol.score.checkpoint import TrainedModel
    from ddcontrol.score.sigma import resolve_sigma
    from ddcontrol.tracking.defaults import system_defaults

    grid = [0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3]
    errors = [9.23, 1.83, 8.87, 3.67, 0.350, 0.366, 0.373, 0.318]

    def model(env_id: str, rule: str, sigma: float) -> TrainedModel:
        sel = {"sigma": sigma, "grid": grid, "errors": errors,
               "criterion": f"conditioned-plan-mean-{rule}"}
        return TrainedModel(None, None, 30, 2, 2, metadata={"env_id": env_id},
                            sigma_selection=sel)

    assert system_defaults("ddcontrol/CoupledMasses-v0").sigma_rule == "interior"
    assert resolve_sigma(model("ddcontrol/CoupledMasses-v0", "robust", 0.3)) == 0.2
    assert resolve_sigma(model("ddcontrol/MassSpringDamper-v0", "robust", 0.3)) == 0.2
    assert resolve_sigma(model("ddcontrol/DoublePendulum-v0", "robust", 0.3)) == 0.3
    assert resolve_sigma(model("ddcontrol/CoupledMasses-v0", "interior", 0.2)) == 0.2
    # A criterion it does not know (an older checkpoint's name) keeps the stored σ.
    odd = model("ddcontrol/CoupledMasses-v0", "robust", 0.3)
    odd.sigma_selection["criterion"] = "conditioned-median"
    assert resolve_sigma(odd) == 0.3

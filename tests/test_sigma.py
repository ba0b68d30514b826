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
                      warmup_steps=1)
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
        DenoisingTracker(new.denoiser, new.normalizer, prob, past_length=2, sigma="auto")

"""Test-suite settings: the tests' tensors are tiny, and one thread runs them fastest and immune
to OpenMP stalls when the machine is busy."""

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def exact_projector():
    """``exact_projector(windows)``: the linear-Gaussian denoiser of the windows' affine span with
    a wide prior; at σ = 1e-3 the orthogonal projector onto it to ~1e-10 (float64)."""
    from ddcontrol.score import LinearGaussianDenoiser

    def build(windows: np.ndarray) -> LinearGaussianDenoiser:
        fit = LinearGaussianDenoiser.from_samples(torch.as_tensor(windows, dtype=torch.float64))
        return LinearGaussianDenoiser(fit.mean.reshape(windows.shape[1:]), fit.vectors,
                                      torch.full((fit.rank,), 100.0, dtype=torch.float64))

    return build

"""ddcontrol: data-driven control on the behaviour manifold.

Trajectory windows of a system lie near a low-dimensional behaviour manifold. A denoiser
D(x, σ) = x + σ² ∇log p_σ(x) trained on those windows approximates the nearest-point projection
onto that manifold, and its Jacobian the tangent projector; Riemannian solvers (DRGD, DLF) built on
it design inputs that track a reference, and every plan is replayed in the true simulator.
"""

import envs as _envs  # noqa: F401  (registers the ddcontrol/* Gymnasium ids)
from ddcontrol.errors import (
    CheckpointError,
    ConfigurationError,
    DataFormatError,
    DDControlError,
    DimensionError,
    NonFiniteError,
    UnknownNameError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "DDControlError",
    "DimensionError",
    "NonFiniteError",
    "DataFormatError",
    "CheckpointError",
    "UnknownNameError",
    "ConfigurationError",
]

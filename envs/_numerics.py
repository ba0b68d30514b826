"""Array-namespace helpers and the RK4 integrator shared by every simulator.

The dynamics are written once and work on numpy arrays (the environments, the dataset generator)
and on torch tensors (model-based oracles that differentiate through the simulator). Torch is
imported lazily, only when a tensor is actually passed in, so ``envs`` does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

_NUMPY_NS = SimpleNamespace(
    sin=np.sin, cos=np.cos, stack=lambda xs, axis=-1: np.stack(xs, axis=axis),
    zeros_like=np.zeros_like, matmul=np.matmul, is_torch=False,
)
_TORCH_NS: SimpleNamespace | None = None


def namespace(x: Any) -> SimpleNamespace:
    """Return the array functions (sin, cos, stack, ...) matching the array type of ``x``."""
    global _TORCH_NS
    if type(x).__module__.startswith("torch"):
        if _TORCH_NS is None:
            import torch

            _TORCH_NS = SimpleNamespace(
                sin=torch.sin, cos=torch.cos, stack=lambda xs, axis=-1: torch.stack(xs, dim=axis),
                zeros_like=torch.zeros_like, matmul=torch.matmul, is_torch=True,
            )
        return _TORCH_NS
    return _NUMPY_NS


def rk4_step(f: Callable[[Any, Any], Any], x: Any, u: Any, dt: float, substeps: int = 1) -> Any:
    """Advance ``x' = f(x, u)`` by ``dt`` with ``substeps`` classical Runge-Kutta 4 steps.

    ``u`` is held constant over the interval (zero-order hold). Works batched: x is (..., n_x),
    u is (..., m), on numpy arrays or torch tensors alike.
    """
    h = dt / substeps
    for _ in range(substeps):
        k1 = f(x, u)
        k2 = f(x + 0.5 * h * k1, u)
        k3 = f(x + 0.5 * h * k2, u)
        k4 = f(x + h * k3, u)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x

"""Denoising landing flow (DLF): ẋ = −v'(x)ᵀ ∇f(v(x)) + η (v(x) − x), explicit Euler."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ddcontrol._validation import check_positive_float
from ddcontrol.errors import ConfigurationError
from ddcontrol.solvers.base import Evaluation, Solver, _Context

__all__ = ["DLF"]


class DLF(Solver):
    """Denoising landing flow, integrated by explicit Euler steps (infeasible path).

    Each step costs one forward and one backward: p = v(x); g = ∇f(p) detached; the VJP of
    ⟨v(x), g⟩ gives v'(x)ᵀ g. The iterate x itself is off the manifold; the reported point is
    its projection p = clamp(v(x)).

    Parameters
    ----------
    step_size : float
        Euler step h (units of x² per unit of cost for the gradient term).
    landing : float
        Landing strength η > 0 (per unit of h): the distance to the manifold decays like
        (1 − hη)^k, so h·η must be < 2 (h·η = 1 makes DLF the one-forward DRGD).
    **criteria
        Stopping criteria and loop options of :class:`~ddcontrol.solvers.base.Solver`.
    """

    name = "DLF"

    def __init__(self, step_size: float = 0.1, *, landing: float = 1.0, **criteria: Any) -> None:
        super().__init__(**criteria)
        self.step_size = check_positive_float(step_size, "step_size")
        self.landing = check_positive_float(landing, "landing")
        if self.step_size * self.landing >= 2.0:
            raise ConfigurationError("step_size * landing must be < 2 (the landing term "
                                     f"diverges), got {self.step_size * self.landing:g}")

    def _iterate(self, ctx: _Context, state: dict[str, Any], ev: Evaluation, k: int,
                 sigma: float) -> tuple[Tensor, Tensor, Tensor, None]:
        d = ev.lin.vjp(ev.egrad)
        h = self.step_size
        state["y"] = ev.y + (ev.point - ev.y) * (h * self.landing) - d * h
        return ev.point, ev.cost, d, None

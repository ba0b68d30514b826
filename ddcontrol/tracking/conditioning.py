"""How a plan is tied to the measured past: three strategies, each owning its cost, bounds and
solver choice.

The first ``T_ini + 1`` rows of a plan window hold the measured past and the current output
(:mod:`ddcontrol.tracking.measured`). A strategy decides how the solve respects them:

* :class:`Pin` (``"pin"``, the default): optimise on the slice of the manifold where they equal
  the measurements (:class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`: tangent steps that
  keep them fixed and a Gauss-Newton pull onto them). The plan stays on the manifold *and*
  consistent with the data.
* :class:`Clamp` (``"clamp"``): re-impose them after every projection through box constraints
  (lower = upper). The returned window is then off the manifold where the projection wanted to
  move the past, and its future belongs to another past: measured replay costs are several
  times worse.
* :class:`Penalty` (``"penalty"``): ``λ ‖x_past − measured‖²`` added to the cost. Small λ lets
  the plan trade past fit for future cost (the predicted cost drops below the true optimum);
  large λ makes the problem stiff (step ≈ 1/(2λ)).

``benchmarks/bench_tracking.py --conditioning`` measures the three; "pin" is the default because
it is the only one that reaches the true optimum on linear systems.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ddcontrol.errors import UnknownNameError
from ddcontrol.tracking.config import CONDITIONINGS

if TYPE_CHECKING:
    from ddcontrol.solvers import Solver
    from ddcontrol.tracking.plan_solver import PlanSolvers

__all__ = ["Conditioning", "Pin", "Clamp", "Penalty", "make_conditioning", "conditioned_cost",
           "PastPenalty"]


def conditioned_cost(cost: Any, measured: Tensor | None, past_weight: float) -> tuple[Any, Any]:
    """The cost a solve minimises and its gradient: ``cost`` plus ``past_weight · ‖x_past −
    measured‖²`` over the measured entries of the first rows (``cost`` itself with nothing
    measured or a zero weight).

    ``measured`` is (T_ini + 1, C) for one plan or (K, T_ini + 1, C), one per row of a batch,
    normalised, NaN where not measured. The cost returned has the ``value_and_egrad`` of
    ``cost`` too, when ``cost`` has one (:class:`~ddcontrol.solvers.problem.Problem` then
    evaluates both in one call)."""
    if measured is None or not past_weight:
        return cost, cost.egrad
    past = PastPenalty(cost, measured, past_weight)
    return past, past.egrad


class PastPenalty:
    """``cost(x) + λ ‖(x_past − measured) ⊙ known‖²`` (:func:`conditioned_cost`)."""

    def __init__(self, cost: Any, measured: Tensor, past_weight: float) -> None:
        self.cost, self.lam = cost, float(past_weight)
        self.known = ~torch.isnan(measured)
        self.target = torch.nan_to_num(measured)
        self.rows = measured.shape[-2]

    def _mismatch(self, x: Tensor) -> Tensor:
        return (x[:, :self.rows] - self.target) * self.known

    def __call__(self, x: Tensor) -> Tensor:
        d = self._mismatch(x)
        return self.cost(x) + self.lam * (d * d).sum(dim=(-1, -2))

    def egrad(self, x: Tensor) -> Tensor:
        out = self.cost.egrad(x)
        out[:, :self.rows] += (2.0 * self.lam) * self._mismatch(x.detach())
        return out

    def value_and_egrad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Cost (B,) and gradient, the penalty's mismatch computed once."""
        fused = getattr(self.cost, "value_and_egrad", None)
        f, g = fused(x) if fused is not None else (self.cost(x), self.cost.egrad(x))
        d = self._mismatch(x.detach())
        g[:, :self.rows] += (2.0 * self.lam) * d
        return f + self.lam * (d * d).sum(dim=(-1, -2)), g


class Conditioning(abc.ABC):
    """A way of tying a plan to its measured block (module docstring).

    Parameters
    ----------
    penalty_weight : float
        λ of the past-mismatch term (per normalised unit²) for the strategies that add it.
    """

    name: ClassVar[str]

    def __init__(self, penalty_weight: float) -> None:
        self.penalty_weight = float(penalty_weight)

    @property
    def past_weight(self) -> float:
        """λ of the ``λ‖x_past − measured‖²`` term in the solve's cost (0: none)."""
        return self.penalty_weight

    def cost(self, cost: Any, measured: Tensor | None) -> tuple[Any, Any]:
        """The solve's cost and gradient (:func:`conditioned_cost` with :attr:`past_weight`)."""
        return conditioned_cost(cost, measured, self.past_weight)

    def bounds(self, lower: Tensor, upper: Tensor, measured: Tensor | None
               ) -> tuple[Tensor, Tensor]:
        """Box bounds (L, C) of the solve, from the input bounds ``lower``, ``upper``."""
        return lower, upper

    def lipschitz(self, cost_lipschitz: float, t_ini: int) -> float:
        """Lipschitz constant of the solve cost's gradient (the step size is its inverse)."""
        return cost_lipschitz

    @abc.abstractmethod
    def pins(self, measured: Tensor | None) -> bool:
        """Whether the solve runs on the slice where the measured entries are fixed."""

    def solver(self, name: str, measured: Tensor | None, build: PlanSolvers, warm: bool,
               common: dict[str, Any]) -> Solver:
        """The solver named ``name`` for this conditioning (built by ``build``).

        Guided diffusion inpaints the measurements in any case. DLF has no pinned form: with
        a measured past it runs on the (penalised or clamped) cost. The others run pinned
        wherever :meth:`pins` says so; with nothing measured the pinned set is empty, which is
        DRGD with active input bounds masked out of the step and a trust region (a learned
        denoiser needs one).
        """
        if name == "guided":
            return build.guided(measured, warm, common)
        if name != "dlf" and self.pins(measured):
            return build.pinned(measured, warm, common)
        return build.unpinned(name, common)


class Pin(Conditioning):
    """Fix the measured entries: the solve moves on the slice of the manifold through them.
    The penalty term enters the reported cost only (the pinned steps remove its direction)."""

    name = "pin"

    def pins(self, measured: Tensor | None) -> bool:
        return True


class Clamp(Conditioning):
    """Hold the measured entries by box bounds (lower = upper = measured)."""

    name = "clamp"

    @property
    def past_weight(self) -> float:
        return 0.0

    def bounds(self, lower: Tensor, upper: Tensor, measured: Tensor | None
               ) -> tuple[Tensor, Tensor]:
        if measured is None:
            return lower, upper
        lower, upper = lower.clone(), upper.clone()
        known = ~torch.isnan(measured)
        rows = slice(0, measured.shape[0])
        lower[rows][known] = measured[known]
        upper[rows][known] = measured[known]
        return lower, upper

    def pins(self, measured: Tensor | None) -> bool:
        return measured is None


class Penalty(Conditioning):
    """Add ``λ‖x_past − measured‖²`` to the cost and solve unconstrained in the past."""

    name = "penalty"

    def lipschitz(self, cost_lipschitz: float, t_ini: int) -> float:
        return max(cost_lipschitz, 2.0 * self.penalty_weight) if t_ini else cost_lipschitz

    def pins(self, measured: Tensor | None) -> bool:
        return measured is None


_STRATEGIES: dict[str, type[Conditioning]] = {c.name: c for c in (Pin, Clamp, Penalty)}


def make_conditioning(name: str, penalty_weight: float) -> Conditioning:
    """The strategy called ``name`` (one of ``CONDITIONINGS``)."""
    if name not in _STRATEGIES:
        raise UnknownNameError(f"conditioning must be one of {CONDITIONINGS}, got {name!r}")
    return _STRATEGIES[name](penalty_weight)

"""The solver of one plan: built by name from the tracker's settings, or a solver object run as
given.

By name (``"drgd"``, ``"nesterov"``, ``"dlf"``, ``"guided"``), a fresh solver is built for each
plan with ``step_scale / L`` as step size (L: the solve cost's gradient Lipschitz constant in
normalised coordinates), the plan's iteration count and time limit, and the conditioning's choice
of pinned or unpinned form (:meth:`~ddcontrol.tracking.conditioning.Conditioning.solver`).
"drgd" and "nesterov" (heavy ball, momentum 0.9) run
:class:`~ddcontrol.solvers.conditioned.ConditionedDRGD` where the plan is pinned, plain
:class:`~ddcontrol.solvers.DRGD` / :class:`~ddcontrol.solvers.AcceleratedDRGD` otherwise.

A :class:`~ddcontrol.solvers.Solver` object passed in is used as given: its own step size,
``max_iterations`` and stopping criteria, never changed. A call's time budget can only shorten
its ``max_time``; that runs on a copy, so the object itself is left as it was.
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import torch
from torch import Tensor

from ddcontrol._validation import check_positive_int
from ddcontrol.errors import ConfigurationError
from ddcontrol.solvers import DLF, DRGD, AcceleratedDRGD, Solver
from ddcontrol.solvers.conditioned import ConditionedDRGD
from ddcontrol.tracking.conditioning import Conditioning
from ddcontrol.tracking.config import TrackerConfig
from ddcontrol.tracking.measured import pinned

__all__ = ["PlanSolvers"]


class PlanSolvers:
    """Builds the solver of each plan.

    Parameters
    ----------
    config : TrackerConfig
    conditioning : Conditioning
        Chooses the pinned or unpinned form, and sets the step size's Lipschitz constant.
    cost : WindowCost
        The tracker's cost (its ``lipschitz()`` sets the step size).
    shape : (L, C)
        The plan window's shape.
    dtype, device : torch dtype and device of the pinned values.
    """

    def __init__(self, config: TrackerConfig, conditioning: Conditioning, cost: Any,
                 shape: tuple[int, int], dtype: torch.dtype, device: Any) -> None:
        self.config, self.conditioning, self.cost = config, conditioning, cost
        self.shape, self.dtype, self.device = shape, dtype, device

    @property
    def step_size(self) -> float:
        """``step_scale / L``, L the Lipschitz constant of the solve cost's gradient."""
        lip = self.conditioning.lipschitz(self.cost.lipschitz(), self.config.t_ini)
        return self.config.step_scale / max(lip, 1e-12)

    @property
    def step_iterations(self) -> int | None:
        """Iterations of a warm-started receding-horizon step: ``iterations_per_step`` for a
        solver built by name, None (its own ``max_iterations``) for a solver object."""
        return self.config.iterations_per_step if self.config.solver_by_name else None

    def build(self, iterations: int | None, measured: Tensor | None, *, warm: bool = False,
              max_time: float | None = None) -> Solver:
        """The solver of one plan.

        Parameters
        ----------
        iterations : int, optional
            Its iteration count; default ``iterations`` (a solver object: its own; asking it
            for another count is an error, as it runs as given).
        measured : Tensor (T_ini + 1, C) or (B, T_ini + 1, C), optional
            The normalised measured block(s), NaN where not measured (per row of the solve's
            batch, or one for every row).
        warm : bool
            The plan starts from a warm start: no σ annealing, the Jacobian reuse of
            ``jacobian_every``, no gradient at the last iterate of a conditioned solve (NaN in
            its history: its step is never taken), a guided solve re-noised less.
        max_time : float, optional
            Seconds the solve may take.
        """
        cfg = self.config
        if not cfg.solver_by_name:
            return self._given(iterations, measured, max_time)
        iterations = (cfg.iterations if iterations is None  # 0 is an error, never the default
                      else check_positive_int(iterations, "iterations"))
        common: dict[str, Any] = {"max_iterations": iterations, "min_gradient_norm": 0.0,
                                  "check_every": 50, "record_history": True,
                                  "max_time": math.inf if max_time is None else max_time}
        if cfg.sigma_start is not None and not warm:
            common.update(sigma_start=cfg.sigma_start, anneal_iterations=iterations // 2)
        return self.conditioning.solver(cfg.solver, measured, self, warm, common)

    def _given(self, iterations: int | None, measured: Tensor | None, max_time: float | None
               ) -> Solver:
        solver = cast(Solver, self.config.solver)  # not a name: build() checked
        if iterations is not None:
            raise ConfigurationError(f"the solver passed in ({solver.name}) runs its own "
                                     f"max_iterations ({solver.max_iterations}); set them there "
                                     "instead of iterations=")
        if measured is not None and self.conditioning.pins(measured):
            raise ConfigurationError(f"a solver passed as an object ({solver.name}) cannot pin "
                                     "the measured past; use conditioning='penalty' or 'clamp' "
                                     "with it, or name the solver (e.g. solver='drgd')")
        if max_time is None or max_time >= solver.max_time:
            return solver
        shorter = copy.copy(solver)
        shorter.max_time = max_time
        return shorter

    # -- the forms a conditioning chooses from ---------------------------------------------------
    def pinned(self, measured: Tensor | None, warm: bool, common: dict[str, Any]) -> Solver:
        """ConditionedDRGD on the measured coordinates (heavy ball for "nesterov")."""
        cfg = self.config
        mask, values = pinned(measured, self.shape, self.dtype, self.device)
        return ConditionedDRGD(mask, values, step_size=self.step_size,
                               momentum=0.0 if cfg.solver == "drgd" else 0.9,
                               damping=cfg.damping, max_step=cfg.max_step,
                               jacobian_every=cfg.jacobian_every if warm else 1,
                               chord="reused", final_gradient=not warm,
                               row_dtype=cfg.row_dtype, **common)

    def unpinned(self, name: str, common: dict[str, Any]) -> Solver:
        """DRGD, heavy-ball DRGD or DLF on the conditioning's cost and bounds."""
        if name == "drgd":
            return DRGD(step_size=self.step_size, **common)
        if name == "nesterov":
            return AcceleratedDRGD(step_size=self.step_size, momentum=0.9, **common)
        return DLF(step_size=self.step_size, **common)

    def guided(self, measured: Tensor | None, warm: bool, common: dict[str, Any]) -> Solver:
        """Guided diffusion (:class:`~ddcontrol.solvers.guided.GuidedDiffusion`): sampling from
        the denoiser with look-ahead guidance toward low cost, the measured past inpainted at
        every level; a warm start is re-noised less (SDEdit from σ 0.2, a cold one from 0.5)."""
        from ddcontrol.solvers.guided import GuidedDiffusion

        given: dict[str, Any] = {}
        if measured is not None:
            given = dict(zip(("mask", "values"),
                             pinned(measured, self.shape, self.dtype, self.device), strict=True))
        common = {k: v for k, v in common.items() if k not in ("sigma_start", "anneal_iterations")}
        return GuidedDiffusion(self.step_size, sigma_max=0.2 if warm else 0.5,
                               damping=self.config.damping, seed=0, **given, **common)

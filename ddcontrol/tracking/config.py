"""The DenoisingTracker's settings as one checked, immutable record.

:class:`TrackerConfig` holds what the tracker is told (σ, the solver, iteration counts, the
per-step time budget, the conditioning, the out-of-distribution policy); the pieces that use the
settings (:mod:`~ddcontrol.tracking.conditioning`, :mod:`~ddcontrol.tracking.plan_solver`,
:mod:`~ddcontrol.tracking.cold_start`, :mod:`~ddcontrol.tracking.refine`,
:mod:`~ddcontrol.tracking.receding`) read them from here. What depends on the system (the model,
the problem, the warm-up input) is not a setting and is given to the tracker itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.errors import ConfigurationError, UnknownNameError
from ddcontrol.score.sigma import SIGMA_GRID
from ddcontrol.solvers import Solver
from ddcontrol.solvers.conditioned import check_row_dtype
from ddcontrol.trust import ON_OOD_POLICIES

__all__ = ["TrackerConfig", "SOLVERS", "CONDITIONINGS", "escalation_ladder"]

#: Solvers the tracker builds by name (a :class:`~ddcontrol.solvers.Solver` object also works).
SOLVERS = ("drgd", "nesterov", "dlf", "guided")
#: How a plan is tied to the measured past (:mod:`ddcontrol.tracking.conditioning`).
CONDITIONINGS = ("pin", "clamp", "penalty")


def _optional_float(value: Any, name: str) -> float | None:
    return None if value is None else check_positive_float(value, name)


def escalation_ladder(escalate_sigma: float | Sequence[float] | None, sigma: float
                      ) -> tuple[float, ...]:
    """The σ an episode under ``on_ood="escalate"`` climbs, one rung per escalation:
    increasing, each above the plans' ``sigma`` (normalised units).

    None: every σ of :data:`~ddcontrol.score.sigma.SIGMA_GRID` above ``sigma`` (the next one
    first); a number: that σ alone; a sequence: its values. Values not above ``sigma`` are
    dropped (nothing more conservative to offer), so the ladder may be empty.
    """
    if escalate_sigma is None:
        values = list(SIGMA_GRID)
    elif isinstance(escalate_sigma, Sequence) and not isinstance(escalate_sigma, str):
        values = [check_positive_float(v, "escalate_sigma") for v in escalate_sigma]
    else:
        values = [check_positive_float(escalate_sigma, "escalate_sigma")]
    return tuple(sorted({float(v) for v in values if v > sigma}))


@dataclass(frozen=True)
class TrackerConfig:
    """Settings of a :class:`~ddcontrol.tracking.tracker.DenoisingTracker` (checked when built;
    change one with :func:`dataclasses.replace`, which checks again).

    The fields are the tracker's keywords of the same names (documented there); ``t_ini`` is
    T_ini in samples, σ values are in normalised units, times in seconds. ``refine_sigma=None``
    becomes ``sigma``; the refinement starts at the larger of ``refine_sigma_start`` and ``sigma``
    (None: at ``sigma``). ``escalate_sigma`` becomes the ladder of σ an escalating episode climbs
    (increasing, each above ``sigma``; empty: no escalation): None gives the σ of the selection
    grid above ``sigma`` (:data:`~ddcontrol.score.sigma.SIGMA_GRID`), a number one rung, a
    sequence its values.
    """

    t_ini: int = 0
    sigma: float = 0.05
    sigma_start: float | None = None
    solver: str | Solver = "drgd"
    step_scale: float = 1.0
    iterations: int = 500
    iterations_per_step: int = 20
    conditioning: str = "pin"
    penalty_weight: float = 100.0
    num_starts: int = 1
    refine_iterations: int = 8
    refine_sigma: float | None = None
    refine_sigma_start: float | None = None
    refine_damping: float = 1e-3
    jacobian_every: int = 1
    row_dtype: Any = "auto"
    step_time_budget: float | None = None
    damping: float = 0.05
    max_step: float | None = 0.5
    on_ood: str = "warn"
    escalate_sigma: float | Sequence[float] | None = None
    freeze_gc: bool = True
    trust_batch: int = 5

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if self.conditioning not in CONDITIONINGS:
            raise UnknownNameError(f"conditioning must be one of {CONDITIONINGS}, got "
                                   f"{self.conditioning!r}")
        put("t_ini", check_positive_int(self.t_ini, "t_ini", allow_zero=True))
        if isinstance(self.sigma, str) and self.sigma == "auto":
            raise ConfigurationError("sigma='auto' needs the trained model: build the tracker "
                                     "with DenoisingTracker.from_model(model, ...)")
        put("sigma", check_positive_float(self.sigma, "sigma"))
        if self.on_ood not in ON_OOD_POLICIES:
            raise UnknownNameError(f"on_ood must be one of {ON_OOD_POLICIES}, got "
                                   f"{self.on_ood!r}")
        put("sigma_start", _optional_float(self.sigma_start, "sigma_start"))
        for name in ("iterations", "iterations_per_step", "num_starts", "jacobian_every",
                     "trust_batch"):
            put(name, check_positive_int(getattr(self, name), name))
        put("refine_iterations", check_positive_int(self.refine_iterations, "refine_iterations",
                                                    allow_zero=True))
        for name in ("penalty_weight", "damping", "step_scale", "refine_damping"):
            put(name, check_positive_float(getattr(self, name), name))
        put("refine_sigma", self.sigma if self.refine_sigma is None
            else check_positive_float(self.refine_sigma, "refine_sigma"))
        put("refine_sigma_start", _optional_float(self.refine_sigma_start,
                                                  "refine_sigma_start"))
        put("step_time_budget", _optional_float(self.step_time_budget, "step_time_budget"))
        put("row_dtype", check_row_dtype(self.row_dtype))
        put("escalate_sigma", escalation_ladder(self.escalate_sigma, self.sigma))
        put("max_step", _optional_float(self.max_step, "max_step"))
        if not isinstance(self.freeze_gc, bool):
            raise TypeError(f"freeze_gc must be True or False, got {self.freeze_gc!r}")
        if isinstance(self.solver, str):
            if self.solver not in SOLVERS:
                raise UnknownNameError(f"unknown solver {self.solver!r}; choose one of "
                                       f"{SOLVERS}")
        elif not isinstance(self.solver, Solver):
            raise TypeError(f"solver must be one of {SOLVERS} or a Solver, got "
                            f"{type(self.solver).__name__}")
        if self.t_ini and self.conditioning == "pin" and not self.solver_by_name:
            # Pinning needs a solver built around each plan's measured values; an object passed
            # in is run as given, so it cannot, and turning "pin" into a penalty would be silent.
            raise ConfigurationError(f"a solver passed as an object ({self.solver_name}) cannot "
                                     "pin the measured past; use conditioning='penalty' or "
                                     "'clamp' with it, or name the solver (e.g. solver='drgd')")
        if self.solver == "dlf" and self.t_ini and self.conditioning == "pin":
            raise ConfigurationError("solver='dlf' cannot pin the measured past; use "
                                     "conditioning='penalty' or 'clamp' with it, or solver='drgd'")

    @property
    def solver_by_name(self) -> bool:
        """Whether the tracker builds the solver (True) or runs an object passed in as given."""
        return isinstance(self.solver, str)

    @property
    def solver_name(self) -> str:
        """The solver's name ("drgd", ..., or the class name of a solver passed in)."""
        return self.solver if isinstance(self.solver, str) else self.solver.name

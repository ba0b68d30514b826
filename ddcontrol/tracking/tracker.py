"""DenoisingTracker: reference tracking by Riemannian optimisation on a learned behaviour manifold.

The tracker composes the pieces: a denoiser (the only knowledge of the system), a
:class:`TrackingProblem`, the :class:`~ddcontrol.manifold.BehaviorManifold` at a fixed σ and a
solver (DRGD by default). Windows are ``L = T_ini + N_h`` steps of ``(u, y)`` in the model's
normalised units; the first ``T_ini`` steps are the measured past, which conditions the plan on
the system's current (unknown) state, as in DeePC.

Conditioning (``conditioning=``), how the past block and the current output ``y_k`` are tied to
the measurements:

* ``"pin"`` (default): optimise on the slice of the manifold where they equal the measurements
  (:class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`: tangent steps that keep them fixed and
  a Gauss-Newton pull onto them). The plan stays on the manifold *and* consistent with the data.
* ``"clamp"``: re-impose them after every projection through box constraints (lower = upper).
  The returned window is then off the manifold where the projection wanted to move the past,
  and its future belongs to another past: measured replay costs are several times worse.
* ``"penalty"``: ``λ ‖x_past − measured‖²`` added to the cost. Small λ lets the plan trade past
  fit for future cost (the predicted cost drops below the true optimum); large λ makes the
  problem stiff (step ≈ 1/(2λ)).

``benchmarks/bench_tracking.py --conditioning`` measures the three; "pin" is the default because
it is the only one that reaches the true optimum on linear systems.
"""

from __future__ import annotations

import math
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._validation import (
    as_finite_array,
    check_device,
    check_positive_float,
    check_positive_int,
)
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, DimensionError, UnknownNameError
from ddcontrol.manifold import BehaviorManifold
from ddcontrol.solvers import DLF, DRGD, AcceleratedDRGD, Problem, Solver, SolverResult
from ddcontrol.solvers.conditioned import ConditionedDRGD
from ddcontrol.symmetry import Identity, WindowSymmetry
from ddcontrol.tracking.problem import FramedWindowCost, TrackingProblem
from ddcontrol.trust import ON_OOD_POLICIES, OutOfDistributionError

SOLVERS = ("drgd", "nesterov", "dlf", "guided")
CONDITIONINGS = ("pin", "clamp", "penalty")


def conditioned_cost(cost: Any, measured: Tensor | None, conditioning: str,
                     penalty_weight: float) -> tuple[Any, Any]:
    """The cost a solve minimises and its gradient: ``cost`` itself (nothing measured, or
    ``"clamp"`` conditioning, where the bounds hold the past), else plus λ‖x_past − measured‖²
    over the measured entries of the first rows. (Under ``"pin"`` the pinned-coordinate solver
    removes that term's direction from every step; it only enters the reported cost.)

    ``measured`` is (T_ini + 1, C) for one plan or (K, T_ini + 1, C), one per row of a batch,
    normalised, NaN where not measured."""
    if measured is None or conditioning == "clamp":
        return cost, cost.egrad
    known = ~torch.isnan(measured)
    target = torch.nan_to_num(measured)
    rows, lam = measured.shape[-2], penalty_weight

    def f(x: Tensor) -> Tensor:
        d = (x[:, :rows] - target) * known
        return cost(x) + lam * (d * d).sum(dim=(-1, -2))

    def g(x: Tensor) -> Tensor:
        out = cost.egrad(x)
        out[:, :rows] += 2.0 * lam * (x[:, :rows].detach() - target) * known
        return out

    return f, g


@dataclass
class PlanResult:
    """A plan on the manifold for the horizon ahead.

    Attributes
    ----------
    inputs : ndarray (N_h, m)
        Planned inputs, physical units, inside the input bounds.
    predicted_outputs : ndarray (N_h, p)
        The model's outputs y* for those inputs (physical units).
    predicted_cost : float
        Tracking cost of (inputs, predicted_outputs).
    initial_cost : float
        Cost of the initial point (the best training window for a cold start).
    window : ndarray (L, m + p)
        The optimised window in the model's normalised units and frame (past block included):
        with a symmetry, the canonical frame; ``frame`` maps it to the world.
    iterations : int
    solve_time_s : float
        Wall time of :meth:`DenoisingTracker.plan` (cold-start search, solve, refinement).
    manifold_distance : float
        ‖v(x) − x‖ of the final window in normalised units: large values mean the point is not
        where the denoiser thinks the manifold is.
    solver_result : SolverResult
    frame : ndarray (k,)
        The symmetry's group element of the plan (the world frame of ``window``; empty
        without a symmetry).
    estimated_deviation : float or None
        The model-intrinsic estimate of ‖y* − y_true‖ / ‖y_true‖ (:mod:`ddcontrol.trust`),
        computed from the model and its data only; None without a trust estimator.
    ood : bool or None
        The plan is flagged as outside the data's distribution (estimate above threshold).
    trust : dict or None
        Every measurement behind the estimate (``TrustReport.item``).
    """

    inputs: np.ndarray
    predicted_outputs: np.ndarray
    predicted_cost: float
    initial_cost: float
    window: np.ndarray
    iterations: int
    solve_time_s: float
    manifold_distance: float
    solver_result: SolverResult = field(repr=False)
    frame: np.ndarray = field(default_factory=lambda: np.zeros(0))
    estimated_deviation: float | None = None
    ood: bool | None = None
    trust: dict[str, Any] | None = field(default=None, repr=False)


class DenoisingTracker:
    """Plan inputs that track a reference, on the behaviour manifold learned by a denoiser.

    Parameters
    ----------
    denoiser : callable
        ``D(x, σ)`` on normalised windows (B, L, m + p); a trained model or a closed form.
    normalizer : Normalizer
        The model's normalisation (physical ↔ normalised).
    problem : TrackingProblem
        Reference, horizon N_h, weights and input bounds.
    candidates : ndarray (M, L, m + p), optional
        Normalised training windows of the model's length L; the cold start is the one of least
        cost (and past mismatch), or the ``num_starts`` best as a batch of starts.
    past_length : int
        T_ini, the measured past that conditions each plan; the model's window length must be
        ``T_ini + N_h``.
    sigma : float
        Noise level of the projection, normalised units (``"auto"``, the σ selected from
        held-out data, through :meth:`from_model`).
    sigma_start : float, optional
        σ annealing of a cold-start solve: σ decreases geometrically from ``sigma_start`` to
        ``sigma`` over its first half (a large σ first moves the plan through the data's
        bulk, the small one then makes it precise). Warm receding-horizon steps use ``sigma``.
    solver : "drgd" | "nesterov" | "dlf" | "guided" | Solver
        The optimiser; a name builds it with ``step_scale / L`` as step size (L: the cost
        gradient's Lipschitz constant in normalised coordinates). "drgd" and "nesterov" (heavy
        ball, momentum 0.9) run :class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`, which
        also masks active input bounds out of the step and caps each move (``max_step``);
        "guided" samples the denoiser with look-ahead cost guidance
        (:class:`~ddcontrol.solvers.guided.GuidedDiffusion`; ``iterations`` are its levels).
    iterations : int
        Iterations of a cold-start plan.
    iterations_per_step : int
        Iterations of each warm-started receding-horizon plan.
    conditioning : "pin" | "clamp" | "penalty"
        How the plan is tied to the measured past (module docstring); "pin" by default.
    penalty_weight : float
        λ for the penalty conditioning (per normalised unit²).
    num_starts : int
        Solve from the k best candidates at once and keep the best.
    damping, max_step : float
        Conditioned ("pin") solves: Tikhonov damping of the pinned-coordinate solves, and the
        trust radius of one iteration's move in normalised units (None: no cap); see
        :class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`. A learned denoiser is only
        reliable within a few training σ of the data, so long moves are unsafe.
    jacobian_every : int
        Warm-started receding-horizon steps recompute the Jacobian rows of the pinned (measured)
        coordinates every this many iterations and reuse them in between (1: every iteration).
        Those rows cost one VJP per pinned coordinate; reusing them makes an iteration about as
        cheap as plain DRGD's, at a price in quality: on the double pendulum (T_ini = 10, 10
        iterations per step) 5 cut the mean solve from 55 to 44 ms but raised the closed-loop
        cost from 1.12x to 1.38x the oracle's.
    step_time_budget : float, optional
        Seconds a receding-horizon solve (:meth:`act`) may take: the solver stops at the first
        iteration past it, and the next step continues from that plan (real-time iteration).
        The cold start of an episode is the one solve that needs it (it runs ``iterations``).
        None: iteration-limited only.
    refine_iterations : int
        Gauss-Newton iterations that, after :meth:`plan`, pin the measured past and the final
        (clipped) inputs and pull the window onto the manifold, so that the predicted outputs
        are the model's response to exactly the inputs that will be applied (0: off).
        Receding-horizon steps (:meth:`act`) skip it: only their first input is applied.
    refine_sigma : float, optional
        σ at which the refinement ends (normalised units); it anneals geometrically from
        ``sigma`` over the first half of the refinement. Default: ``min(sigma, 0.02)``. The
        plan may need a large σ to stay where the model is reliable, but the outputs predicted
        for fixed inputs are most accurate at small σ: on the double pendulum's paper benchmark
        (σ = 0.1) ending the refinement at 0.02 rather than 0.1 halved the replay deviation
        ‖y* − y_true‖ / ‖y_true‖ from 0.013 to 0.007.
    warmup_input : ndarray (m,), optional
        Input applied while fewer than T_ini samples have been measured (default: zero, clipped
        into the bounds).
    symmetry : WindowSymmetry, optional
        The group action whose canonical frame the denoiser's windows are in (a trained model's
        ``model.symmetry``; default the identity). Each plan reads its frame ``g`` off the first
        measured sample, optimises canonical windows and evaluates the cost on ``g · window``,
        so the reference, Q and the outputs of a plan stay in world units. The action must
        leave the inputs unchanged (their bounds are applied in the model's frame).
    trust : TrustEstimator, optional
        Measures every plan's confidence (``PlanResult.estimated_deviation``, ``.ood``);
        :meth:`from_model` builds one from the dataset. None: no confidence.
    on_ood : "warn" | "hold" | "fallback" | "raise"
        What :meth:`act` does at a flagged step: warn and apply the plan anyway; apply the
        last unflagged plan's input for this step (``hold``; the warm-up input once it runs
        out); apply ``fallback.act(observation, info)``; or raise
        :class:`~ddcontrol.trust.OutOfDistributionError`. ``ood_steps`` counts flagged steps.
    fallback : controller, optional
        For ``on_ood="fallback"``: an object with ``act(observation, info)`` (and optionally
        ``reset(observation, info)``, called by :meth:`reset`).
    """

    def __init__(self, denoiser: Any, normalizer: Normalizer, problem: TrackingProblem, *,
                 candidates: np.ndarray | None = None, past_length: int = 0, sigma: float = 0.05,
                 sigma_start: float | None = None,
                 solver: str | Solver = "drgd", step_scale: float = 1.0, iterations: int = 500,
                 iterations_per_step: int = 20, conditioning: str = "pin",
                 penalty_weight: float = 100.0, num_starts: int = 1,
                 warmup_input: np.ndarray | None = None, refine_iterations: int = 8,
                 refine_sigma: float | None = None, jacobian_every: int = 1,
                 step_time_budget: float | None = None,
                 damping: float = 0.05, max_step: float | None = 0.5,
                 symmetry: WindowSymmetry | None = None,
                 trust: Any = None, on_ood: str = "warn", fallback: Any = None,
                 device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as D(x, sigma)")
        if not isinstance(problem, TrackingProblem):
            raise TypeError(f"problem must be a TrackingProblem, got {type(problem).__name__}")
        if conditioning not in CONDITIONINGS:
            raise UnknownNameError(f"conditioning must be one of {CONDITIONINGS}, got "
                                   f"{conditioning!r}")
        self.denoiser, self.normalizer, self.problem = denoiser, normalizer, problem
        self.past_length = check_positive_int(past_length, "past_length", allow_zero=True)
        self.window_length = self.past_length + problem.horizon
        if sigma == "auto":
            raise ConfigurationError("sigma='auto' needs the trained model: build the tracker "
                                     "with DenoisingTracker.from_model(model, ...)")
        self.sigma = check_positive_float(sigma, "sigma")
        if on_ood not in ON_OOD_POLICIES:
            raise UnknownNameError(f"on_ood must be one of {ON_OOD_POLICIES}, got {on_ood!r}")
        if on_ood == "fallback" and (fallback is None or not callable(getattr(fallback, "act",
                                                                              None))):
            raise ConfigurationError("on_ood='fallback' needs fallback=<controller with act()>")
        if trust is not None and not callable(trust):
            raise TypeError("trust must be a TrustEstimator (callable on plan windows) or None")
        self.trust, self.on_ood, self.fallback = trust, on_ood, fallback
        self.sigma_start = (None if sigma_start is None
                            else check_positive_float(sigma_start, "sigma_start"))
        self.iterations = check_positive_int(iterations, "iterations")
        self.iterations_per_step = check_positive_int(iterations_per_step, "iterations_per_step")
        self.num_starts = check_positive_int(num_starts, "num_starts")
        self.penalty_weight = check_positive_float(penalty_weight, "penalty_weight")
        self.refine_iterations = check_positive_int(refine_iterations, "refine_iterations",
                                                    allow_zero=True)
        self.refine_sigma = (min(self.sigma, 0.02) if refine_sigma is None
                             else check_positive_float(refine_sigma, "refine_sigma"))
        self.damping = check_positive_float(damping, "damping")
        self.jacobian_every = check_positive_int(jacobian_every, "jacobian_every")
        self.step_time_budget = (None if step_time_budget is None
                                 else check_positive_float(step_time_budget, "step_time_budget"))
        self.max_step = None if max_step is None else check_positive_float(max_step, "max_step")
        self.conditioning = conditioning
        self.device, self.dtype = check_device(device), dtype
        m, p = problem.input_dim, problem.output_dim
        self.m, self.p = m, p
        self.symmetry = Identity() if symmetry is None else symmetry
        if not isinstance(self.symmetry, WindowSymmetry):
            raise TypeError(f"symmetry must be a WindowSymmetry, got {type(symmetry).__name__}")
        moved = [c for c in getattr(self.symmetry, "channels", []) if not m <= c < m + p]
        if moved:
            raise ConfigurationError(f"the symmetry acts on window channels {moved}, which are "
                                     f"not outputs (channels {m}..{m + p - 1}); inputs must be "
                                     "invariant")
        self.cost = problem.window_cost(normalizer, self.past_length, 0, dtype, self.device)
        if not self.symmetry.is_identity:
            self.cost = FramedWindowCost(self.cost, self.symmetry, normalizer)
        self._frame = self.symmetry.identity_element()
        self.manifold = BehaviorManifold(denoiser, self.sigma)
        self.step_scale = check_positive_float(step_scale, "step_scale")
        self.solver_name = solver if isinstance(solver, str) else solver.name
        self._solver_spec = solver
        # A solver passed in keeps its own time limit; a per-call budget can only shorten it.
        self._solver_max_time = math.inf if isinstance(solver, str) else solver.max_time
        if isinstance(solver, str) and solver not in SOLVERS:
            raise UnknownNameError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
        if solver == "dlf" and self.past_length and conditioning == "pin":
            raise ConfigurationError("solver='dlf' cannot pin the measured past; use "
                                     "conditioning='penalty' or 'clamp' with it, or solver='drgd'")
        self.candidates = None
        if candidates is not None:
            cand = as_finite_array(candidates, "candidates", ndim=3)
            if cand.shape[1:] != (self.window_length, m + p):
                raise DimensionError(f"candidates must be (M, {self.window_length}, {m + p}) "
                                     f"normalised windows, got {cand.shape}")
            self.candidates = torch.as_tensor(cand, dtype=dtype, device=self.device)
        low = -np.inf if problem.input_low is None else problem.input_low
        high = np.inf if problem.input_high is None else problem.input_high
        self._u_low = np.broadcast_to(low, (m,)).astype(float)
        self._u_high = np.broadcast_to(high, (m,)).astype(float)
        warm = np.zeros(m) if warmup_input is None else as_finite_array(warmup_input,
                                                                        "warmup_input", ndim=1)
        if warm.shape != (m,):
            raise DimensionError(f"warmup_input must have shape ({m},), got {warm.shape}")
        self.warmup_input = np.clip(warm, self._u_low, self._u_high)
        # Recent time of a receding-horizon plan after its solver stops (the plan's bookkeeping,
        # and the confidence estimate where it is not left to the background), per confidence
        # mode: a decaying maximum that the per-step budget sets aside.
        self._after_solve_s = {"now": 0.0, "later": 0.0, "none": 0.0}
        self._executor: ThreadPoolExecutor | None = None  # background confidence estimates
        self._pending: list[tuple[int, PlanResult, Future]] = []
        self.reset()

    def _warmup_block(self, observations: list[np.ndarray]) -> np.ndarray:
        """The measured block of the episode's first plan (reference step T_ini) while only
        ``observations`` y_0..y_k (k < T_ini) exist: the warm-up inputs are known in advance,
        the outputs not measured yet are NaN."""
        t = self.past_length
        block = np.full((t + 1, self.m + self.p), np.nan)
        block[:t, : self.m] = self.warmup_input
        for i, y in enumerate(observations[: t + 1]):
            block[i, self.m:] = y
        return block

    def _observation(self, observation: np.ndarray) -> np.ndarray:
        """A measured output y_k (p,), checked."""
        y = as_finite_array(observation, "observation", ndim=1)
        if y.shape != (self.p,):
            raise DimensionError(f"observation must have shape ({self.p},), got {y.shape}")
        return y

    def _cold_start_at_reset(self, observation: np.ndarray) -> None:
        """The episode's cold-start solve, run by :meth:`reset` with the first measurement so
        that no control step pays for it: the first plan (reference step T_ini), conditioned on
        y_0 and the warm-up inputs, with the full ``iterations``. The warm-up steps refine it
        as their outputs arrive and the first planned step continues from it."""
        y = self._observation(observation)
        t0 = time.perf_counter()
        self._prefetch = self._plan(self._warmup_block([y]), start=self.past_length,
                                    initial_point=None, iterations=None, refine=False,
                                    max_time=None, frame=None, start_t=t0)
        self.reset_time_s = time.perf_counter() - t0

    @classmethod
    def from_model(cls, model: Any, problem: TrackingProblem, dataset: Any = None,
                   candidate_stride: int | None = None, **kwargs: Any) -> DenoisingTracker:
        """Build from a trained model (``.denoiser``, ``.normalizer``, ``.window_length``) and,
        for cold starts, the dataset it was trained on (its windows every ``candidate_stride``
        steps are the candidates; default a quarter window, which bounds their memory).

        ``sigma="auto"`` takes the checkpoint's data-selected σ, or selects one now from the
        trajectories of ``dataset`` training held out (:func:`ddcontrol.score.sigma.resolve_sigma`).
        With a dataset and no ``trust=`` given, plans carry a confidence from a
        :class:`~ddcontrol.trust.TrustEstimator` on the dataset (``trust=None``: none)."""
        if candidate_stride is None:
            candidate_stride = max(1, model.window_length // 4)
        past = model.window_length - problem.horizon
        if past < 0:
            raise DimensionError(f"the model's windows ({model.window_length} steps) are shorter "
                                 f"than the horizon {problem.horizon}")
        cand = None
        if dataset is not None:
            cand = model.model_windows(dataset, candidate_stride)
        # The model's device: of its first parameter, or buffer (closed forms have only those).
        tensors = (list(model.denoiser.parameters()) + list(model.denoiser.buffers())
                   if hasattr(model.denoiser, "parameters") else [])
        device = tensors[0].device if tensors else "cpu"
        kwargs.setdefault("device", device)
        kwargs.setdefault("symmetry", getattr(model, "symmetry", None))
        if isinstance(kwargs.get("sigma"), str) and kwargs["sigma"] == "auto":
            from ddcontrol.score.sigma import resolve_sigma

            kwargs["sigma"] = resolve_sigma(model, dataset, t_ini=past)
        if dataset is not None and "trust" not in kwargs:
            from ddcontrol.trust import TrustEstimator

            kwargs["trust"] = TrustEstimator.from_model(
                model, dataset, t_ini=past, device=kwargs["device"],
                repredict_sigma=float(kwargs.get("sigma", 0.05)))
        return cls(model.denoiser, model.normalizer, problem, candidates=cand, past_length=past,
                   **kwargs)

    # -- one plan -----------------------------------------------------------------------------
    @property
    def step_size(self) -> float:
        """step_scale / L, L the Lipschitz constant of the (penalised) cost's gradient."""
        lip = self.cost.lipschitz()
        if self.conditioning == "penalty" and self.past_length:
            lip = max(lip, 2.0 * self.penalty_weight)
        return self.step_scale / max(lip, 1e-12)

    def _make_solver(self, iterations: int, measured: Tensor | None, warm: bool = False,
                     max_time: float | None = None) -> Solver:
        spec = self._solver_spec
        if not isinstance(spec, str):
            spec.max_iterations = iterations
            spec.max_time = min(self._solver_max_time, math.inf if max_time is None else max_time)
            return spec
        common = {"max_iterations": iterations, "min_gradient_norm": 0.0, "check_every": 50,
                  "record_history": True,
                  "max_time": math.inf if max_time is None else max_time}
        if self.sigma_start is not None and not warm:
            common.update(sigma_start=self.sigma_start, anneal_iterations=iterations // 2)
        if spec == "guided":
            return self._guided_solver(iterations, measured, warm, common)
        if spec != "dlf" and (measured is None or self.conditioning == "pin"):
            # With nothing measured the pinned set is empty: this is DRGD with active input
            # bounds masked out of the step and a trust region, which a learned denoiser needs.
            mask, values = self._pinned(measured)
            momentum = 0.0 if spec == "drgd" else 0.9
            return ConditionedDRGD(mask, values, step_size=self.step_size, momentum=momentum,
                                   damping=self.damping, max_step=self.max_step,
                                   jacobian_every=self.jacobian_every if warm else 1, **common)
        if spec == "drgd":
            return DRGD(step_size=self.step_size, **common)
        if spec == "nesterov":
            return AcceleratedDRGD(step_size=self.step_size, momentum=0.9, **common)
        return DLF(step_size=self.step_size, **common)

    def _guided_solver(self, iterations: int, measured: Tensor | None, warm: bool,
                       common: dict[str, Any]) -> Solver:
        """Guided diffusion (:class:`~ddcontrol.solvers.guided.GuidedDiffusion`): sampling
        from the denoiser with look-ahead guidance toward low cost, the measured past inpainted
        at every level; a warm start is re-noised less (SDEdit from σ 0.2, a cold one from 0.5)."""
        from ddcontrol.solvers.guided import GuidedDiffusion

        pinned: dict[str, Any] = {}
        if measured is not None:
            pinned = dict(zip(("mask", "values"), self._pinned(measured), strict=True))
        common = {k: v for k, v in common.items() if k not in ("sigma_start", "anneal_iterations")}
        return GuidedDiffusion(self.step_size, sigma_max=0.2 if warm else 0.5,
                               damping=self.damping, seed=0, **pinned, **common)

    def _pinned(self, measured: Tensor | None) -> tuple[Tensor, Tensor]:
        """The window's measured coordinates (bool mask, shape (L, C)) and their normalised
        values (zeros elsewhere); nothing pinned without a measured block."""
        mask = torch.zeros(self.window_length, self.m + self.p, dtype=torch.bool,
                           device=self.device)
        values = torch.zeros(mask.shape, dtype=self.dtype, device=self.device)
        if measured is not None:
            mask[: measured.shape[0]] = ~torch.isnan(measured)
            values[: measured.shape[0]] = torch.nan_to_num(measured)
        return mask, values

    def _measured_block(self, past_u: np.ndarray | None, past_y: np.ndarray | None,
                        current_y: np.ndarray | None) -> np.ndarray | None:
        """Measured past (physical units) as a (T_ini + 1, C) block, NaN where not measured."""
        t = self.past_length
        if t == 0 and current_y is None:
            return None
        block = np.full((t + 1, self.m + self.p), np.nan)
        if t:
            pu = as_finite_array(past_u, "past_u", ndim=2)
            py = as_finite_array(past_y, "past_y", ndim=2)
            if pu.shape != (t, self.m) or py.shape != (t, self.p):
                raise DimensionError(f"past_u must be ({t}, {self.m}) and past_y ({t}, {self.p}),"
                                     f" got {pu.shape} and {py.shape}")
            block[:t, : self.m], block[:t, self.m:] = pu, py
        if current_y is not None:
            block[t, self.m:] = as_finite_array(current_y, "current_y", ndim=1)
        return block

    def _normalise_block(self, block: np.ndarray | None) -> Tensor | None:
        """A physical measured block into the model's frame and units (sets the plan's frame)."""
        if block is None:
            return None
        if not self.symmetry.is_identity:
            # The first measured sample fixes the frame; unmeasured channels stay NaN.
            g = self.symmetry.frame_of_sample(block[0])
            if np.all(np.isfinite(g)):
                self._frame = g
            block = self.symmetry.inverse_act(self._frame, block)
        mean, std = self.normalizer.mean, self.normalizer.std
        return torch.as_tensor((block - mean) / std, dtype=self.dtype, device=self.device)

    def _bounds(self, measured: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, std = self.normalizer.mean[: self.m], self.normalizer.std[: self.m]
        lo = np.full((self.window_length, self.m + self.p), -np.inf)
        hi = np.full((self.window_length, self.m + self.p), np.inf)
        lo[self.past_length:, : self.m] = (self._u_low - mean) / std
        hi[self.past_length:, : self.m] = (self._u_high - mean) / std
        lo_t = torch.as_tensor(lo, dtype=self.dtype, device=self.device)
        hi_t = torch.as_tensor(hi, dtype=self.dtype, device=self.device)
        if measured is not None and self.conditioning == "clamp":
            known = ~torch.isnan(measured)
            rows = slice(0, measured.shape[0])
            lo_t[rows][known] = measured[known]
            hi_t[rows][known] = measured[known]
        return lo_t, hi_t

    def _cost_fns(self, measured: Tensor | None) -> tuple[Any, Any]:
        return conditioned_cost(self.cost, measured, self.conditioning, self.penalty_weight)

    def _cold_start(self, measured: Tensor | None, f: Any) -> Tensor:
        if self.candidates is None:
            raise ConfigurationError("a cold start needs candidate windows (pass candidates= or "
                                     "build with from_model(..., dataset=...)) or initial_point=")
        with torch.no_grad():
            score = torch.cat([f(c) for c in torch.split(self.candidates, 4096)])
            if measured is not None:
                known = ~torch.isnan(measured)
                d = (self.candidates[:, : measured.shape[0]] - torch.nan_to_num(measured)) * known
                # Mismatch of the past dominates: a window from another state is a poor start.
                score = score + 1e3 * (d * d).sum(dim=(-1, -2))
            idx = torch.topk(score, min(self.num_starts, len(score)), largest=False).indices
        x0 = self.candidates[idx].clone()
        if measured is not None:
            known = ~torch.isnan(measured)
            x0[:, : measured.shape[0]][:, known] = measured[known]
        return x0

    def _refine(self, x: Tensor, measured: Tensor | None) -> Tensor:
        """Make the predicted outputs those of the final (clipped) inputs: pin the measured past
        and every future input, and pull the window onto the manifold (Gauss-Newton only)."""
        mask = torch.zeros(x.shape[1:], dtype=torch.bool, device=self.device)
        values = x[0].clone()
        lo, hi = self._bounds(None)
        values[self.past_length:, : self.m] = torch.clamp(
            values[self.past_length:, : self.m], lo[self.past_length:, : self.m],
            hi[self.past_length:, : self.m])
        mask[self.past_length:, : self.m] = True
        if measured is not None:
            known = ~torch.isnan(measured)
            mask[: measured.shape[0]] |= known
            values[: measured.shape[0]][known] = measured[known]
        zero = lambda z: torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)  # noqa: E731
        anneal = {}
        if self.refine_sigma != self.sigma:
            anneal = {"sigma_start": self.sigma, "anneal_iterations": self.refine_iterations // 2}
        problem = Problem(BehaviorManifold(self.denoiser, self.refine_sigma), zero,
                          torch.zeros_like)
        solver = ConditionedDRGD(mask, values, step_size=1.0, max_iterations=self.refine_iterations,
                                 min_gradient_norm=0.0, record_history=False, **anneal)
        out = solver.run(problem, initial_point=x).point
        out[:, mask] = values[mask]
        return out

    def plan(self, past_u: np.ndarray | None = None, past_y: np.ndarray | None = None, *,
             current_y: np.ndarray | None = None, start: int = 0,
             initial_point: np.ndarray | Tensor | None = None,
             iterations: int | None = None, refine: bool = True,
             max_time: float | None = None, frame: np.ndarray | None = None) -> PlanResult:
        """Solve the tracking problem over the horizon starting at reference step ``start``.

        Parameters
        ----------
        past_u, past_y : ndarray (T_ini, m), (T_ini, p)
            The last T_ini measured inputs and outputs (physical units); required if T_ini > 0.
        current_y : ndarray (p,), optional
            The output measured now (the first future output), pinned like the past.
        initial_point : (L, C) or (B, L, C) normalised windows, optional
            Warm start; default: the best candidate window(s).
        iterations : int, optional
            Solver iterations (default ``iterations``).
        refine : bool
            Run the refinement (``refine_iterations``) after the solve.
        max_time : float, optional
            Seconds the whole call may take (the cold-start search included): the solver
            stops at the first iteration past what is left of it.
        frame : ndarray (k,), optional
            With a symmetry: the world frame of the plan when no measurement fixes it (nothing
            measured); default the identity (the canonical frame is the world frame).
        """
        start_t = time.perf_counter()
        block = self._measured_block(past_u, past_y, current_y)
        return self._plan(block, start=start, initial_point=initial_point, iterations=iterations,
                          refine=refine, max_time=max_time, frame=frame, start_t=start_t)

    def _plan(self, block: np.ndarray | None, *, start: int,
              initial_point: np.ndarray | Tensor | None, iterations: int | None, refine: bool,
              max_time: float | None, frame: np.ndarray | None, start_t: float,
              confidence: str = "now") -> PlanResult:
        """:meth:`plan` from a physical measured block (T_ini + 1, C) in which entries not
        measured (yet) are NaN: the receding-horizon warm-up plans before T_ini samples exist.
        ``confidence``: the trust estimate ``"now"``, ``"later"`` (in the background, attached
        by :meth:`_collect_trust`) or ``"none"`` (plans never applied)."""
        self._frame = (self.symmetry.identity_element() if frame is None
                       else np.asarray(frame, dtype=float).reshape(self.symmetry.group_dim))
        measured = self._normalise_block(block)
        if isinstance(self.cost, FramedWindowCost):
            self.cost.set_frame(self._frame)
        self.cost.set_start(start)
        f, g = self._cost_fns(measured)
        if initial_point is None:
            x0 = self._cold_start(measured, f)
        else:
            x0 = torch.as_tensor(initial_point, dtype=self.dtype, device=self.device)
            x0 = x0[None] if x0.ndim == 2 else x0
            if x0.shape[1:] != (self.window_length, self.m + self.p):
                raise DimensionError(f"initial_point must be (B, {self.window_length}, "
                                     f"{self.m + self.p}), got {tuple(x0.shape)}")
        lo, hi = self._bounds(measured)
        problem = Problem(self.manifold, f, g, lower=lo, upper=hi)
        if max_time is not None:
            # What is left of the budget once what follows the solve (its recent duration)
            # is set aside.
            max_time = max(max_time - (time.perf_counter() - start_t)
                           - self._after_solve_s[confidence], 1e-6)
        iterations = (self.iterations if iterations is None  # 0 is an error, never the default
                      else check_positive_int(iterations, "iterations"))
        solver = self._make_solver(iterations, measured,
                                   warm=initial_point is not None, max_time=max_time)
        result = solver.run(problem, initial_point=x0)
        solved_t = time.perf_counter()
        with torch.no_grad():
            # The final iterate, not the lowest-cost one: early iterates can be cheaper only
            # because they do not yet satisfy the conditioning. (A diverged start already
            # reports its best finite iterate as its point.)
            best = int(torch.argmin(torch.nan_to_num(result.cost, nan=torch.inf)))
            x = result.point[best:best + 1]
            dist = float(self.manifold.dist(x)[0])
            initial_cost = float(self.cost(x0[best:best + 1])[0])
        if refine and self.refine_iterations:
            x = self._refine(x, measured)
        # The reprediction term (a conditioned solve) only for refined plans: receding-horizon
        # steps apply one input and keep the cheap measures (ddcontrol.trust).
        report = None
        later = self.trust is not None and confidence == "later" and not refine
        if self.trust is not None and confidence == "now":
            report = self.trust(x, repredict=refine).item(0)
        solve_time = time.perf_counter() - start_t
        w = self.symmetry.act(self._frame, self.normalizer.denormalize(x[0].double().cpu().numpy()))
        fut = w[self.past_length:]
        u = np.clip(fut[:, : self.m], self._u_low, self._u_high)
        y = fut[:, self.m:]
        plan = PlanResult(inputs=u, predicted_outputs=y,
                          predicted_cost=float(self.problem.cost(u, y, start)),
                          initial_cost=initial_cost, window=x[0].cpu().numpy(),
                          iterations=result.iterations, solve_time_s=solve_time,
                          manifold_distance=dist, solver_result=result,
                          frame=np.array(self._frame, dtype=float),
                          estimated_deviation=None if report is None
                          else report["estimated_deviation"],
                          ood=None if report is None else report["ood"], trust=report)
        if later:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1,
                                                    thread_name_prefix="ddcontrol-trust")
            self._pending.append((start, plan,
                                  self._executor.submit(self.trust, x.clone(), repredict=False)))
        if not refine:
            self._after_solve_s[confidence] = max(0.9 * self._after_solve_s[confidence],
                                                  time.perf_counter() - solved_t)
        return plan

    def plan_batch(self, past_u: np.ndarray | None = None, past_y: np.ndarray | None = None,
                   **kwargs: Any) -> Any:
        """K plans in one batched solve (pasts (K, T_ini, ·), per-problem ``start``,
        ``references``, ``frame``...): :func:`ddcontrol.tracking.batch.plan_batch`."""
        from ddcontrol.tracking.batch import plan_batch

        return plan_batch(self, past_u, past_y, **kwargs)

    # -- receding horizon (a Gymnasium-loop policy) ----------------------------------------------
    name = "denoising"

    def reset(self, observation: np.ndarray | None = None, info: dict | None = None) -> None:
        """Forget the measured history and the warm start (call at the start of an episode).

        With the first observation (y_0) and candidate windows, this also runs the episode's
        cold-start solve (``iterations``, not time-limited; its time is ``reset_time_s``): the
        control steps, the first included, then run warm-started solves within
        ``step_time_budget``.
        """
        self._u_hist: list[np.ndarray] = []
        self._y_hist: list[np.ndarray] = []
        self._warm: np.ndarray | None = None  # previous plan's window, world frame, physical
        self._prefetch: PlanResult | None = None  # the first plan, solved during the warm-up
        self.last_plan: PlanResult | None = None
        self.last_solve_time_s = 0.0
        self.reset_time_s = 0.0
        self.step_index = 0
        self._pending.clear()  # a previous episode's estimates are not this one's
        self._flagged: list[int] = []  # steps of this episode whose plan was flagged
        self._good: tuple[int, np.ndarray] | None = None  # (step, inputs) of the last good plan
        if observation is not None and self.candidates is not None:
            self._cold_start_at_reset(observation)
        if (observation is not None and self.fallback is not None
                and callable(getattr(self.fallback, "reset", None))):
            self.fallback.reset(observation, info)

    def act(self, observation: np.ndarray, info: dict | None = None) -> np.ndarray:
        """Measure ``observation`` (y_k), plan, and return the input u_k to apply now (m,).

        ``info`` is accepted for the controller interface and ignored: the tracker uses
        measured outputs only. While fewer than T_ini samples exist the warm-up input is
        applied, and the first plan (from :meth:`reset`) is refined with each new output.
        """
        start_t = time.perf_counter()
        self._collect_trust()
        y = self._observation(observation)
        self._y_hist.append(y)
        k, t = self.step_index, self.past_length
        self.step_index += 1
        budget = {"refine": False, "max_time": self.step_time_budget, "frame": None,
                  "start_t": start_t}
        if k < t:
            self.last_solve_time_s = 0.0
            if self._prefetch is not None and k > 0:
                # The same window as the first plan (same frame, same reference step), with
                # one more measured output; not applied, so no confidence yet.
                self._prefetch = self._plan(
                    self._warmup_block(self._y_hist), start=t,
                    initial_point=self._prefetch.window, iterations=self.iterations_per_step,
                    confidence="none", **budget)
                self.last_solve_time_s = self._prefetch.solve_time_s
            self._u_hist.append(self.warmup_input.copy())
            return self.warmup_input.copy()
        past_u = np.array(self._u_hist[k - t:k]).reshape(t, self.m)
        past_y = np.array(self._y_hist[k - t:k]).reshape(t, self.p)
        iterations: int | None = self.iterations_per_step
        if self._warm is None and self._prefetch is not None:
            # The first planned step continues the cold start solved at reset (same window).
            initial = self._prefetch.window
            self._prefetch = None
        elif self._warm is None:  # no reset with an observation: a cold start now
            initial, iterations = None, None
        else:
            # Shift the previous plan by one step; its last row repeats (a neutral guess). It
            # moves into the frame of the new measured past (the world frame is fixed).
            prev = self._warm
            shifted = np.concatenate([prev[1:], prev[-1:]], axis=0)
            first = np.concatenate([past_u[0], past_y[0]]) if t else np.concatenate(
                [np.full(self.m, np.nan), y])
            g = self.symmetry.frame_of_sample(first)
            initial = self.normalizer.normalize(self.symmetry.inverse_act(g, shifted))
        # Only the first input is applied: the refinement (which makes the predicted outputs
        # exact for the reported plan) is not worth its time here. Under "warn" the input does
        # not depend on the confidence, which is then computed while the plant moves.
        plan = self._plan(self._measured_block(past_u, past_y, y), start=k,
                          initial_point=initial, iterations=iterations,
                          confidence="later" if self.on_ood == "warn" else "now", **budget)
        self._warm = self.symmetry.act(plan.frame, self.normalizer.denormalize(
            np.asarray(plan.window, dtype=float)))
        self.last_plan = plan
        self.last_solve_time_s = plan.solve_time_s
        u = plan.inputs[0].copy()
        if plan.ood:
            u = self._on_ood(plan, k, observation, info, u)
        elif plan.ood is not None:
            self._good = (k, plan.inputs)
        if not np.all(np.isfinite(u)):
            warnings.warn("tracker produced a non-finite input; applying the warm-up input",
                          RuntimeWarning, stacklevel=2)
            u = self.warmup_input.copy()
        self._u_hist.append(u)
        return u

    @property
    def ood_steps(self) -> int:
        """How many steps of this episode had a flagged plan (every estimate finished first)."""
        return len(self.flagged_steps)

    @property
    def flagged_steps(self) -> list[int]:
        """The steps (sample indices) of this episode whose plan was flagged."""
        self._collect_trust(wait=True)
        return list(self._flagged)

    def _collect_trust(self, wait: bool = False) -> None:
        """Attach the background confidence estimates that have finished (all with ``wait``)
        to their plans and count the flagged ones (the ``warn`` policy, the only one whose
        input does not depend on the flag, runs them in the background)."""
        while self._pending and (wait or self._pending[0][2].done()):
            k, plan, future = self._pending.pop(0)
            report = future.result().item(0)
            plan.estimated_deviation, plan.ood, plan.trust = (
                report["estimated_deviation"], report["ood"], report)
            if plan.ood:
                self._on_ood(plan, k, None, None, plan.inputs[0])

    def _on_ood(self, plan: PlanResult, k: int, observation: np.ndarray, info: dict | None,
                u: np.ndarray) -> np.ndarray:
        """The input to apply at flagged step ``k`` under the ``on_ood`` policy."""
        self._flagged.append(k)
        msg = (f"step {k}: plan flagged out of the data's distribution (estimated deviation "
               f"{plan.estimated_deviation:.3g} > {plan.trust['threshold']:.3g})")
        if self.on_ood == "raise":
            raise OutOfDistributionError(msg)
        if self.on_ood == "fallback":
            return np.asarray(self.fallback.act(observation, info), dtype=float).reshape(self.m)
        if self.on_ood == "hold":
            if self._good is not None and k - self._good[0] < len(self._good[1]):
                return self._good[1][k - self._good[0]].copy()
            return self.warmup_input.copy()
        if len(self._flagged) == 1:  # once per episode; ood_steps counts the rest
            warnings.warn(msg + "; later flagged steps are counted in ood_steps",
                          RuntimeWarning, stacklevel=3)
        return u

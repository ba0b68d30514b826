"""DeePC: data-enabled predictive control (Coulson, Lygeros & Dörfler, ECC 2019).

A length-L = T_ini + N trajectory of an LTI system is any combination ``H g`` of the columns of a
(mosaic) Hankel matrix of measured windows (:mod:`ddcontrol.baselines.hankel`). At each sample k
DeePC solves the QP

    min_{g, σ}  Σ_j u_jᵀ R u_j + (y_j − r_j)ᵀ Q (y_j − r_j) + λ_g h(g) + λ_y ‖σ‖
    s.t.        U_p g = u_ini,   Y_p g = y_ini + σ,   (u, y) = (U_f g, Y_f g),   u ∈ [u_low, u_high]

and applies ``u_0``. With the datasets' sampling convention (``y_k`` measured before ``u_k``), the
past holds the last T_ini inputs ``u_{k-T_ini} … u_{k-1}`` and the last T_ini + 1 outputs
``y_{k-T_ini} … y_k`` (the current measurement included, which also pins the plan's ``y_0``).
The future block is ``u_k … u_{k+N-1}``, ``y_k … y_{k+N-1}``, scored by the shared tracking cost.

The QP is a parametrised cvxpy problem (``u_ini``, ``y_ini`` and the reference window are
``cvxpy.Parameter`` s), compiled once; each step only updates parameter values and re-solves with
OSQP (warm-started), falling back to Clarabel when OSQP fails.

Choices, documented:

* **Columns.** All windows of every trajectory (stride 1) are candidates; when there are more
  than ``max_columns`` (default 500), a seeded random subset is kept so the QP stays small
  (solve times of a few ms to tens of ms). The subset must still span all inputs
  (rank ``L·m``), which is checked.
* **Reduction.** With the ℓ2 (or no) regulariser the optimal g lies in the row space of the
  Hankel matrix H = U Σ Vᵀ, so the QP is solved for α = Σ Vᵀ g (rank(H) ≤ L(m+p) unknowns,
  orthonormal U_r), an exact and well-conditioned reformulation: ~2 ms per solve for the
  linear systems and machine-precision agreement with the model-based QP. The ℓ1 regulariser
  keeps the K columns.
* **Exact past constraints** (``lambda_y=None``) are compressed to an independent set of rows
  (noise-free past rows are linearly dependent, which makes solvers report false infeasibility).
* **Persistency of excitation.** The inputs must be persistently exciting of order
  ``L + order`` (``order`` defaults to ``T_ini·p``, an upper bound of the state dimension when
  T_ini is at least the lag); failure raises ``InsufficientExcitationError`` (or warns).
* **Regularisation.** ``regularizer="l2"`` (λ_g‖g‖², default), ``"l1"`` (λ_g‖g‖₁, the original
  paper) or ``"none"``; ``lambda_y=None`` enforces the past outputs exactly (no slack). With
  noise-free LTI data, ``lambda_g=0`` and ``lambda_y=None`` the plan is the exact optimum of the
  model-based finite-horizon QP (tested).
* **Start of an episode.** Before T_ini samples exist, DeePC applies ``warmup_input`` (default:
  the centre of the input box) rather than guessing the missing past.
"""

from __future__ import annotations

import warnings
from typing import Any

import cvxpy as cp
import numpy as np

from ddcontrol._validation import as_finite_array, check_positive_float, check_positive_int
from ddcontrol.baselines.errors import InsufficientExcitationError, SolverFailedError
from ddcontrol.baselines.hankel import check_persistency, window_columns
from ddcontrol.baselines.policy import Controller
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.tracking.cost import psd_sqrt
from ddcontrol.tracking.reference import Reference

__all__ = ["DeePC"]

_OK = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)


def _osqp_polish_key() -> str:
    # OSQP 1.x renamed the option (the old name still works but warns).
    try:
        import osqp

        return "polishing" if int(osqp.__version__.split(".")[0]) >= 1 else "polish"
    except (ImportError, AttributeError, ValueError):  # pragma: no cover
        return "polish"


_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "OSQP": {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iter": 20000, _osqp_polish_key(): True},
    "CLARABEL": {},
}


class DeePC(Controller):
    """Receding-horizon DeePC tracking controller (see the module docstring).

    Parameters
    ----------
    data : TrajectoryDataset
        Measured trajectories: ``u`` (N, T, m), ``y`` (N, T, p); its metadata give the default
        input limits. The true states are not used.
    reference : Reference
    Q, R : weights on the tracked outputs and the inputs.
    horizon : int
        Prediction horizon N (samples).
    t_ini : int
        Past length T_ini (inputs; T_ini + 1 outputs). At least the system's lag for exactness.
    lambda_g : float
        Weight of the regulariser of g.
    regularizer : {"l2", "l1", "none"}
    lambda_y : float or None
        Weight of the slack on the past outputs; None: exact equality.
    slack_norm : {"l2", "l1"}
    max_columns : int
        Maximum number of Hankel columns kept (seeded random subset).
    order : int, optional
        Assumed state dimension for the persistency check (default ``t_ini · p``).
    excitation_check : {"raise", "warn", "ignore"}
    input_low, input_high : array_like, shape (m,), optional
        Input bounds (default: the dataset's actuator limits).
    output_low, output_high : array_like, shape (p,), optional
        Output bounds on the predicted future outputs (default: none).
    solver : str
        cvxpy solver name, ``"OSQP"`` (default) or ``"CLARABEL"``.
    solver_options : dict, optional
        Overrides of the solver options (OSQP default: eps 1e-6, polish).
    warmup_input : array_like, shape (m,), optional
        Input applied during the first T_ini samples.
    seed : int
        Seeds the column subset.

    Attributes
    ----------
    columns : int
        Number K of Hankel columns in the QP.
    hankel_rank : int
        Numerical rank of the depth-L data Hankel ``[U; Y]`` actually used.
    last_status : str
        Solver status of the last solve.
    failures : int
        Number of receding-horizon steps whose solve failed (the shifted previous plan was used).
    """

    name = "deepc"

    def __init__(self, data: Any, reference: Reference, Q: Any, R: Any, *, horizon: int = 20,
                 t_ini: int = 4, lambda_g: float = 1.0, regularizer: str = "l2",
                 lambda_y: float | None = 1e5, slack_norm: str = "l2", max_columns: int = 500,
                 order: int | None = None, excitation_check: str = "raise",
                 input_low: Any | None = None, input_high: Any | None = None,
                 output_low: Any | None = None, output_high: Any | None = None,
                 solver: str = "OSQP", solver_options: dict[str, Any] | None = None,
                 warmup_input: Any | None = None, seed: int = 0) -> None:
        m, p = data.input_dim, data.output_dim
        data_low, data_high = data.input_bounds
        low = data_low if input_low is None else input_low
        high = data_high if input_high is None else input_high
        super().__init__(reference, Q, R, low, high)
        if p != reference.output_dim:
            raise DimensionError(f"data have {p} outputs, the reference is for "
                                 f"{reference.output_dim}")
        self.horizon = check_positive_int(horizon, "horizon")
        self.t_ini = check_positive_int(t_ini, "t_ini")
        self.lambda_g = check_positive_float(lambda_g, "lambda_g", allow_zero=True)
        self.lambda_y = None if lambda_y is None else check_positive_float(lambda_y, "lambda_y")
        if regularizer not in ("l2", "l1", "none"):
            raise ConfigurationError(f"regularizer must be 'l2', 'l1' or 'none', got "
                                     f"{regularizer!r}")
        if slack_norm not in ("l2", "l1"):
            raise ConfigurationError(f"slack_norm must be 'l2' or 'l1', got {slack_norm!r}")
        self.regularizer, self.slack_norm = regularizer, slack_norm
        self.solver = solver.upper()
        self.solver_options = {**_DEFAULT_OPTIONS.get(self.solver, {}), **(solver_options or {})}
        self.warmup_input = (self.input_centre if warmup_input is None
                             else as_finite_array(warmup_input, "warmup_input").reshape(m))
        L = self.t_ini + self.horizon
        order = self.t_ini * p if order is None else check_positive_int(order, "order")
        check_persistency(data.u, L + order, excitation_check)
        self._build_hankel(data.u, data.y, L, check_positive_int(max_columns, "max_columns"),
                           seed, excitation_check)
        self._build_problem(output_low, output_high)
        self.failures = 0
        self.last_status = ""
        self._plan_u: np.ndarray | None = None

    # -- data ---------------------------------------------------------------------------------
    def _build_hankel(self, u: np.ndarray, y: np.ndarray, L: int, max_columns: int, seed: int,
                      excitation_check: str) -> None:
        m, p, t = self.input_dim, self.output_dim, self.t_ini
        Hu, Hy = window_columns(u, L), window_columns(y, L)
        if Hu.shape[1] > max_columns:
            keep = np.sort(np.random.default_rng(seed).choice(Hu.shape[1], max_columns,
                                                              replace=False))
            Hu, Hy = Hu[:, keep], Hy[:, keep]
        s = np.linalg.svd(Hu, compute_uv=False)
        if s.size < L * m or s[L * m - 1] <= 1e-9 * s[0]:
            msg = (f"the {Hu.shape[1]} Hankel columns kept do not span every input sequence of "
                   f"length {L} (rank < {L * m}); raise max_columns or collect richer data")
            if excitation_check == "raise":
                raise InsufficientExcitationError(msg)
            if excitation_check == "warn":
                warnings.warn(msg, stacklevel=3)
        H = np.vstack([Hu, Hy])
        _, sv, Vt = np.linalg.svd(H, full_matrices=False)
        self.hankel_rank = int(np.sum(sv > 1e-10 * sv[0]))
        self.columns = int(Hu.shape[1])
        self._reduced = self.regularizer != "l1"
        if self._reduced:
            # Exact reduction: with ‖g‖² (or no) regularisation the optimal g lies in the row space
            # of H = U Σ Vᵀ, so g = V_r Σ_r⁻¹ α and H g = U_r α with ‖g‖ = ‖Σ_r⁻¹ α‖. The QP then
            # has rank(H) <= L(m+p) well-scaled unknowns α (orthonormal U_r) instead of K.
            # With λ_g > 0, directions priced over 1e10 times the leading one (σ < 1e-5 σ_0) are
            # dropped: they would only ruin the QP's conditioning.
            tol = 1e-5 if (self.regularizer == "l2" and self.lambda_g > 0) else 1e-10
            r = int(np.sum(sv > tol * sv[0]))
            self._sv = sv[:r]
            Hu, Hy = np.split(H @ Vt[:r].T / self._sv, [Hu.shape[0]])
        self.U_p, self.U_f = Hu[: t * m], Hu[t * m:]
        self.Y_p, self.Y_f = Hy[: (t + 1) * p], Hy[t * p:]

    # -- optimisation problem -------------------------------------------------------------------
    def _build_problem(self, output_low: Any, output_high: Any) -> None:
        m, p, N, t = self.input_dim, self.output_dim, self.horizon, self.t_ini
        channels = list(self.reference.channels)
        pt = len(channels)
        rows = (np.arange(N)[:, None] * p + np.asarray(channels)[None, :]).reshape(-1)
        Yt_f = self.Y_f[rows]
        self._u_ini = cp.Parameter(t * m, name="u_ini")
        self._y_ini = cp.Parameter((t + 1) * p, name="y_ini")
        self._ref = cp.Parameter(N * pt, name="reference")
        self._g = g = cp.Variable(self.U_p.shape[1], name="g")
        u = self.U_f @ g
        Rh = np.kron(np.eye(N), psd_sqrt(self.R))
        Qh = np.kron(np.eye(N), psd_sqrt(self.Q))
        cost = cp.sum_squares(Rh @ u) + cp.sum_squares(Qh @ (Yt_f @ g - self._ref))
        if self.regularizer != "none" and self.lambda_g > 0:
            if self.regularizer == "l2":
                # In the reduced coordinates α, ‖g‖² = ‖Σ_r⁻¹ α‖².
                reg = cp.sum_squares(g / self._sv) if self._reduced else cp.sum_squares(g)
            else:
                reg = cp.norm1(g)
            cost = cost + self.lambda_g * reg
        if self.lambda_y is None:
            # Noise-free past rows are linearly dependent (the outputs are fixed by the inputs and
            # the state); solvers then report false infeasibility. Keep an independent set of
            # combinations: Σ_r V_rᵀ g = U_rᵀ (u_ini, y_ini), equal when the past is consistent.
            W = np.vstack([self.U_p, self.Y_p])
            Uw, sw, Vwt = np.linalg.svd(W, full_matrices=False)
            r = int(np.sum(sw > 1e-9 * sw[0]))
            past = cp.hstack([self._u_ini, self._y_ini])
            constraints = [(sw[:r, None] * Vwt[:r]) @ g == Uw[:, :r].T @ past]
        else:
            constraints = [self.U_p @ g == self._u_ini]
            sigma = self.Y_p @ g - self._y_ini
            pen = cp.sum_squares(sigma) if self.slack_norm == "l2" else cp.norm1(sigma)
            cost = cost + self.lambda_y * pen
        lo = np.tile(self.input_low, N)
        hi = np.tile(self.input_high, N)
        if np.any(np.isfinite(lo)):
            fin = np.isfinite(lo)
            constraints.append(self.U_f[fin] @ g >= lo[fin])
        if np.any(np.isfinite(hi)):
            fin = np.isfinite(hi)
            constraints.append(self.U_f[fin] @ g <= hi[fin])
        for bound, sign in ((output_low, 1.0), (output_high, -1.0)):
            if bound is not None:
                b = np.tile(as_finite_array(bound, "output bound").reshape(p), N)
                constraints.append(sign * (self.Y_f @ g) >= sign * b)
        self.problem = cp.Problem(cp.Minimize(cost), constraints)
        if not self.problem.is_dcp(dpp=True):  # pragma: no cover - construction guarantees it
            raise ConfigurationError("internal error: DeePC problem is not DPP")

    def _solve(self) -> None:
        attempts = [self.solver] + [s for s in ("CLARABEL",) if s != self.solver]
        status = "not solved"
        for solver in attempts:
            opts = self.solver_options if solver == self.solver else _DEFAULT_OPTIONS.get(
                solver, {})
            try:
                with warnings.catch_warnings():
                    # "Solution may be inaccurate" is reported through last_status instead.
                    warnings.simplefilter("ignore", UserWarning)
                    self.problem.solve(solver=solver, warm_start=True, **opts)
                status = self.problem.status
            except cp.error.SolverError as exc:
                status = f"solver error: {exc}"
                continue
            if status in _OK and self._g.value is not None:
                self.last_status = status
                return
        self.last_status = status
        raise SolverFailedError(f"DeePC QP not solved ({status})")

    # -- open-loop plan -------------------------------------------------------------------------
    def plan(self, u_ini: Any, y_ini: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
        """Solve the finite-horizon DeePC problem once.

        Parameters
        ----------
        u_ini : array_like, shape (T_ini, m)
            Past inputs ``u_{k-T_ini} … u_{k-1}``, oldest first.
        y_ini : array_like, shape (T_ini + 1, p)
            Past outputs ``y_{k-T_ini} … y_k``, the last being the current measurement.
        reference : array_like, shape (N, p_tracked), or Reference
            Targets of ``y_k … y_{k+N-1}`` (a Reference contributes its first N samples).

        Returns
        -------
        u_plan : ndarray, shape (N, m)
            Planned inputs ``u_k … u_{k+N-1}``.
        y_plan : ndarray, shape (N, p)
            Predicted outputs ``y_k … y_{k+N-1}``.

        Raises
        ------
        DimensionError, NonFiniteError
            Wrongly shaped or non-finite arguments.
        SolverFailedError
            Neither OSQP nor Clarabel solved the QP (e.g. infeasible with exact constraints).
        """
        m, p, N, t = self.input_dim, self.output_dim, self.horizon, self.t_ini
        u_ini = as_finite_array(u_ini, "u_ini")
        y_ini = as_finite_array(y_ini, "y_ini")
        if u_ini.shape != (t, m):
            raise DimensionError(f"u_ini must have shape ({t}, {m}), got {u_ini.shape}")
        if y_ini.shape != (t + 1, p):
            raise DimensionError(f"y_ini must have shape ({t + 1}, {p}) (the last T_ini outputs "
                                 f"and the current one), got {y_ini.shape}")
        if isinstance(reference, Reference):
            r = reference.window(0, N)
        else:
            r = as_finite_array(reference, "reference")
        if r.shape != (N, self.reference.tracked_dim):
            raise DimensionError(f"reference window must have shape "
                                 f"({N}, {self.reference.tracked_dim}), got {r.shape}")
        self._u_ini.value = u_ini.reshape(-1)
        self._y_ini.value = y_ini.reshape(-1)
        self._ref.value = r.reshape(-1)
        self._solve()
        g = self._g.value
        return (self.U_f @ g).reshape(N, m), (self.Y_f @ g).reshape(N, p)

    # -- receding horizon -----------------------------------------------------------------------
    def _reset(self, y0: np.ndarray, info: dict[str, Any] | None) -> None:
        self._plan_u = None

    def _act(self, y: np.ndarray, info: dict[str, Any] | None) -> np.ndarray:
        # The past must hold the inputs the plant applied (a harness's warm-up input may
        # differ from ours); ddcontrol's environments report it in info["applied_action"].
        if info is not None and self.inputs and "applied_action" in info:
            applied = np.asarray(info["applied_action"], dtype=np.float64).reshape(-1)
            if applied.shape == (self.input_dim,) and np.all(np.isfinite(applied)):
                self.inputs[-1] = applied
        if self.k < self.t_ini:
            return self.warmup_input
        u_ini = np.stack(self.inputs[-self.t_ini:])
        y_ini = np.stack(self.outputs[-self.t_ini:] + [y])
        try:
            self._plan_u, _ = self.plan(u_ini, y_ini, self.reference.window(self.k, self.horizon))
        except SolverFailedError:
            self.failures += 1
            if self._plan_u is None:
                return self.warmup_input
            # Shifted previous plan: the best information available without a solution.
            self._plan_u = np.vstack([self._plan_u[1:], self._plan_u[-1:]])
        return self._plan_u[0]

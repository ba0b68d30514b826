"""Koopman / EDMD model predictive control from input-output data.

Model (extended dynamic mode decomposition with control, Korda & Mezić 2018, on delay-embedded
outputs). At sample k the measured past ``ξ_k = (y_k, y_{k-1}, …, y_{k-d}, u_{k-1}, …, u_{k-d})``
(``d`` delays) is lifted to ``z_k = ψ(ξ_k)``: ξ itself, a constant, and a small set of nonlinear
functions of the current output (the ``observables``); then

    z_{k+1} ≈ A z_k + B u_k,     y_k = C z_k   (C picks the y_k block of ξ: exact),

with ``[A B]`` the ridge-regularised least-squares fit over every (z_k, u_k, z_{k+1}) of the data.
With linear observables on an LTI system and ``d`` at least its lag minus one the fit is exact and
the MPC below is the model-based optimum (tested).

Observable families (functions of the current output y_k in physical units, appended to ξ):

===============  =========================================================================
``"linear"``     none beyond ξ and the constant (always included)
``"trig"``       ``sin y_{k,i}``, ``cos y_{k,i}``
``"poly2"``      ``ỹ_i ỹ_j`` (i ≤ j) of the standardised outputs ỹ
``"trig-poly"``  ``ỹ_i sin y_{k,j}``, ``ỹ_i cos y_{k,j}`` (i ≠ j), e.g. ``v cos θ`` for a vehicle
===============  =========================================================================

MPC. The lifted model is linear, so the finite-horizon tracking problem is a QP in the inputs
(condensed: ``y = Φ z_k + Γ u``), with the shared cost and input bounds; it is a parametrised
cvxpy problem (the free response minus the reference is the only parameter), solved by OSQP
with warm starts, Clarabel as fall-back.

Hyper-parameters (:func:`select_edmd`): ``d``, the observable set and the ridge weight are chosen
on held-out trajectories of the same dataset, never on test references: the data are split by
trajectory (80 / 20, seeded); each candidate is fitted on the 80 % and scored by its open-loop
``horizon``-step prediction error of the outputs on windows of the held-out 20 % (lifted from
their measured past, driven by their measured inputs; RMS per channel over the channel's standard
deviation, averaged over channels); the best candidate is refitted on all the data. Near-ties
(within 2 % + 1e-8 of the best) go to the smallest lifted state, then the largest ridge. The
selection is cached per dataset fingerprint and grid, so many controllers select once.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any

import cvxpy as cp
import numpy as np

from ddcontrol._validation import as_finite_array, check_positive_float, check_positive_int
from ddcontrol.baselines.deepc import _DEFAULT_OPTIONS
from ddcontrol.baselines.errors import SolverFailedError
from ddcontrol.baselines.model import AffineModel
from ddcontrol.baselines.oracle import condense
from ddcontrol.baselines.policy import Controller
from ddcontrol.baselines.tuning import split_trajectories
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.tracking.cost import psd_sqrt
from ddcontrol.tracking.reference import Reference

__all__ = ["EDMDModel", "fit_edmd", "select_edmd", "KoopmanMPC", "OBSERVABLES",
           "prediction_error"]

OBSERVABLES = ("linear", "trig", "poly2", "trig-poly")

#: Candidate observable sets of :func:`select_edmd`.
OBSERVABLE_SETS: tuple[tuple[str, ...], ...] = (("linear",), ("linear", "trig"),
                                                ("linear", "poly2"),
                                                ("linear", "trig", "trig-poly"))


_CACHE: dict[tuple, tuple[EDMDModel, dict[str, Any]]] = {}
# The condensed QP is small (N·m unknowns): tight tolerances cost little and make the plan the
# exact optimum of the lifted model (polishing recovers the active set).
_SOLVER_OPTIONS: dict[str, dict[str, Any]] = {
    "OSQP": {**_DEFAULT_OPTIONS["OSQP"], "eps_abs": 1e-9, "eps_rel": 1e-9, "max_iter": 50000},
    "CLARABEL": {}}


@dataclass(frozen=True)
class EDMDModel:
    """A lifted linear model ``z⁺ = A z + B u``, ``y = C z`` on delay-embedded I/O data.

    Attributes
    ----------
    A : ndarray, shape (n_z, n_z)
    B : ndarray, shape (n_z, m)
    C : ndarray, shape (p, n_z)
    delays : int
        d: ξ holds ``y_k … y_{k-d}`` and ``u_{k-1} … u_{k-d}``.
    observables : tuple of str
        Observable families (:data:`OBSERVABLES`).
    y_mean, y_std : ndarray, shape (p,)
        Standardisation of the outputs inside the polynomial observables.
    ridge : float
        The ridge weight the model was fitted with (see :func:`fit_edmd`).
    """

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    delays: int
    observables: tuple[str, ...]
    y_mean: np.ndarray
    y_std: np.ndarray
    ridge: float = 0.0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def lifted_dim(self) -> int:
        return int(self.A.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.B.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.C.shape[0])

    def lift(self, y_past: Any, u_past: Any) -> np.ndarray:
        """Lifted states ``z_k`` from ``y_{k-d} … y_k`` (…, d+1, p) and ``u_{k-d} … u_{k-1}``
        (…, d, m), oldest first."""
        return _lift(np.asarray(y_past, float), np.asarray(u_past, float), self.observables,
                     self.y_mean, self.y_std)

    def as_affine(self, dt: float = 1.0) -> AffineModel:
        """The lifted model as an :class:`AffineModel` (for :func:`condense`)."""
        n = self.lifted_dim
        return AffineModel(self.A, self.B, self.C, np.zeros(n), np.zeros(self.output_dim), dt)

    def predict(self, y_past: Any, u_past: Any, u_future: Any) -> np.ndarray:
        """Outputs ``y_k … y_{k+N-1}`` (…, N, p) of the model under ``u_k … u_{k+N-1}`` (…, N, m)."""
        z = self.lift(y_past, u_past)
        u_future = np.asarray(u_future, float)
        out = np.empty(u_future.shape[:-1] + (self.output_dim,))
        for j in range(u_future.shape[-2]):
            out[..., j, :] = z @ self.C.T
            z = z @ self.A.T + u_future[..., j, :] @ self.B.T
        return out


def _lift(y_past: np.ndarray, u_past: np.ndarray, observables: tuple[str, ...],
          y_mean: np.ndarray, y_std: np.ndarray) -> np.ndarray:
    """ψ(ξ) for batches: y_past (..., d+1, p), u_past (..., d, m), oldest first."""
    y_now = y_past[..., -1, :]
    lead = y_past.shape[:-2]
    # ξ = (y_k, y_{k-1}, …, y_{k-d}, u_{k-1}, …, u_{k-d}): newest first.
    feats = [y_past[..., ::-1, :].reshape(lead + (-1,)),
             u_past[..., ::-1, :].reshape(lead + (-1,)), np.ones(lead + (1,))]
    ys = (y_now - y_mean) / y_std
    p = y_now.shape[-1]
    for fam in observables:
        if fam == "linear":
            continue
        if fam == "trig":
            feats += [np.sin(y_now), np.cos(y_now)]
        elif fam == "poly2":
            i, j = np.triu_indices(p)
            feats.append(ys[..., i] * ys[..., j])
        elif fam == "trig-poly":
            pairs = [(i, j) for i in range(p) for j in range(p) if i != j]
            if pairs:
                i, j = (np.array(v) for v in zip(*pairs))
                feats += [ys[..., i] * np.sin(y_now[..., j]), ys[..., i] * np.cos(y_now[..., j])]
        else:
            raise ConfigurationError(f"unknown observable family {fam!r}; choose from "
                                     f"{OBSERVABLES}")
    return np.concatenate(feats, axis=-1)


def _pairs(u: np.ndarray, y: np.ndarray, delays: int, observables: tuple[str, ...],
           y_mean: np.ndarray, y_std: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every (z_k, u_k, z_{k+1}) of trajectories u (N, T, m), y (N, T, p), k = d .. T-2."""
    N, T, _ = y.shape
    d = delays
    if T < d + 2:
        raise ConfigurationError(f"trajectories of {T} samples are too short for {d} delays")
    ks = np.arange(d, T)  # lift z_k for k = d .. T-1
    yi = ks[:, None] + np.arange(-d, 1)[None, :]
    ui = ks[:, None] + np.arange(-d, 0)[None, :]
    Z = _lift(y[:, yi], u[:, ui], observables, y_mean, y_std)  # (N, K, n_z)
    return Z[:, :-1].reshape(-1, Z.shape[-1]), u[:, d:T - 1].reshape(-1, u.shape[2]), \
        Z[:, 1:].reshape(-1, Z.shape[-1])


class _RidgePath:
    """Ridge solutions ``argmin ‖X θ − Y‖² + λ n ‖D θ‖²`` for any λ from one SVD.

    The regressors are standardised first (D: their root-mean-square per column, n: the number
    of rows), so λ is relative and every observable is penalised alike. The SVD of the
    standardised X (not the Gram matrix XᵀX, whose conditioning is squared) keeps exact data
    exact; λ = 0 is the minimum-norm least-squares solution (redundant delays make X rank
    deficient).
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        self.col = np.sqrt(np.mean(X ** 2, axis=0))
        self.col[self.col <= 1e-300] = 1.0
        U, self.sv, self.Vt = np.linalg.svd(X / self.col, full_matrices=False)
        self.UtY = U.T @ Y
        self.rows = X.shape[0]

    def solve(self, ridge: float) -> np.ndarray:
        sv = self.sv
        if ridge > 0:
            f = sv / (sv ** 2 + ridge * self.rows)
        else:
            keep = sv > 1e-12 * sv[0]
            f = np.where(keep, 1.0 / np.where(keep, sv, 1.0), 0.0)
        return (self.Vt.T @ (f[:, None] * self.UtY)) / self.col[:, None]


def fit_edmd(u: Any, y: Any, *, delays: int = 1, observables: tuple[str, ...] = ("linear",),
             ridge: float = 0.0) -> EDMDModel:
    """Fit an :class:`EDMDModel` by ridge least squares on every sample pair of the data.

    Parameters
    ----------
    u, y : array_like, shapes (N, T, m), (N, T, p)
        Inputs and outputs (``y_k`` measured before ``u_k``).
    delays : int
        d ≥ 0.
    observables : tuple of str
        Observable families (:data:`OBSERVABLES`).
    ridge : float
        Tikhonov weight on the coefficients of the standardised regressors, relative to the
        number of samples (0: minimum-norm least squares).
    """
    u = as_finite_array(u, "u", ndim=3)
    y = as_finite_array(y, "y", ndim=3)
    if u.shape[:2] != y.shape[:2]:
        raise DimensionError(f"u {u.shape} and y {y.shape} disagree on (N, T)")
    delays = int(delays)
    if delays < 0:
        raise ConfigurationError(f"delays must be >= 0, got {delays}")
    ridge = check_positive_float(ridge, "ridge", allow_zero=True)
    observables = tuple(observables)
    y_mean = y.reshape(-1, y.shape[2]).mean(0)
    y_std = np.maximum(y.reshape(-1, y.shape[2]).std(0), 1e-12)
    Z, U, Zn = _pairs(u, y, delays, observables, y_mean, y_std)
    theta = _RidgePath(np.hstack([Z, U]), Zn).solve(ridge)
    return _model_from_theta(theta, Z.shape[1], y.shape[2], delays, observables, y_mean, y_std,
                             ridge)


def _model_from_theta(theta: np.ndarray, nz: int, p: int, delays: int,
                      observables: tuple[str, ...], y_mean: np.ndarray, y_std: np.ndarray,
                      ridge: float) -> EDMDModel:
    A, B = theta[:nz].T, theta[nz:].T
    C = np.zeros((p, nz))
    C[:, :p] = np.eye(p)
    return EDMDModel(A, B, C, delays, observables, y_mean, y_std, ridge)


def prediction_error(model: EDMDModel, u: np.ndarray, y: np.ndarray, horizon: int,
                     max_windows: int = 4000, seed: int = 0) -> float:
    """Open-loop ``horizon``-step output prediction error on trajectories u (N, T, m), y (N, T, p).

    Windows start at every sample with ``d`` samples of past and ``horizon`` of future (a seeded
    subset of at most ``max_windows``). Returns the RMS error per channel divided by the
    channel's standard deviation in these data, averaged over channels (inf if the model
    diverges).
    """
    d = model.delays
    N, T, _ = y.shape
    H = min(horizon, T - d)
    starts = np.arange(d, T - H + 1)
    idx = np.array(list(itertools.product(range(N), starts)))
    if len(idx) > max_windows:
        idx = idx[np.random.default_rng(seed).choice(len(idx), max_windows, replace=False)]
    n, k = idx[:, 0], idx[:, 1]
    yp = y[n[:, None], k[:, None] + np.arange(-d, 1)[None, :]]
    up = u[n[:, None], k[:, None] + np.arange(-d, 0)[None, :]]
    uf = u[n[:, None], k[:, None] + np.arange(H)[None, :]]
    yf = y[n[:, None], k[:, None] + np.arange(H)[None, :]]
    with np.errstate(all="ignore"):
        pred = model.predict(yp, up, uf)
        rms = np.sqrt(np.mean((pred - yf) ** 2, axis=(0, 1)))
    scale = np.maximum(y.reshape(-1, y.shape[2]).std(0), 1e-12)
    err = float(np.mean(rms / scale))
    return err if np.isfinite(err) else float("inf")


def select_edmd(data: Any, *, horizon: int, delays: tuple[int, ...] = (1, 2, 4, 8),
                observable_sets: tuple[tuple[str, ...], ...] = OBSERVABLE_SETS,
                ridges: tuple[float, ...] = (0.0, 1e-8, 1e-5, 1e-2), holdout: float = 0.2,
                max_train_trajectories: int = 1000, seed: int = 0
                ) -> tuple[EDMDModel, dict[str, Any]]:
    """Choose (delays, observables, ridge) on held-out trajectories; refit on all the data.

    See the module docstring for the procedure. Candidates with more delays than the trajectories
    allow are skipped.

    Returns
    -------
    model : EDMDModel
        The chosen candidate refitted on every trajectory of ``data``.
    report : dict
        ``chosen`` (the hyper-parameters), ``score`` (its held-out error) and ``candidates``
        (every candidate's held-out error).
    """
    horizon = check_positive_int(horizon, "horizon")
    key = (data.fingerprint(), horizon, tuple(delays), tuple(map(tuple, observable_sets)),
           tuple(ridges), holdout, max_train_trajectories, seed)
    if key in _CACHE:
        model, report = _CACHE[key]
        return model, dict(report)
    u, y = data.u, data.y
    N, T = u.shape[:2]
    if N < 2:
        raise ConfigurationError("select_edmd needs at least 2 trajectories (fit and held-out)")
    hold, train = split_trajectories(N, holdout, seed)
    train = train[:max_train_trajectories]
    rows = []
    for d in delays:
        if d + 2 > T:
            continue
        for obs in observable_sets:
            y_mean = y[train].reshape(-1, y.shape[2]).mean(0)
            y_std = np.maximum(y[train].reshape(-1, y.shape[2]).std(0), 1e-12)
            Z, U, Zn = _pairs(u[train], y[train], d, obs, y_mean, y_std)
            path = _RidgePath(np.hstack([Z, U]), Zn)
            for lam in ridges:
                theta = path.solve(lam)
                model = _model_from_theta(theta, Z.shape[1], y.shape[2], d, obs, y_mean, y_std,
                                          lam)
                err = prediction_error(model, u[hold], y[hold], horizon, seed=seed)
                rows.append({"delays": d, "observables": list(obs), "ridge": lam,
                             "lifted_dim": Z.shape[1], "heldout_error": err})
    if not rows or not np.isfinite(min(r["heldout_error"] for r in rows)):
        raise ConfigurationError(f"no EDMD candidate fits trajectories of {T} samples")
    # Near-ties (within 2 % + 1e-8 of the best) go to the smallest model, then the largest ridge:
    # on exactly linear data every exact candidate scores ~1e-8 and the simplest should win.
    best_err = min(r["heldout_error"] for r in rows)
    near = [r for r in rows if r["heldout_error"] <= 1.02 * best_err + 1e-8]
    c = min(near, key=lambda r: (r["lifted_dim"], -r["ridge"]))
    best = (c["heldout_error"], c)
    model = fit_edmd(u, y, delays=c["delays"], observables=tuple(c["observables"]),
                     ridge=c["ridge"])
    report = {"chosen": {k: c[k] for k in ("delays", "observables", "ridge")},
              "score": best[0], "procedure": "80/20 split by trajectory; open-loop "
              f"{horizon}-step output prediction error on the held-out trajectories",
              "candidates": rows}
    _CACHE[key] = (model, report)
    return model, dict(report)


def _record_applied_input(ctrl: Controller, info: dict[str, Any] | None) -> None:
    """Replace the last recorded input by the one the plant applied, when the env reports it.

    The measured past must hold the inputs that were applied: a harness may override the
    controller's output (a common warm-up input, saturation), and Gymnasium environments of
    ddcontrol report the applied input in ``info["applied_action"]``.
    """
    if info is not None and ctrl.inputs and "applied_action" in info:
        applied = np.asarray(info["applied_action"], dtype=np.float64).reshape(-1)
        if applied.shape == (ctrl.input_dim,) and np.all(np.isfinite(applied)):
            ctrl.inputs[-1] = applied


class KoopmanMPC(Controller):
    """Receding-horizon linear MPC on an EDMD (Koopman) model of the data.

    Parameters
    ----------
    data : TrajectoryDataset
        The training trajectories (the same the denoiser is trained on); states unused.
    reference : Reference
    Q, R : weights on the tracked outputs and the inputs.
    horizon : int
        Prediction horizon N.
    delays, observables, ridge : optional
        Fix the EDMD hyper-parameters; any left None is chosen by :func:`select_edmd` (the
        others then restrict its grid).
    model : EDMDModel, optional
        A fitted model (skips identification).
    input_low, input_high : array_like, optional
        Input bounds (default: the dataset's actuator limits).
    warmup_input : array_like, optional
        Input applied during the first ``d`` samples, before a full past exists.
    seed : int
        Seeds the held-out split.

    Attributes
    ----------
    model : EDMDModel
    selection : dict or None
        :func:`select_edmd`'s report when hyper-parameters were chosen.
    failures : int
        Steps whose QP failed (the shifted previous plan was applied).
    """

    name = "koopman"

    def __init__(self, data: Any, reference: Reference, Q: Any, R: Any, *, horizon: int = 20,
                 delays: int | None = None, observables: tuple[str, ...] | None = None,
                 ridge: float | None = None, model: EDMDModel | None = None,
                 input_low: Any | None = None, input_high: Any | None = None,
                 warmup_input: Any | None = None, solver: str = "OSQP", seed: int = 0) -> None:
        m, p = data.input_dim, data.output_dim
        data_low, data_high = data.input_bounds
        low = data_low if input_low is None else input_low
        high = data_high if input_high is None else input_high
        super().__init__(reference, Q, R, low, high)
        if p != reference.output_dim:
            raise DimensionError(f"data have {p} outputs, the reference is for "
                                 f"{reference.output_dim}")
        self.horizon = check_positive_int(horizon, "horizon")
        self.selection: dict[str, Any] | None = None
        if model is None:
            if delays is not None and observables is not None and ridge is not None:
                model = fit_edmd(data.u, data.y, delays=delays, observables=tuple(observables),
                                 ridge=ridge)
            else:
                kw: dict[str, Any] = {}
                if delays is not None:
                    kw["delays"] = (int(delays),)
                if observables is not None:
                    kw["observable_sets"] = (tuple(observables),)
                if ridge is not None:
                    kw["ridges"] = (float(ridge),)
                model, self.selection = select_edmd(data, horizon=self.horizon, seed=seed, **kw)
        self.model = model
        self.solver = solver.upper()
        self.warmup_input = (self.input_centre if warmup_input is None
                             else as_finite_array(warmup_input, "warmup_input").reshape(m))
        self._build_problem()
        self.failures = 0
        self.last_status = ""
        self._plan_u: np.ndarray | None = None

    def _build_problem(self) -> None:
        N, m, p = self.horizon, self.input_dim, self.output_dim
        ch = np.asarray(self.reference.channels)
        self.Phi, Gamma, _ = condense(self.model.as_affine(), N)
        self._rows = (np.arange(N)[:, None] * p + ch[None, :]).reshape(-1)
        Qh = np.kron(np.eye(N), psd_sqrt(self.Q))
        Rh = np.kron(np.eye(N), psd_sqrt(self.R))
        self.Gamma = Gamma
        self._u = u = cp.Variable(N * m, name="u")
        self._target = cp.Parameter(N * len(ch), name="target")  # r − free response
        cost = cp.sum_squares(Qh @ Gamma[self._rows] @ u - Qh @ self._target) \
            + cp.sum_squares(Rh @ u)
        cons = []
        lo, hi = np.tile(self.input_low, N), np.tile(self.input_high, N)
        if np.any(np.isfinite(lo)):
            f = np.isfinite(lo)
            cons.append(u[f] >= lo[f])
        if np.any(np.isfinite(hi)):
            f = np.isfinite(hi)
            cons.append(u[f] <= hi[f])
        self.problem = cp.Problem(cp.Minimize(cost), cons)

    def plan(self, y_past: Any, u_past: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
        """Solve the lifted QP once.

        Parameters
        ----------
        y_past : array_like, shape (d + 1, p)
            ``y_{k-d} … y_k`` (the current measurement last).
        u_past : array_like, shape (d, m)
            ``u_{k-d} … u_{k-1}``.
        reference : array_like, shape (N, p_tracked), or Reference

        Returns
        -------
        u_plan : ndarray, shape (N, m)
        y_plan : ndarray, shape (N, p)
            The lifted model's prediction.
        """
        N, m, p, d = self.horizon, self.input_dim, self.output_dim, self.model.delays
        y_past = as_finite_array(y_past, "y_past").reshape(d + 1, p)
        u_past = as_finite_array(u_past, "u_past").reshape(d, m)
        r = reference.window(0, N) if isinstance(reference, Reference) else \
            as_finite_array(reference, "reference")
        if r.shape != (N, self.reference.tracked_dim):
            raise DimensionError(f"reference window must have shape "
                                 f"({N}, {self.reference.tracked_dim}), got {r.shape}")
        z0 = self.model.lift(y_past, u_past)
        free = self.Phi @ z0
        self._target.value = r.reshape(-1) - free[self._rows]
        status = "not solved"
        for solver in dict.fromkeys([self.solver, "CLARABEL"]):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    self.problem.solve(solver=solver, warm_start=True,
                                       **_SOLVER_OPTIONS.get(solver, {}))
                status = self.problem.status
            except cp.error.SolverError as exc:
                status = f"solver error: {exc}"
                continue
            if status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and self._u.value is not None:
                break
        else:
            self.last_status = status
            raise SolverFailedError(f"Koopman MPC QP not solved ({status})")
        self.last_status = status
        u = np.clip(self._u.value, np.tile(self.input_low, N), np.tile(self.input_high, N))
        y = free + self.Gamma @ u
        return u.reshape(N, m), y.reshape(N, p)

    def _reset(self, y0: np.ndarray, info: dict[str, Any] | None) -> None:
        self._plan_u = None

    def _act(self, y: np.ndarray, info: dict[str, Any] | None) -> np.ndarray:
        _record_applied_input(self, info)
        d = self.model.delays
        if self.k < d:
            return self.warmup_input
        y_past = np.stack(self.outputs[len(self.outputs) - d:] + [y]) if d else y[None]
        u_past = np.stack(self.inputs[-d:]) if d else np.zeros((0, self.input_dim))
        try:
            self._plan_u, _ = self.plan(y_past, u_past, self.reference.window(self.k,
                                                                              self.horizon))
        except SolverFailedError:
            self.failures += 1
            if self._plan_u is None:
                return self.warmup_input
            self._plan_u = np.vstack([self._plan_u[1:], self._plan_u[-1:]])
        return self._plan_u[0]

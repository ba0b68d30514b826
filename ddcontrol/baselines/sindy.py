"""SINDy-with-control MPC: a sparse nonlinear model of the data, controlled by NMPC on CasADi.

Model (sparse identification of nonlinear dynamics with control, Brunton, Proctor & Kutz 2016;
Kaiser, Kutz & Brunton 2018 for MPC), discrete time on delay coordinates. The measured state is
``ξ_k = (y_{k-d} … y_k, u_{k-d} … u_{k-1})`` (``d`` delays; the outputs alone need not be a state),
and the next output is

    y_{k+1} = y_k + Θ(ξ_k, u_k) Ξ,

with Θ a library of candidate functions and Ξ sparse, found by sequentially thresholded least
squares (STLSQ: least squares, zero the coefficients below ``threshold``, refit on the support,
repeat) on standardised features and increments, so the threshold is relative. Library families
(functions of the standardised current output ỹ_k and input ũ_k; every ξ entry enters linearly):

===============  ======================================================================
``"linear"``     ξ, u_k and a constant (always included)
``"poly2"``      products of pairs of (ỹ_k, ũ_k), squares included
``"trig"``       ``sin y_k``, ``cos y_k`` (physical units: angles)
``"trig-poly"``  ``ỹ_i sin y_j``, ``ỹ_i cos y_j`` (i ≠ j), ``ũ_i sin y_j``, ``ũ_i cos y_j``
===============  ======================================================================

Hyper-parameters (``d``, library, threshold) are chosen on held-out trajectories of the training
data, never on test references (:func:`select_sindy`): an 80 / 20 split by trajectory, each
candidate fitted on the 80 % and scored by its open-loop ``horizon``-step output prediction error on
the held-out 20 % (RMS per channel over the channel's standard deviation, averaged; a diverging
model scores inf); near-ties (within 2 %) go to the sparsest model; the choice is refitted on all
the data. Results are cached per dataset fingerprint and grid.

MPC. The identified model is a :class:`~envs.dynamics.Dynamics` on ξ (:class:`SINDyDynamics`), its
numpy code traced into CasADi exactly like the true simulators, so the controller is the CasADi
NMPC oracle (:class:`~ddcontrol.baselines.nmpc.CasadiOracle`: multiple shooting, IPOPT, warm
starts) run on the identified model from the measured ξ_k instead of the true model from the true
state. Needs CasADi (the ``baselines`` extra). No pysindy dependency: STLSQ is a few lines, and the
library must be written in array code that CasADi can trace.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddcontrol._validation import as_finite_array, check_positive_float, check_positive_int
from ddcontrol.baselines.errors import SolverFailedError
from ddcontrol.baselines.nmpc import CasadiOracle
from ddcontrol.baselines.tuning import split_trajectories
from ddcontrol.errors import ConfigurationError
from ddcontrol.tracking.reference import Reference
from envs.dynamics import Dynamics

__all__ = ["SINDyModel", "fit_sindy", "select_sindy", "SINDyDynamics", "SINDyMPC", "LIBRARIES"]

LIBRARIES = ("linear", "poly2", "trig", "trig-poly")
#: Candidate libraries of :func:`select_sindy`.
LIBRARY_SETS: tuple[tuple[str, ...], ...] = (("linear",), ("linear", "poly2"),
                                             ("linear", "trig", "trig-poly"),
                                             ("linear", "poly2", "trig", "trig-poly"))
_CACHE: dict[tuple, tuple[Any, dict[str, Any]]] = {}


def _library(y_hist: Any, u_hist: Any, u: Any, families: tuple[str, ...], scale: dict[str, Any]
             ) -> Any:
    """Θ(ξ, u): y_hist (..., d+1, p) oldest first, u_hist (..., d, m), u (..., m).

    Plain array code (slicing, arithmetic, ``np.sin``/``np.cos``, concatenation), so it runs on
    float arrays and on the object arrays of CasADi symbols that :func:`casadi_model` traces.
    """
    lead = y_hist.shape[:-2]
    y_now = y_hist[..., -1, :]
    ys = (y_now - scale["y_mean"]) / scale["y_std"]
    us = (u - scale["u_mean"]) / scale["u_std"]
    feats = [y_hist.reshape(lead + (-1,)), u_hist.reshape(lead + (-1,)), u,
             np.ones(lead + (1,))]
    p, m = y_now.shape[-1], u.shape[-1]
    for fam in families:
        if fam == "linear":
            continue
        if fam == "poly2":
            z = np.concatenate([ys, us], axis=-1)
            i, j = np.triu_indices(p + m)
            feats.append(z[..., i] * z[..., j])
        elif fam == "trig":
            feats += [np.sin(y_now), np.cos(y_now)]
        elif fam == "trig-poly":
            pairs = [(i, j) for i in range(p) for j in range(p) if i != j]
            if pairs:
                i, j = (np.array(v) for v in zip(*pairs))
                feats += [ys[..., i] * np.sin(y_now[..., j]), ys[..., i] * np.cos(y_now[..., j])]
            i, j = (np.array(v) for v in zip(*itertools.product(range(m), range(p))))
            feats += [us[..., i] * np.sin(y_now[..., j]), us[..., i] * np.cos(y_now[..., j])]
        else:
            raise ConfigurationError(f"unknown library family {fam!r}; choose from {LIBRARIES}")
    return np.concatenate(feats, axis=-1)


@dataclass(frozen=True)
class SINDyModel:
    """``y_{k+1} = y_k + Θ(ξ_k, u_k) Ξ`` (see the module docstring).

    Attributes
    ----------
    coef : ndarray, shape (n_features, p)
        Ξ (physical units).
    delays : int
    library : tuple of str
    scale : dict
        ``y_mean``, ``y_std``, ``u_mean``, ``u_std`` of the standardised library terms.
    threshold : float
    """

    coef: np.ndarray
    delays: int
    library: tuple[str, ...]
    scale: dict[str, np.ndarray]
    threshold: float = 0.0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def output_dim(self) -> int:
        return int(self.coef.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.scale["u_mean"].shape[0])

    @property
    def nonzeros(self) -> int:
        return int(np.count_nonzero(self.coef))

    def step_output(self, y_hist: Any, u_hist: Any, u: Any) -> Any:
        """y_{k+1} (..., p) from ``y_{k-d} … y_k`` (..., d+1, p), ``u_{k-d} … u_{k-1}`` (..., d, m)
        and ``u_k`` (..., m)."""
        theta = _library(y_hist, u_hist, u, self.library, self.scale)
        return y_hist[..., -1, :] + theta @ self.coef

    def predict(self, y_hist: np.ndarray, u_hist: np.ndarray, u_future: np.ndarray
                ) -> np.ndarray:
        """Outputs ``y_k … y_{k+N-1}`` (..., N, p) under ``u_k … u_{k+N-1}`` (..., N, m)."""
        d = self.delays
        N = u_future.shape[-2]
        out = np.empty(u_future.shape[:-1] + (self.output_dim,))
        yh, uh = np.array(y_hist, float), np.array(u_hist, float)
        with np.errstate(all="ignore"):
            for j in range(N):
                out[..., j, :] = yh[..., -1, :]
                if j + 1 < N:
                    y_next = self.step_output(yh, uh, u_future[..., j, :])
                    yh = np.concatenate([yh[..., 1:, :], y_next[..., None, :]], axis=-2)
                    if d:
                        uh = np.concatenate([uh[..., 1:, :], u_future[..., j, None, :]], axis=-2)
        return out


def _samples(u: np.ndarray, y: np.ndarray, d: int) -> tuple[np.ndarray, ...]:
    """Every (y_{k-d..k}, u_{k-d..k-1}, u_k, y_{k+1}) of trajectories (N, T, ·), k = d .. T-2."""
    T = y.shape[1]
    if T < d + 2:
        raise ConfigurationError(f"trajectories of {T} samples are too short for {d} delays")
    ks = np.arange(d, T - 1)
    yi = ks[:, None] + np.arange(-d, 1)[None, :]
    ui = ks[:, None] + np.arange(-d, 0)[None, :]
    p, m = y.shape[2], u.shape[2]
    return (y[:, yi].reshape(-1, d + 1, p), u[:, ui].reshape(-1, d, m),
            u[:, ks].reshape(-1, m), y[:, ks + 1].reshape(-1, p))


def _scale(u: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    yf, uf = y.reshape(-1, y.shape[2]), u.reshape(-1, u.shape[2])
    return {"y_mean": yf.mean(0), "y_std": np.maximum(yf.std(0), 1e-12),
            "u_mean": uf.mean(0), "u_std": np.maximum(uf.std(0), 1e-12)}


def _stlsq(theta: np.ndarray, target: np.ndarray, threshold: float, ridge: float = 1e-12,
           iterations: int = 10) -> np.ndarray:
    """Sequentially thresholded (ridge) least squares on standardised columns and targets."""
    col = np.sqrt(np.mean(theta ** 2, axis=0))
    col[col <= 1e-300] = 1.0
    ts = np.maximum(target.std(0), 1e-12)
    A, B = theta / col, target / ts
    n = A.shape[0]
    G, R = A.T @ A, A.T @ B
    coef = np.zeros((A.shape[1], B.shape[1]))
    support = np.ones_like(coef, dtype=bool)
    for _ in range(iterations):
        for j in range(B.shape[1]):
            s = support[:, j]
            coef[:, j] = 0.0
            if s.any():
                Gs = G[np.ix_(s, s)] + ridge * n * np.eye(int(s.sum()))
                coef[s, j] = np.linalg.solve(Gs, R[s, j])
        new = np.abs(coef) >= threshold
        if np.array_equal(new, support):
            break
        support = new
    coef[~support] = 0.0
    return coef / col[:, None] * ts[None, :]


def fit_sindy(u: Any, y: Any, *, delays: int = 1, library: tuple[str, ...] = ("linear", "poly2"),
              threshold: float = 0.01, max_samples: int = 200_000, seed: int = 0) -> SINDyModel:
    """Fit a :class:`SINDyModel` by STLSQ on (at most ``max_samples``, seeded) sample pairs."""
    u = as_finite_array(u, "u", ndim=3)
    y = as_finite_array(y, "y", ndim=3)
    d = int(delays)
    if d < 0:
        raise ConfigurationError(f"delays must be >= 0, got {delays}")
    threshold = check_positive_float(threshold, "threshold", allow_zero=True)
    scale = _scale(u, y)
    yh, uh, uk, yn = _samples(u, y, d)
    if yh.shape[0] > max_samples:
        keep = np.random.default_rng(seed).choice(yh.shape[0], max_samples, replace=False)
        yh, uh, uk, yn = yh[keep], uh[keep], uk[keep], yn[keep]
    theta = _library(yh, uh, uk, tuple(library), scale)
    coef = _stlsq(theta, yn - yh[:, -1], threshold)
    return SINDyModel(coef, d, tuple(library), scale, threshold)


def _prediction_error(model: SINDyModel, u: np.ndarray, y: np.ndarray, horizon: int,
                      max_windows: int = 1000, seed: int = 0) -> float:
    d = model.delays
    N, T, _ = y.shape
    H = min(horizon, T - d)
    idx = np.array(list(itertools.product(range(N), range(d, T - H + 1))))
    if len(idx) > max_windows:
        idx = idx[np.random.default_rng(seed).choice(len(idx), max_windows, replace=False)]
    n, k = idx[:, 0], idx[:, 1]
    yp = y[n[:, None], k[:, None] + np.arange(-d, 1)[None, :]]
    up = u[n[:, None], k[:, None] + np.arange(-d, 0)[None, :]]
    uf = u[n[:, None], k[:, None] + np.arange(H)[None, :]]
    yf = y[n[:, None], k[:, None] + np.arange(H)[None, :]]
    pred = model.predict(yp, up, uf)
    with np.errstate(all="ignore"):
        rms = np.sqrt(np.mean((pred - yf) ** 2, axis=(0, 1)))
    err = float(np.mean(rms / np.maximum(y.reshape(-1, y.shape[2]).std(0), 1e-12)))
    return err if np.isfinite(err) else float("inf")


def select_sindy(data: Any, *, horizon: int, delays: tuple[int, ...] = (1, 2),
                 libraries: tuple[tuple[str, ...], ...] = LIBRARY_SETS,
                 thresholds: tuple[float, ...] = (1e-3, 1e-2, 5e-2), holdout: float = 0.2,
                 max_samples: int = 40_000, seed: int = 0) -> tuple[SINDyModel, dict[str, Any]]:
    """Choose (delays, library, threshold) on held-out trajectories; refit on all the data.

    Candidates are fitted on at most ``max_samples`` (seeded) sample pairs of the fit
    trajectories and scored on at most 1000 held-out windows; the chosen one is refitted by
    :func:`fit_sindy` on (at most 200,000 samples of) every trajectory.
    """
    horizon = check_positive_int(horizon, "horizon")
    key = (data.fingerprint(), horizon, tuple(delays), tuple(map(tuple, libraries)),
           tuple(thresholds), holdout, max_samples, seed)
    if key in _CACHE:
        model, report = _CACHE[key]
        return model, dict(report)
    u, y = data.u, data.y
    N, T = u.shape[:2]
    if N < 2:
        raise ConfigurationError("select_sindy needs at least 2 trajectories (fit and held-out)")
    hold, train = split_trajectories(N, holdout, seed)
    rows = []
    rng = np.random.default_rng(seed)
    for d, lib in itertools.product(delays, libraries):
        if d + 2 > T:
            continue
        # The library is evaluated once per (d, library) on a subset of the fit trajectories'
        # samples; every threshold reuses it.
        scale = _scale(u[train], y[train])
        yh, uh, uk, yn = _samples(u[train], y[train], d)
        if yh.shape[0] > max_samples:
            keep = rng.choice(yh.shape[0], max_samples, replace=False)
            yh, uh, uk, yn = yh[keep], uh[keep], uk[keep], yn[keep]
        theta = _library(yh, uh, uk, tuple(lib), scale)
        for thr in thresholds:
            model = SINDyModel(_stlsq(theta, yn - yh[:, -1], thr), d, tuple(lib), scale, thr)
            err = _prediction_error(model, u[hold], y[hold], horizon, seed=seed)
            rows.append({"delays": d, "library": list(lib), "threshold": thr,
                         "nonzeros": model.nonzeros, "heldout_error": err})
    finite = [r for r in rows if np.isfinite(r["heldout_error"])]
    if not finite:
        raise ConfigurationError("every SINDy candidate diverges on the held-out trajectories")
    best = min(r["heldout_error"] for r in finite)
    near = [r for r in finite if r["heldout_error"] <= 1.02 * best + 1e-8]
    c = min(near, key=lambda r: (r["nonzeros"], r["heldout_error"]))
    model = fit_sindy(u, y, delays=c["delays"], library=tuple(c["library"]),
                      threshold=c["threshold"], seed=seed)
    report = {"chosen": {k: c[k] for k in ("delays", "library", "threshold")},
              "nonzeros": model.nonzeros, "score": c["heldout_error"],
              "procedure": "80/20 split by trajectory; open-loop "
              f"{horizon}-step output prediction error on the held-out trajectories",
              "candidates": rows}
    _CACHE[key] = (model, report)
    return model, dict(report)


class SINDyDynamics(Dynamics):
    """A :class:`SINDyModel` as a :class:`~envs.dynamics.Dynamics` on the measured state ξ.

    ``ξ = (y_{k-d} … y_k, u_{k-d} … u_{k-1})`` flattened (outputs first, oldest first); ``step``
    appends the model's ``y_{k+1}`` and the input, ``output`` returns ``y_k``. Plain array code: it
    runs on float arrays and traces into CasADi.
    """

    def __init__(self, model: SINDyModel, *, dt: float, input_low: Any, input_high: Any,
                 samples: np.ndarray) -> None:
        d, p, m = model.delays, model.output_dim, model.input_dim
        super().__init__(dt=dt,
                         state_names=tuple(f"y{i}[k-{d - j}]" for j in range(d + 1)
                                           for i in range(p))
                         + tuple(f"u{i}[k-{d - j}]" for j in range(d) for i in range(m)),
                         input_names=tuple(f"u{i}" for i in range(m)),
                         output_names=tuple(f"y{i}" for i in range(p)),
                         input_low=np.asarray(input_low, float).reshape(m),
                         input_high=np.asarray(input_high, float).reshape(m))
        self.model = model
        self._samples = np.asarray(samples, float)

    def _split(self, x: Any) -> tuple[Any, Any]:
        d, p, m = self.model.delays, self.model.output_dim, self.model.input_dim
        lead = x.shape[:-1]
        return (x[..., : (d + 1) * p].reshape(lead + (d + 1, p)),
                x[..., (d + 1) * p:].reshape(lead + (d, m)))

    def step(self, x: Any, u: Any) -> Any:
        yh, uh = self._split(x)
        y_next = self.model.step_output(yh, uh, u)
        lead = x.shape[:-1]
        ys = np.concatenate([yh[..., 1:, :].reshape(lead + (-1,)), y_next], axis=-1)
        us = np.concatenate([uh[..., 1:, :].reshape(lead + (-1,)), u], axis=-1) \
            if self.model.delays else uh.reshape(lead + (0,))
        return np.concatenate([ys, us], axis=-1)

    def output(self, x: Any, u_prev: Any | None = None) -> Any:
        d, p = self.model.delays, self.model.output_dim
        return x[..., d * p:(d + 1) * p]

    def sample_initial_states(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Measured states ξ of the training data (random rows)."""
        return self._samples[rng.integers(0, self._samples.shape[0], n)]

    def state_from_history(self, y_hist: np.ndarray, u_hist: np.ndarray) -> np.ndarray:
        """ξ_k from ``y_{k-d} … y_k`` (d+1, p) and ``u_{k-d} … u_{k-1}`` (d, m)."""
        return np.concatenate([np.asarray(y_hist, float).reshape(-1),
                               np.asarray(u_hist, float).reshape(-1)])


class SINDyMPC(CasadiOracle):
    """NMPC (CasADi, IPOPT) on a SINDy model of the data, from the measured past.

    Parameters
    ----------
    data : TrajectoryDataset
        The training trajectories; states unused.
    reference : Reference
    Q, R : weights on the tracked outputs and the inputs.
    horizon : int
    delays, library, threshold : optional
        Fix the model's hyper-parameters; any left None is chosen by :func:`select_sindy`
        (the others restrict its grid).
    model : SINDyModel, optional
        A fitted model (skips identification).
    input_low, input_high : array_like, optional
        Input bounds (default: the dataset's actuator limits).
    **nmpc
        Of :class:`~ddcontrol.baselines.nmpc.CasadiOracle` (``max_iterations``,
        ``warm_iterations``, ``tol``, ``solver``).

    Attributes
    ----------
    sindy : SINDyModel
    selection : dict or None
    failures : int
        Steps whose solve failed (the shifted previous plan, or the neutral input, was applied).
    """

    name = "sindy"
    uses_state = False

    def __init__(self, data: Any, reference: Reference, Q: Any, R: Any, *, horizon: int = 20,
                 delays: int | None = None, library: tuple[str, ...] | None = None,
                 threshold: float | None = None, model: SINDyModel | None = None,
                 input_low: Any | None = None, input_high: Any | None = None, seed: int = 0,
                 **nmpc: Any) -> None:
        self.selection: dict[str, Any] | None = None
        if model is None:
            if delays is not None and library is not None and threshold is not None:
                model = fit_sindy(data.u, data.y, delays=delays, library=tuple(library),
                                  threshold=threshold, seed=seed)
            else:
                kw: dict[str, Any] = {}
                if delays is not None:
                    kw["delays"] = (int(delays),)
                if library is not None:
                    kw["libraries"] = (tuple(library),)
                if threshold is not None:
                    kw["thresholds"] = (float(threshold),)
                model, self.selection = select_sindy(data, horizon=horizon, seed=seed, **kw)
        self.sindy = model
        data_low, data_high = data.input_bounds
        low = data_low if input_low is None else input_low
        high = data_high if input_high is None else input_high
        d = model.delays
        yh, uh, _, _ = _samples(data.u[:50], data.y[:50], d)
        samples = np.concatenate([yh.reshape(len(yh), -1), uh.reshape(len(uh), -1)], axis=1)
        dyn = SINDyDynamics(model, dt=data.dt, input_low=low, input_high=high, samples=samples)
        super().__init__(dyn, reference, Q, R, horizon=horizon, **nmpc)
        self.failures = 0

    def _act(self, y: np.ndarray, info: dict[str, Any] | None) -> np.ndarray:
        from ddcontrol.baselines.koopman import _record_applied_input

        _record_applied_input(self, info)
        d = self.sindy.delays
        if self.k < d:
            return self.input_centre
        y_hist = np.stack(self.outputs[len(self.outputs) - d:] + [y])
        u_hist = np.stack(self.inputs[-d:]) if d else np.zeros((0, self.input_dim))
        xi = self.dynamics.state_from_history(y_hist, u_hist)
        u_prev = self.inputs[-1] if self.inputs else np.zeros(self.input_dim)
        r = self.reference.window(self.k, self.horizon)
        try:
            self._plan_u, _ = self.plan(xi, r, u_prev=u_prev, **self._warm_start_kwargs())
        except (SolverFailedError, RuntimeError, FloatingPointError):
            self.failures += 1
            self._last_solution = None
            if self._plan_u is None:
                return self.input_centre
            self._plan_u = np.vstack([self._plan_u[1:], self._plan_u[-1:]])
        return self._plan_u[0]

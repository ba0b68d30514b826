"""DeePC's hyper-parameters chosen per system on held-out data (tuned DeePC).

DeePC (:class:`~ddcontrol.baselines.deepc.DeePC`, ℓ2 regulariser) predicts the future outputs of
a past ``(u_ini, y_ini)`` and a future input sequence ``u_f`` through the g that its QP would pick
for them:

    g* = argmin  λ_g ‖g‖² + λ_y ‖Y_p g − y_ini‖²   s.t.  U_p g = u_ini,  U_f g = u_f;
    ŷ_f = Y_f g*.

This is the regularised DeePC predictor (the tracking cost only chooses ``u_f``). Its quality on
trajectories the Hankel matrix has not seen is what the regularisation trades off, so
:func:`tune_deepc` chooses ``(T_ini, λ_g, λ_y, K)`` (past length, the two weights, the number of
Hankel columns; the Hankel depth is ``L = T_ini + N``) by:

1. splitting the trajectories 80 / 20 (seeded);
2. for each candidate, building the Hankel matrix from the 80 % exactly as DeePC does (seeded
   column subset, row-space reduction) and predicting the ``N`` future outputs of up to 1000
   windows of the held-out 20 % from their measured past and inputs; the KKT matrix of the
   problem above does not depend on the window, so one factorisation serves every window;
3. scoring by the RMS prediction error per output channel over the channel's standard deviation,
   averaged over channels; candidates whose data are not persistently exciting enough are
   skipped;
4. taking the best candidate; near-ties (within 1 % + 1e-9) go to the larger λ_g (the more
   regularised predictor), then the shorter past, then fewer columns.

The test references are never used. Results are cached per dataset fingerprint, horizon and grid,
so building many tuned controllers (references x seeds) tunes once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddcontrol._validation import check_positive_int
from ddcontrol.baselines.errors import InsufficientExcitationError
from ddcontrol.baselines.hankel import check_persistency, window_columns
from ddcontrol.errors import ConfigurationError

__all__ = ["DeePCTuning", "tune_deepc", "deepc_prediction_error", "DEFAULT_GRID"]

#: The candidate grid of :func:`tune_deepc`.
DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "t_ini": (2, 4, 6, 10),
    "lambda_g": (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4),
    "lambda_y": (1e1, 1e3, 1e5),
    "max_columns": (500, 2000),
}
#: DeePC's own defaults (``make_baseline("deepc")`` without tuning), scored for reference.
DEFAULTS = {"t_ini": 4, "lambda_g": 1.0, "lambda_y": 1e5, "max_columns": 500}

_CACHE: dict[tuple, DeePCTuning] = {}


@dataclass
class DeePCTuning:
    """Outcome of :func:`tune_deepc`.

    Attributes
    ----------
    params : dict
        ``t_ini``, ``lambda_g``, ``lambda_y``, ``max_columns`` for :class:`DeePC` (and the
        resulting ``hankel_depth``).
    score : float
        Held-out prediction error of the chosen candidate.
    default_score : float
        The same for DeePC's default settings (nan if not applicable to these data).
    candidates : list of dict
        Every candidate and its score (``inf``: diverged; skipped ones are absent).
    """

    params: dict[str, Any]
    score: float
    default_score: float
    horizon: int
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def deepc_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`DeePC`."""
        return {k: self.params[k] for k in ("t_ini", "lambda_g", "lambda_y", "max_columns")}

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": dict(self.params), "heldout_error": self.score,
                "default": {**DEFAULTS, "heldout_error": self.default_score},
                "procedure": "80/20 split by trajectory; regularised DeePC predictor; open-loop "
                             f"{self.horizon}-step output prediction error on held-out windows "
                             "(RMS per channel / channel std, mean over channels)",
                "candidates": self.candidates}


def _reduced_hankel(u: np.ndarray, y: np.ndarray, L: int, t_ini: int, max_columns: int,
                    lambda_g: float, seed: int) -> tuple[np.ndarray, ...]:
    """DeePC's reduced Hankel blocks (U_p, U_f, Y_p, Y_f, sv), as in ``DeePC._build_hankel``."""
    m, p = u.shape[2], y.shape[2]
    Hu, Hy = window_columns(u, L), window_columns(y, L)
    if Hu.shape[1] > max_columns:
        keep = np.sort(np.random.default_rng(seed).choice(Hu.shape[1], max_columns,
                                                          replace=False))
        Hu, Hy = Hu[:, keep], Hy[:, keep]
    s = np.linalg.svd(Hu, compute_uv=False)
    if s.size < L * m or s[L * m - 1] <= 1e-9 * s[0]:
        raise InsufficientExcitationError("Hankel columns do not span the inputs")
    H = np.vstack([Hu, Hy])
    _, sv, Vt = np.linalg.svd(H, full_matrices=False)
    tol = 1e-5 if lambda_g > 0 else 1e-10
    r = int(np.sum(sv > tol * sv[0]))
    Hu_r, Hy_r = np.split(H @ Vt[:r].T / sv[:r], [Hu.shape[0]])
    return (Hu_r[: t_ini * m], Hu_r[t_ini * m:], Hy_r[: (t_ini + 1) * p], Hy_r[t_ini * p:],
            sv[:r])


def deepc_prediction_error(train: Any, test_u: np.ndarray, test_y: np.ndarray, *, horizon: int,
                           t_ini: int, lambda_g: float, lambda_y: float, max_columns: int = 500,
                           max_windows: int = 1000, seed: int = 0) -> float:
    """Held-out error of the regularised DeePC predictor (see the module docstring).

    Parameters
    ----------
    train : TrajectoryDataset or tuple (u, y)
        Data of the Hankel matrix.
    test_u, test_y : ndarray, shapes (N, T, m), (N, T, p)
        Held-out trajectories.
    """
    u, y = (train.u, train.y) if hasattr(train, "u") else train
    hankel = _reduced_hankel(u, y, t_ini + horizon, t_ini, max_columns, lambda_g, seed)
    windows = _windows(test_u, test_y, t_ini + horizon, max_windows, seed)
    return _predictor_error(hankel, windows, horizon=horizon, t_ini=t_ini, lambda_g=lambda_g,
                            lambda_y=lambda_y)


def _windows(test_u: np.ndarray, test_y: np.ndarray, L: int, max_windows: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``max_windows`` held-out windows: inputs (W, L·m), outputs (W, L, p), and the
    per-channel scale (p,) of the held-out outputs."""
    N, T = test_u.shape[:2]
    starts = np.arange(0, T - L + 1)
    if starts.size == 0:
        raise ConfigurationError(f"held-out trajectories of {T} samples are shorter than {L}")
    idx = np.array(list(itertools.product(range(N), starts)))
    if len(idx) > max_windows:
        idx = idx[np.random.default_rng(seed + 1).choice(len(idx), max_windows, replace=False)]
    n, k = idx[:, 0], idx[:, 1]
    win = k[:, None] + np.arange(L)[None, :]
    scale = np.maximum(test_y.reshape(-1, test_y.shape[2]).std(0), 1e-12)
    return test_u[n[:, None], win].reshape(len(idx), -1), test_y[n[:, None], win], scale


def _predictor_error(hankel: tuple[np.ndarray, ...], windows: tuple[np.ndarray, ...], *,
                     horizon: int, t_ini: int, lambda_g: float, lambda_y: float) -> float:
    Up, Uf, Yp, Yf, sv = hankel
    uw, yw, scale = windows
    W, p = yw.shape[0], yw.shape[2]
    r = sv.shape[0]
    # KKT of min αᵀ M α − 2 λ_y y_iniᵀ Y_p α  s.t. [U_p; U_f] α = (u_ini, u_f).
    M = lambda_g * np.diag(1.0 / sv ** 2) + lambda_y * Yp.T @ Yp
    Aeq = np.vstack([Up, Uf])
    K = np.block([[2 * M, Aeq.T], [Aeq, np.zeros((Aeq.shape[0], Aeq.shape[0]))]])
    y_ini = yw[:, : t_ini + 1].reshape(W, -1)
    rhs = np.hstack([2 * lambda_y * y_ini @ Yp, uw])  # (W, r + L·m)
    try:
        sol = np.linalg.solve(K, rhs.T).T
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(K, rhs.T, rcond=None)[0].T
    pred = (sol[:, :r] @ Yf.T).reshape(W, horizon, p)[:, 1:]  # y_k is measured: skip it
    with np.errstate(all="ignore"):
        rms = np.sqrt(np.mean((pred - yw[:, t_ini + 1:]) ** 2, axis=(0, 1)))
    err = float(np.mean(rms / scale))
    return err if np.isfinite(err) else float("inf")


def split_trajectories(num: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``num`` trajectory indices into (held-out, fit): ``round(holdout * num)``
    (at least 1) held out; the shared procedure of every held-out hyper-parameter choice."""
    perm = np.random.default_rng(seed).permutation(num)
    n_hold = max(1, int(round(holdout * num)))
    return perm[:n_hold], perm[n_hold:]


def tune_deepc(data: Any, *, horizon: int, grid: dict[str, tuple[Any, ...]] | None = None,
               holdout: float = 0.2, seed: int = 0, use_cache: bool = True) -> DeePCTuning:
    """Choose DeePC's ``(t_ini, lambda_g, lambda_y, max_columns)`` on held-out trajectories.

    Parameters
    ----------
    data : TrajectoryDataset
        The training data (DeePC's Hankel matrix is built from them).
    horizon : int
        DeePC's prediction horizon N (the prediction error is over N samples).
    grid : dict, optional
        Candidate values per key (default :data:`DEFAULT_GRID`; missing keys use it).
    holdout : float
        Fraction of trajectories held out.
    seed : int
        Seeds the split and the column subsets.

    Returns
    -------
    DeePCTuning

    Raises
    ------
    InsufficientExcitationError
        No candidate is persistently exciting on these data.
    """
    horizon = check_positive_int(horizon, "horizon")
    g = {**DEFAULT_GRID, **(grid or {})}
    key = (data.fingerprint(), horizon, tuple((k, tuple(v)) for k, v in sorted(g.items())),
           holdout, seed)
    if use_cache and key in _CACHE:
        return _CACHE[key]
    N, T = data.u.shape[:2]
    if N < 2:
        raise ConfigurationError("tune_deepc needs at least 2 trajectories (fit and held-out)")
    hold, train = split_trajectories(N, holdout, seed)
    tu, ty = data.u[train], data.y[train]
    hu, hy = data.u[hold], data.y[hold]
    p = data.output_dim
    rows: list[dict[str, Any]] = []
    default_score = float("nan")
    excited: dict[int, bool] = {}
    for t_ini in g["t_ini"]:
        L = t_ini + horizon
        if L > T:
            continue
        if t_ini not in excited:
            excited[t_ini] = check_persistency(data.u, L + t_ini * p, "ignore")
        if not excited[t_ini]:
            continue
        windows = _windows(hu, hy, L, 1000, seed)
        for K in g["max_columns"]:
            try:
                hankel = _reduced_hankel(tu, ty, L, t_ini, K, 1.0, seed)
            except InsufficientExcitationError:
                continue
            for lam_g, lam_y in itertools.product(g["lambda_g"], g["lambda_y"]):
                err = _predictor_error(hankel, windows, horizon=horizon, t_ini=t_ini,
                                       lambda_g=lam_g, lambda_y=lam_y)
                rows.append({"t_ini": t_ini, "lambda_g": lam_g, "lambda_y": lam_y,
                             "max_columns": K, "heldout_error": err})
    if not rows:
        raise InsufficientExcitationError(
            f"no DeePC candidate of {g} is persistently exciting on these data "
            f"({N} trajectories of {T} samples)")
    try:
        d = DEFAULTS
        if d["t_ini"] + horizon <= T:
            default_score = deepc_prediction_error(
                (tu, ty), hu, hy, horizon=horizon, t_ini=d["t_ini"], lambda_g=d["lambda_g"],
                lambda_y=d["lambda_y"], max_columns=d["max_columns"], max_windows=1000,
                seed=seed)
    except InsufficientExcitationError:
        pass
    best = min(r["heldout_error"] for r in rows)
    near = [r for r in rows if r["heldout_error"] <= 1.01 * best + 1e-9]
    c = min(near, key=lambda r: (-r["lambda_g"], r["t_ini"], r["max_columns"],
                                 r["heldout_error"]))
    params = {k: c[k] for k in ("t_ini", "lambda_g", "lambda_y", "max_columns")}
    params["hankel_depth"] = params["t_ini"] + horizon
    result = DeePCTuning(params, c["heldout_error"], default_score, horizon, rows)
    if use_cache:
        _CACHE[key] = result
    return result

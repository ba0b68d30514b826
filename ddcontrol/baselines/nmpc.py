"""Nonlinear MPC on a real NLP solver: the CasADi oracle (multiple shooting, IPOPT or SQP).

**It cheats on purpose**, like every oracle (:mod:`ddcontrol.baselines.oracle`): it knows the true
dynamics and reads the true state from ``info["state"]`` at every step.

Model. The step and output maps are the simulator's own code in :mod:`envs.dynamics`, *traced*
into CasADi expressions: the numpy functions ``step``/``output`` run once on arrays of symbolic
scalars (:func:`casadi_model`), so the NLP holds exactly the arithmetic of the simulator (RK4
sub-steps included). The traced model is checked against the numpy simulator at random points on
construction.

NLP (multiple shooting). With ``x_0`` the measured state, ``u_{-1}`` the input held before it and
``r_k`` the reference window::

    min_{u_0..u_{N-1}, x_1..x_{N-1}}  Σ_k (y_k − r_k)ᵀ Q (y_k − r_k) + u_kᵀ R u_k,
    s.t.  x_{k+1} = step(x_k, u_k),  y_k = output(x_k, u_{k-1}),  u_k ∈ [u_low, u_high]

(the shared cost and sampling convention of :mod:`ddcontrol.tracking.cost`). The measured state,
the previous input and the reference are NLP *parameters*, so the solver is built once. Solvers:

* ``"ipopt"`` (default): interior point with the exact Hessian (MUMPS). Receding-horizon steps
  warm-start primal *and* dual variables from the previous solution shifted by one sample, with
  IPOPT's warm-start options (small bound push, small initial barrier parameter).
* ``"sqp"``: CasADi's ``sqpmethod`` with a QP solver (``qpsol``, default ``"qrqp"``; ``"osqp"``
  or ``"qpoases"`` also ship with the CasADi wheel), exact Hessian regularised to convexity.

Every receding-horizon solve is safeguarded: the plan returned by the solver is re-simulated in the
numpy simulator and, should its true cost be higher than that of the shifted previous plan (a
failed or truncated solve), the shifted plan is used instead.

CasADi is an optional dependency (``pip install 'ddcontrol[baselines]'``); it is imported lazily,
and :func:`casadi_available` tells whether it is installed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ddcontrol._validation import as_finite_array, check_positive_float, check_positive_int
from ddcontrol.baselines.oracle import _RecedingOracle
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.tracking.cost import tracking_cost
from ddcontrol.tracking.reference import Reference
from envs.dynamics import Dynamics

__all__ = ["CasadiOracle", "casadi_available", "casadi_model", "require_casadi"]

_EXTRA_HINT = "pip install 'ddcontrol[baselines]' (or pip install 'casadi>=3.6')"


def casadi_available() -> bool:
    """Whether CasADi can be imported."""
    try:
        import casadi  # noqa: F401
    except ImportError:
        return False
    return True


def require_casadi() -> Any:
    """Import CasADi, or raise an ImportError that names the optional extra."""
    try:
        import casadi
    except ImportError as exc:
        raise ImportError(f"this controller needs CasADi, an optional dependency of ddcontrol: "
                          f"{_EXTRA_HINT}") from exc
    return casadi


class _Sym:
    """A CasADi scalar that numpy treats as a plain Python object.

    numpy arrays of ``_Sym`` (dtype object) go through the simulator's numpy code unchanged:
    arithmetic, ``np.sin``/``np.cos`` (which call the methods below), stacking, indexing and
    ``@`` with float matrices all work element by element. CasADi's own ``SX`` cannot be used
    directly, because it claims numpy's ``__array_function__`` protocol and refuses ``np.stack``.
    """

    __slots__ = ("e",)

    def __init__(self, e: Any) -> None:
        self.e = e

    @staticmethod
    def _v(other: Any) -> Any:
        return other.e if isinstance(other, _Sym) else float(other)

    def __add__(self, o: Any) -> _Sym:
        return _Sym(self.e + self._v(o))

    def __radd__(self, o: Any) -> _Sym:
        return _Sym(self._v(o) + self.e)

    def __sub__(self, o: Any) -> _Sym:
        return _Sym(self.e - self._v(o))

    def __rsub__(self, o: Any) -> _Sym:
        return _Sym(self._v(o) - self.e)

    def __mul__(self, o: Any) -> _Sym:
        return _Sym(self.e * self._v(o))

    def __rmul__(self, o: Any) -> _Sym:
        return _Sym(self._v(o) * self.e)

    def __truediv__(self, o: Any) -> _Sym:
        return _Sym(self.e / self._v(o))

    def __rtruediv__(self, o: Any) -> _Sym:
        return _Sym(self._v(o) / self.e)

    def __pow__(self, o: Any) -> _Sym:
        return _Sym(self.e ** self._v(o))

    def __neg__(self) -> _Sym:
        return _Sym(-self.e)

    def __pos__(self) -> _Sym:
        return self

    def sin(self) -> _Sym:
        import casadi as ca

        return _Sym(ca.sin(self.e))

    def cos(self) -> _Sym:
        import casadi as ca

        return _Sym(ca.cos(self.e))

    def tan(self) -> _Sym:
        import casadi as ca

        return _Sym(ca.tan(self.e))

    def exp(self) -> _Sym:
        import casadi as ca

        return _Sym(ca.exp(self.e))

    def tanh(self) -> _Sym:
        import casadi as ca

        return _Sym(ca.tanh(self.e))

    def sqrt(self) -> _Sym:
        import casadi as ca

        return _Sym(ca.sqrt(self.e))


def _to_sx(values: Any, size: int) -> Any:
    import casadi as ca

    flat = np.asarray(values, dtype=object).reshape(-1)
    if flat.shape != (size,):
        raise DimensionError(f"traced model returned {flat.shape[0]} entries, expected {size}")
    return ca.vertcat(*[v.e if isinstance(v, _Sym) else ca.SX(float(v)) for v in flat])


def casadi_model(dynamics: Dynamics, *, check: bool = True, seed: int = 0) -> tuple[Any, Any]:
    """The simulator's step and output maps as CasADi functions, traced from its numpy code.

    Parameters
    ----------
    dynamics : Dynamics
        Any ddcontrol system whose ``step``/``output`` are written with ``namespace(x)``
        functions, arithmetic and indexing (all of them are).
    check : bool
        Compare the traced functions with the numpy simulator at 8 random points (states from
        ``sample_initial_states``, inputs uniform in the actuator box) and raise
        ``ConfigurationError`` on a mismatch above 1e-9 (relative).
    seed : int
        Seeds those points.

    Returns
    -------
    F : casadi.Function
        ``F(x, u) -> x_next`` (SX, n -> n).
    H : casadi.Function
        ``H(x, u_prev) -> y`` (SX, n, m -> p).
    """
    ca = require_casadi()
    n, m, p = dynamics.state_dim, dynamics.input_dim, dynamics.output_dim
    xs, us = ca.SX.sym("x", n), ca.SX.sym("u", m)
    xo = np.array([_Sym(xs[i]) for i in range(n)], dtype=object)
    uo = np.array([_Sym(us[i]) for i in range(m)], dtype=object)
    try:
        F = ca.Function("step", [xs, us], [_to_sx(dynamics.step(xo, uo), n)], ["x", "u"],
                        ["x_next"])
        H = ca.Function("output", [xs, us], [_to_sx(dynamics.output(xo, uo), p)],
                        ["x", "u_prev"], ["y"])
    except (TypeError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"cannot trace {type(dynamics).__name__} into CasADi "
                                 f"({type(exc).__name__}: {exc})") from exc
    if check:
        rng = np.random.default_rng(seed)
        x = dynamics.sample_initial_states(rng, 8)
        lo = np.where(np.isfinite(dynamics.input_low), dynamics.input_low, -1.0)
        hi = np.where(np.isfinite(dynamics.input_high), dynamics.input_high, 1.0)
        u = rng.uniform(lo, hi, size=(8, m))
        for f, ref in ((F, dynamics.step(x, u)), (H, dynamics.output(x, u))):
            got = np.array(f(x.T, u.T)).T
            if not np.allclose(got, ref, rtol=1e-9, atol=1e-9):
                raise ConfigurationError(f"traced CasADi model of {type(dynamics).__name__} "
                                         f"disagrees with the simulator (max error "
                                         f"{np.abs(got - ref).max():.3g})")
    return F, H


class CasadiOracle(_RecedingOracle):
    """Nonlinear MPC with the true model on CasADi (see the module docstring).

    Parameters
    ----------
    dynamics : Dynamics
        The true system (any ddcontrol dynamics, linear ones included).
    reference : Reference
    Q, R : weights on the tracked outputs and the inputs.
    horizon : int
        N samples.
    solver : {"ipopt", "sqp"}
        NLP method.
    qpsol : str
        QP solver of the SQP method (``"qrqp"``, ``"osqp"``, ``"qpoases"``).
    max_iterations : int
        Iteration limit of a cold solve (:meth:`plan` without a warm start).
    warm_iterations : int
        Iteration limit of a warm-started receding-horizon solve.
    tol : float
        Convergence tolerance of the NLP solver (IPOPT ``tol``; SQP ``tol_pr``/``tol_du``).
    warm_tol : float
        Accepted for signature compatibility with :class:`ShootingOracle`; warm solves use
        ``tol`` (they converge in a handful of iterations anyway).

    Attributes
    ----------
    last_stats : dict
        Of the last solve: ``status``, ``success``, ``iterations``, ``solve_time_s``
        (the solver call alone), ``warm`` (warm-started), ``cost`` (true cost of the returned
        plan) and ``fallback`` (the shifted previous plan was better and was used).
    F, H : casadi.Function
        The traced step and output maps.
    """

    name = "oracle"

    def __init__(self, dynamics: Dynamics, reference: Reference, Q: Any, R: Any, *,
                 horizon: int = 20, solver: str = "ipopt", qpsol: str = "qrqp",
                 max_iterations: int = 200, warm_iterations: int = 50, tol: float = 1e-8,
                 warm_tol: float | None = None) -> None:
        super().__init__(dynamics, reference, Q, R, horizon)
        ca = require_casadi()
        if solver not in ("ipopt", "sqp"):
            raise ConfigurationError(f"solver must be 'ipopt' or 'sqp', got {solver!r}")
        self.solver, self.qpsol = solver, qpsol
        self.max_iterations = check_positive_int(max_iterations, "max_iterations")
        self.warm_iterations = check_positive_int(warm_iterations, "warm_iterations")
        self.tol = check_positive_float(tol, "tol")
        if warm_tol is not None:
            check_positive_float(warm_tol, "warm_tol")
        self.F, self.H = casadi_model(dynamics)
        if self.horizon > 1:
            self._roll_x = self.F.mapaccum("rollout", self.horizon - 1)
        self._map_h = self.H.map(self.horizon)
        self._build_nlp(ca)
        self._solvers: dict[bool, Any] = {}
        for warm in (False, True):  # built now: construction is set-up, not solve time
            self._nlp_solver(warm)
        self._warm: dict[str, np.ndarray] | None = None
        self.last_stats: dict[str, Any] = {}

    # -- problem --------------------------------------------------------------------------------
    def _build_nlp(self, ca: Any) -> None:
        N, n, m = self.horizon, self.dynamics.state_dim, self.input_dim
        pt = self.reference.tracked_dim
        ch = list(self.reference.channels)
        x0, up, r = ca.SX.sym("x0", n), ca.SX.sym("u_prev", m), ca.SX.sym("r", N * pt)
        U = [ca.SX.sym(f"u{k}", m) for k in range(N)]
        X = [x0] + [ca.SX.sym(f"x{k}", n) for k in range(1, N)]
        Qh, Rh = ca.DM(self._Qh[:pt, :pt]), ca.DM(self._Rh[:m, :m])
        cost, g, w = 0, [], []
        for k in range(N):
            y = self.H(X[k], up if k == 0 else U[k - 1])
            e = Qh @ (y[ch] - r[k * pt:(k + 1) * pt])
            cost = cost + ca.sumsqr(e) + ca.sumsqr(Rh @ U[k])
            w.append(U[k])
            if k + 1 < N:
                g.append(X[k + 1] - self.F(X[k], U[k]))
                w.append(X[k + 1])
        # Decision vector interleaved (u_0, x_1, u_1, x_2, …, u_{N-1}): banded KKT systems.
        self._nlp = {"x": ca.vertcat(*w), "p": ca.vertcat(x0, up, r), "f": cost,
                     "g": ca.vertcat(*g) if g else ca.SX(0, 1)}
        nw = N * m + (N - 1) * n
        self._u_idx = np.concatenate([np.arange(m) + k * (m + n) for k in range(N)])
        self._x_idx = np.concatenate([np.arange(n) + k * (m + n) + m for k in range(N - 1)]
                                     ) if N > 1 else np.zeros(0, int)
        lbw, ubw = np.full(nw, -np.inf), np.full(nw, np.inf)
        lbw[self._u_idx] = np.tile(self.input_low, N)
        ubw[self._u_idx] = np.tile(self.input_high, N)
        self._lbw, self._ubw = lbw, ubw
        self._ng = (N - 1) * n

    def _nlp_solver(self, warm: bool) -> Any:
        if warm in self._solvers:
            return self._solvers[warm]
        import casadi as ca

        iters = self.warm_iterations if warm else self.max_iterations
        if self.solver == "ipopt":
            opts: dict[str, Any] = {
                "print_time": False, "ipopt.print_level": 0, "ipopt.sb": "yes",
                "ipopt.tol": self.tol, "ipopt.max_iter": iters,
                "ipopt.acceptable_tol": max(self.tol, 1e-6), "ipopt.acceptable_iter": 5}
            if warm:
                opts.update({"ipopt.warm_start_init_point": "yes",
                             "ipopt.warm_start_bound_push": 1e-8,
                             "ipopt.warm_start_bound_frac": 1e-8,
                             "ipopt.warm_start_slack_bound_push": 1e-8,
                             "ipopt.warm_start_slack_bound_frac": 1e-8,
                             "ipopt.warm_start_mult_bound_push": 1e-8,
                             "ipopt.mu_init": 1e-4})
            solver = ca.nlpsol("oracle", "ipopt", self._nlp, opts)
        else:
            qp_opts = {"print_iter": False, "print_header": False, "print_info": False} \
                if self.qpsol == "qrqp" else {"printLevel": "none"} if self.qpsol == "qpoases" \
                else {"verbose": False} if self.qpsol == "osqp" else {}
            opts = {"print_time": False, "print_header": False, "print_iteration": False,
                    "print_status": False, "qpsol": self.qpsol, "qpsol_options": {
                        "error_on_fail": False, **qp_opts},
                    "max_iter": iters, "tol_pr": self.tol, "tol_du": self.tol,
                    "convexify_strategy": "regularize", "error_on_fail": False}
            solver = ca.nlpsol("oracle", "sqpmethod", self._nlp, opts)
        self._solvers[warm] = solver
        return solver

    # -- planning -------------------------------------------------------------------------------
    def _rollout(self, x0: np.ndarray, u: np.ndarray, u_prev: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """States x_0..x_{N-1} and outputs y_0..y_{N-1} of the simulator under u.

        Runs the traced model (the simulator's arithmetic, one compiled call), not a Python loop.
        """
        xs = np.array(self._roll_x(x0, u[:-1].T)).T if self.horizon > 1 else np.zeros((0, 0))
        xs = np.vstack([x0[None], xs]) if self.horizon > 1 else x0[None].copy()
        up = np.vstack([u_prev[None], u[:-1]])
        ys = np.array(self._map_h(xs.T, up.T)).T
        return xs, ys

    def _true_cost(self, x0: np.ndarray, u: np.ndarray, u_prev: np.ndarray, r: np.ndarray
                   ) -> tuple[float, np.ndarray]:
        _, ys = self._rollout(x0, u, u_prev)
        cost = tracking_cost(u, ys[:, list(self.reference.channels)], r, self.Q, self.R)
        return float(cost), ys

    def plan(self, x0: Any, reference: Any, u_prev: Any | None = None, u_init: Any | None = None,
             *, warm_start: dict[str, np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Locally optimal inputs from state ``x0``.

        Parameters
        ----------
        x0 : array_like, shape (n,)
            True state at the current sample.
        reference : array_like, shape (N, p_tracked), or Reference
            Targets of ``y_k … y_{k+N-1}``.
        u_prev : array_like, shape (m,), optional
            Input held before the first sample (default 0).
        u_init : array_like, shape (N, m), optional
            Initial input guess (default: the centre of the input box), clipped to the bounds;
            the initial states are its rollout (a consistent multiple-shooting start).
        warm_start : dict, optional
            ``{"w": ..., "lam_x": ..., "lam_g": ...}`` primal/dual start of a warm solve
            (the receding-horizon loop passes the shifted previous solution).

        Returns
        -------
        u_plan : ndarray, shape (N, m)
        y_plan : ndarray, shape (N, p)
            Outputs of the true simulator under ``u_plan``.
        """
        x0, r, u_prev = self._check_plan_args(x0, reference, u_prev)
        N, m = self.horizon, self.input_dim
        warm = warm_start is not None
        if warm:
            w0, lam_x, lam_g = warm_start["w"], warm_start["lam_x"], warm_start["lam_g"]
        else:
            if u_init is None:
                u_init = np.tile(self.input_centre, (N, 1))
            u_init = as_finite_array(u_init, "u_init")
            if u_init.shape != (N, m):
                raise DimensionError(f"u_init must have shape ({N}, {m}), got {u_init.shape}")
            u_init = np.clip(u_init, self.input_low, self.input_high)
            xs, _ = self._rollout(x0, u_init, u_prev)
            w0 = np.empty(self._lbw.shape[0])
            w0[self._u_idx] = u_init.reshape(-1)
            w0[self._x_idx] = xs[1:].reshape(-1)
            lam_x, lam_g = np.zeros_like(w0), np.zeros(self._ng)
        solver = self._nlp_solver(warm)
        start = time.perf_counter()
        sol = solver(x0=w0, lam_x0=lam_x, lam_g0=lam_g, lbx=self._lbw, ubx=self._ubw,
                     lbg=0.0, ubg=0.0, p=np.concatenate([x0, u_prev, r.reshape(-1)]))
        elapsed = time.perf_counter() - start
        stats = solver.stats()
        w = np.array(sol["x"]).reshape(-1)
        u = np.clip(w[self._u_idx].reshape(N, m), self.input_low, self.input_high)
        cost, ys = (self._true_cost(x0, u, u_prev, r) if np.all(np.isfinite(u))
                    else (np.inf, None))
        fallback = False
        if warm:
            u_shift = np.clip(w0[self._u_idx].reshape(N, m), self.input_low, self.input_high)
            cost_shift, ys_shift = self._true_cost(x0, u_shift, u_prev, r)
            if not cost <= cost_shift:  # also when the solve returned NaN
                u, ys, cost, fallback = u_shift, ys_shift, cost_shift, True
                w = w0
        if ys is None:
            from ddcontrol.baselines.errors import SolverFailedError

            raise SolverFailedError(f"CasADi oracle: {stats.get('return_status')}")
        self._last_solution = {"w": w, "lam_x": np.array(sol["lam_x"]).reshape(-1),
                               "lam_g": np.array(sol["lam_g"]).reshape(-1)}
        self.last_stats = {"status": stats.get("return_status"),
                           "success": bool(stats.get("success")),
                           "iterations": int(stats.get("iter_count", -1)),
                           "solve_time_s": elapsed, "warm": warm, "cost": cost,
                           "fallback": fallback}
        return u, ys.copy()

    # -- receding horizon -------------------------------------------------------------------------
    def _shifted(self, sol: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The previous primal-dual solution advanced by one sample (last block repeated)."""
        N, m, n = self.horizon, self.input_dim, self.dynamics.state_dim
        out = {}
        for key in ("w", "lam_x"):
            v = sol[key]
            U = v[self._u_idx].reshape(N, m)
            X = v[self._x_idx].reshape(N - 1, n) if N > 1 else np.zeros((0, n))
            U = np.vstack([U[1:], U[-1:]])
            if N > 1:
                X = np.vstack([X[1:], X[-1:]])
            s = np.empty_like(v)
            s[self._u_idx] = U.reshape(-1)
            s[self._x_idx] = X.reshape(-1)
            out[key] = s
        lg = sol["lam_g"].reshape(N - 1, n) if N > 1 else np.zeros((0, n))
        out["lam_g"] = (np.vstack([lg[1:], lg[-1:]]) if N > 1 else lg).reshape(-1)
        out["w"][self._u_idx] = np.clip(out["w"][self._u_idx], np.tile(self.input_low, N),
                                        np.tile(self.input_high, N))
        return out

    def _reset(self, y0: np.ndarray, info: dict[str, Any] | None) -> None:
        super()._reset(y0, info)
        self._last_solution = None

    def _warm_start_kwargs(self) -> dict[str, Any]:
        if getattr(self, "_last_solution", None) is None:
            return {}
        return {"warm_start": self._shifted(self._last_solution)}

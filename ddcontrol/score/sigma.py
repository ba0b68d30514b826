"""Choose the projection σ of a trained model from held-out data (no simulator, no hand tuning).

The σ of the projection v(x) = D(x, σ) trades sharpness (small σ: v is close to the nearest-point
projection, if the network learned it there) against reliability (a learned denoiser is poor
where its training σ had little weight, and a large σ pulls towards the data's bulk). The data
can arbitrate: for held-out windows, pin what a plan pins (the measured past and the future
inputs), let the projection at σ fill in the future outputs, and compare with the outputs that
were actually measured. :func:`select_sigma` scores each σ of a grid by that held-out
conditioned prediction error, ‖y_pred − y‖ / ‖y‖ (physical units, the replay deviation's scale;
the median over the windows), and returns the σ whose worst score among itself and its grid
neighbours is least (:func:`pick_sigma`: a σ inside a good basin, not at a cliff's edge).

Training stores a selection in the checkpoint (:func:`auto_sigma_selection_windows`), and
``sigma="auto"`` uses it. Its criterion (:data:`AUTO_CRITERION`) adds to that prediction error
the tracking error of plans that follow each window's own future outputs, averages over the
windows and uses the same robust rule, at the T_ini and weights the tracker uses on the system.
On the closed-loop suite (``benchmarks/bench_sigma.py``, 4 systems x 3 seeds) it stays within
5 % of the best σ of a sweep 0.02-0.3 on every model; see that benchmark's results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._deprecation import renamed_keywords
from ddcontrol._validation import as_finite_array, check_positive_int
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.manifold import BehaviorManifold
from ddcontrol.solvers import Problem
from ddcontrol.solvers.conditioned import ConditionedDRGD

__all__ = ["SIGMA_GRID", "SigmaSelection", "conditioned_prediction",
           "conditioned_prediction_error", "select_sigma", "select_sigma_windows", "store_sigma",
           "resolve_sigma", "auto_sigma_selection", "auto_sigma_selection_windows",
           "auto_criterion", "system_rule",
           "AUTO_CRITERION", "AUTO_PLAN", "AUTO_STATISTIC", "AUTO_RULE", "AUTO_WINDOWS",
           "AUTO_WINDOWS_AUTOGRAD",
           "conditioned_plan", "plan_tracking_error", "pick_sigma",
           "criterion_name", "STATISTICS", "RULES"]

SIGMA_GRID = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)
"""Default candidate σ (normalised units), log-spaced over 0.02-0.3."""


@dataclass
class SigmaSelection:
    """Result of :func:`select_sigma`.

    Attributes
    ----------
    sigma : float
        The selected σ (normalised units).
    grid : tuple of float
        The candidates.
    errors : tuple of float
        The criterion per candidate (dimensionless): the statistic over the held-out windows of
        the relative conditioned prediction error, plus the plan's tracking error when the
        criterion has the plan term.
    past_length : int
        T_ini pinned in the held-out windows (also ``t_ini``; the name stored in checkpoints).
    windows : int
        Held-out windows used.
    criterion : str
        Its name (:func:`criterion_name`).
    prediction_errors, plan_errors : tuple of float, optional
        With the plan term: the statistic of each of the two terms alone, per candidate.
    """

    sigma: float
    grid: tuple[float, ...]
    errors: tuple[float, ...]
    past_length: int
    windows: int
    criterion: str = "conditioned-median-robust"
    prediction_errors: tuple[float, ...] | None = None
    plan_errors: tuple[float, ...] | None = None

    @property
    def t_ini(self) -> int:
        """T_ini pinned in the held-out windows (``past_length``)."""
        return self.past_length

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the form stored in checkpoints)."""
        out = {"sigma": self.sigma, "grid": list(self.grid), "errors": list(self.errors),
               "past_length": self.past_length, "windows": self.windows,
               "criterion": self.criterion}
        if self.plan_errors is not None:
            out["prediction_errors"] = list(self.prediction_errors or ())
            out["plan_errors"] = list(self.plan_errors)
        return out


def _initial_guess(x: Tensor, t_ini: int, m: int) -> Tensor:
    """Future outputs unknown: hold the last pinned output (zero, the data mean, without past)."""
    x0 = x.clone()
    if t_ini:
        x0[:, t_ini:, m:] = x[:, t_ini - 1: t_ini, m:]
    else:
        x0[:, :, m:] = 0.0
    return x0


@renamed_keywords(past_length="t_ini")
def conditioned_prediction(denoiser: Any, windows: Tensor, sigma: float, *, input_dim: int,
                           t_ini: int, iterations: int = 20, sigma_start: float = 0.3,
                           damping: float = 0.05, jacobian_every: int = 4) -> Tensor:
    """The model's future outputs for the past and future inputs of ``windows``, (H, L, C).

    ``windows`` (H, L, C) are normalised; the past rows (the first ``t_ini``; ``past_length=``
    is its deprecated name) and every future input are pinned, the
    future outputs start at a hold of the last past output (the data mean without a past) and
    ``iterations`` Gauss-Newton pulls (σ annealed from ``max(sigma_start, sigma)`` to ``sigma``
    over the first half) move them onto the manifold. The given future outputs are not used.
    The Jacobian rows of the pinned coordinates are refreshed every ``jacobian_every``
    iterations (a chord method: 4 made it about 3x faster with the same errors to 3 digits on
    the benchmark models).
    """
    m, t = input_dim, t_ini
    mask = torch.zeros(windows.shape[1:], dtype=torch.bool, device=windows.device)
    mask[:t] = True
    mask[t:, :m] = True
    start = max(sigma_start, sigma)
    anneal = ({"sigma_start": start, "anneal_iterations": iterations // 2}
              if start > sigma else {})
    zero = lambda z: torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)  # noqa: E731
    solver = ConditionedDRGD(mask, windows, step_size=1.0, damping=damping,
                             max_iterations=iterations, min_gradient_norm=0.0,
                             record_history=False, jacobian_every=jacobian_every, **anneal)
    problem = Problem(BehaviorManifold(denoiser, sigma), zero, torch.zeros_like)
    with torch.no_grad():
        x0 = _initial_guess(windows, t, m)
    out = solver.run(problem, initial_point=x0).point
    out[:, mask] = windows[:, mask]
    return out


@renamed_keywords(past_length="t_ini")
def conditioned_prediction_error(denoiser: Any, windows: Tensor, sigma: float, *,
                                 input_dim: int, t_ini: int, std: Tensor,
                                 mean: Tensor, iterations: int = 20,
                                 sigma_start: float = 0.3, damping: float = 0.05) -> Tensor:
    """Per-window relative error of the outputs the projection at ``sigma`` predicts, (H,).

    See :func:`conditioned_prediction`; the error is ‖y_pred − y‖ / ‖y‖ over the future
    outputs, in physical units (``std``, ``mean``: (C,) tensors of the normalisation).
    """
    m, t = input_dim, t_ini
    pred = conditioned_prediction(denoiser, windows, sigma, input_dim=m, t_ini=t,
                                  iterations=iterations, sigma_start=sigma_start,
                                  damping=damping)
    y_std, y_mean = std[m:], mean[m:]
    err = ((pred[:, t:, m:] - windows[:, t:, m:]) * y_std).flatten(1).norm(dim=1)
    ref = (windows[:, t:, m:] * y_std + y_mean).flatten(1).norm(dim=1)
    return err / ref.clamp_min(1e-12)


@renamed_keywords(past_length="t_ini")
def conditioned_plan(denoiser: Any, windows: Tensor, sigma: float, *, input_dim: int,
                     t_ini: int, std: Tensor, mean: Tensor, Q: float = 1.0, R: float = 0.01,
                     iterations: int = 60, sigma_start: float = 0.3, damping: float = 0.05,
                     momentum: float = 0.5, jacobian_every: int = 4) -> Tensor:
    """Plans (H, L, C) that track the future outputs of ``windows`` from their measured past.

    The tracker's problem with a reference every window can reach (its own future outputs,
    reached by its own future inputs): the first ``t_ini`` rows of ``windows`` (H, L, C,
    normalised) pinned, cost Q‖y − r‖² + R‖u‖² in physical units (``std``, ``mean``: the
    normalisation) over the future rows, DRGD on the pinned slice of the manifold at ``sigma``
    (step 1/L of the cost, heavy-ball ``momentum``, σ annealed from ``max(sigma_start,
    sigma)`` over the first half of ``iterations``), started from a hold of the last past
    sample. A large σ pulls plans towards the data's bulk and they fall short of the reference;
    that shortfall is what the plan term of :func:`select_sigma_windows` measures.
    """
    m, t = input_dim, t_ini
    length, channels = windows.shape[1:]
    weight = torch.zeros(length, channels, dtype=windows.dtype, device=windows.device)
    weight[t:, m:] = Q * std[m:] ** 2
    weight[t:, :m] = R * std[:m] ** 2
    target = windows.clone()
    target[:, :, :m] = -mean[:m] / std[:m]  # zero physical input
    mask = torch.zeros(windows.shape[1:], dtype=torch.bool, device=windows.device)
    mask[:t] = True
    start = max(sigma_start, sigma)
    anneal = ({"sigma_start": start, "anneal_iterations": iterations // 2}
              if start > sigma else {})
    cost = lambda z: (weight * (z - target) ** 2).flatten(1).sum(1)  # noqa: E731
    grad = lambda z: 2.0 * weight * (z - target)  # noqa: E731
    lip = 2.0 * float(weight.max())
    solver = ConditionedDRGD(mask, windows, step_size=1.0 / max(lip, 1e-12), momentum=momentum,
                             damping=damping, max_iterations=iterations, min_gradient_norm=0.0,
                             record_history=False, jacobian_every=jacobian_every, **anneal)
    problem = Problem(BehaviorManifold(denoiser, sigma), cost, grad)
    with torch.no_grad():
        x0 = windows.clone()
        if t:
            x0[:, t:] = windows[:, t - 1: t]
        else:
            x0[:] = 0.0
    out = solver.run(problem, initial_point=x0).point.detach()
    out[:, mask] = windows[:, mask]
    return out


@renamed_keywords(past_length="t_ini")
def plan_tracking_error(denoiser: Any, windows: Tensor, sigma: float, *, input_dim: int,
                        t_ini: int, std: Tensor, mean: Tensor, Q: float = 1.0, R: float = 0.01,
                        iterations: int = 60) -> Tensor:
    """Per-window relative tracking error ‖y_plan − r‖ / ‖r‖ of :func:`conditioned_plan`'s
    plans (physical units; r the windows' own future outputs), (H,)."""
    m, t = input_dim, t_ini
    plan = conditioned_plan(denoiser, windows, sigma, input_dim=m, t_ini=t, std=std, mean=mean,
                            Q=Q, R=R, iterations=iterations)
    y_std, y_mean = std[m:], mean[m:]
    err = ((plan[:, t:, m:] - windows[:, t:, m:]) * y_std).flatten(1).norm(dim=1)
    ref = (windows[:, t:, m:] * y_std + y_mean).flatten(1).norm(dim=1)
    return err / ref.clamp_min(1e-12)


STATISTICS = ("median", "mean")
"""How :func:`select_sigma_windows` sums up the per-window errors at one σ."""
RULES = ("robust", "argmin", "interior")
"""How :func:`select_sigma_windows` picks σ from the errors on the grid (:func:`pick_sigma`)."""


def criterion_name(statistic: str, rule: str, plan: bool = False) -> str:
    """The name a selection records for its criterion (e.g. ``conditioned-plan-median-robust``;
    ``plan``: with the plan term)."""
    return f"conditioned-{'plan-' if plan else ''}{statistic}-{rule}"


def pick_sigma(errors: Any, rule: str = "robust") -> int:
    """Index of the chosen σ on a grid sorted ascending, from the error at each grid point.

    ``argmin``: the least error. ``robust``: the least error over the grid point and its two
    neighbours (the worst of the three): a σ inside a good basin rather than at the edge of a
    cliff, where the closed loop is fragile (on the double pendulum, seed 0, the mean errors at
    σ = 0.1 / 0.15 / 0.2 were 0.041 / 0.038 / 0.084, the least at 0.15 next to the jump, and
    the closed loop cost 1.01x / 1.33x / 5.8x the best σ's; ``benchmarks/bench_sigma.py``).
    ``interior``: the robust rule over the grid points with both neighbours only (a point at
    the end of the grid has one, so a flat criterion there cannot show a basin; ``robust``
    where no interior window is finite, as on a grid of one or two points). The linear
    systems' rule (``SystemDefaults.sigma_rule``), not the generic one: on the σ sweep's 12
    models it picks within 1 % of the best closed-loop σ on every one (the robust rule: within
    3.9 %), and 0.2 instead of 0.3 on the linear systems, whose finite-horizon plans are then
    within 1.2 % of the exact optimum instead of 2.6-4.6 %; but on the paper unicycle's model
    0.2 replays 2.8x worse than the robust rule's 0.3, and on the unicycle's closed loop 0.2
    cost more than 0.3 (``bench_sigma.py --criteria``,
    ``conditioned_prediction_linear_sigma.json``).
    Ties go to the larger σ (the more conservative projection).
    """
    err = np.asarray(errors, dtype=float)
    err = np.where(np.isnan(err), np.inf, err)  # a diverged prediction counts as the worst
    if rule in ("robust", "interior"):
        worst = np.array([err[max(0, i - 1): i + 2].max() for i in range(len(err))])
        if rule == "interior" and np.isfinite(worst[1:-1]).any():
            worst[[0, -1]] = np.inf
        err = worst
    elif rule != "argmin":
        raise ConfigurationError(f"rule must be one of {RULES}, got {rule!r}")
    if not np.isfinite(err).any():
        return len(err) - 1
    return int(np.flatnonzero(err <= err.min() * (1 + 1e-9))[-1])


@renamed_keywords(past_length="t_ini")
def select_sigma_windows(denoiser: Any, windows: Any, *, input_dim: int,
                         t_ini: int = 0, mean: Any = None, std: Any = None,
                         grid: tuple[float, ...] = SIGMA_GRID, iterations: int = 20,
                         max_windows: int = 128, seed: int = 0,
                         device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32, statistic: str = "median",
                         rule: str = "robust", plan: tuple[float, float] | None = None,
                         plan_iterations: int = 60) -> SigmaSelection:
    """:func:`select_sigma` on normalised held-out windows (H, L, m + p) and a bare denoiser.

    ``mean``/``std`` (m + p,) are the normalisation (identity if omitted). The error at each σ
    of the (sorted) grid is the ``statistic`` over the windows of the relative conditioned
    prediction error (``median``: the typical window, insensitive to the few windows with
    near-zero outputs or a diverged solve that dominate the ``mean`` at small σ); σ is picked
    from them by ``rule`` (:func:`pick_sigma`).

    ``plan=(Q, R)`` adds to each window's error the relative tracking error of the plan that
    tracks the window's own future outputs with the tracker's weights
    (:func:`plan_tracking_error`, ``plan_iterations`` iterations). The true tracking error of a
    plan is at most its predicted tracking error plus the model's error on the plan's inputs
    (triangle inequality); the held-out prediction error stands for the second term, the plan
    measures the first, which grows with σ as plans are pulled to the data's bulk.
    ``t_ini``: the measured past pinned with the inputs (``past_length=`` is its deprecated name).
    """
    w = as_finite_array(windows, "windows", ndim=3)
    h, length, channels = w.shape
    m = check_positive_int(input_dim, "input_dim")
    if m >= channels:
        raise DimensionError(f"input_dim {m} leaves no output channel of {channels}")
    t = check_positive_int(t_ini, "t_ini", allow_zero=True)
    if t >= length:
        raise DimensionError(f"t_ini {t} leaves no future in windows of {length} steps")
    grid = tuple(sorted(float(s) for s in grid))
    if not grid or any(not (s > 0 and np.isfinite(s)) for s in grid):
        raise ConfigurationError(f"grid must hold positive finite σ values, got {grid}")
    if statistic not in STATISTICS:
        raise ConfigurationError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if rule not in RULES:
        raise ConfigurationError(f"rule must be one of {RULES}, got {rule!r}")
    check_positive_int(iterations, "iterations")
    k = check_positive_int(max_windows, "max_windows")
    if h > k:
        w = w[np.sort(np.random.default_rng(seed).choice(h, size=k, replace=False))]
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
    x = as_t(w)
    mean_t = as_t(np.zeros(channels) if mean is None else mean)
    std_t = as_t(np.ones(channels) if std is None else std)
    if mean_t.shape != (channels,) or std_t.shape != (channels,):
        raise DimensionError(f"mean and std must have shape ({channels},)")
    if plan is not None:
        q, r = (float(v) for v in plan)
        if not (q > 0 and r >= 0 and np.isfinite(q) and np.isfinite(r)):
            raise ConfigurationError(f"plan weights (Q, R) must be Q > 0, R >= 0, got {plan}")
        check_positive_int(plan_iterations, "plan_iterations")
    reduce = (lambda e: float(np.median(e))) if statistic == "median" else (  # noqa: E731
        lambda e: float(np.mean(e)))
    as_np = lambda e: torch.nan_to_num(e, nan=np.inf).double().cpu().numpy()  # noqa: E731
    errors, pred_errors, plan_errors = [], [], []
    for s in grid:
        e = as_np(conditioned_prediction_error(denoiser, x, s, input_dim=m, t_ini=t,
                                               std=std_t, mean=mean_t, iterations=iterations))
        if plan is not None:
            ep = as_np(plan_tracking_error(denoiser, x, s, input_dim=m, t_ini=t, std=std_t,
                                           mean=mean_t, Q=q, R=r, iterations=plan_iterations))
            pred_errors.append(reduce(e))
            plan_errors.append(reduce(ep))
            e = e + ep
        errors.append(reduce(e))
    best = pick_sigma(errors, rule)
    return SigmaSelection(sigma=grid[best], grid=grid, errors=tuple(errors), past_length=t,
                          windows=int(x.shape[0]),
                          criterion=criterion_name(statistic, rule, plan is not None),
                          prediction_errors=tuple(pred_errors) if plan is not None else None,
                          plan_errors=tuple(plan_errors) if plan is not None else None)


@renamed_keywords(past_length="t_ini")
def select_sigma(model: Any, held_out: Any, *, t_ini: int | None = None,
                 grid: tuple[float, ...] = SIGMA_GRID, iterations: int = 20,
                 max_windows: int = 128, seed: int = 0, statistic: str = "median",
                 rule: str = "robust", plan: tuple[float, float] | None = None,
                 plan_iterations: int = 60) -> SigmaSelection:
    """Pick the projection σ of a trained model from held-out trajectories.

    Parameters
    ----------
    model : TrainedModel
        The denoiser, its normaliser and window length.
    held_out : TrajectoryDataset
        Trajectories the model was not trained on (e.g. the validation split).
    t_ini : int, optional
        T_ini pinned with the inputs; default a third of the window (the measured past that
        identifies the state, as the tracker conditions on it). ``past_length=`` is its
        deprecated name.
    grid : tuple of float
        Candidate σ (normalised units), default 0.02-0.3.
    iterations : int
        Gauss-Newton pulls per prediction.
    max_windows : int
        Held-out windows used (a seeded subsample).
    statistic, rule, plan, plan_iterations
        The criterion (:func:`select_sigma_windows`, :func:`pick_sigma`).

    Returns
    -------
    SigmaSelection
    """
    length = model.window_length
    t = length // 3 if t_ini is None else t_ini
    stride = max(1, length // 2)
    if hasattr(model, "model_windows"):  # the model's frame (canonical with a symmetry)
        windows = model.model_windows(held_out, stride)
    else:
        windows = model.normalizer.normalize(held_out.windows(length, stride))
    device = next(iter(model.denoiser.parameters())).device if hasattr(
        model.denoiser, "parameters") else "cpu"
    return select_sigma_windows(model.denoiser, windows, input_dim=model.input_dim,
                                t_ini=t, mean=model.normalizer.mean,
                                std=model.normalizer.std, grid=grid, iterations=iterations,
                                max_windows=max_windows, seed=seed, device=device,
                                statistic=statistic, rule=rule, plan=plan,
                                plan_iterations=plan_iterations)


AUTO_PLAN = True
"""Whether :func:`auto_sigma_selection` adds the plan term (:func:`select_sigma_windows`)."""
AUTO_STATISTIC = "mean"
"""How :func:`auto_sigma_selection` sums up the per-window errors (:data:`STATISTICS`)."""
AUTO_RULE = "robust"
"""How :func:`auto_sigma_selection` picks σ from them (:func:`pick_sigma`)."""
AUTO_WINDOWS = 128
"""Held-out windows :func:`auto_sigma_selection` uses."""
AUTO_CRITERION = criterion_name(AUTO_STATISTIC, AUTO_RULE, AUTO_PLAN)
"""Name of the criterion :func:`auto_sigma_selection` uses (stored with the selection, so that a
benchmark can tell a selection made by an older criterion).

Why this one (``benchmarks/bench_sigma.py --criteria``: 8 candidates, the mean or median of the
per-window errors, the argmin or robust rule, with or without the plan term, against the
closed-loop σ sweep of 12 models, 4 systems x 3 seeds): the held-out prediction error alone
picked σ within 5 % of the sweep's best closed loop on 11 of 12 models (the double pendulum's
seed 1 at 1.07-1.10x), because it keeps falling as σ grows on models whose plans a large σ pulls
short of the reference; with the plan term, the mean and the robust rule picked within 5 % on
all 12 (worst 1.039x), and on 96.5-100 % of random 64-window subsets. This is a choice made on
that benchmark's models (nothing fitted to them but the choice among the 8)."""


def _tracker_defaults(model: Any) -> tuple[int, float, float]:
    """(T_ini, Q, R) the tracker uses on the model's system by default (the generic weights for a
    system without its own settings; T_ini a third of the window then, or when the system's
    does not fit the window)."""
    from ddcontrol.tracking.defaults import SYSTEM_DEFAULTS, system_defaults

    length = int(model.window_length)
    env_id = getattr(model, "env_id", None)
    own = SYSTEM_DEFAULTS.get(env_id or "")
    t = own.t_ini if own is not None and 0 < own.t_ini < length else length // 3
    d = system_defaults(env_id)
    return t, float(d.Q), float(d.R)


def system_rule(model: Any) -> str:
    """The rule that picks σ for the model's system (``SystemDefaults.sigma_rule``;
    :data:`AUTO_RULE` for a system without its own settings)."""
    from ddcontrol.tracking.defaults import system_defaults

    return system_defaults(getattr(model, "env_id", None)).sigma_rule


def auto_criterion(model: Any) -> str:
    """The criterion name training's selection records on the model's system
    (:data:`AUTO_CRITERION` with the system's rule)."""
    return criterion_name(AUTO_STATISTIC, system_rule(model), AUTO_PLAN)


AUTO_WINDOWS_AUTOGRAD = 32
"""Held-out windows :func:`auto_sigma_selection` uses on a denoiser without explicit VJPs
(:meth:`~ddcontrol.score.precond.BehaviorDenoiser.frozen` None, e.g. the U-Net), whose Jacobian
rows go through autograd: on the double pendulum's U-Net (2,000 steps, one thread) 8 / 32
windows took 50 / 153 s, so 128 would add about 10 minutes to the end of training; the residual
MLP's explicit VJPs do 128 in 17-40 s."""


def _explicit_vjps(denoiser: Any) -> bool:
    frozen = getattr(denoiser, "frozen", None)
    return frozen is not None and frozen(0.1) is not None


def auto_sigma_selection_windows(model: Any, windows: Any, *, t_ini: int | None = None,
                                 max_windows: int | None = None, seed: int = 0
                                 ) -> SigmaSelection:
    """The selection training stores in the checkpoint (what ``sigma="auto"`` then uses), on
    held-out ``windows`` (N, L, C) in the model's frame and normalised units (training's
    validation windows).

    :func:`select_sigma_windows` with the T_ini and the cost weights (Q, R) the tracker uses on
    the model's system by default (:mod:`ddcontrol.tracking.defaults`; a third of the window
    and the generic weights otherwise) and the criterion :data:`AUTO_CRITERION` (the plan
    term, the mean over a seeded subsample of ``max_windows`` windows, and the system's rule:
    :func:`system_rule`, the robust one unless the system says otherwise).
    ``max_windows`` defaults to :data:`AUTO_WINDOWS`, or :data:`AUTO_WINDOWS_AUTOGRAD` for a
    denoiser without explicit VJPs.
    """
    if max_windows is None:
        max_windows = AUTO_WINDOWS if _explicit_vjps(model.denoiser) else AUTO_WINDOWS_AUTOGRAD
    default_t, q, r = _tracker_defaults(model)
    t = default_t if t_ini is None else t_ini
    device = next(iter(model.denoiser.parameters())).device if hasattr(
        model.denoiser, "parameters") else "cpu"
    w = windows.detach().cpu().numpy() if isinstance(windows, Tensor) else windows
    return select_sigma_windows(model.denoiser, w, input_dim=model.input_dim, t_ini=t,
                                mean=model.normalizer.mean, std=model.normalizer.std,
                                max_windows=max_windows, seed=seed, device=device,
                                statistic=AUTO_STATISTIC, rule=system_rule(model),
                                plan=(q, r) if AUTO_PLAN else None)


def auto_sigma_selection(model: Any, held_out: Any, *, t_ini: int | None = None,
                         max_windows: int | None = None, seed: int = 0) -> SigmaSelection:
    """:func:`auto_sigma_selection_windows` on the trajectories ``held_out`` (those training
    held out), windowed as training windows its validation data (stride and evenly spread
    subsample of the model's training configuration): the σ a training run stores."""
    cfg = getattr(model, "config", {}) or {}
    stride = int(cfg.get("stride", 1))
    if hasattr(model, "model_windows"):  # the model's frame (canonical with a symmetry)
        w = model.model_windows(held_out, stride)
    else:
        w = model.normalizer.normalize(held_out.windows(model.window_length, stride))
    cap = int(cfg.get("val_windows", 2048))
    if w.shape[0] > cap:  # the evenly spread subsample of training's validation windows
        w = w[np.linspace(0, w.shape[0] - 1, cap).astype(int)]
    return auto_sigma_selection_windows(model, w, t_ini=t_ini, max_windows=max_windows,
                                        seed=seed)


def store_sigma(path_or_dir: str | os.PathLike, selection: SigmaSelection) -> Path:
    """Write ``selection`` into a checkpoint (entry ``sigma_selection``), atomically.

    ``load_model`` then exposes it as ``model.sigma`` and ``model.sigma_selection``; the rest of
    the checkpoint is unchanged.
    """
    from ddcontrol.score.checkpoint import read_checkpoint, resolve_checkpoint, save_checkpoint

    if not isinstance(selection, SigmaSelection):
        raise TypeError(f"selection must be a SigmaSelection, got {type(selection).__name__}")
    path = resolve_checkpoint(path_or_dir)
    payload = read_checkpoint(path)
    payload["sigma_selection"] = selection.as_dict()
    return save_checkpoint(path, payload)


def _stored_sigma(stored: dict[str, Any], rule: str) -> float:
    """A stored selection's σ under ``rule``: re-picked from its stored errors when it was made
    with another rule (a checkpoint written before its system's rule changed)."""
    made_with = str(stored.get("criterion", "")).rsplit("-", 1)[-1]
    grid, errors = stored.get("grid"), stored.get("errors")
    if made_with != rule and made_with in RULES and grid and errors and len(grid) == len(errors):
        return float(grid[pick_sigma(errors, rule)])
    return float(stored["sigma"])


@renamed_keywords(past_length="t_ini")
def resolve_sigma(model: Any, dataset: Any = None, *, t_ini: int | None = None) -> float:
    """σ for ``sigma="auto"``: the checkpoint's stored selection (re-picked from its stored errors
    with the system's rule if it was made with another), else one made now (with ``t_ini``
    pinned; ``past_length=`` is its deprecated name).

    Without a stored σ the selection runs on the trajectories training held out of ``dataset``
    (the same split and seed as :func:`~ddcontrol.score.train`), or all of them when training
    held none out.

    Raises
    ------
    ConfigurationError
        No stored σ and no ``dataset`` to select one from.
    """
    stored = getattr(model, "sigma_selection", None)
    if stored is not None and stored.get("sigma") is not None:
        return _stored_sigma(stored, system_rule(model))
    if getattr(model, "sigma", None) is not None:  # a model-like object with a σ only
        return float(model.sigma)
    if dataset is None:
        raise ConfigurationError("sigma='auto' needs a checkpoint with a stored σ "
                                 "(ddcontrol.score.sigma.store_sigma) or the training dataset "
                                 "to select one from; or pass a number")
    cfg = getattr(model, "config", {}) or {}
    frac = float(cfg.get("val_fraction", 0.1))
    held = dataset
    if 0.0 < frac < 1.0 and dataset.num_trajectories >= 2:
        _, held = dataset.split(1.0 - frac, seed=int(cfg.get("seed", 0)))
    return auto_sigma_selection(model, held, t_ini=t_ini).sigma

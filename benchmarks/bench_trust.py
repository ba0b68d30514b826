"""Calibrate the model-intrinsic plan confidence (:mod:`ddcontrol.trust`) against replay (issue 13).

On four systems (mass-spring-damper, coupled masses, double pendulum, unicycle) a small model is
trained once (``--minutes`` each, cached in ``benchmarks/models/trust-<system>/``), then
``--plans`` finite-horizon plans are made from the data's initial state (T_ini = 0, the paper's
finite-horizon setting), batched: half for references in the data's range (the outputs of
held-out trajectories, reachable by construction) and half out of it, in three kinds:

* ``scaled``: a held-out trajectory's outputs scaled by 2-4 (beyond the data's outputs);
* ``step``: a step at sample 0 to 1-2x the largest output in the data (unreachable at once);
* ``speed``: a fast sine (period 3-6 samples) of in-range amplitude (speeds never seen); for
  the unicycle a straight line at 2-4x the fastest speed in the data.

Each plan is a cold start at the cheapest training window, ``--iterations`` of DRGD with input
bounds and a trust radius (the tracker's "pin" solver with nothing measured), then a refinement
(inputs pinned, 8 Gauss-Newton iterations annealed to σ 0.02: the tracker's before each system
had its own; ``--refinement system`` refines as the tracker now does, with the system's
iterations and final σ: 30 iterations ending at the plan's σ, 0.02 on the unicycle, started at
σ 0.3 with the plan's damping (``--refine-start``; 0: at the plan's σ with damping 1e-3, the
tracker's refinement before session 21)). Its inputs are
replayed in the true simulator from the true initial state; the label is ``deviation > 0.1``
(``ddcontrol.evaluate.replay``). The planning σ is chosen from held-out data by
:func:`ddcontrol.score.sigma.select_sigma`.

Reported per system: AUROC of the estimated deviation and of each component alone, recall and
false-alarm rate at the default threshold, the same per kind of reference, and the counts.
Writes ``benchmarks/results/trust.json`` and ``benchmarks/results/trust_roc.png``.

Run (the recorded result; the first four train and cache the models and the plans, about 7
minutes on one thread; the last re-measures the cached plans in 25 s)::

    export OMP_NUM_THREADS=1
    python benchmarks/bench_trust.py --systems pendulum --train-steps 2346 --reuse-plans
    python benchmarks/bench_trust.py --systems unicycle --train-steps 6000 --reuse-plans
    python benchmarks/bench_trust.py --systems msd --train-steps 2036 --reuse-plans
    python benchmarks/bench_trust.py --systems coupled --train-steps 2708 --reuse-plans
    python benchmarks/bench_trust.py --reuse-plans --early-steps 200

(the step counts are those the former ``--minutes 4`` / ``3`` budgets gave; with them the
models, plans and figures are reproduced exactly). A second set of references on the same
models, ``--reuse-plans --seed 1 --out benchmarks/results/trust_seed1.json``, checks that the
estimate was not fitted to the first set's plans.

Recorded (120 plans per system, default threshold 0.1; the estimate the tracker builds for the
system: its σ and damping, 0.01 on the linear systems and 0.05 otherwise; estimate =
max(reprediction, σ-shift), 40 reprediction pulls). The unicycle's model has 6,000 steps::

    system            plans  drifting  AUROC  recall          false alarms
    seed 0 (trust.json)
    msd               120     0        n/a    n/a             1 / 120 (0.008)
    coupled           120     1        1.000  1 / 1           1 / 119 (0.008)
    pendulum          120    23        0.978  21 / 23 (0.91)  2 / 97  (0.021)
    unicycle          120    79        0.990  75 / 79 (0.95)  0 / 41
    msd-early200      120     0        n/a    n/a             0 / 120
    coupled-early200  120    16        0.970  16 / 16         32 / 104 (0.31)
    seed 1 (trust_seed1.json)
    msd               120     0        n/a    n/a             2 / 120 (0.017)
    coupled           120     0        n/a    n/a             1 / 120 (0.008)
    pendulum          120    11        0.971  11 / 11         5 / 109 (0.046)
    unicycle          120    69        0.993  67 / 69 (0.97)  1 / 51  (0.020)

Per kind (seed 0): the unicycle in range 21 of 25 drifting plans flagged, no false alarm among
35 good ones; scaled, steps and speeds every drifting plan flagged (no good plan among the
steps and speeds). The pendulum's two misses are scaled references (deviation 0.104 and 0.106,
estimates 0.084 and 0.050); its false alarms are fast sines (2 of 19 good ones; 4 of 18 on
seed 1), where the σ-shift is high and the replay is good.

The estimate before (the reprediction alone, from 20 pulls), on the same models and plans:
seed 0: msd 3 / 120 false alarms; coupled AUROC 0.992, its one drifting plan (deviation 0.108,
reprediction 0.053, σ-shift 0.42) missed, 1 / 119 false alarms; pendulum 0.994, 21 / 23, 0 /
97; unicycle 0.974, 73 / 79, 2 / 41 (the misses in range with a reprediction of 0.001-0.04,
two of them with σ-shifts of 0.14 and 0.22 against at most 0.055 on its good plans);
coupled-early200 0.884, 16 / 16, 46 / 104. Seed 1: pendulum 0.992, 11 / 11, 2 / 109; unicycle
0.988, 65 / 69, 2 / 51; msd 1 / 120, coupled 0 / 120. Both changes were measured one at a time
on seed 0: 40 pulls instead of 20 (where the solves stop moving; 80 changes nothing) took the
unicycle to 0.980 / 73 / 0 false alarms and the system-trained pendulum (below) from 3 to 6 of
9; the maximum with the σ-shift then caught the coupled masses' plan and 2 more of the
unicycle's. The sum instead of the maximum flagged 11 of the pendulum's 97 good plans.

The linear systems' plans hardly drift (0 and 0-1 of 120: their models extrapolate within the
input bounds), so their AUROC and recall are not defined there; ``--early-steps 200`` adds, on
each linear system, a model of the same data stopped after 200 training steps
(``<system>-early200``), to measure the estimate on a linear system whose plans do drift. The
mass-spring-damper's still do not (its model's linear skip extrapolates from the first steps).
The coupled masses' do (16 of 120): all flagged, but so are 31 % of the good ones (the
σ-shift alone ranks them perfectly, AUROC 1.0, while the two-start reprediction of a
half-trained model disagrees with itself on good plans as well). Missed: the target asks for
<= 5 % false alarms. The first estimate of all (σ-disagreement + support excess +
reprediction beyond its held-out 99th percentile) scored 0.84 / 0.92 on the first models'
plans and flagged 20-26 % of the linear systems' good plans. The former replay rule (true cost
> 1.5x predicted) missed 15 of 23 and 50 of 104 plans with deviation > 0.1 and 5 of 6 and 40
of 72 replays worse than the best training window; the current rule (deviation > 0.1 or worse
than the best window) misses none by construction.

``--refinement system`` (the tracker's own refinement of finite-horizon plans; recorded in
``results/trust_system_refinement.json``, seed 1 in ``..._seed1.json``; same models). Since
session 21 the tracker starts the refinement at σ 0.3 (the plan's σ before), which makes the
plans' predictions closer to what the system does; the same plans (same solves, only the
refinement differs), before -> now::

    system            seed  drifting  AUROC          recall                     false alarms
    coupled           0      1 -> 1   1.000 -> 1.000 1 / 1 -> 1 / 1             1 / 119 -> 1 / 119
    pendulum          0      5 -> 2   0.920 -> 1.000 2 / 5 -> 2 / 2             2 / 115 -> 2 / 118
    unicycle          0     53 -> 47  0.998 -> 0.998 52 / 53 -> 46 / 47 (0.98) 2 / 67 -> 2 / 73
    coupled-early200  0     77 -> 77  0.685 -> 0.684 0 / 77 -> 0 / 77           0 / 43 -> 0 / 43
    pendulum          1      6 -> 6   1.000 -> 1.000 6 / 6 -> 6 / 6             1 / 114 -> 1 / 114
    unicycle          1     49 -> 43  0.997 -> 0.988 47 / 49 -> 37 / 43 (0.86) 1 / 71 -> 2 / 77
    msd (both seeds), coupled (seed 1): no drifting plan, 1 false alarm of 120 (before 1-2)

Replay deviation of the plans, 90th percentile / worst, before -> now: double pendulum seed 0
scaled references 0.111 / 0.140 -> 0.080 / 0.085 (its three drifting ones, deviations
0.110-0.140, were the misses before: refined at the plan's σ from outputs the cost had pulled
beyond the data, the refinement stopped near its start), steps 0.039 / 0.047 -> 0.030 / 0.042;
unicycle seed 0 scaled 0.959 / 2.25 -> 0.225 / 0.379, steps 1.31 / 1.39 -> 0.787 / 0.835;
seed 1 scaled 0.237 / 0.286 -> 0.034 / 0.078, steps (median) 0.584 -> 0.153; in-range plans
unchanged to the third digit. Fast sines beyond the unicycle's speeds, which every refinement
leaves far off (all 20 drift, all flagged), went from 4.6 / 7.5 to 7.8 / 15.9 on seed 1.

Missed now: the unicycle's seed-1 steps that the new refinement brought from deviations of
0.26-0.58 to 0.10-0.17 (4 of 18 drifting steps, estimates 0.034-0.074) and two in-range plans
missed before as well (0.148, 0.151; estimates 0.085, 0.075): 0.86 against the 90 % target.
The reprediction sees half or less of these plans' deviation: both its solves and the plan
agree with each other (the spread of 5 starts, neutral and the 4 nearest training windows, is
at most 0.003 on the pendulum's scaled plans) and are wrong together, and the σ-shift,
support and combinations of the terms (2x or 1.5x the reprediction, the reprediction plus the
σ-shift) do not separate them without false alarms elsewhere; nor does the reprediction made
differently (unicycle seed 1, recall and false alarms): at the refinement's final σ 0.02
instead of the plan's 0.03, 38 / 43 and 4 / 77; at σ 0.1, 34 / 43 and 0 / 77; at σ 0.3, 41 / 43
and 5 / 77 (and 11 / 114 of the double pendulum's good plans flagged); with damping 0.01,
32 / 43 and 6 / 77; with 80 pulls, 35 / 43 and 0 / 77. Scaling the estimate by the median
ratio of true to estimated error on held-out windows (a conformal-style calibration from the
data) gave 41 / 43 with 6 / 77 false alarms; its 90th percentile flagged every plan of the
unicycle (its held-out windows begin anywhere in a trajectory, where the inputs alone, with no
measured past, do not determine the outputs: median error 0.75). The early coupled model's
drifting plans (refined at its σ 0.3, its own, wrong, predictions) stay unflagged; probes at
0.45 and 0.6 instead of 0.2 did not rank them better (AUROC 0.687, 0.612).

Both together, every model trained and every plan refined as the tracker's defaults do
(``--system-training --refinement system``, ``results/trust_system_training_refinement.json``):
the trained models' plans hardly drift and every drifting one is flagged (pendulum 2 of 120,
both flagged, no false alarm; coupled masses 1 of 1, none; mass-spring-damper none drifts, 1
false alarm of 120, 3 before session 21's refinement); the early-stopped ones are not: the
mass-spring-damper's 6 drifting plans all missed (AUROC 0.965), the coupled masses' 45 ranked
near chance (AUROC 0.618, 3 of 45, 2 of 75 false alarms; before: 39 drifting, 0.51, 3 of 39,
12 % false alarms). What does tell these models apart is the model, not the plan: the held-out
median conditioned prediction error at the selected σ (the selection's own sweep, stored with
the cached plans) is 0.14 and 0.23 for the early coupled models against at most 0.049 for
every trained model (the early mass-spring-damper's 0.053 and 0.028, whose plans drift
little). As a floor under every plan's estimate it would flag all the plans of those two
models (recall 100 %, false alarms 100 % where they are 0-3 % now); not done: it is a warning
about the model (train longer), which the per-plan targets cannot credit, and the checkpoint's
stored selection (a mean over windows, dominated by a few ill-posed ones: 3.0 for a trained
mass-spring-damper) cannot give it without a new held-out solve.

``--system-training`` trains each model as the tracker's default models are trained (the
system's ``SystemDefaults.train_options``: noise levels 0.015-0.5 on the linear systems and the
double pendulum) and picks σ by the system's rule; same data, references and step counts
(add ``--system-training`` to the commands above; the unicycle has no options of its own: its
row is the one above). Recorded in ``results/trust_system_training.json``::

    system            σ     drifting  AUROC  recall  false alarms
    msd               0.05   0        n/a    n/a     2 / 120
    msd-early200      0.15   3        0.997  3 / 3   4 / 117
    coupled           0.07   1        1.000  1 / 1   0 / 119
    coupled-early200  0.2   48        0.626  36 / 48 49 / 72
    pendulum          0.07   9        0.978  7 / 9   1 / 111

(before, the reprediction alone from 20 pulls: the same but coupled-early200 0.575, 44 / 48,
65 / 72, and the pendulum 0.983, 3 / 9, 0 / 111). The double pendulum's estimate ranks its
plans well but stays below the true deviation on its drifting scaled references (0.07-0.10
against 0.10-0.29): 7 of 9 flagged, short of the 90 % target; the early coupled model's
reprediction is no better than chance. The trained linear models and the early-stopped
mass-spring-damper meet the targets. The mass-spring-damper's false alarms were 1 of 120
before the σ-frozen network's fused silu: its other rounding lets one of the two reprediction
solves of one plan pass the stall bound (the stall test is a hard cut).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_closed_loop_suite import data_tag  # noqa: E402
from bench_geometry import steps_for_budget  # noqa: E402

from ddcontrol._io import atomic_write  # noqa: E402
from ddcontrol.data import TrajectoryDataset, collect, make_dynamics  # noqa: E402
from ddcontrol.evaluate.replay import DRIFT_COST_RATIO, DRIFT_DEVIATION  # noqa: E402
from ddcontrol.manifold import BehaviorManifold  # noqa: E402
from ddcontrol.score import TrainConfig, load_model, train  # noqa: E402
from ddcontrol.score.sigma import select_sigma  # noqa: E402
from ddcontrol.solvers import Problem  # noqa: E402
from ddcontrol.solvers.conditioned import ConditionedDRGD  # noqa: E402
from ddcontrol.tracking.config import TrackerConfig  # noqa: E402
from ddcontrol.tracking.defaults import GENERIC, system_defaults  # noqa: E402
from ddcontrol.tracking.refine import Refinement  # noqa: E402
from ddcontrol.tracking.tracker import DenoisingTracker  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = Path(__file__).parent / "models"
COMPONENTS = ("estimated_deviation", "residual", "sigma_shift", "reprediction", "support",
              "local_support")

# name: env, trajectories, window (= horizon), initial state, excitation, tracked channels
SYSTEMS: dict[str, dict[str, Any]] = {
    "msd": dict(env="ddcontrol/MassSpringDamper-v0", n=3000, window=30, x0=[0.5, 0.0],
                excitation=("gaussian", {"bandwidth": 1.0, "amplitude": 0.4}), channels=None,
                linear=True),
    "coupled": dict(env="ddcontrol/CoupledMasses-v0", n=3000, window=30, x0=[0.0] * 4,
                    excitation=("gaussian", {"bandwidth": 1.0, "amplitude": 0.4}),
                    channels=None, linear=True),
    "pendulum": dict(env="ddcontrol/DoublePendulum-v0", n=3000, window=40, x0=[0.0] * 4,
                     excitation=("mixed", {}), channels=None, linear=False),
    "unicycle": dict(env="ddcontrol/Unicycle-v0", n=3000, window=30, x0=[0.0] * 5,
                     excitation=("gaussian", {"bandwidth": 0.2, "amplitude": 0.6}),
                     channels=None, env_kwargs={"outputs": ["x", "y"]}, linear=False),
}


def dataset_and_model(name: str, minutes: float, steps: int | None = None,
                      folder: Path | None = None, options: dict[str, Any] | None = None
                      ) -> tuple[TrajectoryDataset, Any]:
    """Generate (once) the dataset and train (once) the model of system ``name``: ``steps``
    training steps, or as many as fit ``minutes`` (timed on a probe: fewer on a busy machine),
    with the :class:`TrainConfig` overrides ``options``. The model lives in ``folder`` (default
    ``models/trust-<name>/``, which holds the data)."""
    s = SYSTEMS[name]
    data_path = MODELS / f"trust-{name}" / "data.npz"
    folder = folder or data_path.parent
    if data_path.exists():
        data = TrajectoryDataset.load(data_path)
    else:
        exc, params = s["excitation"]
        data = collect(s["env"], s["n"], s["window"], excitation=exc, excitation_params=params,
                       initial_states=np.array(s["x0"], dtype=float), seed=0,
                       env_kwargs=s.get("env_kwargs"))
        data.save(data_path)
    if not (folder / "checkpoint.pt").exists():
        cfg = TrainConfig(out=str(folder), window=s["window"], overwrite=True, progress=False,
                          num_threads=1, val_every=0, checkpoint_every=0, **(options or {}))
        cfg.steps = steps if steps is not None else steps_for_budget(cfg, data, minutes)
        print(f"[{name}] training {cfg.steps} steps", flush=True)
        train(cfg, data)
    return data, load_model(folder, dataset=data)


def references(name: str, held: TrajectoryDataset, data: TrajectoryDataset, count: int,
               rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """``count`` references (count, N, q): half in range, the rest split over three kinds."""
    s = SYSTEMS[name]
    ch = s["channels"] if s["channels"] is not None else list(range(data.output_dim))
    n_h = s["window"]
    y_data = data.y[..., ch]
    top = np.abs(y_data).max(axis=(0, 1))                      # (q,) largest |y| per channel
    half = count // 2
    kinds = ["in-range"] * half
    refs = [held.y[i % held.num_trajectories][:, ch] for i in range(half)]
    t = np.arange(n_h)
    for j in range(count - half):
        kind = ("scaled", "step", "speed")[j % 3]
        kinds.append(kind)
        if kind == "scaled":
            base = held.y[rng.integers(held.num_trajectories)][:, ch]
            refs.append(base * rng.uniform(2.0, 4.0))
        elif kind == "step":
            level = rng.uniform(1.0, 2.0, size=len(ch)) * top * rng.choice([-1.0, 1.0],
                                                                             size=len(ch))
            refs.append(np.broadcast_to(level, (n_h, len(ch))).copy())
        elif name == "unicycle":
            dist = np.linalg.norm(np.diff(data.y[..., ch], axis=1), axis=-1).max()
            heading = rng.uniform(0, 2 * np.pi)
            speed = rng.uniform(2.0, 4.0) * dist
            refs.append(np.stack([np.cos(heading), np.sin(heading)], -1) * speed * t[:, None])
        else:
            period = rng.uniform(3.0, 6.0)
            amp = rng.uniform(0.3, 0.8) * top
            refs.append(amp * np.sin(2 * np.pi * t[:, None] / period + rng.uniform(0, 6.3)))
    return np.stack(refs), kinds


class BatchCost:
    """Tracking cost of normalised windows (B, N, m + p), one reference per plan (T_ini = 0)."""

    def __init__(self, refs: np.ndarray, mean: np.ndarray, std: np.ndarray, m: int,
                 channels: list[int], q_weight: float = 1.0, r_weight: float = 0.01) -> None:
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self.ref, self.mean, self.std = as_t(refs), as_t(mean), as_t(std)
        self.m, self.idx = m, torch.as_tensor([m + c for c in channels])
        self.q, self.r = q_weight, r_weight

    def _parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = x * self.std + self.mean
        return w[..., : self.m], w[..., self.idx] - self.ref[: x.shape[0]]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        u, e = self._parts(x)
        return self.q * (e * e).sum(dim=(-1, -2)) + self.r * (u * u).sum(dim=(-1, -2))

    def egrad(self, x: torch.Tensor) -> torch.Tensor:
        u, e = self._parts(x.detach())
        g = torch.zeros_like(x)
        g[..., : self.m] = 2.0 * self.r * u * self.std[: self.m]
        g[..., self.idx] = 2.0 * self.q * e * self.std[self.idx]
        return g

    def lipschitz(self) -> float:
        return float(max(2 * self.q * self.std[self.idx].max() ** 2,
                         2 * self.r * self.std[: self.m].max() ** 2))


def make_plans(model: Any, data: TrajectoryDataset, refs: np.ndarray, channels: list[int],
               sigma: float, iterations: int, refinement: str = "fixed",
               refine_start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Batched tracker-style plans (normalised windows (B, L, C)) for references (B, N, q), and
    the cost of the best training window (same start) for each reference (B,)."""
    m, norm = model.input_dim, model.normalizer
    cost = BatchCost(refs, norm.mean, norm.std, m, channels)
    cand = torch.as_tensor(norm.normalize(data.windows(model.window_length, data.length)),
                           dtype=torch.float32)
    with torch.no_grad():
        scores = torch.stack([BatchCost(r[None], norm.mean, norm.std, m, channels)(cand)
                              for r in refs])
    x0 = cand[scores.argmin(dim=1)].clone()
    best_cost = scores.min(dim=1).values.double().numpy()
    dyn = make_dynamics(data.metadata["env_id"], data.metadata.get("env_kwargs"))
    lo = np.full((model.window_length, model.channels), -np.inf)
    hi = np.full_like(lo, np.inf)
    lo[:, :m] = (dyn.input_low - norm.mean[:m]) / norm.std[:m]
    hi[:, :m] = (dyn.input_high - norm.mean[:m]) / norm.std[:m]
    lo_t, hi_t = (torch.as_tensor(b, dtype=torch.float32) for b in (lo, hi))
    empty = torch.zeros(model.window_length, model.channels, dtype=torch.bool)
    problem = Problem(BehaviorManifold(model.denoiser, sigma), cost, cost.egrad, lower=lo_t,
                      upper=hi_t)
    solver = ConditionedDRGD(empty, torch.zeros(empty.shape), step_size=1.0 / cost.lipschitz(),
                             damping=0.05, max_step=0.5, max_iterations=iterations,
                             min_gradient_norm=0.0, record_history=False)
    x = solver.run(problem, initial_point=x0).point
    # The refinement (the tracker's Refinement: pin the clipped inputs, pull the outputs onto
    # the manifold): "system", with the system's iterations and final σ (SystemDefaults),
    # started at the larger of refine_start and σ; "fixed", 8 iterations annealed from σ to
    # 0.02 (the tracker's before the systems had their own).
    start, damping = None, TrackerConfig.refine_damping
    if refinement == "system":
        d = system_defaults(data.metadata["env_id"])
        final, steps = (sigma if d.refine_sigma is None else d.refine_sigma), d.refine_iterations
        if refine_start:  # the tracker's since session 21: with the plan's damping
            start, damping = refine_start, d.damping
    else:
        final, steps = min(sigma, 0.02), 8
    out = Refinement(model.denoiser, sigma, final, steps, 0, m, lo_t, hi_t,
                     damping=damping, sigma_start=start)(x, None)
    return out.numpy(), best_cost


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outranks a negative, ties half)."""
    pos, neg = score[label], score[~label]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    ranks[order] = np.arange(1, len(order) + 1)
    for v in np.unique(allv):                     # average ranks of ties
        tie = np.concatenate([pos, neg]) == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-alarm and recall rates over every threshold."""
    thr = np.concatenate([[np.inf], np.sort(np.unique(score))[::-1]])
    pos, neg = max(label.sum(), 1), max((~label).sum(), 1)
    tpr = np.array([(score[label] >= t).sum() / pos for t in thr])
    fpr = np.array([(score[~label] >= t).sum() / neg for t in thr])
    return fpr, tpr


def rates(flag: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """Recall (flagged drifting) and false-alarm rate (flagged good), with counts."""
    return {"recall": float(flag[label].mean()) if label.any() else None,
            "false_alarm_rate": float(flag[~label].mean()) if (~label).any() else None,
            "drifting": int(label.sum()), "good": int((~label).sum())}


def refinement_tag(args: argparse.Namespace) -> str:
    """The plan cache's name for the refinement (none for "fixed"; the start σ unless 0)."""
    if args.refinement != "system":
        return ""
    return "-system-refinement" + (f"-start{args.refine_start:g}" if args.refine_start else "")


def run_system(name: str, args: argparse.Namespace, early_steps: int | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plans, replays and the estimate's calibration for one system's model (``early_steps``:
    a model of the same data stopped after that many training steps instead)."""
    t0 = time.perf_counter()
    s = SYSTEMS[name]
    # --system-training: the system's own training options (SystemDefaults.train_options),
    # part of the folder's name, and its σ rule.
    defaults = system_defaults(s["env"])
    options = defaults.train_options if args.system_training else {}
    folder = MODELS / ((f"trust-{name}" if early_steps is None
                        else f"trust-{name}-early{early_steps}") + data_tag(options))
    data, model = dataset_and_model(name, args.minutes,
                                    args.train_steps if early_steps is None else early_steps,
                                    folder, options)
    cfg = model.config
    train_ds, held = data.split(1.0 - float(cfg.get("val_fraction", 0.1)),
                                seed=int(cfg.get("seed", 0)))
    rng = np.random.default_rng(args.seed)
    channels = s["channels"] if s["channels"] is not None else list(range(data.output_dim))
    # The plans (the expensive part) are cached next to the model with --reuse-plans, so that
    # the estimator can be re-measured on the same plans.
    cache = folder / (f"plans-s{args.seed}-n{args.plans}-i{args.iterations}"
                      f"-{args.sigma if args.sigma is not None else 'auto'}"
                      f"{refinement_tag(args)}.npz")
    refs, kinds = references(name, held, data, args.plans, rng)
    if args.reuse_plans and cache.exists():
        z = np.load(cache, allow_pickle=False)
        sigma, plans, best_cost = float(z["sigma"]), z["plans"], z["best_cost"]
        sweep = json.loads(str(z["sweep"]))
    else:
        if args.sigma is not None:
            sigma, sweep = args.sigma, None
        else:
            rule = defaults.sigma_rule if args.system_training else "robust"
            sel = select_sigma(model, held, t_ini=0, max_windows=48, seed=args.seed, rule=rule)
            sigma, sweep = sel.sigma, sel.as_dict()
        plans, best_cost = make_plans(model, train_ds, refs, channels, sigma, args.iterations,
                                      args.refinement, args.refine_start)
        np.savez(cache, sigma=sigma, plans=plans, best_cost=best_cost, sweep=json.dumps(sweep))
    norm = model.normalizer
    phys = norm.denormalize(plans.astype(np.float64))
    dyn = make_dynamics(data.metadata["env_id"], data.metadata.get("env_kwargs"))
    u = np.clip(phys[..., : model.input_dim], dyn.input_low, dyn.input_high)
    x0 = np.repeat(np.array(s["x0"], dtype=float)[None], len(plans), axis=0)
    y_true, _ = dyn.simulate(x0, u)
    y_pred = phys[..., model.input_dim:]
    dev = (np.linalg.norm((y_pred - y_true).reshape(len(plans), -1), axis=1)
           / np.maximum(np.linalg.norm(y_true.reshape(len(plans), -1), axis=1), 1e-12))
    label = dev > DRIFT_DEVIATION
    # The replay-side drift rules on the same plans (cost weights of BatchCost: Q = 1, R = 0.01).
    e_true, e_pred = y_true[..., channels] - refs, y_pred[..., channels] - refs
    energy = 0.01 * (u ** 2).sum(axis=(1, 2))
    true_cost = (e_true ** 2).sum(axis=(1, 2)) + energy
    pred_cost = (e_pred ** 2).sum(axis=(1, 2)) + energy
    worse = true_cost > best_cost
    old_rule = (true_cost > DRIFT_COST_RATIO * pred_cost) & label
    new_rule = label | worse
    # The estimator the tracker builds for this system: the plan's σ and damping.
    trust = DenoisingTracker.default_trust(
        model, data, 0, {"sigma": sigma, "damping": defaults.damping},
        **args.trust)
    report = trust(torch.as_tensor(plans))
    kinds_arr = np.array(kinds)
    # A reprediction whose solves both stalled is NaN (the estimate falls back): ranked last.
    scores = {c: np.nan_to_num(getattr(report, c), nan=-np.inf) for c in COMPONENTS}
    out: dict[str, Any] = {
        "env_id": s["env"], "plans": len(plans), "sigma": sigma, "sigma_selection": sweep,
        "threshold": report.threshold,
        "auroc": auroc(report.estimated_deviation, label),
        **rates(report.ood, label),
        "auroc_components": {c: auroc(v, label) for c, v in scores.items()},
        "reprediction_stalled": int(np.isnan(report.reprediction).sum()),
        "auroc_in_vs_out_of_range": auroc(report.estimated_deviation, kinds_arr != "in-range"),
        "median_deviation": {k: float(np.median(dev[kinds_arr == k])) for k in set(kinds)},
        "drift_rules": {"deviation_above_0.1": int(label.sum()),
                        "replay_worse_than_best_window": int(worse.sum()),
                        "old_rule_flagged": int(old_rule.sum()),
                        "old_rule_missed_worse_than_best_window": int((worse & ~old_rule).sum()),
                        "old_rule_missed_deviation_above_0.1": int((label & ~old_rule).sum()),
                        "new_rule_flagged": int(new_rule.sum())},
        "per_kind": {}, "time_s": None,
    }
    for k in ("in-range", "scaled", "step", "speed"):
        sel_k = kinds_arr == k
        with_in = sel_k | (kinds_arr == "in-range")
        out["per_kind"][k] = {"plans": int(sel_k.sum()),
                              # AUROC over this kind's plans together with the in-range ones
                              "auroc_with_in_range": auroc(report.estimated_deviation[with_in],
                                                           label[with_in]),
                              "drifting_fraction": float(label[sel_k].mean()),
                              "flagged_fraction": float(report.ood[sel_k].mean()),
                              **rates(report.ood[sel_k], label[sel_k])}
    out["time_s"] = round(time.perf_counter() - t0, 1)
    raw = {"deviation": dev, "label": label, "kinds": kinds_arr, **scores}
    print(f"[{name}] sigma={sigma:.3g} plans={len(plans)} drifting={int(label.sum())} "
          f"AUROC={out['auroc']:.3f} recall={out['recall']} "
          f"false alarms={out['false_alarm_rate']} "
          f"components={ {c: round(v, 3) for c, v in out['auroc_components'].items()} } "
          f"({out['time_s']} s)", flush=True)
    return out, raw


def plot_roc(raws: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(raws), figsize=(4 * len(raws), 3.8), squeeze=False)
    for ax, (name, raw) in zip(axes[0], raws.items()):
        for c in COMPONENTS:
            fpr, tpr = roc_curve(raw[c], raw["label"])
            ax.plot(fpr, tpr, lw=2.0 if c == "estimated_deviation" else 1.0,
                    label=f"{c} ({auroc(raw[c], raw['label']):.2f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("false-alarm rate")
        ax.set_ylabel("recall")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--plans", type=int, default=120)
    ap.add_argument("--minutes", type=float, default=1.0, help="training budget per model")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="training steps per model (instead of --minutes: the same model on a "
                         "busy machine)")
    ap.add_argument("--early-steps", type=int, default=None,
                    help="also calibrate, on each linear system, a model of the same data "
                         "stopped after this many training steps (the trained models' plans "
                         "on these systems do not drift, so their recall is undefined)")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--sigma", type=float, default=None, help="planning σ (default: selected)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "trust.json"))
    ap.add_argument("--system-training", action="store_true",
                    help="train each model with its system's own training options "
                         "(SystemDefaults.train_options, e.g. the noise range 0.015-0.5) and "
                         "pick σ by the system's rule (SystemDefaults.sigma_rule), as the "
                         "tracker's default models are; cached in "
                         "models/trust-<system>[-early<N>]-<options>/")
    ap.add_argument("--refinement", choices=("fixed", "system"), default="fixed",
                    help="the plans' refinement: 8 iterations annealed to σ 0.02 (fixed), or "
                         "the tracker's with the system's iterations and final σ (system)")
    ap.add_argument("--refine-start", type=float, default=GENERIC.refine_sigma_start,
                    help="with --refinement system: σ at which the refinement starts, if above "
                         "the plan's, with the plan's damping (the tracker's default; 0: at the "
                         "plan's σ with damping 1e-3, as the tracker refined before session 21)")
    ap.add_argument("--reuse-plans", action="store_true",
                    help="reuse the plans cached in benchmarks/models/trust-<system>/ by a "
                         "run with the same seed, plans, iterations and --sigma")
    args = ap.parse_args(argv)
    args.trust = {"repredict_iterations": 40}
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results, raws = {}, {}
    for name in args.systems:
        results[name], raws[name] = run_system(name, args)
        if args.early_steps and SYSTEMS[name]["linear"]:
            key = f"{name}-early{args.early_steps}"
            results[key], raws[key] = run_system(name, args, early_steps=args.early_steps)
    doc = {"benchmark": "trust", "command": " ".join(sys.argv), "args": {
        k: v for k, v in vars(args).items() if k != "trust"},
        "platform": platform.platform(), "torch": torch.__version__,
        "time_s": round(time.perf_counter() - t0, 1), "results": results}
    out = Path(args.out)
    atomic_write(out, lambda fh: fh.write(json.dumps(doc, indent=1).encode()))
    plot_roc(raws, out.with_name(out.stem + "_roc.png"))
    np.savez(out.with_name(out.stem + "_raw.npz"),
             **{f"{n}_{k}": v for n, r in raws.items() for k, v in r.items()})
    print(f"wrote {out} ({doc['time_s']} s)")
    return doc


if __name__ == "__main__":
    main()

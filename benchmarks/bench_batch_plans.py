"""Many plans at once: plans per second of one batched solve of K problems vs K single plans.

For each system (a trained model of the closed-loop suite, ``benchmarks/models/suite/``, and the
tracker the suite builds from it: :func:`~ddcontrol.evaluate.controllers.make_controller` with the
system's defaults, no time budget), ``max(--sizes)`` problems are drawn from the model's dataset:
a measured past of T_ini samples and the current output at a random step of a random trajectory,
one of three references (the suite's) and a random start step in it. Each problem is planned

* ``cold``: from the best candidate window, ``--cold-iterations`` iterations;
* ``warm``: from the cold plan's window, ``iterations_per_step`` iterations (a receding-horizon
  step);
* ``warm_j5``: the same with the tracker's ``jacobian_every=5`` (the pinned rows computed at 1
  of 5 iterations; in between the rows and their k x k inverse are reused, ``chord="reused"``);

all without refinement (as the receding horizon plans), with the trust estimate's cheap
measures, and a fixed iteration count (no time budget), either one :meth:`DenoisingTracker.plan`
call at a time (``sequential``: the first ``--sequential`` problems, one tracker per reference)
or K at once with :func:`~ddcontrol.tracking.batch.plan_batch` (K in ``--sizes``). The timings
come in ``--repeats`` rounds, each the sequential plans and then every K: this machine's speed
drifts by a third within minutes, so each round's speedup divides rates measured seconds apart,
and the reported ``speedup`` is the median over rounds (``speedup_best_rates``, the ratio of the
best rates of all rounds, the figure before session 19, is in the JSON too). With one thread
(``--threads 1``, the default) rates are plans per CPU second of this process
(``time.process_time``): on a machine shared with other jobs the wall clock measures their load
as much as this work (wall rates are in the JSON too). With more (``--threads 2``: the whole
2-core CPU, torch's default) rates are per wall second, and the single plans are timed with one
thread as well, the faster counting (batch-1 products gain nothing from a second thread and pay
its wake-ups). Reported: plans/s of each, the speedup at each K, and, for the problems planned
both ways, the largest difference of the planned inputs (physical units), windows (normalised)
and predicted costs (relative), with both sets of costs; then the same comparison for
``--check64`` problems with model and tracker in float64.

Run (the recorded figures; a 2-core machine with no other job, load average about 1)::

    OMP_NUM_THREADS=1 python benchmarks/bench_batch_plans.py --repeats 5    # batch_plans.json
    python benchmarks/bench_batch_plans.py --repeats 5 --threads 2 \
        --out benchmarks/results/batch_plans_threads2.json
    # and twice more each, back to back: batch_plans_run2.json, batch_plans_run3.json,
    # batch_plans_threads2_run2.json, batch_plans_threads2_run3.json

Session 20 (the bfloat16 rows' residual stream in bfloat16 too,
:meth:`~ddcontrol.score.frozen.FrozenResidualMLP.rows`: the unicycle's 40 rows of 64 plans in
0.80x the time, interleaved against the head; a warm batch of 64 unicycle plans 204-210 instead
of 230-253 ms in alternating processes), K = 64, the median speedup of 5 rounds in each of three
runs (run 1 / run 2 / run 3)::

    threads  system    cold                warm                warm_j5
    1        unicycle  11.8 / 10.0 / 12.3   9.4 / 9.4 / 8.8    10.6 / 11.8 / 12.0
    1        msd        9.3 / 9.1 / 9.3     8.1 / 8.9 / 8.9    14.6 / 14.7 / 14.6
    2        unicycle  12.5 / 12.6 / 12.7  10.9 / 11.3 / 11.3  14.3 / 15.1 / 14.6
    2        msd       11.1 / 9.2 / 11.6   11.0 / 11.1 / 10.4  16.8 / 17.3 / 16.4

With the whole CPU every mode reaches 10x at the median of the runs (worst run: the msd's cold
plans, 9.2x, when its single plans ran fastest, 19.8 plans/s against 14.4 and 16.5); with one
thread the unicycle's warm plans with exact rows (8.8-9.4x) and the msd's cold and warm plans
(9.1-9.3x, 8.1-8.9x) stay short. Single plans ran slower than in session 19 (one thread:
unicycle 4.1-5.9 / 29-44 / 40-52, msd 10.8-12.0 / 18.6-24.0 / 21.5-26.9 plans/s, against 7.5 / 52 /
66 and 18 / 28 / 37): a slow day of this machine, which slows the per-operation overhead of
single plans more than the arithmetic of batches, so part of the rise is the machine's. The
msd's float32 rows are not changed by this session's code (bfloat16 rows only; ``"auto"`` keeps
float32 at its damping 0.01): its 9.0x (session 19) and 9.2-11.6x (here) with the whole CPU are
the same code on differently loaded hours. Batched == sequential as before: float64 to 4e-11;
float32: the unicycle's cold plans within 6e-2 of 10 in their inputs and 0.5 % in cost
(bfloat16 rows in the batch, float32 in single plans), the msd's warm_j5 costs within 0.8 %
(round-off that the damped chord amplifies, as in session 19), the others within 0.07 %.

Session 19 (the bfloat16 rows' block branches kept in bfloat16,
:meth:`~ddcontrol.score.frozen.FrozenResidualMLP._blocks_back`: 64 x 40 unicycle rows in 10.2
instead of 14.1 ms), K = 64, median speedup of 5 rounds (plans/s of the best round)::

    threads  system    cold            warm            warm_j5
    1        unicycle  10.9x (81.7)    7.5x (413)      10.6x (689)
    1        msd        7.8x (144)     8.3x (218)      12.5x (462)
    2        unicycle  11.3x (104)     9.4x (523)      13.9x (815)
    2        msd        9.0x (150)    12.2x (238)      15.6x (556)

(single plans 7.5 / 52 / 66 and 18 / 28 / 37 plans/s with one thread; the unicycle's default
warm solve is warm_j5, the msd's warm.) Target 10x: with one thread met by the unicycle's cold
and warm_j5 plans and the msd's warm_j5; with the whole CPU also by the msd's warm plans (its
default); missed by the unicycle's warm plans with exact rows (7.5x / 9.4x) and the msd's cold
plans (7.8x / 9.0x), whose float32 rows (damping 0.01) are arithmetic at the CPU's float32 peak
(about 120 GFLOP/s per core) in a batch and per-operation overhead in a single plan. Session 18
recorded faster single plans (7.4 / 67 / 121 and 35 / 55 / 73 plans/s: a faster hour of this
machine) and 10.8x / 6.5x / 7.2x and 4.0x / 3.9x / 6.6x.

Recorded (session 17), plans per CPU second (speedup over
sequential); one start per plan (``num_starts=1``; the system defaults' 8 cold starts would
multiply every cold batch by 8); warm plans take the system's ``iterations_per_step`` (5 on the
unicycle, 20 on the msd); the tracker's default ``row_dtype="auto"``: from 128 pinned rows
(coordinates x batch) on, the rows' hidden-layer products in bfloat16 on this CPU (AVX512-BF16)
where the damping is at least 0.05 (the unicycle; the msd's 0.01 keeps float32)::

    system    mode     iters  sequential  K=1          K=16          K=64          K=256
    unicycle  cold      30      5.9      8.1 (1.4x)   40.2 (6.8x)   67.2 (11.4x)  68.8 (11.6x)
    unicycle  warm       5     63.9     65.3 (1.0x)  297.8 (4.7x)  401.2 (6.3x)  429.8 (6.7x)
    unicycle  warm_j5    5     70.1     69.1 (1.0x)  401.0 (5.7x)  671.4 (9.6x)  764.4 (10.9x)
    msd       cold      30     20.2     21.0 (1.0x)   97.4 (4.8x)  115.4 (5.7x)  134.4 (6.7x)
    msd       warm      20     37.5     37.1 (1.0x)  141.3 (3.8x)  184.3 (4.9x)  211.7 (5.6x)
    msd       warm_j5   20     47.7     41.5 (0.9x)  249.3 (5.2x)  332.7 (7.0x)  473.9 (9.9x)

(unicycle: ``unicycle-s0-8000``, 30,000 candidates, 40 pinned coordinates, auto σ 0.3; msd:
the suite's current model, trained with the system's options (noise levels 0.015-0.5;
``msd-s0-4000-sigma_max0.5-sigma_min0.015``), 11,000 candidates and 11 pinned, auto σ 0.2;
solver "nesterov". Session 17, load average 1.0 (one other job-free core). The sequential rate
is the faster of two runs of 16 plans, and it scatters between runs by a quarter or more: the
unicycle's warm_j5 plans gave 70.1, 81.6 and 98.1 plans/s in three runs within an hour, so its
K = 64 speedup is 6.8-9.6x for the same batched rate.)

What changed since the recording before (below), measured head against change in back-to-back
runs: the confidence estimate's snippet search (its ``local_support``: for each plan, the
largest distance of one of its 43 snippets to the nearest of 20,000 training snippets) now
prunes most snippets after part of the pool (:func:`ddcontrol.trust.farthest_nearest`: the
first block of the shuffled pool bounds every snippet; each plan's two farthest-bounded
snippets are searched in full; the others only while their bound is above those), with the same
values to the bit on ``bench_trust.py``'s plans. A batch of 64 warm unicycle plans spent about
40 % of its time in that search: 64 unicycle plans rose from 320 to 395 plans/s (warm) and from
534 to 685 (warm_j5); cold plans and the msd's (9 coordinates per snippet, a smaller share)
within the run-to-run scatter.

The recording before that (session 15), for comparison::

    system    mode     iters  sequential  K=1          K=16          K=64          K=256
    unicycle  cold      30      6.4      6.4 (1.0x)   51.3 (8.0x)   65.7 (10.2x)  74.8 (11.6x)
    unicycle  warm       5     63.5     52.5 (0.8x)  231.0 (3.6x)  298.3 (4.7x)  321.1 (5.1x)
    unicycle  warm_j5    5     77.8    105.5 (1.4x)  451.2 (5.8x)  582.2 (7.5x)  611.8 (7.9x)
    msd       cold      30     25.6     21.5 (0.8x)   94.0 (3.7x)  126.3 (4.9x)  143.5 (5.6x)
    msd       warm      20     45.4     38.6 (0.9x)  151.1 (3.3x)  217.6 (4.8x)  211.5 (4.7x)
    msd       warm_j5   20     79.1     74.4 (0.9x)  357.5 (4.5x)  483.6 (6.1x)  583.6 (7.4x)

(a run minutes before it gave the sequential unicycle 7.5 / 59.1 / 109.5 and the msd 33.8 /
49.2 / 47.8, hence speedups of 9.7x / 5.4x / 5.4x and 7.1x / 6.9x / 11.5x.)

The recording before (the msd's earlier model ``msd-s0-4000``, trained before the system's own
options; no bfloat16 rows), at K = 64: unicycle 27.5 / 161 / 384 plans/s (4.6x / 3.0x / 5.5x),
msd 127 / 190 / 375 (6.5x / 6.2x / 10.4x). The unicycle's batched rates rose 1.5-2.4x with
the rows in bfloat16 (on their own 3.5x faster at 2,560 rows; ``bench_iteration.py``); single
plans, whose 40 rows ride with the gradient's pass, did not change. On the msd, bfloat16 rows
moved single plans' costs by up to 30 % (damping 0.01 amplifies their rounding up to 50x), which
is why ``"auto"`` keeps float32 there; its batched == sequential gap is back to round-off
(2e-3 of one warm_j5 plan's cost). Earlier sessions' changes, for the history: computing the
nearest training snippets of the confidence estimate a block of queries at a time
(:data:`ddcontrol.trust.NEAREST_TILE`) lifted the batched rates 1.2-2.5x; the fused silu of the
σ-frozen network and the chord iterations' one backward pass made single plans cheaper, which
lowers the ratios. The issue's target, 10x the sequential rate at K = 64 on a CPU, is reached by
the unicycle's cold plans (9.7-11.4x in three recordings) and, in this recording, nearly by its
warm_j5 plans (9.6x; 6.8-9.6x against the three sequential rates of the hour), not by its warm
plans with exact rows (6.3x) nor the msd's (4.9-7.0x here; 4.8-11.5x across earlier runs): a
batch of 64 warm unicycle plans spends most of its time in the solver, whose pinned rows
(40 per plan) are computed for every plan. Batched == sequential to
float32 round-off on the msd; on the unicycle the batched plans use bfloat16 rows and single
plans float32 ones: inputs within 5e-2 (of 10) and costs within 0.5 % for the 30-iteration
cold plans, 8e-3 and 0.04 % for the warm ones (this recording); in float64 (where
``"auto"`` keeps float64) every mode agrees to 5e-12 or better. ``--device cuda`` runs the same
on a GPU (not measured: no device was available).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_closed_loop_suite import model_folder  # noqa: E402

from ddcontrol._io import atomic_write  # noqa: E402
from ddcontrol.data import TrajectoryDataset  # noqa: E402
from ddcontrol.evaluate.controllers import make_controller  # noqa: E402
from ddcontrol.score import load_model  # noqa: E402
from ddcontrol.tracking.batch import batch_problems, plan_batch  # noqa: E402
from ddcontrol.tracking.defaults import system_defaults  # noqa: E402
from ddcontrol.tracking.reference import make_reference  # noqa: E402

MODELS = ROOT / "benchmarks" / "models" / "suite"
OUT = ROOT / "benchmarks" / "results" / "batch_plans.json"
# system: env, model folder, references (as in bench_closed_loop_suite)
SYSTEMS: dict[str, dict[str, Any]] = {
    "unicycle": dict(env="ddcontrol/Unicycle-v0", model="unicycle-s0-8000",
                     data="unicycle-s0-data.npz",
                     references=[("figure-eight", {}), ("circle", {}),
                                 ("random", {"seed": 3, "channels": (0, 1), "amplitude": 4.0,
                                             "max_cycles": 1.5})]),
    # The suite's current model (its folder names the system's training options).
    "msd": dict(env="ddcontrol/MassSpringDamper-v0", model=model_folder("msd", 0, 4000).name,
                data="msd-s0-data.npz",
                references=[("random", {"seed": 1}), ("random", {"seed": 2}),
                            ("sine", {"amplitude": 1.0})]),
}
MODES = ("cold", "warm", "warm_j5")
REF_STEPS = 200


def _problems(data: TrajectoryDataset, t_ini: int, horizon: int, n: int, seed: int
              ) -> dict[str, np.ndarray]:
    """``n`` measured pasts and current outputs from random steps of random trajectories, with
    a reference index (of 3) and a start step each."""
    rng = np.random.default_rng(seed)
    traj = rng.integers(0, data.num_trajectories, n)
    step = rng.integers(t_ini, data.length, n)
    return {"past_u": np.stack([data.u[i, k - t_ini:k] for i, k in zip(traj, step)]),
            "past_y": np.stack([data.y[i, k - t_ini:k] for i, k in zip(traj, step)]),
            "current_y": np.stack([data.y[i, k] for i, k in zip(traj, step)]),
            "ref": rng.integers(0, 3, n), "start": rng.integers(0, REF_STEPS - horizon, n)}


def _jacobian_every(mode: str) -> int:
    """The tracker setting of ``mode`` (settings are fixed per tracker: one set per mode)."""
    return 5 if mode == "warm_j5" else 1


def _options(mode: str, trackers: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    its = args.cold_iterations if mode == "cold" else trackers[0].iterations_per_step
    return {"iterations": its, "refine": False}


def _sequential(trackers: list[Any], prob: dict[str, np.ndarray], n: int, opts: dict[str, Any],
                warm: np.ndarray | None, threads: int | None = None
                ) -> tuple[tuple[float, float], list[Any]]:
    """The first ``n`` problems one :meth:`plan` call at a time ((CPU s, wall s), plans), with
    ``threads`` torch threads (None: as set)."""
    restore = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    plans = [trackers[prob["ref"][i]].plan(
        prob["past_u"][i], prob["past_y"][i], current_y=prob["current_y"][i],
        start=int(prob["start"][i]), initial_point=None if warm is None else warm[i], **opts)
        for i in range(n)]
    elapsed = (time.process_time() - c0, time.perf_counter() - t0)
    torch.set_num_threads(restore)
    return elapsed, plans


def _batched(tracker: Any, problems: list[Any], prob: dict[str, np.ndarray], k: int,
             opts: dict[str, Any], warm: np.ndarray | None) -> tuple[tuple[float, float], Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    res = plan_batch(tracker, prob["past_u"][:k], prob["past_y"][:k],
                     current_y=prob["current_y"][:k], start=prob["start"][:k],
                     references=[problems[r] for r in prob["ref"][:k]],
                     initial_point=None if warm is None else warm[:k], **opts)
    return (time.process_time() - c0, time.perf_counter() - t0), res


def bench_system(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = SYSTEMS[name]
    env, d = spec["env"], system_defaults(spec["env"])
    clock = 0 if args.threads == 1 else 1  # index of (CPU, wall) seconds the rates use
    data = TrajectoryDataset.load(MODELS / spec["data"])
    model = load_model(MODELS / spec["model"], device=args.device, dataset=data)
    refs = [make_reference(r, env, REF_STEPS, **p) for r, p in spec["references"]]
    opts = d.tracker_options(refs[0].dt)
    # One start per plan: the benchmark compares one plan's solve batched and alone.
    opts.update(step_time_budget=None, device=args.device, num_starts=1)

    def build(every: int) -> list[Any]:
        return [make_controller("denoising", env, ref, d.Q, d.R, horizon=d.horizon, data=data,
                                model=model, options={**opts, "jacobian_every": every})
                for ref in refs]

    trackers = build(1)
    tracker = trackers[0]
    problems = batch_problems(tracker, refs)
    sizes = sorted(args.sizes)
    prob = _problems(data, d.t_ini, d.horizon, max(sizes + [args.sequential]), args.seed)
    n_seq = args.sequential
    # Torch's one-time start-up and the trust estimator's lazy parts, outside the timings.
    _batched(tracker, problems, prob, 2, {"iterations": 2, "refine": False}, None)
    tracker.plan(prob["past_u"][0], prob["past_y"][0], current_y=prob["current_y"][0],
                 iterations=2, refine=False)
    out: dict[str, Any] = {"env": env, "model": spec["model"], "t_ini": d.t_ini,
                           "horizon": d.horizon, "candidates": int(len(tracker.candidates)),
                           "pinned_coordinates": d.t_ini * (tracker.m + tracker.p) + tracker.p,
                           "solver": tracker.solver_name, "sigma": tracker.sigma,
                           "cold_iterations": args.cold_iterations,
                           "warm_iterations": tracker.iterations_per_step, "modes": {}}
    warm = cold_windows = None
    for mode in MODES:
        if _jacobian_every(mode) != trackers[0].jacobian_every:
            trackers = build(_jacobian_every(mode))
            tracker = trackers[0]
            problems = batch_problems(tracker, refs)
        run_opts = _options(mode, trackers, args)
        if mode == "warm":
            # Every problem's cold plan (from the largest batch) is its warm start.
            warm = cold_windows
        # Rounds of (sequential, then every K), ``--repeats`` of them. The machine's speed
        # drifts by a third within minutes, so each round's speedup divides rates measured
        # seconds apart, and the median over rounds is the figure (``speedup``); the best
        # rates of all rounds are kept too (``speedup_best_rates``: their ratio). With one
        # thread rates are per CPU second of this process: on a machine shared with other jobs
        # its wall time measures their load as much as this work (wall-clock rates are
        # recorded too). With several threads (per wall second) the single plans are timed
        # with one thread as well (batch-1 products gain nothing from a second one and pay
        # its wake-ups) and the faster counts.
        seq_threads = sorted({1, args.threads})
        seq_rounds: list[tuple[float, float]] = []
        bat_rounds: dict[int, list[tuple[float, float]]] = {k: [] for k in sizes}
        seq_plans = ref_res = None
        for _ in range(args.repeats):
            runs = []
            for t in seq_threads:
                elapsed, plans = _sequential(trackers, prob, n_seq, run_opts, warm, t)
                runs.append(elapsed)
                if seq_plans is None:
                    seq_plans = plans
            seq_rounds.append(min(runs, key=lambda r: r[clock]))
            for k in sizes:
                elapsed, res = _batched(tracker, problems, prob, k, run_opts, warm)
                bat_rounds[k].append(elapsed)
                if k == max(sizes) and mode == "cold":
                    cold_windows = res.windows
                if k >= n_seq and ref_res is None:
                    ref_res = res
        seq_best = min(seq_rounds, key=lambda r: r[clock])
        seq_rate = n_seq / seq_best[clock]
        row: dict[str, Any] = {
            "iterations": run_opts["iterations"], "rounds": args.repeats,
            "sequential_plans_per_s": seq_rate,
            "sequential_plans_per_wall_s": n_seq / seq_best[1],
            "sequential_plans_per_cpu_s": n_seq / seq_best[0],
            "batched_plans_per_s": {}, "batched_plans_per_wall_s": {},
            "batched_plans_per_cpu_s": {}, "speedup": {}, "speedup_best_rates": {},
            "speedup_per_round": {}}
        for k in sizes:
            best = min(bat_rounds[k], key=lambda r: r[clock])
            row["batched_plans_per_s"][str(k)] = k / best[clock]
            row["batched_plans_per_wall_s"][str(k)] = k / best[1]
            row["batched_plans_per_cpu_s"][str(k)] = k / best[0]
            per_round = [(k / b[clock]) / (n_seq / q[clock])
                         for b, q in zip(bat_rounds[k], seq_rounds)]
            row["speedup_per_round"][str(k)] = per_round
            row["speedup"][str(k)] = float(np.median(per_round))
            row["speedup_best_rates"][str(k)] = (k / best[clock]) / seq_rate
            print(f"{name} {mode:8s} K={k:4d}: {k / best[clock]:8.2f} plans/s "
                  f"({k / best[1]:.2f} per wall s)", flush=True)
        print(f"{name} {mode:8s} sequential {seq_rate:.2f} plans/s; speedup (median of rounds) "
              + ", ".join(f"K={k}: {v:.1f}x" for k, v in row["speedup"].items())
              + "; of the best rates "
              + ", ".join(f"{v:.1f}x" for v in row["speedup_best_rates"].values()), flush=True)
        n = n_seq
        inputs = np.stack([p.inputs for p in seq_plans])
        windows = np.stack([p.window for p in seq_plans])
        seq_cost = np.array([p.predicted_cost for p in seq_plans])
        bat_cost = ref_res.predicted_cost[:n]
        row["equal_to_sequential"] = {
            "problems": n,
            "max_abs_input_diff": float(np.abs(ref_res.inputs[:n] - inputs).max()),
            "input_scale": float(np.abs(inputs).max()),
            "max_abs_window_diff": float(np.abs(ref_res.windows[:n] - windows).max()),
            "max_rel_cost_diff": float(np.max(np.abs(bat_cost - seq_cost)
                                              / np.maximum(np.abs(seq_cost), 1e-12))),
            "sequential_costs": seq_cost.tolist(), "batched_costs": bat_cost.tolist()}
        print(f"{name} {mode:8s} batched == sequential: max |du| "
              f"{row['equal_to_sequential']['max_abs_input_diff']:.2e}, max rel cost diff "
              f"{row['equal_to_sequential']['max_rel_cost_diff']:.2e}", flush=True)
        out["modes"][mode] = row
    if args.check64:
        out["float64_check"] = _check64(model, data, refs, env, d, prob, cold_windows, args)
    return out


def _check64(model: Any, data: TrajectoryDataset, refs: list[Any], env: str, d: Any,
             prob: dict[str, np.ndarray], cold_windows: np.ndarray, args: argparse.Namespace
             ) -> dict[str, Any]:
    """The first ``--check64`` problems of every mode, batched and one at a time, with the
    model and tracker in float64 (no trust estimate): the float32 differences above are
    round-off that the solve amplifies, not a difference of the computations."""
    model64 = copy.deepcopy(model)
    model64.denoiser.double()
    opts = d.tracker_options(refs[0].dt)
    opts.update(step_time_budget=None, device=args.device, dtype=torch.float64, trust=None,
                num_starts=1)
    n, out = args.check64, {}
    for mode in MODES:
        trackers = [make_controller("denoising", env, ref, d.Q, d.R, horizon=d.horizon,
                                    data=data, model=model64,
                                    options={**opts, "jacobian_every": _jacobian_every(mode)})
                    for ref in refs]
        problems = batch_problems(trackers[0], refs)
        run_opts = _options(mode, trackers, args)
        warm = None if mode == "cold" else cold_windows
        _, seq = _sequential(trackers, prob, n, run_opts, warm)
        _, res = _batched(trackers[0], problems, prob, n, run_opts, warm)
        out[mode] = {"problems": n,
                     "max_abs_input_diff": float(max(np.abs(res.inputs[i] - p.inputs).max()
                                                     for i, p in enumerate(seq))),
                     "max_rel_cost_diff": float(max(abs(res.predicted_cost[i] - p.predicted_cost)
                                                    / max(abs(p.predicted_cost), 1e-12)
                                                    for i, p in enumerate(seq)))}
        print(f"float64 {mode:8s} batched == sequential: max |du| "
              f"{out[mode]['max_abs_input_diff']:.2e}, max rel cost diff "
              f"{out[mode]['max_rel_cost_diff']:.2e}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", nargs="+", default=["unicycle", "msd"], choices=list(SYSTEMS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 16, 64, 256])
    ap.add_argument("--sequential", type=int, default=16,
                    help="problems planned one at a time (their rate is the baseline)")
    ap.add_argument("--cold-iterations", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of (sequential, then every K); the median round's speedup")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check64", type=int, default=8,
                    help="problems re-planned both ways in float64 (0: skip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for both the sequential and the batched plans; "
                         "above 1 the rates and speedups are per wall-clock second (CPU time "
                         "adds up the threads' time)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be at least 1")
    torch.set_num_threads(args.threads)
    if args.sequential > max(args.sizes):
        ap.error("--sequential must not exceed the largest --sizes")
    t0 = time.perf_counter()
    result = {"config": {"sizes": sorted(args.sizes), "sequential": args.sequential,
                         "repeats": args.repeats, "device": args.device,
                         "torch_threads": torch.get_num_threads(),
                         "clock": "cpu" if args.threads == 1 else "wall",
                         "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                         "machine": platform.machine(), "torch": torch.__version__,
                         "load_average_start": os.getloadavg()},
              "systems": {}}
    for name in args.systems:
        result["systems"][name] = bench_system(name, args)
    result["wall_time_s"] = time.perf_counter() - t0
    result["load_average_end"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    atomic_write(args.out, lambda fh: fh.write(text.encode()))
    print(f"wrote {args.out} ({result['wall_time_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()

"""Real time with the defaults: the tracker's per-step time against the sampling time.

For each system, seed and reference of the closed-loop suite (cached models and data in
``benchmarks/models/suite/``, trained by ``bench_closed_loop_suite.py``), the DenoisingTracker
runs twice from the same start: with every default (the system's per-step time budget,
``step_time_fraction`` x dt) and iteration-limited (no budget: every warm step runs its
``iterations_per_step``). Reported per run: the wall time of every control step (the whole
``act()``, as the closed loop measures it) as percentiles and maximum against dt, the first
control step's time, the reset's cold start, and the budgeted run's closed-loop cost relative
to the iteration-limited one (target: p95 <= 0.5 dt, max <= dt, cost within 5 %).

Run: ``python benchmarks/bench_realtime.py [--systems msd pendulum unicycle] [--seeds 0]
[--steps 200] [--threads 1] [--paced] [--step-time-fraction F]``; writes
``benchmarks/results/realtime.json``. ``--step-time-fraction`` gives the budgeted runs a
per-step budget of F x dt instead of each system's default (the JSON records it). With
``--paced`` the loop takes a sample per sampling time of the wall clock, as a plant does, so
that the tracker's background confidence estimate runs between samples; by default samples
come back to back and that estimate competes with the next step's solve. Wall-clock figures
measure the machine as well as the code: the JSON records the load average at start and end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_closed_loop_suite import SYSTEMS, _label, dataset_and_model  # noqa: E402

from ddcontrol._io import atomic_write  # noqa: E402
from ddcontrol.evaluate.compare import compare  # noqa: E402
from ddcontrol.evaluate.controllers import make_controller  # noqa: E402
from ddcontrol.tracking.defaults import system_defaults  # noqa: E402
from ddcontrol.tracking.reference import make_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TRAIN_STEPS = {"msd": 4000, "coupled": 4000, "pendulum": 8000, "unicycle": 8000}


def _steal_s() -> float:
    """CPU time stolen from this virtual machine by its hypervisor so far, all cores (s; 0
    where ``/proc/stat`` does not exist): in a VM it counts as the running thread's CPU time, so
    a step's thread CPU alone cannot tell computing from being descheduled."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def one_run(system: str, seed: int, ref_index: int, steps: int, budget: bool,
            paced: bool = False, fraction: float | None = None) -> dict[str, Any]:
    """A closed loop of the tracker with the defaults (``budget``; ``fraction``: a per-step
    budget of that fraction of dt instead of the system's) or iteration-limited (``paced``: one
    sample per sampling time of the wall clock)."""
    spec = SYSTEMS[system]
    env, d = spec["env"], system_defaults(spec["env"])
    data, model = dataset_and_model(system, seed, TRAIN_STEPS[system], "cpu")
    name, params = spec["references"][ref_index]
    ref = make_reference(name, env, steps, **dict(params))
    opts: dict[str, Any] = {"step_time_budget": None}
    if budget:
        opts = {} if fraction is None else {"step_time_budget": fraction * ref.dt}
    factory = partial(make_controller, "denoising", env, ref, d.Q, d.R, horizon=d.horizon,
                      data=data, model=model, t_ini=d.t_ini, options=opts)
    holder: dict[str, Any] = {}
    cpu: list[float] = []  # this thread's CPU time of every act()
    steal: list[float] = []  # seconds the hypervisor ran others on this VM's cores, per act()
    in_step = {"on": False}  # whether an act() is running (for the collections below)

    def build() -> Any:
        tracker = holder["tracker"] = factory()
        act = tracker.act

        def timed(*a: Any, **k: Any) -> Any:
            c0, s0 = time.thread_time(), _steal_s()
            in_step["on"] = True
            try:
                return act(*a, **k)
            finally:
                in_step["on"] = False
                cpu.append(time.thread_time() - c0)
                steal.append(_steal_s() - s0)

        tracker.act = timed
        return tracker

    # Full collections of Python's cyclic garbage collector (which traverses every object of
    # the process: about 0.15 s with torch loaded) during the episode's steps (act()); the
    # tracker's own collection at reset (freeze_gc) is not in a step.
    full_gc: list[float] = []
    started: dict[str, float] = {}

    def gc_watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif info["generation"] == 2 and in_step["on"]:
            full_gc.append(time.perf_counter() - started["t"])

    gc.callbacks.append(gc_watch)
    try:
        res = compare(env, {"denoising": build}, ref, Q=d.Q, R=d.R, score_from=d.t_ini,
                      seeds=[seed], progress=False, paced=paced)
    finally:
        gc.callbacks.remove(gc_watch)
    episode, row = res.episodes["denoising"][0], res.rows[0]
    times = np.asarray(episode.solve_times) * 1e3
    control = times[d.t_ini:]  # the planned steps (the warm-up steps refine the first plan)
    # The slowest step's own CPU time: far below its wall time, the step waited (the machine,
    # the collector, the background estimate's thread) rather than computed.
    slowest = int(np.argmax(control)) + d.t_ini
    tracker = holder["tracker"]
    return {"system": system, "reference": _label(name, dict(params)), "seed": seed,
            "budgeted": budget, "dt_ms": ref.dt * 1e3,
            "budget_ms": None if tracker.step_time_budget is None
            else tracker.step_time_budget * 1e3,
            "total_cost": row["total_cost"], "failed": row["failed"],
            "step_p50_ms": float(np.percentile(control, 50)),
            "step_p95_ms": float(np.percentile(control, 95)),
            "step_max_ms": float(control.max()),
            "step_max_thread_cpu_ms": float(cpu[slowest] * 1e3) if len(cpu) == len(times)
            else None,
            "step_max_steal_ms": float(steal[slowest] * 1e3) if len(steal) == len(times)
            else None,
            "steps_over_dt": int((control > ref.dt * 1e3).sum()),
            "full_gc_collections": len(full_gc),
            "full_gc_max_ms": float(max(full_gc) * 1e3) if full_gc else 0.0,
            "first_step_ms": float(control[0]), "warmup_max_ms": float(times[:d.t_ini].max())
            if d.t_ini else 0.0, "reset_s": float(tracker.reset_time_s),
            "ood_steps": row.get("ood_steps")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", nargs="+", default=["msd", "pendulum", "unicycle"],
                   choices=list(SYSTEMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--references", nargs="+", type=int, default=[0],
                   help="indices into the suite's references of each system")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--paced", action="store_true",
                   help="take a sample per sampling time of the wall clock, as a plant does "
                        "(background work then runs between samples); default: back to back")
    p.add_argument("--step-time-fraction", type=float, default=None,
                   help="the budgeted runs' per-step budget as a fraction of dt instead of "
                        "each system's default")
    p.add_argument("--out", default=str(RESULTS / "realtime.json"))
    args = p.parse_args()
    if args.step_time_fraction is not None and not args.step_time_fraction > 0:
        p.error("--step-time-fraction must be > 0")
    torch.set_num_threads(args.threads)
    doc: dict[str, Any] = {"load_start": os.getloadavg(), "threads": args.threads,
                           "paced": args.paced, "step_time_fraction": args.step_time_fraction,
                           "runs": []}
    for system in args.systems:
        for seed in args.seeds:
            for r in args.references:
                pair = {}
                for budget in (True, False):
                    t0 = time.perf_counter()
                    pair[budget] = one_run(system, seed, r, args.steps, budget, args.paced,
                                           args.step_time_fraction)
                    doc["runs"].append(pair[budget])
                    q = pair[budget]
                    print(f"{system} {q['reference']} s{seed} {'budget' if budget else 'iters'}: "
                          f"step p50/p95/max {q['step_p50_ms']:.1f}/{q['step_p95_ms']:.1f}/"
                          f"{q['step_max_ms']:.1f} ms (its CPU "
                          f"{q['step_max_thread_cpu_ms'] or float('nan'):.1f}, stolen "
                          f"{q['step_max_steal_ms'] or 0.0:.0f}; dt "
                          f"{q['dt_ms']:.0f}; full GCs {q['full_gc_collections']}), first "
                          f"{q['first_step_ms']:.1f} ms, reset {q['reset_s']:.2f} s, cost "
                          f"{q['total_cost']:.4g} ({time.perf_counter() - t0:.0f} s)", flush=True)
                ratio = pair[True]["total_cost"] / pair[False]["total_cost"]
                pair[True]["cost_vs_unbudgeted"] = ratio
                print(f"  budgeted / iteration-limited cost: {ratio:.3f}", flush=True)
    doc["load_end"] = os.getloadavg()
    budgeted = [r for r in doc["runs"] if r["budgeted"]]
    doc["summary"] = {s: {
        "p95_over_dt_max": max(r["step_p95_ms"] / r["dt_ms"] for r in rs),
        "max_over_dt_max": max(r["step_max_ms"] / r["dt_ms"] for r in rs),
        "cost_vs_unbudgeted_median": float(np.median([r["cost_vs_unbudgeted"] for r in rs])),
        "cost_vs_unbudgeted_worst": max(r["cost_vs_unbudgeted"] for r in rs)}
        for s in args.systems if (rs := [r for r in budgeted if r["system"] == s])}
    text = json.dumps(doc, indent=1).encode()
    atomic_write(Path(args.out), lambda fh: fh.write(text))
    print(json.dumps(doc["summary"], indent=1))


if __name__ == "__main__":
    main()

"""CPU and GPU side by side: training steps/s and the tracker's per-step solve time.

For each device of ``--devices`` (default: ``cpu``, and ``cuda`` where torch sees a GPU), on the
demo's system (``--env``, default the double pendulum) with its preset
(:data:`ddcontrol.cli.demo.PRESETS`: data, network width, the system's training options):

* **training**: ``--train-steps`` steps of the demo's model configuration on that device; the
  rate is timed between step ``--warmup`` and the last one (the device synchronised at both
  stamps, so that queued GPU work is counted), no validation and no checkpoint in between;
* **tracking**: one model (the first device's, or ``--model DIR``) loaded on that device runs
  the demo's closed loop (the system's defaults, from rest where the preset says so) for
  ``--closed-loop-steps`` samples in the true simulator. Reported: the whole ``act()`` per
  control step (wall time; ``act`` returns the input as a numpy array, a host
  synchronisation, so a GPU step's time is complete) as p50 / p95 / max against the sampling
  time, the first control step, the reset's cold start and the closed-loop cost.
  ``--budget off`` (default) runs every warm step to its ``iterations_per_step``, so both devices
  do the same work; ``--budget default`` keeps the system's per-step time budget.

A device that is not available (no GPU, a CPU-only torch build) is reported as such with the
reason, so the same command runs everywhere; the suite never needs a GPU.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_devices.py [--env ID] [--devices cpu cuda]
        [--train-steps 300] [--closed-loop-steps 100] [--trajectories N] [--model DIR]

writes ``benchmarks/results/devices.json`` (``--out``) and prints one row per device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcontrol._io import atomic_write
from ddcontrol._validation import check_device
from ddcontrol.cli.demo import DEFAULT_ENV, PRESETS
from ddcontrol.data import collect, make_dynamics
from ddcontrol.errors import ConfigurationError
from ddcontrol.evaluate.compare import compare
from ddcontrol.evaluate.controllers import make_controller
from ddcontrol.score import TrainConfig, load_model, train
from ddcontrol.tracking.defaults import system_defaults
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import make_reference

RESULTS = Path(__file__).parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available(device: str) -> tuple[torch.device | None, str | None]:
    """``(torch.device, None)`` for a usable device, else ``(None, why not)``."""
    try:
        return check_device(device, "device"), None
    except ConfigurationError as exc:
        return None, str(exc)


def time_training(data: Any, env: str, device: torch.device, steps: int, warmup: int,
                  out: Path, seed: int) -> dict[str, Any]:
    """Train the demo's model for ``steps`` steps on ``device`` into ``out``: steps/s between
    step ``warmup`` and the last, and the wall time of the whole run (set-up included)."""
    preset, system = PRESETS[env], system_defaults(env)
    cfg = TrainConfig(out=str(out), window=system.window, steps=steps, seed=seed,
                      device=str(device), overwrite=True, num_threads=torch.get_num_threads(),
                      width=preset.width, progress=False, val_every=0, checkpoint_every=0,
                      log_every=max(1, steps), **system.train_options)
    stamps: dict[int, float] = {}

    def stamp(step: int, record: dict[str, Any]) -> None:
        if step in (warmup, steps):
            _sync(device)
            stamps[step] = time.perf_counter()

    t0 = time.perf_counter()
    train(cfg, data, callback=stamp)
    total = time.perf_counter() - t0
    return {"steps": steps, "warmup": warmup,
            "steps_per_s": (steps - warmup) / (stamps[steps] - stamps[warmup]),
            "run_s": total}


def time_tracking(data: Any, model_dir: Path, env: str, device: torch.device, steps: int,
                  budget: bool, seed: int) -> dict[str, Any]:
    """The demo's closed loop of the denoising tracker on ``device``: per-step times and cost."""
    preset, system = PRESETS[env], system_defaults(env)
    model = load_model(model_dir, device=str(device), dataset=data)
    ref = make_reference(preset.reference, env, steps, seed=seed + 1,
                         **dict(preset.reference_params))
    problem = TrackingProblem.for_env(env, ref, system.horizon, Q=system.Q, R=system.R,
                                      t_ini=system.t_ini)
    options: dict[str, Any] = {"device": str(device)}
    if not budget:
        options["step_time_budget"] = None
    holder: dict[str, Any] = {}

    def build() -> Any:
        holder["tracker"] = make_controller("denoising", problem, data=data, model=model,
                                            options=options)
        return holder["tracker"]

    start = [np.zeros(make_dynamics(env).state_dim)] if preset.from_rest else None
    res = compare(problem, {"denoising": build}, seeds=[seed], initial_states=start,
                  progress=False)
    episode, row = res.episodes["denoising"][0], res.rows[0]
    ms = np.asarray(episode.solve_times) * 1e3
    control = ms[system.t_ini:]  # the planned steps (the warm-up ones only measure the past)
    dt_ms = ref.dt * 1e3
    tracker = holder["tracker"]
    return {"closed_loop_steps": steps, "budgeted": budget, "dt_ms": dt_ms,
            "iterations_per_step": tracker.iterations_per_step,
            "step_p50_ms": float(np.percentile(control, 50)),
            "step_p95_ms": float(np.percentile(control, 95)),
            "step_max_ms": float(control.max()), "p95_over_dt": float(
                np.percentile(control, 95) / dt_ms),
            "first_step_ms": float(control[0]), "reset_s": float(tracker.reset_time_s),
            "total_cost": row["total_cost"], "failed": row["failed"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default=DEFAULT_ENV, choices=sorted(PRESETS))
    ap.add_argument("--devices", nargs="+", default=None,
                    help="devices to time (default: cpu and cuda; one not available is reported as such)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20,
                    help="training steps before the rate's first stamp")
    ap.add_argument("--closed-loop-steps", type=int, default=100)
    ap.add_argument("--trajectories", type=int, default=None,
                    help="trajectories of the data (default: the demo preset's)")
    ap.add_argument("--model", default=None,
                    help="a trained model folder for the tracking part (default: the model the "
                         "first device trains; it must match the data's system)")
    ap.add_argument("--budget", choices=("off", "default"), default="off")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "devices.json"))
    args = ap.parse_args(argv)
    if args.train_steps <= args.warmup or args.warmup < 1:
        ap.error("need 1 <= --warmup < --train-steps")
    least = max(system_defaults(args.env).horizon, system_defaults(args.env).t_ini + 2)
    if args.closed_loop_steps < least:
        ap.error(f"--closed-loop-steps must be at least {least} for {args.env} (its horizon "
                 "and T_ini)")
    torch.set_num_threads(args.threads)
    names = args.devices or ["cpu", "cuda"]  # an absent GPU is reported, not skipped
    preset = PRESETS[args.env]
    n = args.trajectories or preset.trajectories
    system = system_defaults(args.env)
    print(f"generating {n} trajectories of {args.env}", flush=True)
    data = collect(args.env, n, preset.trajectory_length, seed=args.seed,
                   excitation=system.excitation, excitation_params=system.excitation_params)
    doc: dict[str, Any] = {
        "env": args.env, "trajectories": n, "train_steps": args.train_steps,
        "closed_loop_steps": args.closed_loop_steps, "budget": args.budget,
        "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(), "devices": {}}
    model_dir = Path(args.model) if args.model else None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            device, why = available(name)
            if device is None:
                doc["devices"][name] = {"available": False, "reason": why}
                print(f"{name}: not available ({why})", flush=True)
                continue
            if device.type == "cuda":
                doc["devices"][name] = {"available": True,
                                        "name": torch.cuda.get_device_name(device)}
            else:
                doc["devices"][name] = {"available": True, "name": cpu_name()}
            folder = Path(tmp) / name.replace(":", "_")
            tr = time_training(data, args.env, device, args.train_steps, args.warmup, folder,
                               args.seed)
            doc["devices"][name]["training"] = tr
            print(f"{name}: training {tr['steps_per_s']:.1f} steps/s ({tr['run_s']:.1f} s for "
                  f"{tr['steps']} steps)", flush=True)
            model_dir = model_dir or folder
            tk = time_tracking(data, model_dir, args.env, device, args.closed_loop_steps,
                               args.budget == "default", args.seed)
            doc["devices"][name]["tracking"] = tk
            print(f"{name}: tracking step p50/p95/max {tk['step_p50_ms']:.1f}/"
                  f"{tk['step_p95_ms']:.1f}/{tk['step_max_ms']:.1f} ms (dt {tk['dt_ms']:.0f}), "
                  f"first {tk['first_step_ms']:.1f} ms, reset {tk['reset_s']:.2f} s, cost "
                  f"{tk['total_cost']:.4g}", flush=True)
        doc["tracking_model"] = "the first device's" if args.model is None else str(args.model)
    doc["load_average_end"] = os.getloadavg()
    print("\n" + table(doc))
    text = json.dumps(doc, indent=1).encode()
    atomic_write(Path(args.out), lambda fh: fh.write(text))
    print(f"wrote {args.out}")
    return doc


def table(doc: dict[str, Any]) -> str:
    """The devices side by side, as a Markdown table."""
    lines = ["| device | training steps/s | step p50 / p95 / max (ms) | first step (ms) | "
             "reset (s) | cost |", "|---|---|---|---|---|---|"]
    for name, d in doc["devices"].items():
        if not d["available"]:
            lines.append(f"| {name} | not available: {d['reason']} | | | | |")
            continue
        tr, tk = d["training"], d["tracking"]
        lines.append(f"| {name} ({d['name']}) | {tr['steps_per_s']:.1f} | "
                     f"{tk['step_p50_ms']:.1f} / {tk['step_p95_ms']:.1f} / "
                     f"{tk['step_max_ms']:.1f} | {tk['first_step_ms']:.1f} | "
                     f"{tk['reset_s']:.2f} | {tk['total_cost']:.4g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""``ddcontrol demo``: the main job end to end on a small default.

generate data → train a behaviour model → plan and replay (finite horizon) → closed loop against
DeePC, LQR (true and identified model) and the oracle → results.json, table.md and plots.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ddcontrol._validation import check_device
from ddcontrol.cli._args import add_threads_argument, nonnegative_int, output_folder, set_threads
from ddcontrol.data import collect
from ddcontrol.evaluate.compare import compare, write_comparison
from ddcontrol.evaluate.controllers import make_controller
from ddcontrol.evaluate.finite_horizon import finite_horizon_experiment
from ddcontrol.evaluate.plots import plot_dataset, plot_series
from ddcontrol.tracking.defaults import system_defaults
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import make_reference
from envs.registry import make_dynamics


@dataclass(frozen=True)
class DemoPreset:
    """Budgets of the demo for one system; everything else (window, T_ini, σ, Q, R, the data's
    excitation, the tracker's per-step settings) is the system's own
    (:func:`~ddcontrol.tracking.defaults.system_defaults`). The defaults fit 2 CPU cores in
    about 5 minutes."""

    trajectories: int
    trajectory_length: int
    train_steps: int
    reference: str
    reference_params: tuple[tuple[str, Any], ...]
    closed_loop_steps: int
    width: int = 256
    from_rest: bool = False  # closed loop from the system at rest (else the env's random start)
    controllers: tuple[str, ...] = ("denoising", "deepc", "lqr", "lqr-id", "oracle")


PRESETS = {
    # θ1 follows a 0.5 rad, 6 s sine from rest: the oracle follows it (RMS error in the second
    # half about a tenth of the reference's RMS) with the 1 N·m torque, far enough from the
    # hanging equilibrium that a linear model (DeePC's, LQR's) is visibly off. The in-phase
    # "swing" of both joints is not followable with that torque, by any controller.
    "ddcontrol/DoublePendulum-v0": DemoPreset(
        3000, 100, 5000, "sine", (("channels", (0,)), ("amplitude", 0.5), ("period", 5.0)),
        150, from_rest=True),
    "ddcontrol/MassSpringDamper-v0": DemoPreset(1000, 100, 3000, "random", (), 150),
    "ddcontrol/CoupledMasses-v0": DemoPreset(1500, 100, 4000, "random", (), 150),
    "ddcontrol/Unicycle-v0": DemoPreset(3000, 100, 6000, "figure-eight", (), 120,
                                        controllers=("denoising", "deepc", "lqr-id", "oracle")),
}
DEFAULT_ENV = "ddcontrol/DoublePendulum-v0"


def finite_horizon_verdict(summary: dict[str, Any]) -> str:
    """The finite-horizon plan's figures in words, with what they mean: whether the replay
    kept to the prediction, whether it beats the best training window, and the plan's own
    confidence (flagged plans are labelled as such)."""
    s = summary
    dev, est = s.get("manifold_deviation"), s.get("estimated_deviation")
    lines = [f"finite horizon: predicted cost {s['predicted_cost']:.4g}, replayed in the true "
             f"simulator {s['replay_cost']:.4g}; manifold deviation (replay vs prediction) "
             f"{dev:.3g}" + ("" if est is None else f", estimated before replay {est:.3g}")]
    if s.get("drifted") or s.get("ood"):
        why = "the replay drifted from the prediction" if s.get("drifted") else (
            "its confidence flagged it out of the data's distribution")
        lines.append(f"  PLAN NOT TRUSTED: {why}.")
    best = s["best_training_cost"]
    if s.get("best_training_window_same_start"):
        verdict = "beats" if s.get("replay_beats_best_window") else "DOES NOT beat"
        lines.append(f"  the replay {verdict} the best training window from the same start "
                     f"({best:.4g}).")
    else:
        lines.append(f"  (best training window {best:.4g}: those windows start from other "
                     f"states, so it is a scale, not an alternative plan)")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on a small default",
        description="Generate a dataset, train a behaviour model, plan a finite-horizon tracking "
        "problem and replay it in the true simulator, then run the DenoisingTracker in closed "
        "loop against DeePC, LQR and the model-based oracle. Writes results.json, table.md and "
        "PNG plots into --out.")
    p.add_argument("--env", default=DEFAULT_ENV, choices=sorted(PRESETS),
                   help="system (default: the double pendulum, where the learned manifold "
                   "matters most)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of data, training and episodes")
    p.add_argument("--device", default="cpu", help="cpu or cuda (training and the tracker)")
    add_threads_argument(p)
    p.add_argument("--quick", action="store_true", help="a tiny budget (seconds; for tests)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ddcontrol.score import TrainConfig, train

    start = time.perf_counter()
    set_threads(args)
    check_device(args.device, "--device")
    preset = PRESETS[args.env]
    system = system_defaults(args.env)
    if args.quick:
        preset = replace(preset, trajectories=120, trajectory_length=50, train_steps=150,
                         closed_loop_steps=40, width=64)
        system = replace(system, window=system.t_ini + 10)
    t_ini, horizon, window = system.t_ini, system.horizon, system.window
    out = output_folder(args.out)
    timings: dict[str, float] = {}

    print(f"[1/4] generating {preset.trajectories} trajectories of {args.env}")
    t0 = time.perf_counter()
    data = collect(args.env, preset.trajectories, preset.trajectory_length, seed=args.seed,
                   excitation=system.excitation, excitation_params=system.excitation_params,
                   progress=True)
    data_path = data.save(out / "data.npz")
    plot_dataset(data, out / "dataset.png")
    timings["generate_s"] = time.perf_counter() - t0

    print(f"[2/4] training the behaviour model ({preset.train_steps} steps)")
    t0 = time.perf_counter()
    cfg = TrainConfig(out=str(out / "model"), window=window, steps=preset.train_steps,
                      seed=args.seed, device=args.device, overwrite=True,
                      num_threads=torch.get_num_threads(),
                      width=preset.width, progress=True,
                      val_every=0, checkpoint_every=0, **system.train_options)
    model = train(cfg, data)
    timings["train_s"] = time.perf_counter() - t0
    losses = [json.loads(line) for line in (out / "model" / "log.jsonl").read_text().splitlines()]
    steps_loss = [(r["step"], r["loss"]) for r in losses if "loss" in r and "step" in r]
    if steps_loss:
        plot_series({"DSM loss": [v for _, v in steps_loss]}, out / "training_loss.png", "step",
                    "loss", logy=True, title="denoising score matching loss",
                    x={"DSM loss": [s for s, _ in steps_loss]})

    print("[3/4] finite-horizon plan, replayed in the true simulator")
    t0 = time.perf_counter()
    params = dict(preset.reference_params)
    ref_fh = make_reference(preset.reference, args.env, window, seed=args.seed + 1, **params)
    fh = finite_horizon_experiment(model, data, ref_fh, horizon=horizon, Q=system.Q,
                                   R=system.R, sigma=system.sigma, solver=system.solver,
                                   iterations=30 if args.quick else 500,
                                   num_starts=system.num_starts,
                                   **system.refine_options(), damping=system.damping,
                                   device=args.device)
    from ddcontrol.cli.track import write_plots

    write_plots(fh, ref_fh, data, out / "finite_horizon")
    timings["finite_horizon_s"] = time.perf_counter() - t0

    print(f"[4/4] closed loop, {preset.closed_loop_steps} steps: "
          f"{', '.join(preset.controllers)}")
    t0 = time.perf_counter()
    ref = make_reference(preset.reference, args.env, preset.closed_loop_steps,
                         seed=args.seed + 1, **params)
    # One problem for every controller and the comparison (scored from T_ini on).
    problem = TrackingProblem.for_env(args.env, ref, horizon, Q=system.Q, R=system.R,
                                      t_ini=t_ini)
    # The tracker runs with its system's settings (σ, solver, per-step time budget).
    tracker_opts = {"device": args.device}
    start_state = None
    if preset.from_rest:
        start_state = [np.zeros(make_dynamics(args.env).state_dim)]

    def factory(name: str):
        return lambda: make_controller(name, problem, data=data, model=model, options=(
            tracker_opts if name == "denoising" else None))

    result = compare(problem, {n: factory(n) for n in preset.controllers}, seeds=[args.seed],
                     initial_states=start_state)
    timings["closed_loop_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    paths = write_comparison(result, out, extra={
        "finite_horizon": fh.summary, "timings": timings, "dataset": str(data_path),
        "model": str(out / "model"), "preset": {k: v for k, v in vars(preset).items()},
        "system_defaults": {k: v for k, v in vars(system).items()}})

    print("\n" + finite_horizon_verdict(fh.summary))
    print(f"closed loop ({args.env}, '{ref.name}' reference, scored from step "
          f"{t_ini}):\n")
    print(result.to_markdown())
    print(f"\nwrote ({timings['total_s']:.0f} s):")
    for name, path in {**paths, "dataset plot": out / "dataset.png",
                       "training loss": out / "training_loss.png",
                       "finite-horizon plots": out / "finite_horizon"}.items():
        print(f"  {name:22s} {path}")
    return 0

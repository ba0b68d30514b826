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

from ddcontrol._validation import check_device
from ddcontrol.cli._args import add_threads_argument, nonnegative_int, output_folder, set_threads
from ddcontrol.data import collect
from ddcontrol.evaluate.compare import compare, write_comparison
from ddcontrol.evaluate.controllers import make_controller
from ddcontrol.evaluate.finite_horizon import finite_horizon_experiment
from ddcontrol.evaluate.plots import plot_dataset, plot_series
from ddcontrol.tracking.reference import make_reference


@dataclass(frozen=True)
class DemoPreset:
    """Budgets of the demo for one system (the defaults fit 2 CPU cores in under 5 minutes)."""

    trajectories: int
    trajectory_length: int
    t_ini: int
    horizon: int
    train_steps: int
    reference: str
    reference_params: tuple[tuple[str, Any], ...]
    closed_loop_steps: int
    sigma: float = 0.05
    Q: float = 1.0
    R: float = 0.01
    controllers: tuple[str, ...] = ("denoising", "deepc", "lqr", "lqr-id", "oracle")


PRESETS = {
    "ddcontrol/MassSpringDamper-v0": DemoPreset(1000, 100, 5, 25, 3000, "random", (), 150),
    "ddcontrol/CoupledMasses-v0": DemoPreset(1500, 100, 5, 25, 4000, "random", (), 150),
    "ddcontrol/DoublePendulum-v0": DemoPreset(3000, 100, 10, 30, 6000, "swing", (), 150,
                                              sigma=0.1, R=0.1),
    "ddcontrol/Unicycle-v0": DemoPreset(3000, 100, 5, 40, 6000, "figure-eight", (), 120,
                                        sigma=0.1, R=0.001,
                                        controllers=("denoising", "deepc", "lqr-id", "oracle")),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on a small default",
        description="Generate a dataset, train a behaviour model, plan a finite-horizon tracking "
        "problem and replay it in the true simulator, then run the DenoisingTracker in closed "
        "loop against DeePC, LQR and the model-based oracle. Writes results.json, table.md and "
        "PNG plots into --out.")
    p.add_argument("--env", default="ddcontrol/MassSpringDamper-v0", choices=sorted(PRESETS),
                   help="system (default: the mass-spring-damper)")
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
    if args.quick:
        preset = replace(preset, trajectories=120, trajectory_length=50, train_steps=150,
                         closed_loop_steps=30, horizon=10, t_ini=preset.t_ini)
    out = output_folder(args.out)
    timings: dict[str, float] = {}

    print(f"[1/4] generating {preset.trajectories} trajectories of {args.env}")
    t0 = time.perf_counter()
    data = collect(args.env, preset.trajectories, preset.trajectory_length, seed=args.seed,
                   progress=True)
    data_path = data.save(out / "data.npz")
    plot_dataset(data, out / "dataset.png")
    timings["generate_s"] = time.perf_counter() - t0

    print(f"[2/4] training the behaviour model ({preset.train_steps} steps)")
    t0 = time.perf_counter()
    window = preset.t_ini + preset.horizon
    cfg = TrainConfig(out=str(out / "model"), window=window, steps=preset.train_steps,
                      seed=args.seed, device=args.device, overwrite=True,
                      num_threads=torch.get_num_threads(),
                      width=128 if args.quick else 512, progress=True,
                      val_every=0, checkpoint_every=0)
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
    fh = finite_horizon_experiment(model, data, ref_fh, horizon=preset.horizon, Q=preset.Q,
                                   R=preset.R, sigma=preset.sigma, solver="nesterov",
                                   iterations=30 if args.quick else 500, device=args.device)
    from ddcontrol.cli.track import write_plots

    write_plots(fh, ref_fh, data, out / "finite_horizon")
    timings["finite_horizon_s"] = time.perf_counter() - t0

    print(f"[4/4] closed loop, {preset.closed_loop_steps} steps: "
          f"{', '.join(preset.controllers)}")
    t0 = time.perf_counter()
    ref = make_reference(preset.reference, args.env, preset.closed_loop_steps,
                         seed=args.seed + 1, **params)
    tracker_opts = {"sigma": preset.sigma, "solver": "nesterov", "iterations_per_step": 20,
                    "device": args.device}

    def factory(name: str):
        return lambda: make_controller(name, args.env, ref, preset.Q, preset.R,
                                       horizon=preset.horizon, data=data, model=model,
                                       t_ini=preset.t_ini,
                                       options=tracker_opts if name == "denoising" else None)

    result = compare(args.env, {n: factory(n) for n in preset.controllers}, ref, Q=preset.Q,
                     R=preset.R, seeds=[args.seed], score_from=preset.t_ini)
    timings["closed_loop_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    paths = write_comparison(result, out, extra={
        "finite_horizon": fh.summary, "timings": timings, "dataset": str(data_path),
        "model": str(out / "model"), "preset": {k: v for k, v in vars(preset).items()}})

    print("\nfinite horizon: predicted cost {predicted_cost:.4g}, replayed cost "
          "{replay_cost:.4g}, best training window {best_training_cost:.4g}, manifold "
          "deviation {manifold_deviation:.3g}".format(**fh.summary))
    print(f"closed loop ({args.env}, '{ref.name}' reference, scored from step "
          f"{preset.t_ini}):\n")
    print(result.to_markdown())
    print(f"\nwrote ({timings['total_s']:.0f} s):")
    for name, path in {**paths, "dataset plot": out / "dataset.png",
                       "training loss": out / "training_loss.png",
                       "finite-horizon plots": out / "finite_horizon"}.items():
        print(f"  {name:22s} {path}")
    return 0

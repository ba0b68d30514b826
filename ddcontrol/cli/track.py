"""``ddcontrol track``: plan with a trained model, replay in the true simulator, write results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ddcontrol._validation import check_device
from ddcontrol.cli._args import (
    add_threads_argument,
    check_env,
    json_object,
    nonnegative_float,
    nonnegative_int,
    output_folder,
    positive_float,
    positive_int,
    set_threads,
    sigma_value,
)
from ddcontrol.data import TrajectoryDataset
from ddcontrol.errors import ConfigurationError
from ddcontrol.evaluate.compare import compare, write_comparison
from ddcontrol.evaluate.controllers import make_tracker
from ddcontrol.evaluate.finite_horizon import finite_horizon_experiment
from ddcontrol.evaluate.plots import plot_series, plot_tracking
from ddcontrol.tracking.defaults import system_defaults
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import REFERENCES, make_reference
from ddcontrol.tracking.tracker import SOLVERS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "track", help="track a reference with a trained model and verify it by replay",
        description="Finite horizon (default): plan the inputs over --horizon steps from a "
        "dataset trajectory's initial condition with DRGD on the learned manifold, replay them "
        "in the true simulator, compare with the best training window. --closed-loop STEPS: "
        "run the tracker as a receding-horizon controller in the true environment instead. "
        "Writes results.json and plots to --out.")
    p.add_argument("--model", required=True, help="trained model folder (ddcontrol train --out)")
    p.add_argument("--data", help="dataset (.npz; default: the one the model was trained on)")
    p.add_argument("--env", help="environment id (default: the model's)")
    p.add_argument("--reference", required=True, choices=sorted(REFERENCES))
    p.add_argument("--reference-params", default="{}", metavar="JSON",
                   help="reference parameters as JSON")
    p.add_argument("--horizon", type=positive_int,
                   help="N_h (default: the model's window: T_ini = 0)")
    p.add_argument("--iterations", type=positive_int, default=1000,
                   help="solver iterations of a plan")
    p.add_argument("--iterations-per-step", type=positive_int, default=None,
                   help="closed loop: iterations per receding-horizon step (default: the "
                        "system's: 20, 5 on the unicycle)")
    p.add_argument("--solver", default="nesterov", choices=SOLVERS)
    p.add_argument("--sigma", type=sigma_value, default=None,
                   help="σ of the projection (normalised units, or 'auto': the σ training "
                        "selected from held-out data; default: the system's, auto)")
    p.add_argument("--sigma-start", type=positive_float, default=None,
                   help="anneal σ from this to --sigma over the first half of a plan")
    p.add_argument("--jacobian-every", type=positive_int, default=None,
                   help="closed loop: refresh the pinned Jacobian rows every this many "
                        "iterations (default: the system's; 1 where it has none)")
    p.add_argument("--step-time-budget", type=positive_float, default=None, metavar="SECONDS",
                   help="closed loop: stop each step's solve after this many seconds "
                        "(default: the system's fraction of the sampling time, 0.8)")
    p.add_argument("--starts", type=positive_int, default=None,
                   help="multi-start from the k best windows (default: the system's, 8)")
    p.add_argument("--Q", type=positive_float, default=None,
                   help="output weight (default: the system's, 1)")
    p.add_argument("--R", type=nonnegative_float, default=None,
                   help="input weight (default: the system's, e.g. 0.01)")
    p.add_argument("--trajectory", type=nonnegative_int, default=0,
                   help="finite horizon: dataset trajectory giving the initial condition")
    p.add_argument("--closed-loop", type=positive_int, metavar="STEPS",
                   help="run STEPS closed-loop steps")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="closed loop: environment seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_threads_argument(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    from ddcontrol.score import load_model

    params = json_object(args.reference_params, "--reference-params", "track")
    if args.data is not None and not args.data.strip():
        raise ConfigurationError("--data is empty; give a dataset file (.npz) or leave it out")
    check_device(args.device, "--device")
    if args.env is not None:
        check_env(args.env, flags="--env")
    out = output_folder(args.out)
    model = load_model(args.model, device=args.device)
    if args.env is not None and model.env_id is not None and args.env != model.env_id:
        raise ConfigurationError(f"this model was trained on {model.env_id}, not {args.env}: "
                                 "drop --env or use a model trained on that system")
    data_path = args.data if args.data is not None else model.config.get("data")
    if not data_path:
        raise SystemExit("ddcontrol track: the model does not record its dataset; pass --data")
    data = TrajectoryDataset.load(data_path)
    model.check_dataset(data)
    data_env = data.metadata.get("env_id")
    if args.env is not None and data_env is not None and args.env != data_env:
        raise ConfigurationError(f"the dataset {data_path} is from {data_env}, not {args.env}")
    env_id = args.env if args.env is not None else (model.env_id or data_env)
    if env_id is None:
        raise ConfigurationError("neither the model nor the dataset names its environment; "
                                 "pass --env")
    horizon = model.window_length if args.horizon is None else args.horizon
    if horizon > model.window_length:
        raise ConfigurationError(f"--horizon {horizon} is longer than the model's window "
                                 f"({model.window_length} steps): the window holds the measured "
                                 f"past and the horizon, so use --horizon <= "
                                 f"{model.window_length}")
    # Every setting not given is the system's (ddcontrol.tracking.defaults).
    sd = system_defaults(env_id)
    args.Q = sd.Q if args.Q is None else args.Q
    args.R = sd.R if args.R is None else args.R
    options = {"sigma": sd.sigma if args.sigma is None else args.sigma,
               "sigma_start": args.sigma_start, "solver": args.solver,
               "iterations": args.iterations,
               "num_starts": sd.num_starts if args.starts is None else args.starts,
               **sd.refine_options(), "damping": sd.damping,
               "device": args.device}
    if args.closed_loop is not None:
        t_ini = model.window_length - horizon
        ref = make_reference(args.reference, env_id, args.closed_loop, **params)
        # One problem: the tracker and the comparison (scored from T_ini on) share it.
        problem = TrackingProblem.for_env(env_id, ref, horizon, Q=args.Q, R=args.R, t_ini=t_ini)
        loop = {k: v for k, v in (("iterations_per_step", args.iterations_per_step),
                                  ("step_time_budget", args.step_time_budget),
                                  ("jacobian_every", args.jacobian_every)) if v is not None}
        result = compare(problem, {"denoising": lambda: make_tracker(
            model, data, problem, **loop, **options)},
            seeds=[args.seed])
        ep = result.episodes["denoising"][0]
        summary = {**result.row("denoising"), "env_id": env_id, "t_ini": t_ini,
                   "horizon": horizon, "per_step": {
                       "solve_time_s": ep.solve_times.tolist(),
                       "tracking_error": (ref.select(ep.outputs)
                                          - ref.window(0, len(ep.outputs))).tolist()}}
        # One results.json: the comparison (table, episodes) plus this run's summary.
        write_comparison(result, out, extra=summary)
        print(result.to_markdown())
        print(f"\nresults: {out / 'results.json'}")
        return 0 if not ep.failed else 1
    t_ini = model.window_length - horizon
    ref = make_reference(args.reference, env_id, t_ini + horizon, **params)
    res = finite_horizon_experiment(model, data, ref, horizon=horizon, Q=args.Q, R=args.R,
                                    trajectory=args.trajectory, **options)
    (out / "results.json").write_text(json.dumps(res.summary, indent=1))
    write_plots(res, ref, data, out)
    s = res.summary
    print(f"predicted cost {s['predicted_cost']:.4g} | replayed (true) cost "
          f"{s['replay_cost']:.4g} | best training window {s['best_training_cost']:.4g} | "
          f"manifold deviation {s['manifold_deviation']:.3g} | {s['iterations']} iterations "
          f"in {s['solve_time_s']:.2f} s")
    if s.get("ood"):
        print(f"WARNING: the model flags this plan as outside its data (estimated deviation "
              f"{s['estimated_deviation']:.3g} of the outputs, computed without a simulator): "
              "do not trust its predicted outputs (reference outside the data's range?)")
    if s["drifted"]:
        print("WARNING: the replay is far worse than predicted: the plan left the behaviour the "
              "model knows (reference outside the data's range?)")
    print(f"results: {out / 'results.json'}")
    return 0


def write_plots(res, ref, data, out: Path) -> None:
    """Outputs vs reference (predicted, replayed, best window), inputs, cost per iteration."""
    t = (res.start + np.arange(len(res.plan.inputs))) * ref.dt
    names = data.metadata.get("output_names")
    ch = list(ref.channels)
    plot_tracking(t, ref.window(res.start, len(t)), {
        "predicted (model)": res.plan.predicted_outputs[:, ch],
        "replayed (true system)": res.replay.outputs[:, ch],
        "best training window": res.best_window_outputs[:, ch]}, out / "outputs.png",
        [names[c] for c in ch] if names else None, title="finite-horizon plan")
    plot_series({"planned": res.plan.inputs, "best window": res.best_window_inputs},
                out / "inputs.png", "step", "input", title="inputs")
    hist = res.plan.solver_result.history
    if hist:
        plot_series({"cost": hist["cost"].min(axis=1)},
                    out / "cost_per_iteration.png", "iteration", "cost", logy=True,
                    title="solver cost per iteration")

"""``ddcontrol compare``: every controller in closed loop on the same problem, one table."""

from __future__ import annotations

import argparse

from ddcontrol.cli._args import add_threads_argument, json_object, set_threads
from ddcontrol.data import TrajectoryDataset
from ddcontrol.evaluate.compare import compare, write_comparison
from ddcontrol.evaluate.controllers import CONTROLLERS, make_controller
from ddcontrol.tracking.reference import REFERENCES, make_reference

DEFAULT_CONTROLLERS = "denoising,deepc,lqr,lqr-id,oracle"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="compare controllers in closed loop (table + plots)",
        description="Run every controller in closed loop in the true environment on the same "
        "reference, initial states (seeds) and noise, and write results.json, table.md and "
        "plots (outputs vs reference, inputs, solve time per step) to --out.")
    p.add_argument("--env", required=True, help="environment id")
    p.add_argument("--data", required=True, help="dataset (.npz) the data-driven controllers use")
    p.add_argument("--model", help="trained model folder (needed for 'denoising')")
    p.add_argument("--controllers", default=DEFAULT_CONTROLLERS,
                   help=f"comma-separated, from {','.join(CONTROLLERS)} "
                        f"(default {DEFAULT_CONTROLLERS})")
    p.add_argument("--reference", default="random", choices=sorted(REFERENCES),
                   help="reference signal (default random)")
    p.add_argument("--reference-params", default="{}", metavar="JSON",
                   help="reference parameters, e.g. '{\"amplitude\": 0.5}'")
    p.add_argument("--steps", type=int, default=200, help="closed-loop samples (default 200)")
    p.add_argument("--seeds", type=int, default=1, help="episodes (seeds 0..S-1, default 1)")
    p.add_argument("--horizon", type=int, default=20, help="prediction horizon N (default 20)")
    p.add_argument("--Q", type=float, default=1.0, help="output weight (default 1)")
    p.add_argument("--R", type=float, default=0.01, help="input weight (default 0.01)")
    p.add_argument("--warmup", type=int, default=None,
                   help="unscored warm-up samples with zero input (default: T_ini)")
    p.add_argument("--sigma", type=float, default=0.05, help="tracker σ (normalised units)")
    p.add_argument("--iterations-per-step", type=int, default=20,
                   help="tracker solver iterations per step (default 20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the tracker's model)")
    add_threads_argument(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    from ddcontrol.score import load_model

    data = TrajectoryDataset.load(args.data)
    model = load_model(args.model, device=args.device, dataset=data) if args.model else None
    names = [n.strip() for n in args.controllers.split(",") if n.strip()]
    ref = make_reference(args.reference, args.env, args.steps,
                         **json_object(args.reference_params, "--reference-params", "compare"))
    t_ini = model.window_length - args.horizon if model is not None else 4
    warmup = t_ini if args.warmup is None else args.warmup
    tracker_opts = {"sigma": args.sigma, "iterations_per_step": args.iterations_per_step}

    def factory(name: str):
        return lambda: make_controller(
            name, args.env, ref, args.Q, args.R, horizon=args.horizon, data=data, model=model,
            t_ini=t_ini, options=tracker_opts if name == "denoising" else None)

    result = compare(args.env, {n: factory(n) for n in names}, ref, Q=args.Q, R=args.R,
                     seeds=list(range(args.seeds)), score_from=warmup,
                     progress=not args.quiet)
    paths = write_comparison(result, args.out, extra={"horizon": args.horizon, "t_ini": t_ini})
    print(result.to_markdown())
    print("\n" + "\n".join(f"{k:12s} {v}" for k, v in paths.items()))
    return 0 if not all(r["failed"] for r in result.rows) else 1




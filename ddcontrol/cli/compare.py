"""``ddcontrol compare``: every controller in closed loop on the same problem, one table."""

from __future__ import annotations

import argparse
import warnings

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
from ddcontrol.errors import ConfigurationError, UnknownNameError
from ddcontrol.evaluate.compare import compare, write_comparison
from ddcontrol.evaluate.controllers import CONTROLLERS, make_controller
from ddcontrol.tracking.defaults import system_defaults
from ddcontrol.tracking.problem import TrackingProblem
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
    p.add_argument("--controllers", default=None,
                   help=f"comma-separated, from {','.join(CONTROLLERS)} "
                        f"(default {DEFAULT_CONTROLLERS}; without --model, all but denoising)")
    p.add_argument("--reference", default="random", choices=sorted(REFERENCES),
                   help="reference signal (default random)")
    p.add_argument("--reference-params", default="{}", metavar="JSON",
                   help="reference parameters, e.g. '{\"amplitude\": 0.5}'")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--length", type=positive_int, default=None,
                        help="closed-loop samples per episode (default 200)")
    length.add_argument("--steps", type=positive_int, dest="old_steps", metavar="K",
                        help="deprecated name of --length")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="episodes (seeds 0..S-1, default 1)")
    p.add_argument("--horizon", type=positive_int, default=None,
                   help="prediction horizon N (default: the system's T_ini subtracted from the "
                        "model's window, or the system's horizon)")
    p.add_argument("--Q", type=positive_float, default=None,
                   help="output weight (default: the system's, 1)")
    p.add_argument("--R", type=nonnegative_float, default=None,
                   help="input weight (default: the system's, e.g. 0.01)")
    p.add_argument("--warmup", type=nonnegative_int, default=None,
                   help="unscored warm-up samples with zero input (default: T_ini)")
    p.add_argument("--sigma", type=sigma_value, default=None,
                   help="tracker σ (normalised units, or 'auto': the σ training selected from "
                        "held-out data; default: the system's, auto)")
    p.add_argument("--iterations-per-step", type=positive_int, default=None,
                   help="tracker solver iterations per step (default: the system's: 20, 5 on the "
                        "unicycle)")
    p.add_argument("--on-ood", default=None, choices=("warn", "hold", "raise", "escalate"),
                   help="the tracker's policy for plans its confidence flags out of the data "
                        "(default warn; escalate: warn, and once a third of the last "
                        "horizon's steps are flagged, plan at the next larger sigma of the "
                        "selection grid, again each time the flags persist); flagged steps "
                        "are counted in the table's OOD column")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the tracker's model)")
    add_threads_argument(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--paced", action="store_true",
                   help="one sample per sampling time of the wall clock, as from a plant "
                        "(default: samples back to back)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def controller_names(text: str | None, have_model: bool) -> list[str]:
    """The names of ``--controllers`` (None: the default set), checked before anything runs."""
    if text is None:
        names = DEFAULT_CONTROLLERS.split(",")
        return names if have_model else [n for n in names if n != "denoising"]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigurationError(f"--controllers is empty; choose from {','.join(CONTROLLERS)}")
    unknown = [n for n in names if n not in CONTROLLERS]
    if unknown:
        raise UnknownNameError(f"unknown controller(s) {', '.join(map(repr, unknown))} in "
                               f"--controllers; choose from {','.join(CONTROLLERS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigurationError(f"--controllers names {', '.join(repeated)} more than once")
    if "denoising" in names and not have_model:
        raise ConfigurationError("the 'denoising' controller needs --model (a trained model "
                                 "folder); pass it or leave 'denoising' out of --controllers")
    return names


def episode_length(args: argparse.Namespace) -> int:
    """``--length`` (default 200), or the deprecated ``--steps`` (with a ``DeprecationWarning``)."""
    if getattr(args, "old_steps", None) is not None:
        warnings.warn("ddcontrol compare: --steps is deprecated, use --length (closed-loop "
                      "samples per episode; 'steps' counts optimisation steps)",
                      DeprecationWarning, stacklevel=2)
        return args.old_steps
    return 200 if args.length is None else args.length


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    from ddcontrol.score import load_model

    args.length = episode_length(args)
    names = controller_names(args.controllers, args.model is not None)
    params = json_object(args.reference_params, "--reference-params", "compare")
    check_device(args.device, "--device")
    check_env(args.env, flags="--env")
    out = output_folder(args.out)
    data = TrajectoryDataset.load(args.data)
    data_env = data.metadata.get("env_id")
    if data_env is not None and data_env != args.env:
        raise ConfigurationError(f"the dataset {args.data} is from {data_env}, not {args.env}")
    model = load_model(args.model, device=args.device, dataset=data) if args.model else None
    # Every setting not given is the system's (ddcontrol.tracking.defaults).
    sd = system_defaults(args.env)
    if args.horizon is None:
        args.horizon = (sd.horizon if model is None
                        else max(1, model.window_length - min(sd.t_ini, model.window_length - 1)))
    args.Q = sd.Q if args.Q is None else args.Q
    args.R = sd.R if args.R is None else args.R
    if model is not None and args.horizon > model.window_length:
        raise ConfigurationError(f"--horizon {args.horizon} is longer than the model's window "
                                 f"({model.window_length} steps); use --horizon <= "
                                 f"{model.window_length}")
    t_ini = model.window_length - args.horizon if model is not None else sd.t_ini
    warmup = t_ini if args.warmup is None else args.warmup
    if args.length < args.horizon:
        raise ConfigurationError(f"--length {args.length} is shorter than the horizon "
                                 f"{args.horizon}: the reference must cover one horizon; raise "
                                 "--length or lower --horizon")
    if warmup >= args.length:
        what = "--warmup" if args.warmup is not None else "the warm-up (T_ini)"
        raise ConfigurationError(f"{what} of {warmup} samples leaves none of the --length "
                                 f"{args.length} samples to score; raise --length or lower "
                                 "--warmup")
    tracker_opts = {k: v for k, v in (("sigma", args.sigma),
                                       ("iterations_per_step", args.iterations_per_step),
                                       ("on_ood", args.on_ood))
                    if v is not None}

    ref = make_reference(args.reference, args.env, args.length, **params)
    # One problem for every controller and the comparison (scored from --warmup, T_ini).
    problem = TrackingProblem.for_env(args.env, ref, args.horizon, Q=args.Q, R=args.R,
                                      t_ini=t_ini)

    def factory(name: str):
        return lambda: make_controller(name, problem, data=data, model=model, options=(
            tracker_opts if name == "denoising" else None))

    result = compare(problem, {n: factory(n) for n in names}, seeds=list(range(args.seeds)),
                     score_from=warmup, progress=not args.quiet, paced=args.paced)
    paths = write_comparison(result, out, extra={"horizon": args.horizon, "t_ini": t_ini})
    print(result.to_markdown())
    print("\n" + "\n".join(f"{k:12s} {v}" for k, v in paths.items()))
    return 0 if not all(r["failed"] for r in result.rows) else 1




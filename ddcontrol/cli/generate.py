"""``ddcontrol generate``: simulate an environment under an excitation and save a dataset."""

from __future__ import annotations

import argparse
import time

from ddcontrol.cli._args import json_object
from ddcontrol.data import EXCITATIONS, collect


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate a trajectory dataset from a simulator",
        description="Simulate N trajectories of T steps of a registered environment under an "
        "excitation signal and write them atomically to an .npz dataset "
        "(format: datasets/README.md).")
    p.add_argument("--env", required=True, help="environment id, e.g. ddcontrol/Unicycle-v0")
    p.add_argument("--trajectories", type=int, required=True, help="number of trajectories N")
    p.add_argument("--horizon", type=int, required=True, help="steps per trajectory T")
    p.add_argument("--out", required=True, help="output file (.npz)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--excitation", default="mixed", choices=sorted(EXCITATIONS),
                   help="input excitation signal (default: mixed)")
    p.add_argument("--excitation-params", default="{}", metavar="JSON",
                   help='excitation parameters as JSON, e.g. \'{"hold": 3}\'')
    p.add_argument("--env-kwargs", default="{}", metavar="JSON",
                   help='environment keyword arguments as JSON, e.g. \'{"outputs": ["x", "y"]}\'')
    p.add_argument("--no-noise", action="store_true", help="disable the env's process/measurement "
                   "noise")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    data = collect(args.env, args.trajectories, args.horizon, excitation=args.excitation,
                   excitation_params=json_object(args.excitation_params, "--excitation-params", "generate"),
                   seed=args.seed, env_kwargs=json_object(args.env_kwargs, "--env-kwargs", "generate"),
                   noise=not args.no_noise, progress=not args.quiet)
    path = data.save(args.out)
    print(f"wrote {path}: {data.num_trajectories} trajectories x {data.horizon} steps, "
          f"m={data.input_dim} inputs, p={data.output_dim} outputs "
          f"({time.perf_counter() - start:.2f} s)")
    return 0

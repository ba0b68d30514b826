"""``ddcontrol generate``: simulate an environment under an excitation and save a dataset."""

from __future__ import annotations

import argparse
import time
import warnings

from ddcontrol.cli._args import (
    available_memory,
    check_env,
    json_object,
    nonnegative_int,
    output_file,
    positive_int,
)
from ddcontrol.data import EXCITATIONS, collect
from ddcontrol.errors import ConfigurationError

# Peak memory of a run as a multiple of the dataset's arrays: measured 2.33x (mass-spring-damper)
# and 2.36x (unicycle) for 20000 x 200 steps, generation and save (peak RSS growth).
MEMORY_FACTOR = 2.5


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate a trajectory dataset from a simulator",
        description="Simulate N trajectories of T steps of a registered environment under an "
        "excitation signal and write them atomically to an .npz dataset "
        "(format: datasets/README.md).")
    p.add_argument("--env", required=True, help="environment id, e.g. ddcontrol/Unicycle-v0")
    p.add_argument("--trajectories", type=positive_int, required=True,
                   help="number of trajectories N")
    steps = p.add_mutually_exclusive_group(required=True)
    steps.add_argument("--length", type=positive_int, help="steps per trajectory T")
    steps.add_argument("--horizon", type=positive_int, dest="old_horizon", metavar="T",
                       help="deprecated name of --length")
    p.add_argument("--out", required=True, help="output file (.npz)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--excitation", default="mixed", choices=sorted(EXCITATIONS),
                   help="input excitation signal (default: mixed)")
    p.add_argument("--excitation-params", default="{}", metavar="JSON",
                   help='excitation parameters as JSON, e.g. \'{"hold": 3}\'')
    p.add_argument("--env-kwargs", default="{}", metavar="JSON",
                   help='environment keyword arguments as JSON, e.g. \'{"outputs": ["x", "y"]}\'')
    p.add_argument("--no-noise", action="store_true", help="disable the env's process/measurement "
                   "noise")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shard-size", type=positive_int, default=None, metavar="K",
                   help="stream to a sharded dataset: --out is a folder of shards of K "
                   "trajectories and a manifest; memory is bounded by one shard "
                   "(ddcontrol.data.shards)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --shard-size: replace the shards and manifest already in --out")
    p.set_defaults(func=run)


def estimated_bytes(info, trajectories: int, horizon: int) -> int:
    """Bytes of the dataset's float64 arrays u, y (N, T, m + p) and x (N, T + 1, n_x)."""
    per_trajectory = horizon * (info.input_dim + info.output_dim) + (horizon + 1) * info.state_dim
    return 8 * trajectories * per_trajectory


def check_size(info, trajectories: int, horizon: int, available: int | None) -> None:
    """Refuse, with the figures, a dataset whose generation would not fit in memory."""
    need = MEMORY_FACTOR * estimated_bytes(info, trajectories, horizon)
    if available is not None and need > available:
        gib = 2.0 ** 30
        raise ConfigurationError(
            f"{trajectories} trajectories x {horizon} steps of {info.env_id} would need about "
            f"{need / gib:.3g} GiB of memory (dataset {need / MEMORY_FACTOR / gib:.3g} GiB), "
            f"more than the {available / gib:.3g} GiB available; generate fewer or shorter "
            "trajectories (several files can be generated with different --seed)")


def trajectory_length(args: argparse.Namespace) -> int:
    """``--length``, or the deprecated ``--horizon`` (with a ``DeprecationWarning``)."""
    if getattr(args, "old_horizon", None) is not None:
        warnings.warn("ddcontrol generate: --horizon is deprecated, use --length (the trajectory "
                      "length; 'horizon' is the planning horizon)", DeprecationWarning,
                      stacklevel=2)
        args.length = args.old_horizon
    return args.length


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    length = trajectory_length(args)
    excitation_params = json_object(args.excitation_params, "--excitation-params", "generate")
    env_kwargs = json_object(args.env_kwargs, "--env-kwargs", "generate")
    if args.shard_size is not None:
        return _run_sharded(args, length, excitation_params, env_kwargs, start)
    out = output_file(args.out, ".npz")
    info = check_env(args.env, env_kwargs)
    check_size(info, args.trajectories, length, available_memory())
    data = collect(args.env, args.trajectories, length, excitation=args.excitation,
                   excitation_params=excitation_params, seed=args.seed, env_kwargs=env_kwargs,
                   noise=not args.no_noise, progress=not args.quiet)
    path = data.save(out)
    print(f"wrote {path}: {data.num_trajectories} trajectories x {data.length} steps, "
          f"m={data.input_dim} inputs, p={data.output_dim} outputs "
          f"({time.perf_counter() - start:.2f} s)")
    return 0


def _run_sharded(args: argparse.Namespace, length: int, excitation_params: dict,
                 env_kwargs: dict, start: float) -> int:
    """``--shard-size K``: simulate and write one shard at a time."""
    from ddcontrol.data.shards import generate_shards

    info = check_env(args.env, env_kwargs)
    check_size(info, min(args.shard_size, args.trajectories), length, available_memory())
    data = generate_shards(args.env, args.trajectories, length, args.out,
                           args.shard_size, seed=args.seed, overwrite=args.overwrite,
                           progress=not args.quiet, excitation=args.excitation,
                           excitation_params=excitation_params, env_kwargs=env_kwargs,
                           noise=not args.no_noise)
    print(f"wrote {data.path}: {data.num_trajectories} trajectories x {data.length} steps in "
          f"{data.num_shards} shards, m={data.input_dim} inputs, p={data.output_dim} outputs "
          f"({time.perf_counter() - start:.2f} s)")
    return 0

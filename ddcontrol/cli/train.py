"""``ddcontrol train``: fit a behaviour denoiser to a dataset; flags generated from ``TrainConfig``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from ddcontrol.cli._args import output_folder
from ddcontrol.errors import TrainingInterrupted
from ddcontrol.score.train import TrainConfig, train

# Flags the command line requires although the Python API has no default for them.
_REQUIRED = {"data": "PATH", "out": "DIR"}


def _none_or(kind: type) -> Any:
    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "auto", "") else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    if f.name in _REQUIRED:
        parser.add_argument(flag, dest=f.name, required=True, metavar=_REQUIRED[f.name],
                            help=help_text.split(" (None")[0])
        return
    kwargs: dict[str, Any] = {"dest": f.name, "default": f.default,
                              "help": f"{help_text} (default: {f.default})"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1
    base = args[0] if optional else hint
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(base) is tuple:
        kwargs.update(nargs="+", type=typing.get_args(base)[0])
    else:
        kwargs["type"] = _none_or(base) if optional else base
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
    parser.add_argument(flag, **kwargs)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``ddcontrol train``."""
    parser = subparsers.add_parser(
        "train", help="train a denoiser (behaviour model) on a dataset",
        description="Train a preconditioned denoiser on trajectory windows by denoising score "
        "matching. Writes OUT/checkpoint.pt (atomic, resumable) and OUT/log.jsonl.")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        _add_field(parser, f, hints[f.name])
    _add_table_flags(parser)
    parser.set_defaults(func=run)


def _add_table_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of a measured CSV dataset (``--data file.csv``; see ddcontrol.data.tabular)."""
    g = parser.add_argument_group(
        "measured data (--data FILE.csv)", "A CSV file (header line, one column per channel; "
        "one experiment, or several numbered by --episode-column) is converted to OUT/data.npz, "
        "which the model then records as its dataset.")
    g.add_argument("--inputs", metavar="A,B", help="input column names (required for a CSV)")
    g.add_argument("--outputs", metavar="C,D", help="output column names (required for a CSV)")
    g.add_argument("--time-column", metavar="NAME", help="time column (s): uniform sampling is "
                   "checked and gives dt")
    g.add_argument("--episode-column", metavar="NAME", help="column numbering the experiments")
    g.add_argument("--dt", type=float, help="sampling time in seconds (default: from "
                   "--time-column, else 1)")
    g.add_argument("--input-low", type=float, nargs="+", metavar="LOW",
                   help="actuator lower limits (default: the data's range)")
    g.add_argument("--input-high", type=float, nargs="+", metavar="HIGH",
                   help="actuator upper limits (default: the data's range)")
    g.add_argument("--truncate", action="store_true",
                   help="cut experiments of different lengths to the shortest")


def _csv_dataset(args: argparse.Namespace) -> Any:
    """Convert ``--data FILE.csv`` to ``OUT/data.npz``; None for an .npz dataset."""
    from ddcontrol.data.dataset import TrajectoryDataset

    table_flags = ("inputs", "outputs", "time_column", "episode_column", "dt", "input_low",
                   "input_high")
    if Path(args.data).suffix.lower() != ".csv":
        given = [f"--{n.replace('_', '-')}" for n in table_flags if getattr(args, n) is not None]
        if given:
            raise SystemExit(f"ddcontrol train: {', '.join(given)} apply to a CSV file, not to "
                             f"{args.data}")
        return None
    if not args.inputs or not args.outputs:
        raise SystemExit("ddcontrol train: a CSV dataset needs --inputs and --outputs (column "
                         "names, comma-separated)")
    data = TrajectoryDataset.from_csv(args.data, inputs=args.inputs, outputs=args.outputs,
                                      time=args.time_column, episode=args.episode_column,
                                      dt=args.dt, input_low=args.input_low,
                                      input_high=args.input_high, truncate=args.truncate)
    out = Path(args.out)
    if (out / "checkpoint.pt").exists() and not (args.resume or args.overwrite):
        return data  # train() refuses the existing checkpoint; leave its dataset alone
    data.save(out / "data.npz")
    print(f"{args.data}: {data.num_trajectories} experiment(s) of {data.length} samples, "
          f"inputs {data.metadata['input_names']}, outputs {data.metadata['output_names']}, "
          f"dt {data.dt:g} s -> {out / 'data.npz'}")
    return data


def run(args: argparse.Namespace) -> int:
    """Build the ``TrainConfig`` from parsed flags and train."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["channel_mult"] = tuple(values["channel_mult"])
    output_folder(args.out)  # a parent that is a file, or no permission: fail before any work
    dataset = _csv_dataset(args)
    if dataset is not None:
        values["data"] = str(Path(args.out) / "data.npz")
    try:
        model = train(TrainConfig(**values), dataset)
    except TrainingInterrupted as exc:
        print(f"ddcontrol train: interrupted at step {exc.step}; checkpoint saved to "
              f"{exc.checkpoint}; continue with the same command and --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the loop, or a distributed run's launcher
        ckpt = Path(args.out) / "checkpoint.pt"
        saved = (f"; {ckpt} holds the last saved state: continue with the same command and "
                 "--resume") if ckpt.exists() else ""
        print(f"ddcontrol train: interrupted{saved}", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return 0
    val = model.metadata.get("val") or {}
    summary = f", validation loss {val['mean']:.4f}" if "mean" in val else ""
    print(f"trained {model.metadata['step']} steps{summary}; "
          f"checkpoint: {args.out}/checkpoint.pt")
    return 0

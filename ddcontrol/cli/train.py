"""``ddcontrol train``: fit a behaviour denoiser to a dataset; flags generated from ``TrainConfig``."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the ``TrainConfig`` from parsed flags and train."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["channel_mult"] = tuple(values["channel_mult"])
    model = train(TrainConfig(**values))
    val = model.metadata.get("val") or {}
    summary = f", validation loss {val['mean']:.4f}" if "mean" in val else ""
    print(f"trained {model.metadata['step']} steps{summary}; "
          f"checkpoint: {args.out}/checkpoint.pt")
    return 0

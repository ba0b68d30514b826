"""Command-line interface: ``ddcontrol <subcommand> ...``.

Each subcommand lives in its own module of this package exposing ``add_parser(subparsers)`` (which
registers the subcommand and sets ``func``) so that the CLI is assembled here in one place.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ddcontrol import __version__
from ddcontrol.errors import DDControlError

# Module names under ddcontrol.cli, in the order they appear in ``ddcontrol --help``.
SUBCOMMANDS = ["generate", "train", "track", "compare", "demo"]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ddcontrol",
        description="Data-driven control with score-based behaviour models: "
        "generate data, train a denoiser, track references, compare against baselines.",
    )
    parser.add_argument("--version", action="version", version=f"ddcontrol {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"ddcontrol.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddcontrol`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DDControlError as exc:
        print(f"ddcontrol {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

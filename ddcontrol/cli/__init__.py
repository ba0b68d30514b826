"""Command-line interface: ``ddcontrol <subcommand> ...``.

Each subcommand lives in its own module of this package exposing ``add_parser(subparsers)`` (which
registers the subcommand and sets ``func``) so that the CLI is assembled here in one place.

Exit codes: 0 success; 1 an error the command reports in one line (bad data, bad value, a file
that cannot be read or written); 2 a usage error (argparse); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ddcontrol import __version__
from ddcontrol.errors import DDControlError
from envs.errors import EnvError

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


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (messages quoting other libraries may span several)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddcontrol`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    prefix = f"ddcontrol {args.command}"
    try:
        return int(args.func(args) or 0)
    except (DDControlError, EnvError) as exc:  # raised on purpose, with a specific message
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or folder the command could not read or write
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"{prefix}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{prefix}: error: out of memory; use a smaller problem", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

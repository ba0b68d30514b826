"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json


def json_object(text: str, flag: str, command: str) -> dict:
    """Parse a ``--flag '{...}'`` value; exit with a clear message unless it is a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"ddcontrol {command}: {flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SystemExit(f"ddcontrol {command}: {flag} must be a JSON object")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (default 1), applied with :func:`set_threads`."""
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these small models run fastest on "
                             "one thread, and never stall when the machine is busy)")


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads``; a count below 1 exits with a clear message."""
    import torch

    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)

"""Argument helpers shared by the subcommands: typed flags, JSON flags, environments, outputs.

Every check here runs before any work starts, so a bad flag costs nothing, and each failure is
one line that names the flag (argparse's usage error, exit 2, or a ``DDControlError``, exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddcontrol._io import ensure_folder
from ddcontrol.errors import ConfigurationError, UnknownNameError, WriteError


def _int_at_least(low: int) -> Any:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    convert.__name__ = "integer"
    return convert


#: argparse ``type=`` for counts that must be >= 1 (steps, horizons, seeds, iterations).
positive_int = _int_at_least(1)
#: argparse ``type=`` for values that must be >= 0 (random seeds, trajectory indices).
nonnegative_int = _int_at_least(0)


def sigma_value(text: str) -> float | str:
    """argparse ``type=`` for a projection σ: ``auto`` (the σ training selected and stored) or a
    finite number > 0 (normalised units)."""
    return "auto" if text.strip().lower() == "auto" else positive_float(text)


def positive_float(text: str) -> float:
    """argparse ``type=`` for finite numbers > 0 (weights, σ, time budgets)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return value


positive_float.__name__ = "number"
sigma_value.__name__ = "number"  # argparse's "invalid number value" (and the CLI fuzz tests)


def nonnegative_float(text: str) -> float:
    """argparse ``type=`` for finite numbers >= 0 (a weight that may be zero)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return value


nonnegative_float.__name__ = "number"


def json_object(text: str, flag: str, command: str) -> dict:
    """Parse a ``--flag '{...}'`` value; exit with a clear message unless it is a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"ddcontrol {command}: {flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SystemExit(f"ddcontrol {command}: {flag} must be a JSON object")
    return value


@dataclass(frozen=True)
class EnvInfo:
    """What a command needs to know of an environment before it runs: its sizes.

    ``state_dim`` is the simulator's state size where it exposes one, else the observation size.
    """

    env_id: str
    input_dim: int
    output_dim: int
    state_dim: int


def check_env(env_id: str, env_kwargs: dict[str, Any] | None = None,
              flags: str = "--env-kwargs") -> EnvInfo:
    """Build the environment once to check ``env_id`` and ``env_kwargs``; return its sizes.

    Raises
    ------
    UnknownNameError
        ``env_id`` is not registered.
    ConfigurationError
        The environment rejects ``env_kwargs`` (unknown keyword, unknown output name...).
    """
    import gymnasium as gym
    import numpy as np

    import envs

    envs.register_envs()
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("ddcontrol/"))
        raise UnknownNameError(f"unknown environment id {env_id!r}; ddcontrol provides {known}")
    try:
        env = gym.make(env_id, **(env_kwargs or {}))
    except (TypeError, ValueError, gym.error.Error) as exc:
        message = str(exc).split(" was raised from the environment creator")[0]
        raise ConfigurationError(f"{flags} {json.dumps(env_kwargs or {})} rejected by {env_id}: "
                                 f"{message}") from exc
    try:
        dyn = getattr(env.unwrapped, "dynamics", None)
        if dyn is not None:
            return EnvInfo(env_id, int(dyn.input_dim), int(dyn.output_dim), int(dyn.state_dim))
        act = int(np.prod(env.action_space.shape or (1,)))
        obs = int(np.prod(env.observation_space.shape or (1,)))
        return EnvInfo(env_id, act, obs, obs)
    finally:
        env.close()


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def output_file(text: str, suffix: str, flag: str = "--out") -> Path:
    """Check an output *file* path before any work: not a folder, parent creatable/writable.

    ``text`` naming an existing folder, or ending with a path separator, is refused (the file
    would otherwise land beside the folder, as ``DIR.npz``).
    """
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise WriteError(f"{flag} {text} is a folder; give a file name, e.g. "
                         f"{path / ('data' + suffix)}")
    ensure_folder(path.parent, f"the folder of {flag}")
    return path


def output_folder(text: str, flag: str = "--out") -> Path:
    """Create an output folder before any work, or fail with one line (parent is a file...)."""
    return ensure_folder(Path(text), f"the {flag} folder")


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

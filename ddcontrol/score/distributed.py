"""Data-parallel training on ``torch.distributed``: process groups, the global batch, launchers.

A run is distributed when the standard environment of ``torchrun`` says so (``WORLD_SIZE`` > 1,
with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), or when ``ddcontrol train
--nproc N`` launches N local workers itself (:func:`launch_local`, which sets the same
variables). The backend is gloo on CPU and NCCL on CUDA (``cuda:LOCAL_RANK``).

Every rank draws the same global batch of ``batch_size`` window indices, noise levels and noises
from the run's one seeded generator and keeps its own contiguous slice of it
(:func:`shard_bounds`): no two ranks train on the same sample, the global batch is the
configured one, and the update equals the single-process update on the same samples (DDP
averages the per-rank mean losses' gradients). The generator state is therefore the same on
every rank, so a checkpoint resumes exactly with any number of workers. Rank 0 alone keeps the
EMA, validates, logs and writes checkpoints (atomically); a collective that fails (a worker
died) or waits longer than ``TrainConfig.dist_timeout`` raises :class:`DistributedError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ddcontrol.errors import ConfigurationError, DDControlError

__all__ = ["DistributedError", "DistContext", "context_from_env", "init_process_group",
           "shard_bounds", "launch_local", "CONFIG_ENV"]

# The launcher passes the training configuration to its workers in this variable (JSON).
CONFIG_ENV = "DDCONTROL_TRAIN_CONFIG"


class DistributedError(DDControlError, RuntimeError):
    """A distributed run failed: a worker died, a collective timed out, or a launch failed."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in a distributed run.

    Attributes
    ----------
    rank, world_size : int
        Global rank in [0, world_size) and the number of workers.
    local_rank : int
        Rank on this node (picks the GPU: ``cuda:local_rank``).
    backend : str
        ``"gloo"`` or ``"nccl"``.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, which keeps the EMA, validates, logs and checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ConfigurationError(f"distributed run: environment variable {name} is not set "
                                     "(launch with torchrun or ddcontrol train --nproc N)")
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigurationError(f"distributed run: {name}={text!r} is not an integer") from exc


def context_from_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the torchrun environment, or None if not distributed.

    Raises
    ------
    ConfigurationError
        ``WORLD_SIZE`` > 1 but ``RANK`` or the rendezvous address is missing or inconsistent.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return None
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ConfigurationError(f"distributed run: RANK={rank} is outside [0, {world})")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigurationError(f"distributed run: environment variable {name} is not set")
    return rank, world, local_rank


def init_process_group(device: str, timeout_s: float) -> tuple[DistContext, torch.device]:
    """Join the process group described by the environment; return the context and the device.

    Parameters
    ----------
    device : str
        ``"cpu"`` (gloo) or ``"cuda"``/``"cuda:N"`` (NCCL on ``cuda:LOCAL_RANK``).
    timeout_s : float
        Seconds a collective may wait for the other ranks before the run fails.
    """
    found = context_from_env()
    if found is None:
        raise ConfigurationError("init_process_group: WORLD_SIZE is not > 1")
    rank, world, local_rank = found
    if str(device).startswith("cuda"):
        backend, dev = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        backend, dev = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"rank {rank}: cannot join the process group at "
                                   f"{os.environ.get('MASTER_ADDR')}:"
                                   f"{os.environ.get('MASTER_PORT')} within {timeout_s:g} s "
                                   f"({type(exc).__name__}: {exc})") from exc
    return DistContext(rank, world, local_rank, backend), dev


def shard_bounds(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The slice ``[lo, hi)`` of the global batch that ``rank`` trains on.

    Raises
    ------
    ConfigurationError
        ``batch_size`` is not a multiple of ``world_size`` (ranks must hold equal shares for the
        averaged gradient to be the global batch's).
    """
    if batch_size % world_size:
        raise ConfigurationError(f"batch_size {batch_size} is not divisible by the number of "
                                 f"workers {world_size}")
    share = batch_size // world_size
    return rank * share, (rank + 1) * share


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small things such as a checkpoint dict)."""
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collective_error(ctx: DistContext, exc: BaseException) -> DistributedError:
    """The error a failed collective becomes (a dead peer or a timeout)."""
    return DistributedError(
        f"rank {ctx.rank} of {ctx.world_size}: a collective operation failed: another worker "
        f"died or stopped answering within the process-group timeout ({type(exc).__name__}: "
        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); rank 0's last "
        "checkpoint is intact: continue with --resume")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In a forked worker (Linux): receive SIGTERM when the launcher dies, never outlive it."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def launch_local(config: Any, nproc: int, *, grace_s: float = 5.0) -> None:
    """Run ``nproc`` local data-parallel workers of ``train(config)`` and wait for them.

    Each worker is a fresh Python process running ``train`` with the torchrun environment
    (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free
    ``MASTER_PORT``) and the configuration in ``DDCONTROL_TRAIN_CONFIG``.

    Parameters
    ----------
    config : TrainConfig
        The run; ``config.data`` and ``config.out`` must be set (workers read the dataset file,
        rank 0 writes the checkpoint).
    nproc : int
        Number of workers (>= 2).
    grace_s : float
        After a worker fails, how long the others may take to fail on their own (and print why)
        before they are terminated.

    Raises
    ------
    DistributedError
        A worker failed (its rank and exit status are named) or could not start.
    KeyboardInterrupt
        Ctrl-C: the workers stop at their next log interval and rank 0 saves a checkpoint.
    """
    if config.data is None or config.out is None:
        raise ConfigurationError("nproc > 1 needs config.data (a dataset file) and config.out "
                                 "(the workers read the data and write the checkpoint)")
    if str(config.device).startswith("cuda") and torch.cuda.device_count() < nproc:
        raise ConfigurationError(f"nproc {nproc} CUDA workers need {nproc} GPUs, "
                                 f"{torch.cuda.device_count()} are visible")
    values = dataclasses.asdict(config)
    values["nproc"] = 1
    env = {**os.environ, CONFIG_ENV: json.dumps(values), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    # As torchrun does: workers share the cores instead of each taking all of them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    procs: list[subprocess.Popen] = []
    entry = "import sys; from ddcontrol.score.distributed import _worker_main; " \
            "sys.exit(_worker_main())"
    try:
        for rank in range(nproc):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", entry],
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
    except OSError as exc:
        for p in procs:
            p.kill()
        raise DistributedError(f"cannot start the training workers: {exc}") from exc
    interrupted = False
    failed: tuple[int, int] | None = None
    while True:
        try:
            codes = [p.poll() for p in procs]
            if failed is None and not interrupted:  # after Ctrl-C, workers exit one by one
                bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
                if bad:
                    failed, deadline = bad[0], time.monotonic() + grace_s
            if all(c is not None for c in codes):
                break
            if failed is not None and time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                for p in procs:
                    p.wait()
                break
            time.sleep(0.1)
        except KeyboardInterrupt:
            # The workers got the same Ctrl-C (one process group): rank 0 saves at the next
            # log interval and they exit; wait for them (a second Ctrl-C stops them at once).
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt("training interrupted; rank 0 saved a checkpoint, continue "
                                "with --resume")
    if failed is not None:
        rank, code = failed
        raise DistributedError(f"training worker rank {rank} of {nproc} failed "
                               f"({_describe_exit(code)}); the others were stopped. Rank 0's "
                               f"last checkpoint in {config.out} is intact: continue with "
                               "--resume")


def _worker_main() -> int:
    """Entry point of a worker started by :func:`launch_local`."""
    from ddcontrol.score.train import TrainConfig, train

    values = json.loads(os.environ[CONFIG_ENV])
    values["channel_mult"] = tuple(values["channel_mult"])
    rank = int(os.environ.get("RANK", "0"))
    try:
        train(TrainConfig(**values))
    except DDControlError as exc:
        print(f"ddcontrol train (rank {rank}): error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"ddcontrol train (rank {rank}): {exc or 'interrupted'}", file=sys.stderr)
        return 130
    return 0

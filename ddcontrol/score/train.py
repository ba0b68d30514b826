"""Denoising score-matching training of a behaviour denoiser on trajectory windows.

``train(TrainConfig(...), dataset)`` fits a :class:`~ddcontrol.score.precond.BehaviorDenoiser` by
DSM with σ log-uniform in [σ_min, σ_max] and the EDM loss weighting, with AdamW, linear warm-up
then cosine decay, gradient clipping and an EMA of the weights; it validates per σ band on held-out
trajectories, logs JSON lines and writes atomic, exactly resumable checkpoints. The ``ddcontrol
train`` command line is generated from :class:`TrainConfig`.

The loop never waits for the device between log intervals: the running loss is summed on the
device and read once per ``log_every`` steps. Under ``torchrun`` (or with ``nproc`` > 1) the run
is data-parallel (:mod:`ddcontrol.score.distributed`) and gives the single-process update on
the same global batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._validation import check_positive_float, check_positive_int
from ddcontrol.data.dataset import TrajectoryDataset
from ddcontrol.data.normalize import Normalizer
from ddcontrol.data.shards import ShardedDataset, ShardWindows, load_dataset
from ddcontrol.errors import (
    CheckpointError,
    ConfigurationError,
    DDControlError,
    NonFiniteError,
    TrainingInterrupted,
    UnknownNameError,
)
from ddcontrol.score import distributed as _dist
from ddcontrol.score.checkpoint import (
    CHECKPOINT_NAME,
    TrainedModel,
    build_denoiser,
    load_model,
    model_from_payload,
    read_checkpoint,
    save_checkpoint,
)
from ddcontrol.score.networks import ARCHITECTURES
from ddcontrol.score.precond import BehaviorDenoiser
from ddcontrol.symmetry import WindowSymmetry, symmetry_for

__all__ = ["TrainConfig", "train", "lr_factor", "validation_bands"]

LOG_NAME = "log.jsonl"


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI flags are generated from these fields).

    Defaults are sized for a 2-core CPU (``benchmarks/bench_geometry.py``): at equal wall time a
    4 x 256 residual MLP beat 4 x 512 on the linear benchmark (projection error 0.021 vs 0.048 at
    σ = 0.01) and matched it on the double pendulum; 20,000 steps of batch 256 take 3-10 minutes.
    The MLP's 1/σ-gain linear branch (``linear_skip``) lifts its rank limit: validation loss at
    σ < 0.03 on the unicycle fell from 0.67 to 0.33 (floor 0.29) at equal time.
    σ is drawn log-uniformly in [0.01, 1] rather than EDM's [0.005, 5]: at equal steps it gave
    12-16% lower projection errors at σ ≤ 0.02 with the same tangent error, because the
    geometry the solvers use lives at small σ, and σ above the data scale only teaches the prior.
    On a GPU, raise ``width`` (512) or use the U-Net with ``base_channels`` 64.
    """

    data: str | None = _opt(None, "dataset file (.npz) or shard folder (--shard-size) written "
                            "by `ddcontrol generate`")
    out: str | None = _opt(None, "output folder for checkpoint.pt and log.jsonl "
                           "(None: nothing is written)")
    arch: str = _opt("mlp", "inner network: mlp (residual MLP) or unet (1-D temporal U-Net)",
                     ARCHITECTURES)
    window: int = _opt(30, "window length L in steps")
    stride: int = _opt(1, "step between window starts")
    steps: int = _opt(20000, "optimisation steps")
    batch_size: int = _opt(256, "windows per step")
    lr: float = _opt(1e-3, "peak learning rate of AdamW")
    weight_decay: float = _opt(0.0, "AdamW decoupled weight decay")
    warmup_steps: int = _opt(200, "linear learning-rate warm-up steps")
    final_lr_fraction: float = _opt(0.02, "learning rate at the end of the cosine, "
                                    "as a fraction of lr")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0: no clipping)")
    ema_decay: float = _opt(0.999, "EMA decay of the weights (warmed up as (1+t)/(10+t))")
    sigma_min: float = _opt(0.01, "smallest training noise level (normalised units)")
    sigma_max: float = _opt(1.0, "largest training noise level (normalised units)")
    sigma_data: float | None = _opt(1.0, "σ_d of the EDM preconditioning (None: measured)")
    width: int = _opt(256, "mlp: hidden width")
    depth: int = _opt(4, "mlp: residual blocks")
    linear_skip: bool = _opt(True, "mlp: add a linear map of the window with a learned ~1/σ gain")
    base_channels: int = _opt(32, "unet: channels at full resolution (64 on a GPU)")
    channel_mult: tuple[int, ...] = _opt((1, 2, 4), "unet: channel multiplier per level")
    emb_dim: int = _opt(128, "size of the noise-level embedding")
    val_fraction: float = _opt(0.1, "fraction of trajectories held out for validation")
    val_every: int = _opt(1000, "validate every this many steps (0: only at the end)")
    val_windows: int = _opt(2048, "held-out windows used per validation")
    val_bands: int = _opt(4, "σ bands (log-spaced over [σ_min, σ_max]) of the validation loss")
    checkpoint_every: int = _opt(1000, "save a checkpoint every this many steps (0: only at the "
                                 "end)")
    log_every: int = _opt(100, "write a log line every this many steps")
    symmetry: str = _opt("auto", "learn windows in the canonical frame of the system's symmetry: "
                         "auto (what the data's system declares), none or planar",
                         ("auto", "none", "planar"))
    seed: int = _opt(0, "seed of initialisation, split, batches and noise")
    select_sigma: bool = _opt(True, "at the end, choose the projection σ from the held-out "
                              "windows and store it in the checkpoint (what sigma='auto' uses; "
                              "a few seconds, the weights are unchanged)")
    device: str = _opt("cpu", "cpu or cuda (or cuda:N)")
    num_threads: int | None = _opt(None, "torch CPU threads (None: torch's default, less the "
                                   "cores other jobs keep busy, at least 1)")
    nproc: int = _opt(1, "launch this many local worker processes for data-parallel training "
                      "(1: train in this process; ignored under torchrun)")
    dist_timeout: float = _opt(300.0, "distributed: seconds a worker waits for the others in a "
                               "collective before the run fails")
    resume: bool = _opt(False, "continue from OUT/checkpoint.pt if it exists")
    overwrite: bool = _opt(False, "replace an existing checkpoint in OUT instead of failing")
    progress: bool = _opt(True, "show a progress bar")


# Fields that may differ between a run and its resumption; every other field defines the run.
_RUNTIME_FIELDS = frozenset({"data", "out", "steps", "device", "num_threads", "resume",
                             "overwrite", "progress", "log_every", "checkpoint_every",
                             "val_every", "nproc", "dist_timeout", "select_sigma"})


def _validate(cfg: TrainConfig) -> None:
    if cfg.arch not in ARCHITECTURES:
        raise UnknownNameError(f"unknown architecture {cfg.arch!r}; choose one of "
                               f"{list(ARCHITECTURES)}")
    for name in ("window", "stride", "steps", "batch_size", "width", "depth", "base_channels",
                 "emb_dim", "val_windows", "val_bands", "log_every", "nproc"):
        check_positive_int(getattr(cfg, name), name)
    for name in ("warmup_steps", "val_every", "checkpoint_every", "seed"):
        check_positive_int(getattr(cfg, name), name, allow_zero=True)
    for name in ("lr", "sigma_min", "sigma_max", "dist_timeout"):
        check_positive_float(getattr(cfg, name), name)
    for name in ("weight_decay", "grad_clip", "final_lr_fraction"):
        check_positive_float(getattr(cfg, name), name, allow_zero=True)
    if cfg.sigma_data is not None:
        check_positive_float(cfg.sigma_data, "sigma_data")
    if cfg.sigma_min >= cfg.sigma_max:
        raise ConfigurationError(f"sigma_min ({cfg.sigma_min}) must be < sigma_max "
                                 f"({cfg.sigma_max})")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigurationError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigurationError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.device not in ("cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigurationError(f"device must be cpu or cuda, got {cfg.device!r}")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError("device cuda requested but CUDA is not available")
    if cfg.num_threads is not None:
        check_positive_int(cfg.num_threads, "num_threads")


def lr_factor(step: int, warmup: int, total: int, final_fraction: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine down to ``final_fraction``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def validation_bands(sigma_min: float, sigma_max: float, bands: int) -> list[tuple[float, float]]:
    """``bands`` log-spaced (low, high) σ intervals covering [sigma_min, sigma_max]."""
    edges = np.geomspace(sigma_min, sigma_max, bands + 1)
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


def _sample_sigma(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device
                  ) -> Tensor:
    u = torch.rand(n, generator=gen, device=device)
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)


@torch.no_grad()
def _validate_loss(model: BehaviorDenoiser, windows: Tensor, cfg: TrainConfig
                   ) -> dict[str, float]:
    """EDM-weighted DSM loss per σ band on fixed held-out noise (same draws every call)."""
    gen = torch.Generator(device=windows.device).manual_seed(cfg.seed + 1_000_003)
    out: dict[str, float] = {}
    losses = []
    for lo, hi in validation_bands(cfg.sigma_min, cfg.sigma_max, cfg.val_bands):
        total = 0.0
        for start in range(0, windows.shape[0], 1024):
            clean = windows[start:start + 1024]
            sigma = _sample_sigma(clean.shape[0], lo, hi, gen, windows.device)
            noise = torch.randn(clean.shape, generator=gen, device=windows.device)
            total += float(model.loss(clean, sigma, noise).sum())
        loss = total / windows.shape[0]
        out[f"{lo:.3g}-{hi:.3g}"] = loss
        losses.append(loss)
    out["mean"] = float(np.mean(losses))
    return out


class _StopFlag:
    """SIGINT sets a flag checked between steps, so Ctrl-C saves a consistent checkpoint.

    A second Ctrl-C interrupts at once. Only installed in the main thread.
    """

    def __init__(self) -> None:
        self.stop = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _merge_resumed(cfg: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """The checkpoint's run-defining fields with this call's runtime fields."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in known}
    if "channel_mult" in merged:
        merged["channel_mult"] = tuple(merged["channel_mult"])
    changed = [k for k, v in merged.items()
               if k not in _RUNTIME_FIELDS and v != getattr(cfg, k)]
    if changed:
        warnings.warn(f"resuming: keeping the checkpoint's {', '.join(sorted(changed))} "
                      "(the given values differ)", stacklevel=3)
    for k in _RUNTIME_FIELDS:
        merged[k] = getattr(cfg, k)
    return TrainConfig(**merged)


def _model_spec(cfg: TrainConfig, dataset: TrajectoryDataset, sigma_data: float) -> dict:
    if cfg.arch == "mlp":
        net_kwargs = {"width": cfg.width, "depth": cfg.depth, "emb_dim": cfg.emb_dim,
                      "linear_skip": cfg.linear_skip}
    else:
        net_kwargs = {"base_channels": cfg.base_channels,
                      "channel_mult": list(cfg.channel_mult), "emb_dim": cfg.emb_dim}
    return {"arch": cfg.arch, "window_length": cfg.window, "input_dim": dataset.input_dim,
            "output_dim": dataset.output_dim, "sigma_data": sigma_data, "net_kwargs": net_kwargs}


def _held_out(val: TrajectoryDataset | None, cfg: TrainConfig, device: torch.device,
              symmetry: WindowSymmetry, normalizer: Normalizer) -> Tensor | None:
    if val is None or val.length < cfg.window:
        return None
    w = normalizer.normalize(symmetry.windows(val, cfg.window, cfg.stride))
    if w.shape[0] > cfg.val_windows:  # evenly spread, deterministic subsample
        w = w[np.linspace(0, w.shape[0] - 1, cfg.val_windows).astype(int)]
    return torch.as_tensor(w, dtype=torch.float32, device=device)


def _sharded_windows(cfg: TrainConfig, dataset: ShardedDataset, device: torch.device
                     ) -> tuple[ShardWindows, Tensor | None, Normalizer, WindowSymmetry]:
    """Training windows read on demand, held-out windows, normaliser and symmetry of a
    sharded dataset: the same split, windows and held-out subsample as for the dataset in
    memory. With a symmetry, the canonical windows' statistics come from an evenly spread
    sample of at most 20,000 windows."""
    n = dataset.num_trajectories
    if cfg.val_fraction > 0 and n >= 2:
        train_ids, val_ids = dataset.split_indices(1.0 - cfg.val_fraction, seed=cfg.seed)
    else:
        train_ids, val_ids = np.arange(n), None
    symmetry = symmetry_for(dataset.metadata, dataset.input_dim, cfg.symmetry)
    normalizer = dataset.normalizer
    if not symmetry.is_identity:
        every = dataset.window_source(cfg.window, cfg.stride, np.arange(n), normalizer)
        sample = np.linspace(0, len(every) - 1, min(len(every), 20_000)).astype(np.int64)
        normalizer = symmetry.fit_normalizer(symmetry.canonicalize(every.physical(sample))[0],
                                             dataset.input_dim)
    windows = dataset.window_source(cfg.window, cfg.stride, train_ids, normalizer, symmetry,
                                    device)
    val_windows = None
    if val_ids is not None:
        val = dataset.window_source(cfg.window, cfg.stride, val_ids, normalizer, symmetry,
                                    device)
        pick = np.arange(len(val))
        if len(val) > cfg.val_windows:  # evenly spread, deterministic subsample
            pick = np.linspace(0, len(val) - 1, cfg.val_windows).astype(int)
        val_windows = val.gather(pick)
    return windows, val_windows, normalizer, symmetry


class _Logger:
    """Appends JSON lines to OUT/log.jsonl (nothing without an output folder)."""

    def __init__(self, out: Path | None) -> None:
        self.path = out / LOG_NAME if out is not None else None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def train(config: TrainConfig, dataset: TrajectoryDataset | ShardedDataset | None = None, *,
          callback: Callable[[int, dict[str, Any]], bool | None] | None = None) -> TrainedModel:
    """Train a behaviour denoiser by denoising score matching.

    Parameters
    ----------
    config : TrainConfig
        The run; ``config.data`` is read when ``dataset`` is None.
    dataset : TrajectoryDataset or ShardedDataset, optional
        Training data; its normaliser defines the model's units. ``val_fraction`` of its
        trajectories are held out for validation. A sharded dataset is read window by window
        from disk (the same split, batches and result as the same data in memory).
    callback : callable, optional
        ``callback(step, record)`` after every completed step; ``record["lr"]`` is a float and
        ``record["loss"]`` the step's batch loss as a 0-d tensor on the training device (its
        ``float()`` waits for the device: a callback that needs it every step gives up the
        asynchronous loop). Returning True stops training early: a checkpoint is saved and the
        model returned, and ``resume=True`` later continues exactly (as Ctrl-C does). In a
        distributed run every rank calls its callback, and a stop takes effect at the next log
        interval (all ranks stop at the same step).

    Returns
    -------
    TrainedModel
        EMA denoiser in eval mode with its normaliser and metadata.

    Raises
    ------
    ConfigurationError, UnknownNameError
        Invalid configuration, or OUT already holds a checkpoint (without resume/overwrite).
    CheckpointError
        ``resume`` with a checkpoint from other data or a corrupt checkpoint.
    DataFormatError
        ``config.data`` cannot be read.
    DistributedError
        A distributed run lost a worker or a collective timed out (``dist_timeout``).

    Notes
    -----
    On CPU a run is deterministic for a seed, and a resumed run is bitwise the uninterrupted one.
    Resuming keeps the checkpoint's run-defining fields (architecture, σ range, lr...) and takes
    the runtime ones (``steps``, ``device``, logging) from ``config``; a larger ``steps`` stretches
    the cosine schedule from the current step on.

    Distributed (``torchrun``, or ``nproc`` > 1 which launches local workers and returns the
    model rank 0 saved): every rank takes its slice of the same global batch (see
    :mod:`ddcontrol.score.distributed`), so the run equals the single-process one up to
    floating-point summation order; rank 0 keeps the EMA, validates, logs and checkpoints.
    """
    cfg = dataclasses.replace(config)
    if isinstance(cfg.channel_mult, list):
        cfg.channel_mult = tuple(cfg.channel_mult)
    _validate(cfg)
    if dataset is None:
        if cfg.data is None:
            raise ConfigurationError("give a dataset or config.data (path to a .npz dataset or "
                                     "a shard directory)")
        dataset = load_dataset(cfg.data)
    if dataset.length < cfg.window:
        raise ConfigurationError(f"window {cfg.window} is longer than the trajectories "
                                 f"({dataset.length} steps)")
    if _dist.context_from_env() is not None:
        return _train_distributed(cfg, dataset, callback)
    cfg, saved = _prepare(cfg, dataset)
    if cfg.nproc > 1:
        _dist.shard_bounds(cfg.batch_size, 0, cfg.nproc)  # fail here, not in every worker
        _dist.launch_local(cfg, cfg.nproc)
        return load_model(cfg.out, cfg.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads or _free_threads(threads))
    try:
        return _run(cfg, dataset, saved, callback, None)
    finally:
        torch.set_num_threads(threads)


def _train_distributed(cfg: TrainConfig, dataset: TrajectoryDataset,
                       callback: Callable[[int, dict[str, Any]], bool | None] | None
                       ) -> TrainedModel:
    """:func:`train` as one rank of a process group described by the environment."""
    import torch.distributed as dist

    owns_group = not dist.is_initialized()
    ctx, device = _dist.init_process_group(cfg.device, cfg.dist_timeout)
    threads = torch.get_num_threads()
    try:
        # Rank 0 checks OUT and reads the checkpoint; every rank gets its verdict.
        outcome: tuple[Any, ...] | None = None
        if ctx.is_main:
            try:
                outcome = ("ok", *_prepare(cfg, dataset))
            except DDControlError as exc:
                outcome = ("error", exc)
        try:
            outcome = _dist.broadcast_object(outcome, ctx)
        except RuntimeError as exc:
            raise _dist.collective_error(ctx, exc) from exc
        if outcome[0] == "error":
            raise outcome[1]
        run_cfg, saved = outcome[1], outcome[2]
        run_cfg = dataclasses.replace(run_cfg, device=str(device))
        _dist.shard_bounds(run_cfg.batch_size, ctx.rank, ctx.world_size)  # divisible?
        torch.set_num_threads(run_cfg.num_threads or _free_threads(threads))
        return _run(run_cfg, dataset, saved, callback, ctx)
    finally:
        torch.set_num_threads(threads)
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _free_threads(cores: int) -> int:
    """Threads for ``num_threads=None``: torch's default ``cores`` less those other processes
    keep busy (1-minute load average, this process counted as 1), at least 1.

    On the shared 2-core machine (load average 11-12) the demo's model trained at 3.9 steps/s
    with 1 thread and 0.45 with 2 (``benchmarks/bench_training.py``): oversubscribed threads
    wait for each other at every operation, so a busy machine gets one thread.
    """
    try:
        busy = max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):  # no load average (Windows)
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def _prepare(cfg: TrainConfig, dataset: TrajectoryDataset
             ) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Check OUT and read the checkpoint to resume: the run's configuration and saved state."""
    out = Path(cfg.out) if cfg.out is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    saved = None
    if ckpt_path is not None and ckpt_path.exists():
        if cfg.resume:
            saved = read_checkpoint(ckpt_path)
            if saved["metadata"].get("fingerprint") != dataset.fingerprint():
                raise CheckpointError(f"{ckpt_path} was trained on other data (fingerprint "
                                      f"{saved['metadata'].get('fingerprint')}, this dataset "
                                      f"{dataset.fingerprint()}); use another --out")
            cfg = _merge_resumed(cfg, saved["config"])
            _validate(cfg)
        elif not cfg.overwrite:
            raise ConfigurationError(f"{ckpt_path} exists; pass resume=True (--resume) to "
                                     "continue it or overwrite=True (--overwrite) to replace it")
    return cfg, saved


class _MeanLoss(torch.nn.Module):
    """The batch-mean DSM loss as a ``forward`` (what DistributedDataParallel wraps)."""

    def __init__(self, model: BehaviorDenoiser) -> None:
        super().__init__()
        self.model = model

    def forward(self, clean: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
        return self.model.loss(clean, sigma, noise).mean()


class _Session:
    """Model, EMA, optimiser, schedule, generator and step of one run: what a checkpoint holds.

    In a distributed run (``ctx``) the model is wrapped in DistributedDataParallel, every rank
    draws the same global batch and trains on its slice, and only rank 0 updates the EMA.
    """

    def __init__(self, cfg: TrainConfig, spec: dict[str, Any], device: torch.device,
                 ctx: _dist.DistContext | None = None) -> None:
        self.cfg, self.spec, self.ctx = cfg, spec, ctx
        with torch.random.fork_rng(devices=[]):  # seeded init, global stream untouched
            torch.manual_seed(cfg.seed)
            self.model = build_denoiser(spec).to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.loss_fn: torch.nn.Module = _MeanLoss(self.model)
        self.shard = (0, cfg.batch_size)
        if ctx is not None:
            from torch.nn.parallel import DistributedDataParallel

            self.shard = _dist.shard_bounds(cfg.batch_size, ctx.rank, ctx.world_size)
            self.loss_fn = DistributedDataParallel(
                self.loss_fn, device_ids=[device.index] if device.type == "cuda" else None)
        self._params = list(self.model.parameters())
        self._ema_params = list(self.ema.parameters())
        # The fused AdamW kernel: one pass over all parameters (on CPU 9-11 ms instead of
        # 22-34 ms per step for the demo's 2.4 M-parameter MLP). A resumed run keeps the
        # implementation its checkpoint was written with (exact resumption).
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay,
                                     fused=device.type in ("cpu", "cuda") or None)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.final_lr_fraction))
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.step = 0
        self.val: dict[str, float] | None = None
        self._log_sigma = (math.log(cfg.sigma_min), math.log(cfg.sigma_max))

    def restore(self, saved: dict[str, Any], where: str) -> None:
        """Continue from a checkpoint dict written by :meth:`state`."""
        try:
            self.model.load_state_dict(saved["weights"])
            self.ema.load_state_dict(saved["ema"])
            self.opt.load_state_dict(saved["optimizer"])
            self.sched.load_state_dict(saved["scheduler"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{where}: cannot restore the training state "
                                  f"({type(exc).__name__}: {exc})") from exc
        self.step = int(saved["step"])
        try:
            self.gen.set_state(saved["rng"].cpu())
        except (KeyError, RuntimeError, TypeError):
            # CPU and CUDA generators have different states: resuming on another device
            # continues with a fresh, still seeded stream (not bitwise the uninterrupted run).
            self.gen.manual_seed(self.cfg.seed + self.step)
            warnings.warn(f"{where}: generator state is from another device; continuing "
                          "with a reseeded stream", stacklevel=3)
        self.val = saved["metadata"].get("val")

    def state(self) -> dict[str, Any]:
        """The training-state entries of a checkpoint."""
        return {"model": self.spec, "ema": self.ema.state_dict(),
                "weights": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": self.gen.get_state(),
                "step": self.step, "config": dataclasses.asdict(self.cfg)}

    def train_step(self, windows: Tensor | Any) -> Tensor:
        """One DSM step on a random batch; returns the (detached, on-device) batch loss.

        ``windows`` is a tensor (N, L, C) of normalised windows, or a window source with
        ``len()``, ``shape`` and ``gather(idx) -> Tensor (len(idx), L, C)`` on this device.
        The whole batch is drawn with tensor operations (no Python loop, no host sync); in a
        distributed run every rank draws the global batch and keeps its slice ``self.shard``.
        """
        cfg, gen, dev = self.cfg, self.gen, self._params[0].device
        n, length, channels = windows.shape
        idx = torch.randint(n, (cfg.batch_size,), generator=gen, device=dev)
        u = torch.rand(cfg.batch_size, generator=gen, device=dev)
        noise = torch.randn((cfg.batch_size, length, channels), generator=gen, device=dev)
        lo, hi = self.shard
        if (lo, hi) != (0, cfg.batch_size):
            idx, u, noise = idx[lo:hi], u[lo:hi], noise[lo:hi]
        sigma = torch.exp(self._log_sigma[0] + (self._log_sigma[1] - self._log_sigma[0]) * u)
        clean = windows[idx] if isinstance(windows, Tensor) else windows.gather(idx)
        loss = self.loss_fn(clean, sigma, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip, foreach=True)
        self.opt.step()
        self.sched.step()
        self.step += 1
        if self.ctx is None or self.ctx.is_main:
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))
                torch._foreach_lerp_(self._ema_params, self._params, 1.0 - decay)
        return loss.detach()

    def share_ema(self) -> None:
        """Distributed: copy rank 0's EMA weights to every rank (collective)."""
        import torch.distributed as dist

        if self.ctx is not None:
            for p in self._ema_params:
                dist.broadcast(p.data, src=0)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])


def _reduce_log(mean_loss: Tensor, stop: bool, ctx: _dist.DistContext | None
                ) -> tuple[float, bool]:
    """The log interval's mean loss (over all ranks) and whether any rank asked to stop."""
    if ctx is None:
        return float(mean_loss), stop
    import torch.distributed as dist

    both = torch.stack([mean_loss.detach().float(),
                        torch.tensor(float(stop), device=mean_loss.device)])
    dist.all_reduce(both)
    return float(both[0]) / ctx.world_size, bool(both[1] > 0)


def _run(cfg: TrainConfig, dataset: TrajectoryDataset, saved: dict[str, Any] | None,
         callback: Callable[[int, dict[str, Any]], bool | None] | None,
         ctx: _dist.DistContext | None) -> TrainedModel:
    """The training loop of :func:`train` (configuration validated, checkpoint read).

    ``ctx``: this rank of a distributed run (None: single process). Only rank 0 writes.
    """
    device = torch.device(cfg.device)
    main = ctx is None or ctx.is_main
    out = Path(cfg.out) if cfg.out is not None and main else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    if isinstance(dataset, ShardedDataset):  # windows read from disk per batch
        windows, val_windows, normalizer, symmetry = _sharded_windows(cfg, dataset, device)
    else:
        if cfg.val_fraction > 0 and dataset.num_trajectories >= 2:
            train_ds, val_ds = dataset.split(1.0 - cfg.val_fraction, seed=cfg.seed)
        else:
            train_ds, val_ds = dataset, None
        # The model learns canonical windows (the identity for systems without a symmetry), with
        # statistics of the canonical windows of the whole dataset.
        symmetry = symmetry_for(dataset.metadata, dataset.input_dim, cfg.symmetry)
        normalizer = (dataset.normalizer if symmetry.is_identity else symmetry.fit_normalizer(
            symmetry.windows(dataset, cfg.window, cfg.stride), dataset.input_dim))
        windows = torch.as_tensor(normalizer.normalize(symmetry.windows(train_ds, cfg.window,
                                                                        cfg.stride)),
                                  dtype=torch.float32, device=device)
        val_windows = _held_out(val_ds, cfg, device, symmetry, normalizer)
    if saved is not None:
        sigma_data = float(saved["model"]["sigma_data"])
    else:
        sigma_data = float(windows.std()) if cfg.sigma_data is None else float(cfg.sigma_data)
    run = _Session(cfg, _model_spec(cfg, dataset, sigma_data), device, ctx)
    if saved is not None:
        run.restore(saved, str(ckpt_path))
    metadata = {**dataset.metadata, "fingerprint": dataset.fingerprint(),
                "num_trajectories": dataset.num_trajectories, "window_symmetry": symmetry.to_spec()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if saved is None and ckpt_path is not None and ckpt_path.exists():
            (out / LOG_NAME).unlink(missing_ok=True)  # overwrite: start a fresh log
    log = _Logger(out)

    extra: dict[str, Any] = {}  # sigma_selection, once made

    def payload() -> dict[str, Any]:
        return {**run.state(), "normalizer": normalizer.to_dict(),
                "metadata": {**metadata, "val": run.val}, **extra}

    def checkpoint() -> None:
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, payload())

    def validate() -> None:
        if val_windows is not None and main:
            run.val = _validate_loss(run.ema, val_windows, cfg)
            log({"step": run.step, "val": run.val})

    if saved is None:
        log({"event": "start", "config": dataclasses.asdict(cfg), "windows": len(windows),
             "val_windows": 0 if val_windows is None else len(val_windows),
             "parameters": sum(p.numel() for p in run.model.parameters()),
             "metadata": metadata})
    else:
        log({"event": "resume", "step": run.step})
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=run.step, disable=not (cfg.progress and main),
               desc="training", unit="step", dynamic_ncols=True)
    # The running loss stays on the device and is read once per log interval: no host sync
    # per step (matters on CUDA). Distributed: one all-reduce per log interval carries the
    # loss and any rank's request to stop, so that every rank stops at the same step.
    loss_sum, loss_n, t0 = torch.zeros((), device=device), 0, time.perf_counter()
    stopped = pending_stop = False
    run.model.train()
    with _StopFlag() as flag:
        try:
            while run.step < cfg.steps:
                loss = run.train_step(windows)
                loss_sum += loss
                loss_n += 1
                bar.update(1)
                step = run.step
                user_stop = callback is not None and bool(
                    callback(step, {"loss": loss, "lr": run.lr}))
                pending_stop = pending_stop or flag.stop or user_stop
                at_log = step % cfg.log_every == 0 or step == cfg.steps
                if at_log:
                    mean, pending_stop = _reduce_log(loss_sum / loss_n, pending_stop, ctx)
                    if not math.isfinite(mean):  # stop: a NaN model is no result to save
                        raise NonFiniteError(
                            f"the training loss is {mean} at step {step}; stopped without "
                            "saving (an earlier checkpoint is kept): check the data (its "
                            "normalisation statistics) or lower the learning rate")
                    log({"step": step, "loss": mean, "lr": run.lr,
                         "time_s": round(time.perf_counter() - t0, 3)})
                    bar.set_postfix(loss=f"{mean:.4f}")
                    loss_sum.zero_()
                    loss_n = 0
                if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps:
                    validate()
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    checkpoint()
                if pending_stop and step < cfg.steps and (ctx is None or at_log):
                    stopped = True
                    break
            if ctx is not None:
                run.share_ema()
        except RuntimeError as exc:
            if ctx is None:
                raise
            raise _dist.collective_error(ctx, exc) from exc
    bar.close()
    if not stopped:
        validate()
    checkpoint()
    elapsed = round(time.perf_counter() - t0, 3)  # training time (the selection is logged apart)
    model = model_from_payload(payload(), device)
    if cfg.select_sigma and not (stopped or flag.stop) and main and val_windows is not None:
        # σ for sigma="auto" from the held-out windows, with the EMA weights as saved (a copy:
        # the trained weights and the training state are untouched). The checkpoint is saved
        # first, so that an interruption here loses no training.
        from ddcontrol.score.sigma import auto_sigma_selection_windows

        t_sel = time.perf_counter()
        try:
            selection = auto_sigma_selection_windows(model, val_windows)
        except (DDControlError, RuntimeError, ValueError) as exc:
            warnings.warn(f"no σ stored: the selection from the held-out windows failed "
                          f"({type(exc).__name__}: {exc}); sigma='auto' will select one "
                          "from the dataset", stacklevel=3)
        else:
            extra["sigma_selection"] = selection.as_dict()
            model.sigma_selection = selection.as_dict()
            checkpoint()
            log({"event": "sigma", "sigma": selection.sigma, "grid": list(selection.grid),
                 "errors": list(selection.errors), "t_ini": selection.t_ini,
                 "windows": selection.windows,
                 "time_s": round(time.perf_counter() - t_sel, 3)})
    log({"event": "stopped" if stopped else "done", "step": run.step, "time_s": elapsed})
    if flag.stop:
        raise TrainingInterrupted(run.step, None if ckpt_path is None else str(ckpt_path))
    return model

"""Denoising score-matching training of a behaviour denoiser on trajectory windows.

``train(TrainConfig(...), dataset)`` fits a :class:`~ddcontrol.score.precond.BehaviorDenoiser` by
DSM with σ log-uniform in [σ_min, σ_max] and the EDM loss weighting, with AdamW, linear warm-up
then cosine decay, gradient clipping and an EMA of the weights; it validates per σ band on held-out
trajectories, logs JSON lines and writes atomic, exactly resumable checkpoints. The ``ddcontrol
train`` command line is generated from :class:`TrainConfig`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
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
from ddcontrol.errors import CheckpointError, ConfigurationError, UnknownNameError
from ddcontrol.score.checkpoint import (
    CHECKPOINT_NAME,
    TrainedModel,
    build_denoiser,
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

    data: str | None = _opt(None, "dataset file (.npz) written by `ddcontrol generate`")
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
    device: str = _opt("cpu", "cpu or cuda (or cuda:N)")
    num_threads: int | None = _opt(None, "torch CPU threads (None: torch's default)")
    resume: bool = _opt(False, "continue from OUT/checkpoint.pt if it exists")
    overwrite: bool = _opt(False, "replace an existing checkpoint in OUT instead of failing")
    progress: bool = _opt(True, "show a progress bar")


# Fields that may differ between a run and its resumption; every other field defines the run.
_RUNTIME_FIELDS = frozenset({"data", "out", "steps", "device", "num_threads", "resume",
                             "overwrite", "progress", "log_every", "checkpoint_every",
                             "val_every"})


def _validate(cfg: TrainConfig) -> None:
    if cfg.arch not in ARCHITECTURES:
        raise UnknownNameError(f"unknown architecture {cfg.arch!r}; choose one of "
                               f"{list(ARCHITECTURES)}")
    for name in ("window", "stride", "steps", "batch_size", "width", "depth", "base_channels",
                 "emb_dim", "val_windows", "val_bands", "log_every"):
        check_positive_int(getattr(cfg, name), name)
    for name in ("warmup_steps", "val_every", "checkpoint_every", "seed"):
        check_positive_int(getattr(cfg, name), name, allow_zero=True)
    for name in ("lr", "sigma_min", "sigma_max"):
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
    if val is None or val.horizon < cfg.window:
        return None
    w = normalizer.normalize(symmetry.windows(val, cfg.window, cfg.stride))
    if w.shape[0] > cfg.val_windows:  # evenly spread, deterministic subsample
        w = w[np.linspace(0, w.shape[0] - 1, cfg.val_windows).astype(int)]
    return torch.as_tensor(w, dtype=torch.float32, device=device)


class _Logger:
    """Appends JSON lines to OUT/log.jsonl (nothing without an output folder)."""

    def __init__(self, out: Path | None) -> None:
        self.path = out / LOG_NAME if out is not None else None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def train(config: TrainConfig, dataset: TrajectoryDataset | None = None, *,
          callback: Callable[[int, dict[str, Any]], bool | None] | None = None) -> TrainedModel:
    """Train a behaviour denoiser by denoising score matching.

    Parameters
    ----------
    config : TrainConfig
        The run; ``config.data`` is read when ``dataset`` is None.
    dataset : TrajectoryDataset, optional
        Training data; its normaliser defines the model's units. ``val_fraction`` of its
        trajectories are held out for validation.
    callback : callable, optional
        ``callback(step, record)`` after every completed step (``record`` has ``loss``, ``lr``);
        returning True stops training early: a checkpoint is saved and the model returned, and
        ``resume=True`` later continues exactly (as Ctrl-C does).

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

    Notes
    -----
    On CPU a run is deterministic for a seed, and a resumed run is bitwise the uninterrupted one.
    Resuming keeps the checkpoint's run-defining fields (architecture, σ range, lr...) and takes
    the runtime ones (``steps``, ``device``, logging) from ``config``; a larger ``steps`` stretches
    the cosine schedule from the current step on.
    """
    cfg = dataclasses.replace(config)
    if isinstance(cfg.channel_mult, list):
        cfg.channel_mult = tuple(cfg.channel_mult)
    _validate(cfg)
    if dataset is None:
        if cfg.data is None:
            raise ConfigurationError("give a dataset or config.data (path to a .npz dataset)")
        dataset = TrajectoryDataset.load(cfg.data)
    if dataset.horizon < cfg.window:
        raise ConfigurationError(f"window {cfg.window} is longer than the trajectories "
                                 f"({dataset.horizon} steps)")
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
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _run(cfg, dataset, saved, callback)
    finally:
        torch.set_num_threads(threads)


class _Session:
    """Model, EMA, optimiser, schedule, generator and step of one run: what a checkpoint holds."""

    def __init__(self, cfg: TrainConfig, spec: dict[str, Any], device: torch.device) -> None:
        self.cfg, self.spec = cfg, spec
        with torch.random.fork_rng(devices=[]):  # seeded init, global stream untouched
            torch.manual_seed(cfg.seed)
            self.model = build_denoiser(spec).to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
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

    def train_step(self, windows: Tensor) -> Tensor:
        """One DSM step on a random batch; returns the (detached) batch loss."""
        cfg, gen, dev = self.cfg, self.gen, windows.device
        idx = torch.randint(windows.shape[0], (cfg.batch_size,), generator=gen, device=dev)
        u = torch.rand(cfg.batch_size, generator=gen, device=dev)
        sigma = torch.exp(self._log_sigma[0] + (self._log_sigma[1] - self._log_sigma[0]) * u)
        clean = windows[idx]
        noise = torch.randn(clean.shape, generator=gen, device=dev)
        loss = self.model.loss(clean, sigma, noise).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        return loss.detach()

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])


def _run(cfg: TrainConfig, dataset: TrajectoryDataset, saved: dict[str, Any] | None,
         callback: Callable[[int, dict[str, Any]], bool | None] | None) -> TrainedModel:
    """The training loop of :func:`train` (configuration validated, checkpoint read)."""
    device = torch.device(cfg.device)
    out = Path(cfg.out) if cfg.out is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
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
    run = _Session(cfg, _model_spec(cfg, dataset, sigma_data), device)
    if saved is not None:
        run.restore(saved, str(ckpt_path))
    metadata = {**dataset.metadata, "fingerprint": dataset.fingerprint(),
                "num_trajectories": dataset.num_trajectories, "window_symmetry": symmetry.to_spec()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if saved is None and ckpt_path is not None and ckpt_path.exists():
            (out / LOG_NAME).unlink(missing_ok=True)  # overwrite: start a fresh log
    log = _Logger(out)

    def payload() -> dict[str, Any]:
        return {**run.state(), "normalizer": normalizer.to_dict(),
                "metadata": {**metadata, "val": run.val}}

    def checkpoint() -> None:
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, payload())

    def validate() -> None:
        if val_windows is not None:
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

    bar = tqdm(total=cfg.steps, initial=run.step, disable=not cfg.progress, desc="training",
               unit="step", dynamic_ncols=True)
    # The running loss stays on the device: no host sync per step (matters on CUDA).
    loss_sum, loss_n, t0 = torch.zeros((), device=device), 0, time.perf_counter()
    stopped = False
    run.model.train()
    with _StopFlag() as flag:
        while run.step < cfg.steps:
            loss = run.train_step(windows)
            loss_sum += loss
            loss_n += 1
            bar.update(1)
            step = run.step
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean = float(loss_sum) / loss_n
                log({"step": step, "loss": mean, "lr": run.lr,
                     "time_s": round(time.perf_counter() - t0, 3)})
                bar.set_postfix(loss=f"{mean:.4f}")
                loss_sum.zero_()
                loss_n = 0
            if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps:
                validate()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoint()
            user_stop = callback is not None and bool(
                callback(step, {"loss": float(loss), "lr": run.lr}))
            if (flag.stop or user_stop) and step < cfg.steps:
                stopped = True
                break
    bar.close()
    if not stopped:
        validate()
    checkpoint()
    log({"event": "stopped" if stopped else "done", "step": run.step,
         "time_s": round(time.perf_counter() - t0, 3)})
    if flag.stop:
        raise KeyboardInterrupt(f"training interrupted at step {run.step}; checkpoint saved, "
                                "continue with resume=True")
    return model_from_payload(payload(), device)

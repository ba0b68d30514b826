"""Checkpoints of trained denoisers: atomic save, validated load, and the ``TrainedModel`` bundle.

A checkpoint is one ``torch.save`` file (read back with ``weights_only=True``, so loading never
executes code) holding a dict:

================  ==============================================================================
key               content
================  ==============================================================================
format_version    int, :data:`CHECKPOINT_VERSION`
model             architecture spec: arch, window_length, input_dim, output_dim, sigma_data and
                  the inner network's keyword arguments (see :func:`build_denoiser`)
ema, weights      state dicts of the EMA and the raw (optimised) denoiser
optimizer         AdamW state dict; ``scheduler``: LR schedule state dict
rng               state of the training generator (batches, σ and noise all come from it)
step              number of completed optimisation steps
config            the ``TrainConfig`` as a dict
normalizer        ``Normalizer.to_dict()`` of the training data
metadata          the dataset's metadata (env id, kwargs, dt, channel names...) plus
                  ``fingerprint``, ``num_trajectories`` and the last validation losses
sigma_selection   optional: the projection σ chosen from held-out data and its sweep
                  (:func:`ddcontrol.score.sigma.store_sigma`); older checkpoints lack it
================  ==============================================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcontrol._io import atomic_write
from ddcontrol._validation import check_device
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import CheckpointError, DDControlError
from ddcontrol.score.networks import build_network
from ddcontrol.score.precond import BehaviorDenoiser
from ddcontrol.symmetry import WindowSymmetry, symmetry_from_spec

__all__ = ["CHECKPOINT_VERSION", "CHECKPOINT_NAME", "TrainedModel", "build_denoiser",
           "save_checkpoint", "read_checkpoint", "resolve_checkpoint", "model_from_payload",
           "load_model"]

CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
_REQUIRED = ("format_version", "model", "ema", "weights", "step", "config", "normalizer",
             "metadata")


def build_denoiser(spec: dict[str, Any]) -> BehaviorDenoiser:
    """A freshly initialised denoiser from an architecture ``spec`` (the checkpoint's ``model``).

    ``spec`` holds ``arch``, ``window_length``, ``input_dim``, ``output_dim``, ``sigma_data`` and
    ``net_kwargs`` (forwarded to :func:`~ddcontrol.score.networks.build_network`).
    """
    channels = int(spec["input_dim"]) + int(spec["output_dim"])
    net_kwargs = dict(spec.get("net_kwargs", {}))
    if spec["arch"] == "mlp":
        # Checkpoints written before the MLP had its linear branch have no such entry.
        net_kwargs.setdefault("linear_skip", False)
    net = build_network(spec["arch"], int(spec["window_length"]), channels, **net_kwargs)
    return BehaviorDenoiser(net, int(spec["window_length"]), channels, float(spec["sigma_data"]))


@dataclass
class TrainedModel:
    """A trained denoiser with everything needed to use it on physical data.

    Attributes
    ----------
    denoiser : BehaviorDenoiser
        EMA weights, eval mode, parameters frozen (solvers differentiate w.r.t. x only).
    normalizer : Normalizer
        Maps physical windows to the normalised units the denoiser works in.
    window_length, input_dim, output_dim : int
        L, m and p of the windows ``(B, L, m + p)``, inputs first.
    metadata : dict
        Dataset metadata (``env_id``, ``env_kwargs``, ``dt``, channel names...), ``fingerprint``
        of the training data, ``step``, last validation losses ``val``.
    config : dict
        The training configuration.
    sigma_selection : dict, optional
        The projection σ chosen from held-out data (``sigma``) and its sweep, if stored.
    """

    denoiser: BehaviorDenoiser
    normalizer: Normalizer
    window_length: int
    input_dim: int
    output_dim: int
    metadata: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    sigma_selection: dict[str, Any] | None = None

    @property
    def sigma(self) -> float | None:
        """The stored data-selected projection σ (normalised units), or None."""
        return None if self.sigma_selection is None else float(self.sigma_selection["sigma"])

    @property
    def channels(self) -> int:
        """C = m + p."""
        return self.input_dim + self.output_dim

    @property
    def env_id(self) -> str | None:
        """Gymnasium id of the system the training data came from, if known."""
        return self.metadata.get("env_id")

    @property
    def sigma_data(self) -> float:
        """σ_d of the preconditioning (normalised units)."""
        return self.denoiser.sigma_data

    @property
    def symmetry(self) -> WindowSymmetry:
        """The group action whose canonical frame the model's windows are in (identity for
        models without one, and for checkpoints written before symmetries existed)."""
        return symmetry_from_spec(self.metadata.get("window_symmetry"))

    def model_windows(self, dataset: Any, stride: int = 1) -> np.ndarray:
        """A dataset's windows as the model sees them: canonical frame, normalised units,
        shape (N * S, L, C)."""
        return self.normalizer.normalize(self.symmetry.windows(dataset, self.window_length,
                                                               stride))

    def check_dataset(self, dataset: Any) -> None:
        """Raise ``CheckpointError`` unless ``dataset`` has this model's channels and system.

        Checks m, p, that trajectories are at least L steps long, and (when both know it) that
        the environment ids agree.
        """
        env = dataset.metadata.get("env_id")
        if env is not None and self.env_id is not None and env != self.env_id:
            raise CheckpointError(f"this model was trained on {self.env_id} (m={self.input_dim} "
                                  f"inputs and p={self.output_dim} outputs), the dataset is from "
                                  f"{env} (m={dataset.input_dim}, p={dataset.output_dim})")
        if (dataset.input_dim, dataset.output_dim) != (self.input_dim, self.output_dim):
            system = f" ({self.env_id})" if self.env_id else ""
            raise CheckpointError(
                f"this model was trained on windows with m={self.input_dim} inputs and "
                f"p={self.output_dim} outputs{system}, the dataset has m={dataset.input_dim}, "
                f"p={dataset.output_dim}")
        if dataset.length < self.window_length:
            raise CheckpointError(f"model windows are {self.window_length} steps long, dataset "
                                  f"trajectories only {dataset.length}")


def _plain(obj: Any) -> Any:
    """JSON round trip: tuples become lists, numpy scalars numbers, so weights_only can load."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    An interrupted save leaves the previous checkpoint intact.
    """
    payload = dict(payload)
    for key in ("config", "metadata", "normalizer", "model"):
        if key in payload:
            payload[key] = _plain(payload[key])
    payload["format_version"] = CHECKPOINT_VERSION
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def resolve_checkpoint(path_or_dir: str | os.PathLike) -> Path:
    """The checkpoint file: ``path_or_dir`` itself, or ``path_or_dir/checkpoint.pt``."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def read_checkpoint(path_or_dir: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (tensors on ``map_location``).

    Raises
    ------
    CheckpointError
        Missing file, not a checkpoint, truncated or corrupt, another format version, or
        missing entries.
    """
    path = resolve_checkpoint(path_or_dir)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise CheckpointError(f"cannot open checkpoint {path}: "
                              f"{exc.strerror or exc}") from exc
    try:
        with fh:
            payload = torch.load(fh, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... on damage
        first = (str(exc).strip().splitlines() or [""])[0]  # torch appends pages of advice
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or corrupt, or not "
                              f"a checkpoint ({type(exc).__name__}: {first})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a ddcontrol checkpoint")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is not a ddcontrol checkpoint: missing {missing}")
    if payload["format_version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload['format_version']}, this "
                              f"ddcontrol reads format {CHECKPOINT_VERSION}; retrain the model")
    return payload


def model_from_payload(payload: dict[str, Any], device: str | torch.device = "cpu",
                       ema: bool = True, where: str = "checkpoint") -> TrainedModel:
    """Rebuild the ``TrainedModel`` (EMA weights by default) from a checkpoint dict."""
    spec = payload["model"]
    try:
        denoiser = build_denoiser(spec)
        denoiser.load_state_dict(payload["ema" if ema else "weights"])
        normalizer = Normalizer.from_dict(payload["normalizer"])
        if not (np.all(np.isfinite(normalizer.mean)) and np.all(np.isfinite(normalizer.std))
                and np.all(normalizer.std > 0)):
            raise ValueError("normaliser statistics must be finite with std > 0")
    except (KeyError, TypeError, ValueError, RuntimeError, DDControlError) as exc:
        raise CheckpointError(f"{where}: inconsistent model entries "
                              f"({type(exc).__name__}: {exc})") from exc
    denoiser.to(device).eval().requires_grad_(False)
    metadata = _plain(payload["metadata"])
    metadata["step"] = int(payload["step"])
    selection = payload.get("sigma_selection")  # optional: older checkpoints have none
    if selection is not None:
        sigma = selection.get("sigma") if isinstance(selection, dict) else None
        if not isinstance(sigma, (int, float)) or not 0 < float(sigma) < float("inf"):
            raise CheckpointError(f"{where}: sigma_selection must hold a positive 'sigma', "
                                  f"got {selection!r}")
        selection = _plain(selection)
    return TrainedModel(denoiser=denoiser, normalizer=normalizer,
                        window_length=int(spec["window_length"]), input_dim=int(spec["input_dim"]),
                        output_dim=int(spec["output_dim"]), metadata=metadata,
                        config=_plain(payload["config"]), sigma_selection=selection)


def load_model(path_or_dir: str | os.PathLike, device: str | torch.device = "cpu", *,
               dataset: Any = None, ema: bool = True) -> TrainedModel:
    """Load a trained denoiser for use (EMA weights, eval mode, frozen parameters).

    Parameters
    ----------
    path_or_dir : path
        A checkpoint file or a training output folder holding ``checkpoint.pt``.
    device : str or torch.device
        Where to put the denoiser (``"cpu"``, ``"cuda"``).
    dataset : TrajectoryDataset, optional
        If given, checked against the model (channels, window length, env id).
    ema : bool
        Load the EMA weights (default) or the raw optimised weights.

    Raises
    ------
    CheckpointError
        Missing, corrupt or foreign file, or a ``dataset`` that does not match.
    ConfigurationError
        ``device`` is not cpu or an available CUDA device.
    """
    device = check_device(device)
    path = resolve_checkpoint(path_or_dir)
    model = model_from_payload(read_checkpoint(path), device, ema, where=str(path))
    if dataset is not None:
        model.check_dataset(dataset)
    return model

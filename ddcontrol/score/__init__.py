"""Denoisers: the protocol, closed-form denoisers, preconditioned networks, checkpoints, training.

The training loop (:class:`TrainConfig`, :func:`train`) is imported on first use (PEP 562): using
a trained model does not load the training machinery (data shards, distributed workers).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ddcontrol._lazy import lazy_names
from ddcontrol.score.base import Denoiser, sigma_column
from ddcontrol.score.checkpoint import TrainedModel, load_model
from ddcontrol.score.closed_form import EmpiricalDenoiser, LinearGaussianDenoiser
from ddcontrol.score.networks import ResidualMLP, TemporalUNet, build_network
from ddcontrol.score.precond import BehaviorDenoiser, edm_scalings
from ddcontrol.score.stitched import StitchedDenoiser, stitched_model

_LAZY = {"TrainConfig": "ddcontrol.score.train", "train": "ddcontrol.score.train"}

__all__ = [
    "Denoiser",
    "sigma_column",
    "EmpiricalDenoiser",
    "LinearGaussianDenoiser",
    "BehaviorDenoiser",
    "edm_scalings",
    "ResidualMLP",
    "TemporalUNet",
    "build_network",
    "StitchedDenoiser",
    "stitched_model",
    "TrainConfig",
    "train",
    "TrainedModel",
    "load_model",
]


# Import the training loop on first access (one helper for every lazy package).
__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)


class _ScoreModule(types.ModuleType):
    """This package, except that importing the submodule ``ddcontrol.score.train`` does not
    rebind the name ``train``: it stays the function, as when it was imported eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ScoreModule

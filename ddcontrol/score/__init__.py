"""Denoisers: the protocol, closed-form denoisers (and, later, trained networks)."""

from ddcontrol.score.base import Denoiser, sigma_column
from ddcontrol.score.checkpoint import TrainedModel, load_model
from ddcontrol.score.closed_form import EmpiricalDenoiser, LinearGaussianDenoiser
from ddcontrol.score.networks import ResidualMLP, TemporalUNet, build_network
from ddcontrol.score.precond import BehaviorDenoiser, edm_scalings
from ddcontrol.score.train import TrainConfig, train

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
    "TrainConfig",
    "train",
    "TrainedModel",
    "load_model",
]

"""Trajectory data: excitation signals, collection from simulators, windows, normalisation, files."""

from ddcontrol.data.collect import collect, make_dynamics
from ddcontrol.data.dataset import FORMAT_VERSION, TrajectoryDataset
from ddcontrol.data.excitation import EXCITATIONS, get_excitation
from ddcontrol.data.gym_env import EnvSimulator
from ddcontrol.data.normalize import Normalizer

__all__ = [
    "collect",
    "make_dynamics",
    "TrajectoryDataset",
    "FORMAT_VERSION",
    "Normalizer",
    "EXCITATIONS",
    "get_excitation",
    "EnvSimulator",
]

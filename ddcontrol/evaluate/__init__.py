"""Replay in the true simulator, closed-loop episodes, comparisons, plots."""

from ddcontrol.evaluate.closed_loop import Episode, episode_metrics, run_episode
from ddcontrol.evaluate.compare import ComparisonResult, compare, write_comparison
from ddcontrol.evaluate.controllers import CONTROLLERS, make_controller, make_tracker
from ddcontrol.evaluate.finite_horizon import (
    FiniteHorizonResult,
    finite_horizon_batch,
    finite_horizon_experiment,
)
from ddcontrol.evaluate.fleet import run_fleet
from ddcontrol.evaluate.replay import ReplayResult, replay

__all__ = [
    "Episode",
    "run_episode",
    "episode_metrics",
    "ComparisonResult",
    "compare",
    "write_comparison",
    "CONTROLLERS",
    "make_controller",
    "make_tracker",
    "FiniteHorizonResult",
    "finite_horizon_experiment",
    "finite_horizon_batch",
    "run_fleet",
    "ReplayResult",
    "replay",
]

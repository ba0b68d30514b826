"""The paper's experiment: one finite-horizon plan from a dataset's initial condition, replayed.

From trajectory ``i`` of the dataset: with T_ini = 0 (models trained on windows as long as the
horizon, data from one fixed initial state) the plan starts at the data's initial state; with
T_ini > 0 its first T_ini samples are the measured past. The planned inputs are replayed in the
true simulator from the true state, and compared with the best training window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ddcontrol.data.dataset import TrajectoryDataset
from ddcontrol.data.gym_env import EnvSimulator
from ddcontrol.errors import ConfigurationError
from ddcontrol.evaluate.replay import ReplayResult, plan_confidence, replay_from_dataset, simulator_for
from ddcontrol.symmetry import Identity
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference
from ddcontrol.tracking.tracker import DenoisingTracker, PlanResult
from ddcontrol.trust import TrustEstimator


@dataclass
class FiniteHorizonResult:
    """Plan, replay and the figures of ``results.json``."""

    plan: PlanResult
    replay: ReplayResult
    best_window_inputs: np.ndarray
    best_window_outputs: np.ndarray
    start: int
    summary: dict[str, Any]


def finite_horizon_experiment(model: Any, data: TrajectoryDataset, reference: Reference, *,
                              horizon: int, Q: Any = 1.0, R: Any = 0.01, trajectory: int = 0,
                              **tracker_options: Any) -> FiniteHorizonResult:
    """Plan over ``horizon`` steps with a DenoisingTracker and verify it in the true simulator.

    ``reference`` is indexed from the start of trajectory ``trajectory``; the plan covers samples
    ``T_ini .. T_ini + horizon − 1``. ``tracker_options`` go to :class:`DenoisingTracker`
    (``sigma``, ``solver``, ``iterations``, ``num_starts``...).
    """
    env_id = data.metadata.get("env_id")
    model.check_dataset(data)
    t_ini = model.window_length - horizon
    if t_ini < 0:
        raise ConfigurationError(f"horizon {horizon} exceeds the model's window "
                                 f"{model.window_length}")
    if not 0 <= trajectory < data.num_trajectories:
        raise ConfigurationError(f"trajectory must be in [0, {data.num_trajectories})")
    length = model.window_length
    if t_ini == 0:
        # Windows from the data's initial states only: later windows start elsewhere.
        candidates = data.windows(length, stride=data.horizon)
        past_u = past_y = current_y = None
    else:
        candidates = data.windows(length, stride=max(1, length // 4))
        past_u, past_y = data.u[trajectory, :t_ini], data.y[trajectory, :t_ini]
        current_y = data.y[trajectory, t_ini]
    # Any env (or none: measured data): bounds from the dataset, replay where a simulator is.
    sim = simulator_for(data)
    problem = TrackingProblem.for_dataset(data, reference, horizon, Q=Q, R=R)
    symmetry = getattr(model, "symmetry", None) or Identity()
    tracker_options.setdefault("symmetry", symmetry)
    if "trust" not in tracker_options:  # the plan's model-intrinsic confidence (issue 13)
        tracker_options["trust"] = TrustEstimator.from_model(
            model, data, past_length=t_ini,
            repredict_sigma=float(tracker_options.get("sigma", 0.05)))
    tracker = DenoisingTracker(model.denoiser, model.normalizer, problem,
                               candidates=model.normalizer.normalize(
                                   symmetry.canonicalize(candidates)[0]),
                               past_length=t_ini, **tracker_options)
    # With nothing measured, the trajectory's first sample places the plan in the world.
    first = np.concatenate([data.u[trajectory, 0], data.y[trajectory, 0]])
    plan = tracker.plan(past_u, past_y, current_y=current_y, start=t_ini,
                        frame=symmetry.frame_of_sample(first))
    try:
        rep = replay_from_dataset(problem, sim, data, trajectory, t_ini, plan.inputs,
                                  plan.predicted_outputs)
    finally:
        if isinstance(sim, EnvSimulator):
            sim.close()
    fut = candidates[:, t_ini:]
    costs = problem.cost(fut[..., : data.input_dim], fut[..., data.input_dim:], t_ini)
    best = int(np.argmin(costs))
    if t_ini == 0 and not rep.skipped and rep.true_cost > costs[best]:
        rep.drifted = True  # worse than the best training window from the same start
    summary = {
        "env_id": env_id,
        "reference": reference.name,
        "horizon": horizon,
        "t_ini": t_ini,
        "trajectory": trajectory,
        "predicted_cost": plan.predicted_cost,
        "replay_cost": rep.true_cost,
        "best_training_cost": float(costs[best]),
        # With T_ini > 0 the training windows start from other states than the plan, so the
        # best of them is a reference figure only, not an alternative plan for this start.
        "best_training_window_same_start": t_ini == 0,
        "initial_cost": plan.initial_cost,
        "replay_beats_best_window": None if rep.skipped else bool(rep.true_cost < costs[best]),
        "manifold_deviation": rep.manifold_deviation,
        "drifted": rep.drifted,
        "manifold_distance": plan.manifold_distance,
        "replay": rep.to_dict()["replay"],
        "confidence": plan_confidence(plan, tracker.candidates, t_ini),
        "estimated_deviation": plan.estimated_deviation,
        "ood": plan.ood,
        "iterations": plan.iterations,
        "solve_time_s": plan.solve_time_s,
        "solver": tracker.solver_name,
        "sigma": tracker.sigma,
    }
    return FiniteHorizonResult(plan, rep, fut[best, :, : data.input_dim],
                               fut[best, :, data.input_dim:], t_ini, summary)

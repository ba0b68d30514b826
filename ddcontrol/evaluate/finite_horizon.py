"""The paper's experiment: one finite-horizon plan from a dataset's initial condition, replayed.

From trajectory ``i`` of the dataset: with T_ini = 0 (models trained on windows as long as the
horizon, data from one fixed initial state) the plan starts at the data's initial state; with
T_ini > 0 its first T_ini samples are the measured past. ``pin_start=True`` also pins the first
planned output to the trajectory's measured initial output when T_ini = 0: a model of shorter
windows stitched to the horizon (:func:`ddcontrol.score.stitched.stitched_model`) has learned
windows from every state, so the start must be told. The planned inputs are replayed in the true
simulator from the true state, and compared with the best training window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddcontrol._validation import check_positive_float
from ddcontrol.data.dataset import TrajectoryDataset
from ddcontrol.data.gym_env import EnvSimulator
from ddcontrol.errors import ConfigurationError, DimensionError
from ddcontrol.evaluate.replay import ReplayResult, plan_confidence, replay_from_dataset, simulator_for
from ddcontrol.symmetry import Identity
from ddcontrol.tracking.batch import batch_problems, plan_batch
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference
from ddcontrol.tracking.tracker import DenoisingTracker, PlanResult


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
                              pin_start: bool = False,
                              **tracker_options: Any) -> FiniteHorizonResult:
    """Plan over ``horizon`` steps with a DenoisingTracker and verify it in the true simulator.

    ``reference`` is indexed from the start of trajectory ``trajectory``; the plan covers samples
    ``T_ini .. T_ini + horizon − 1``. ``tracker_options`` go to :class:`DenoisingTracker`
    (``sigma``, ``solver``, ``iterations``, ``num_starts``...). ``pin_start``: with T_ini = 0,
    pin the first planned output to the trajectory's initial output (module docstring).
    """
    setup = _Setup(model, data, reference, horizon, Q, R, [trajectory], tracker_options,
                   pin_start)
    past_u, past_y, current_y, frames = setup.measured()
    try:
        plan = setup.tracker.plan(None if past_u is None else past_u[0],
                                  None if past_y is None else past_y[0],
                                  current_y=None if current_y is None else current_y[0],
                                  start=setup.t_ini, frame=frames[0])
        return setup.result(plan, setup.tracker.problem, trajectory)
    finally:
        setup.close()


def finite_horizon_batch(model: Any, data: TrajectoryDataset,
                         references: Reference | Sequence[Reference], *, horizon: int,
                         trajectories: Sequence[int], Q: Any = 1.0, R: Any = 0.01,
                         pin_start: bool = False,
                         **tracker_options: Any) -> list[FiniteHorizonResult]:
    """:func:`finite_horizon_experiment` for K problems (trajectory ``trajectories[k]``,
    reference ``references[k]`` or one reference for all) planned in one batched solve
    (:func:`~ddcontrol.tracking.batch.plan_batch`), each replayed in the true simulator.

    Result ``k`` equals ``finite_horizon_experiment(..., trajectory=trajectories[k])`` with its
    reference, up to round-off (``summary["solve_time_s"]`` is the whole batch's).
    """
    trajectories = [int(i) for i in trajectories]
    if not trajectories:
        raise ConfigurationError("trajectories must name at least one trajectory")
    refs = ([references] * len(trajectories) if isinstance(references, Reference)
            else list(references))
    if len(refs) != len(trajectories):
        raise DimensionError(f"{len(refs)} references for {len(trajectories)} trajectories")
    setup = _Setup(model, data, refs[0], horizon, Q, R, trajectories, tracker_options,
                   pin_start)
    past_u, past_y, current_y, frames = setup.measured()
    try:
        problems = batch_problems(setup.tracker, refs)
        batch = plan_batch(setup.tracker, past_u, past_y, current_y=current_y,
                           start=setup.t_ini, references=problems, frame=frames)
        return [setup.result(batch.plan(k), problems[k], i)
                for k, i in enumerate(trajectories)]
    finally:
        setup.close()


class _Setup:
    """The tracker, candidates and simulator of a finite-horizon experiment on ``data``."""

    def __init__(self, model: Any, data: TrajectoryDataset, reference: Reference, horizon: int,
                 Q: Any, R: Any, trajectories: list[int], tracker_options: dict[str, Any],
                 pin_start: bool = False) -> None:
        model.check_dataset(data)
        t_ini = model.window_length - horizon
        if t_ini < 0:
            raise ConfigurationError(f"horizon {horizon} exceeds the model's window "
                                     f"{model.window_length}")
        for trajectory in trajectories:
            if not 0 <= trajectory < data.num_trajectories:
                raise ConfigurationError(f"trajectory must be in [0, {data.num_trajectories})")
        length = model.window_length
        if t_ini == 0:
            # Windows from the data's initial states only: later windows start elsewhere.
            candidates = data.windows(length, stride=data.length)
        else:
            candidates = data.windows(length, stride=max(1, length // 4))
        self.data, self.t_ini, self.trajectories = data, t_ini, trajectories
        self.pin_start = bool(pin_start)
        self.candidates, self.horizon = candidates, horizon
        # Any env (or none: measured data): bounds from the dataset, replay where a simulator is.
        self.sim = simulator_for(data)
        problem = TrackingProblem.for_dataset(data, reference, horizon, Q=Q, R=R)
        self.symmetry = symmetry = getattr(model, "symmetry", None) or Identity()
        tracker_options.setdefault("symmetry", symmetry)
        if tracker_options.get("sigma", "auto") == "auto":  # the default: training's σ
            from ddcontrol.score.sigma import resolve_sigma

            tracker_options["sigma"] = resolve_sigma(model, data, t_ini=t_ini or None)
        # A clear error for None or a non-number before its first use (the trust estimator).
        tracker_options["sigma"] = check_positive_float(tracker_options["sigma"], "sigma")
        if "trust" not in tracker_options:  # the plan's model-intrinsic confidence (issue 13)
            tracker_options["trust"] = DenoisingTracker.default_trust(model, data, t_ini,
                                                                      tracker_options)
        self.tracker = DenoisingTracker(model.denoiser, model.normalizer, problem,
                                        candidates=model.normalizer.normalize(
                                            symmetry.canonicalize(candidates)[0]),
                                        t_ini=t_ini, **tracker_options)

    def measured(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None,
                                np.ndarray]:
        """Pasts (K, T_ini, ·) and current outputs (K, p) of the trajectories (None with
        T_ini = 0; the initial outputs with ``pin_start``), and the frames (K, k) their first
        samples place the plans in."""
        data, t, idx = self.data, self.t_ini, self.trajectories
        past_u = past_y = current_y = None
        if t:
            past_u, past_y, current_y = data.u[idx, :t], data.y[idx, :t], data.y[idx, t]
        elif self.pin_start:
            current_y = data.y[idx, 0]
        # With nothing measured, the trajectory's first sample places the plan in the world.
        first = np.concatenate([data.u[idx, 0], data.y[idx, 0]], axis=-1)
        return past_u, past_y, current_y, self.symmetry.frame_of_sample(first)

    def result(self, plan: PlanResult, problem: TrackingProblem, trajectory: int
               ) -> FiniteHorizonResult:
        """Replay ``plan`` (from trajectory ``trajectory``) and summarise it."""
        data, t_ini, candidates = self.data, self.t_ini, self.candidates
        rep = replay_from_dataset(problem, self.sim, data, trajectory, t_ini, plan.inputs,
                                  plan.predicted_outputs)
        fut = candidates[:, t_ini:]
        costs = problem.cost(fut[..., : data.input_dim], fut[..., data.input_dim:], t_ini)
        best = int(np.argmin(costs))
        if t_ini == 0 and not rep.skipped and rep.true_cost > costs[best]:
            rep.drifted = True  # worse than the best training window from the same start
        reference = problem.reference
        summary = {
            "env_id": data.metadata.get("env_id"),
            "reference": reference.name,
            "horizon": self.horizon,
            "t_ini": t_ini,
            "trajectory": trajectory,
            "predicted_cost": plan.predicted_cost,
            "replay_cost": rep.true_cost,
            "best_training_cost": float(costs[best]),
            # With T_ini > 0 the training windows start from other states than the plan, so
            # the best of them is a reference figure only, not an alternative plan for this
            # start.
            "best_training_window_same_start": t_ini == 0,
            "initial_cost": plan.initial_cost,
            "replay_beats_best_window": None if rep.skipped else bool(rep.true_cost
                                                                      < costs[best]),
            "manifold_deviation": rep.manifold_deviation,
            "drifted": rep.drifted,
            "manifold_distance": plan.manifold_distance,
            "replay": rep.to_dict()["replay"],
            "confidence": plan_confidence(plan, self.tracker.candidates, t_ini),
            "estimated_deviation": plan.estimated_deviation,
            "ood": plan.ood,
            "iterations": plan.iterations,
            "solve_time_s": plan.solve_time_s,
            "solver": self.tracker.solver_name,
            "sigma": self.tracker.sigma,
        }
        return FiniteHorizonResult(plan, rep, fut[best, :, : data.input_dim],
                                   fut[best, :, data.input_dim:], t_ini, summary)

    def close(self) -> None:
        if isinstance(self.sim, EnvSimulator):
            self.sim.close()

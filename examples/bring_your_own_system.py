"""Bring your own system: data-driven planning for ANY Gymnasium env with Box actions/observations.

ddcontrol's learning and planning need only input-output trajectories, so a system nobody here
wrote works as well as the built-in ones. The example system is Gymnasium's own ``Pendulum-v1``
(observation ``(cos θ, sin θ, θ̇)``, action: torque in [−2, 2] N·m, dt = 0.05 s, θ = 0 upright),
used through library calls only:

1. :func:`ddcontrol.data.collect` takes the id (or an ``Env`` instance, or a factory), rolls
   out excitation inputs through ``env.step`` and records the env's own state where it exposes
   one (here ``env.unwrapped.state`` = (θ, θ̇); ``metadata["state_source"]`` says where it came
   from). :func:`ddcontrol.evaluate.replay.verify_dataset` checks that re-applying the recorded
   inputs after a reset with each episode's seed reproduces the recorded outputs exactly.
2. Train a behaviour model on windows of ``T_ini + N_h`` samples, as for any dataset.
3. :meth:`TrackingProblem.for_dataset`: brake the swing, i.e. drive θ̇ to zero (output 2), with
   the actuator limits recorded in the dataset.
4. Measure ``T_ini`` samples under zero torque (:class:`~ddcontrol.data.gym_env.EnvSimulator`),
   plan the next ``N_h`` inputs with the :class:`~ddcontrol.tracking.DenoisingTracker`.
5. Verify with :func:`ddcontrol.evaluate.replay.replay` in the env itself: reset with the same
   seed, the same warm-up inputs, then the plan. At this small budget the model is rough: the
   replay beats zero torque, but the predicted outputs are off (the check shows it, which is its
   purpose).
6. Close the loop with :func:`ddcontrol.evaluate.run_episode`, which takes the env id (or an
   instance or factory): re-planning at every sample corrects the model's errors.

Run (about a minute and a half on 2 CPU cores)::

    python examples/bring_your_own_system.py --out runs/examples/pendulum
    python examples/bring_your_own_system.py --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ddcontrol.data import collect
from ddcontrol.data.gym_env import EnvSimulator
from ddcontrol.evaluate import run_episode
from ddcontrol.evaluate.replay import replay, verify_dataset
from ddcontrol.score import TrainConfig, train
from ddcontrol.tracking import DenoisingTracker, TrackingProblem
from ddcontrol.tracking.reference import Reference

ENV_ID = "Pendulum-v1"


def run(*, trajectories: int = 2000, length: int = 60, train_steps: int = 2000,
        t_ini: int = 3, horizon: int = 20, closed_loop_steps: int = 60,
        episode_seed: int = 12345, seed: int = 0, quick: bool = False,
        out: str | Path | None = None) -> dict:
    """Collect from ``Pendulum-v1``, train, plan a braking manoeuvre, verify it in the env, and
    brake in closed loop.

    Parameters
    ----------
    trajectories, length : int
        Dataset size: episodes of ``length`` steps from the env's random initial states.
    train_steps : int
        Training steps of the denoiser.
    t_ini, horizon : int
        Measured past and planning horizon (samples of 0.05 s).
    closed_loop_steps : int
        Samples of the receding-horizon run.
    episode_seed : int
        Seed of the env reset for the planning episode.
    quick : bool
        Tiny budget (seconds).
    out : path, optional
        Folder for ``pendulum_plan.png`` and ``pendulum_closed_loop.png``.

    Returns
    -------
    dict
        ``replay_check`` (max |y_replayed − y_recorded| over 5 recorded episodes: 0.0),
        open loop: ``predicted_cost``, ``replay_cost`` (true cost of the plan in the env),
        ``zero_input_cost``, ``output_deviation``, ``manifold_distance``; closed loop:
        ``closed_loop_cost`` and ``closed_loop_zero_input_cost`` (from sample T_ini on),
        ``final_abs_theta_dot`` (mean |θ̇| over the last 10 samples); timings; ``plots``.
    """
    width = 256
    if quick:
        trajectories, length, train_steps, horizon, width = 200, 30, 120, 10, 64
        closed_loop_steps = 15
    t_start = time.perf_counter()

    # 1. Data from the black box, and a check that the env replays it exactly.
    data = collect(ENV_ID, trajectories, length, seed=seed, input_names=["torque"],
                   output_names=["cos_theta", "sin_theta", "theta_dot"])
    check = verify_dataset(data, trajectories=slice(0, 5))
    t_collect = time.perf_counter() - t_start

    # 2. The behaviour model.
    t0 = time.perf_counter()
    cfg = TrainConfig(window=t_ini + horizon, steps=train_steps, width=width, seed=seed,
                      warmup_steps=min(200, train_steps // 10), val_every=0, checkpoint_every=0,
                      progress=not quick)
    model = train(cfg, data)
    t_train = time.perf_counter() - t0

    # 3. θ̇ (output 2) to zero; beyond its last sample a reference holds its last value.
    reference = Reference(np.zeros((t_ini + horizon, 1)), channels=(2,), output_dim=3,
                          dt=data.dt, name="brake")
    problem = TrackingProblem.for_dataset(data, reference, horizon, Q=1.0, R=0.01)
    tracker = DenoisingTracker.from_model(model, problem, data, candidate_stride=2, sigma=0.1,
                                          solver="nesterov", iterations=60 if quick else 400,
                                          iterations_per_step=10 if quick else 20)

    with EnvSimulator(ENV_ID) as sim:
        # 4. Measure T_ini samples (and the current one) under zero torque, then plan.
        warmup = np.zeros((t_ini, 1))
        measured = sim.run(np.zeros((t_ini + 1, 1)), seed=episode_seed).outputs
        plan = tracker.plan(warmup, measured[:t_ini], current_y=measured[t_ini], start=t_ini)
        # 5. Verify in the env: same seed, same warm-up inputs, then the plan; and zero torque.
        rep = replay(problem, sim, None, plan.inputs, plan.predicted_outputs, start=t_ini,
                     seed=episode_seed, prefix_inputs=warmup)
        zero = np.zeros_like(plan.inputs)
        y_free = sim.run(zero, seed=episode_seed, prefix_inputs=warmup).outputs
        y_cl_free = sim.run(np.zeros((closed_loop_steps, 1)), seed=episode_seed).outputs

    # 6. Feedback: the same tracker re-plans at every sample from the measured outputs.
    t0 = time.perf_counter()
    episode = run_episode(ENV_ID, tracker, closed_loop_steps, seed=episode_seed, warmup=t_ini)
    t_loop = time.perf_counter() - t0
    y_cl, u_cl = episode.outputs, episode.inputs

    result = {
        "replay_check": check["max_output_error"],
        "predicted_cost": plan.predicted_cost,
        "replay_cost": rep.true_cost,
        "zero_input_cost": float(problem.cost(zero, y_free, t_ini)),
        "initial_cost": plan.initial_cost,
        "output_deviation": rep.manifold_deviation,
        "manifold_distance": plan.manifold_distance,
        "initial_theta_dot": float(measured[t_ini, 2]),
        "closed_loop_cost": float(problem.cost(u_cl[t_ini:], y_cl[t_ini:], t_ini)),
        "closed_loop_zero_input_cost": float(problem.cost(0 * u_cl[t_ini:], y_cl_free[t_ini:],
                                                          t_ini)),
        "final_abs_theta_dot": float(np.mean(np.abs(y_cl[-10:, 2]))),
        "trajectories": data.num_trajectories,
        "collect_s": t_collect,
        "train_s": t_train,
        "plan_s": plan.solve_time_s,
        "closed_loop_s": t_loop,
        "total_s": time.perf_counter() - t_start,
        "plots": [],
    }
    if out is not None:
        from ddcontrol.evaluate.plots import plot_tracking

        t = (t_ini + np.arange(horizon)) * data.dt
        result["plots"].append(str(plot_tracking(
            t, reference.window(t_ini, horizon),
            {"predicted (model)": plan.predicted_outputs[:, [2]],
             "replayed (env)": rep.outputs[:, [2]], "zero torque": y_free[:, [2]]},
            Path(out) / "pendulum_plan.png", ["θ̇ [rad/s]"],
            title=f"{ENV_ID}: open-loop plan to brake the swing, replayed in the env")))
        t = np.arange(closed_loop_steps) * data.dt
        result["plots"].append(str(plot_tracking(
            t, reference.window(0, closed_loop_steps),
            {"closed loop (tracker)": y_cl[:, [2]], "zero torque": y_cl_free[:, [2]]},
            Path(out) / "pendulum_closed_loop.png", ["θ̇ [rad/s]"],
            title=f"{ENV_ID}: braking in closed loop", shade_until=t_ini * data.dt)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=2000, help="episodes of data")
    parser.add_argument("--train-steps", type=int, default=2000, help="training steps")
    parser.add_argument("--out", default=None, help="folder for the plots")
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    args = parser.parse_args()
    r = run(trajectories=args.trajectories, train_steps=args.train_steps, quick=args.quick,
            out=args.out)
    print(f"recorded episodes replayed in the env: max output error {r['replay_check']:.3g}")
    print(f"open-loop plan from θ̇ = {r['initial_theta_dot']:+.2f} rad/s, cost Σ θ̇² + 0.01 u²: "
          f"predicted {r['predicted_cost']:.4g}, replayed in the env {r['replay_cost']:.4g}, "
          f"zero torque {r['zero_input_cost']:.4g}; output deviation (predicted vs replayed) "
          f"{r['output_deviation']:.3g}")
    print(f"closed loop: cost {r['closed_loop_cost']:.4g} (zero torque "
          f"{r['closed_loop_zero_input_cost']:.4g}), mean |θ̇| over the last 10 samples "
          f"{r['final_abs_theta_dot']:.3f} rad/s")
    print(f"collect {r['collect_s']:.1f} s, train {r['train_s']:.1f} s, plan {r['plan_s']:.2f} s, "
          f"closed loop {r['closed_loop_s']:.1f} s, total {r['total_s']:.1f} s")
    for path in r["plots"]:
        print(f"plot: {path}")


if __name__ == "__main__":
    main()

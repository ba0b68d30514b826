"""Bring your own system: data-driven planning for ANY Gymnasium env with Box actions/observations.

What it shows: ddcontrol's learning and planning need only input-output trajectories, so a
system you simulate (or measure) elsewhere works as well as the built-in ones. The example system
is Gymnasium's own ``Pendulum-v1`` (observation ``(cos θ, sin θ, θ̇)``, action: torque in
[−2, 2] N·m, dt = 0.05 s, θ = 0 upright, no friction), treated as a black box:

1. :func:`collect_from_env` rolls out random inputs through ``env.step`` and builds a
   :class:`~ddcontrol.data.TrajectoryDataset` ``(u, y, x, metadata)``. A foreign env does not
   expose its state, so ``x`` holds the *observations* padded to T + 1 samples (the observation
   after the last step). ddcontrol never learns from ``x``; it only uses it to verify plans of
   its own simulators. The metadata carry ``env_id``, ``dt`` and the channel names and limits.
   Inputs come from ddcontrol's excitation signals (:func:`ddcontrol.data.get_excitation`).
2. Train a behaviour model on windows of ``T_ini + N_h`` samples, as for any dataset.
3. Build a :class:`~ddcontrol.tracking.TrackingProblem` directly (``for_env`` only knows the
   ``ddcontrol/*`` ids): brake the swing, i.e. drive θ̇ to zero (output channel 2), with the
   actuator limits of the env's action space.
4. Measure: reset the env with a seed and apply zero torque for ``T_ini`` samples; plan the next
   ``N_h`` inputs with the :class:`~ddcontrol.tracking.DenoisingTracker`, conditioned on that
   measured past.
5. Verify: ddcontrol's :func:`~ddcontrol.evaluate.replay.replay` needs a ddcontrol ``Dynamics``;
   for a foreign env, replay by stepping the env itself: a *fresh* env, reset with the same seed
   (hence the same initial state), the same warm-up inputs, then the planned inputs. The true
   cost is compared with the predicted one and with doing nothing (zero torque). At this small
   budget the model is rough: the replay beats zero torque, but the predicted outputs are far
   from the true ones (the check shows it, which is its purpose).
6. Close the loop: the same tracker re-plans at every sample from the measured outputs
   (``tracker.reset(obs, info)``, ``tracker.act(obs)``), which corrects the model's errors and
   brings the pendulum to rest.

Run (about a minute and a half on 2 CPU cores)::

    python examples/bring_your_own_system.py --out runs/examples/pendulum
    python examples/bring_your_own_system.py --quick
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from ddcontrol.data import TrajectoryDataset, get_excitation
from ddcontrol.score import TrainConfig, train
from ddcontrol.tracking import DenoisingTracker, TrackingProblem
from ddcontrol.tracking.reference import Reference

ENV_ID = "Pendulum-v1"


def collect_from_env(make_env: Callable[[], gym.Env], num_trajectories: int, horizon: int, *,
                     excitation: str = "mixed", seed: int = 0,
                     env_id: str | None = None, dt: float | None = None,
                     input_names: list[str] | None = None,
                     output_names: list[str] | None = None) -> TrajectoryDataset:
    """Roll out random inputs through a plain ``gym.Env`` and return the trajectories.

    Parameters
    ----------
    make_env : callable
        Returns a fresh environment with ``Box`` action and observation spaces.
    num_trajectories, horizon : int
        N episodes of T steps each; episode ``i`` is reset with ``seed + i``. An episode that
        terminates or is truncated before T steps is dropped.
    excitation : str
        A ddcontrol excitation (``"uniform-hold"``, ``"prbs"``, ``"gaussian"``, ``"sines"``,
        ``"mixed"``) between the action space's bounds.
    env_id, dt, input_names, output_names : optional
        Recorded in the metadata (``dt`` default: ``env.unwrapped.dt``, else 1).

    Returns
    -------
    TrajectoryDataset
        ``u`` (N, T, m), ``y`` (N, T, p) with ``y[:, k]`` observed before ``u[:, k]`` is
        applied, and ``x`` (N, T + 1, p): the observations again, with the one after the last
        step, standing in for the unknown state.
    """
    env = make_env()
    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    rng = np.random.default_rng(seed)
    u_all = get_excitation(excitation)(rng, num_trajectories, horizon, low, high)
    us, ys, xs = [], [], []
    for i in range(num_trajectories):
        obs, _ = env.reset(seed=seed + i)
        obs_seq = [np.asarray(obs, dtype=np.float64)]
        for k in range(horizon):
            action = u_all[i, k].astype(env.action_space.dtype)
            obs, _reward, terminated, truncated, _info = env.step(action)
            obs_seq.append(np.asarray(obs, dtype=np.float64))
            if terminated or truncated:
                break
        if len(obs_seq) == horizon + 1:
            us.append(np.clip(u_all[i], low, high))
            ys.append(np.stack(obs_seq[:-1]))
            xs.append(np.stack(obs_seq))
    dt = dt if dt is not None else float(getattr(env.unwrapped, "dt", 1.0))
    env.close()
    if not us:
        raise RuntimeError("every episode ended before `horizon` steps; use a shorter horizon")
    m, p = low.size, len(ys[0][0])
    metadata: dict[str, Any] = {
        "env_id": env_id or (env.spec.id if env.spec is not None else type(env).__name__),
        "env_kwargs": {},
        "dt": dt,
        "input_names": input_names or [f"u{j}" for j in range(m)],
        "output_names": output_names or [f"y{j}" for j in range(p)],
        "state_names": "observations (state unknown)",
        "input_low": low.tolist(),
        "input_high": high.tolist(),
        "excitation": excitation,
        "seed": seed,
    }
    return TrajectoryDataset(u=np.array(us), y=np.array(ys), x=np.array(xs), metadata=metadata)


def step_env(env: gym.Env, obs: np.ndarray, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``inputs`` (N, m) in turn from the current observation ``obs``; return the N
    observations seen before each input is applied, and the observation after the last one."""
    outputs = []
    for u in inputs:
        outputs.append(np.asarray(obs, dtype=np.float64))
        obs, *_ = env.step(np.asarray(u, dtype=env.action_space.dtype))
    return np.array(outputs).reshape(len(inputs), -1), np.asarray(obs, dtype=np.float64)


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
        Seed of the env reset for the planning episode (not one of the training seeds).
    quick : bool
        Tiny budget (seconds).
    out : path, optional
        Folder for ``pendulum_plan.png`` and ``pendulum_closed_loop.png``.

    Returns
    -------
    dict
        Open loop: ``predicted_cost``, ``replay_cost`` (true cost of the plan, stepped in a fresh
        env), ``zero_input_cost`` (the free swing), ``output_deviation`` (‖y_pred − y_true‖ /
        ‖y_true‖ over the horizon), ``manifold_distance``. Closed loop: ``closed_loop_cost``
        and ``closed_loop_zero_input_cost`` (from sample T_ini on), ``final_abs_theta_dot``
        (mean |θ̇| over the last 10 samples). Timings, and ``plots`` (paths).
    """
    width = 256
    if quick:
        trajectories, length, train_steps, horizon, width = 200, 30, 120, 10, 64
        closed_loop_steps = 15
    t_start = time.perf_counter()

    def make_env() -> gym.Env:
        return gym.make(ENV_ID)

    def zero_torque_run(steps: int) -> np.ndarray:
        env = make_env()
        obs, _ = env.reset(seed=episode_seed)
        y, _ = step_env(env, obs, np.zeros((steps, 1)))
        env.close()
        return y

    # 1. Data from the black box.
    data = collect_from_env(make_env, trajectories, length, seed=seed, env_id=ENV_ID,
                            input_names=["torque"],
                            output_names=["cos_theta", "sin_theta", "theta_dot"])
    t_collect = time.perf_counter() - t_start

    # 2. The behaviour model.
    t0 = time.perf_counter()
    cfg = TrainConfig(window=t_ini + horizon, steps=train_steps, width=width, seed=seed,
                      warmup_steps=min(200, train_steps // 10), val_every=0, checkpoint_every=0,
                      progress=not quick)
    model = train(cfg, data)
    t_train = time.perf_counter() - t0

    # 3. The problem: θ̇ (output 2) to zero, torque within the action space. (Beyond its last
    #    sample a reference holds its last value, so this one also serves the closed loop.)
    reference = Reference(np.zeros((t_ini + horizon, 1)), channels=(2,), output_dim=3,
                          dt=data.dt, name="brake")
    problem = TrackingProblem(reference, horizon, input_dim=1, Q=1.0, R=0.01,
                              input_low=data.metadata["input_low"],
                              input_high=data.metadata["input_high"])
    tracker = DenoisingTracker.from_model(model, problem, data, candidate_stride=2, sigma=0.1,
                                          solver="nesterov", iterations=60 if quick else 400,
                                          iterations_per_step=10 if quick else 20)

    # 4. Measure T_ini samples under zero torque, then plan the next N_h inputs.
    warmup = np.zeros((t_ini, 1))
    env = make_env()
    obs, _ = env.reset(seed=episode_seed)
    past_y, current_y = step_env(env, obs, warmup)
    env.close()
    plan = tracker.plan(warmup, past_y, current_y=current_y, start=t_ini)

    # 5. Verify by stepping a fresh env from the same seed: warm-up inputs, then the plan.
    fresh = make_env()
    obs, _ = fresh.reset(seed=episode_seed)
    y_true = step_env(fresh, obs, np.concatenate([warmup, plan.inputs]))[0][t_ini:]
    fresh.close()
    y_free = zero_torque_run(t_ini + horizon)[t_ini:]
    zero = np.zeros_like(plan.inputs)

    # 6. Feedback: the same tracker as a receding-horizon controller, in a plain Gymnasium loop.
    #    Re-planning at every sample from the measured outputs corrects the model's errors,
    #    which an open-loop plan cannot.
    t0 = time.perf_counter()
    env = make_env()
    obs, info = env.reset(seed=episode_seed)
    tracker.reset(obs, info)
    ys, us = [], []
    for _ in range(closed_loop_steps):
        action = tracker.act(obs)
        ys.append(obs)
        us.append(action)
        obs, *_ = env.step(action.astype(env.action_space.dtype))
    env.close()
    t_loop = time.perf_counter() - t0
    y_cl, u_cl = np.array(ys), np.array(us)
    y_cl_free = zero_torque_run(closed_loop_steps)

    result = {
        "predicted_cost": plan.predicted_cost,
        "replay_cost": float(problem.cost(plan.inputs, y_true, t_ini)),
        "zero_input_cost": float(problem.cost(zero, y_free, t_ini)),
        "initial_cost": plan.initial_cost,
        "output_deviation": float(np.linalg.norm(plan.predicted_outputs - y_true)
                                  / max(np.linalg.norm(y_true), 1e-12)),
        "manifold_distance": plan.manifold_distance,
        "initial_theta_dot": float(current_y[2]),
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
             "replayed (fresh env)": y_true[:, [2]], "zero torque": y_free[:, [2]]},
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
    print(f"open-loop plan from θ̇ = {r['initial_theta_dot']:+.2f} rad/s, cost Σ θ̇² + 0.01 u²: "
          f"predicted {r['predicted_cost']:.4g}, replayed in a fresh env {r['replay_cost']:.4g}, "
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

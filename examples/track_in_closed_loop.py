"""Track a reference in closed loop with a learned behaviour model, in a plain Gymnasium loop.

What it shows: the whole data-driven loop on the mass-spring-damper
(``ddcontrol/MassSpringDamper-v0``, force in, position out), with nothing but measured data:

1. collect input-output trajectories under random excitation (``ddcontrol.data.collect``);
2. train a denoiser on windows of ``T_ini + N_h`` steps (``ddcontrol.score.train``);
3. build a :class:`~ddcontrol.tracking.DenoisingTracker` from the model, a
   :class:`~ddcontrol.tracking.TrackingProblem` and the training data (cold-start candidates);
4. drive the *true* environment with it in the ordinary Gymnasium loop
   (``reset`` → ``tracker.reset`` → ``tracker.act(obs)`` → ``env.step``): at every sample the
   tracker conditions on the last ``T_ini`` measured samples, re-plans ``N_h`` steps ahead on the
   learned behaviour manifold (warm-started from its previous plan) and applies the first input.

It prints the RMS tracking error (scored after the ``T_ini`` warm-up samples, during which the
tracker only measures) next to that of the model-based oracle (true model and state, same loop),
and, with ``out``, saves ``closed_loop.png`` (outputs against reference).

Run (about a minute on 2 CPU cores)::

    python examples/track_in_closed_loop.py --out runs/examples/closed_loop
    python examples/track_in_closed_loop.py --quick          # a few seconds, a rough model
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import ddcontrol  # noqa: F401  (registers the ddcontrol/* Gymnasium ids)
from ddcontrol.baselines import make_baseline
from ddcontrol.data import collect
from ddcontrol.score import TrainConfig, train
from ddcontrol.tracking import DenoisingTracker, TrackingProblem
from ddcontrol.tracking.reference import make_reference

ENV_ID = "ddcontrol/MassSpringDamper-v0"


def drive(controller: Any, steps: int, seed: int, warmup: int = 0
          ) -> tuple[np.ndarray, list[float]]:
    """Run ``controller`` (``reset(obs, info)`` / ``act(obs, info)``) in a fresh env for ``steps``
    samples; zero force for the first ``warmup`` ones. Returns the outputs (steps, p) and the
    controller's solve time per step."""
    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=seed)
    controller.reset(obs, info)
    outputs, solve_times = [], []
    for k in range(steps):
        action = controller.act(obs, info)  # the tracker uses obs only; the oracle reads info
        if k < warmup:
            action = np.zeros_like(action)
        solve_times.append(getattr(controller, "last_solve_time_s", 0.0))
        outputs.append(obs)  # y_k, measured before u_k is applied
        obs, _reward, _terminated, _truncated, info = env.step(action)
    env.close()
    return np.array(outputs), solve_times


def run(*, trajectories: int = 1000, train_steps: int = 3000, steps: int = 150,
        t_ini: int = 5, horizon: int = 25, seed: int = 0, quick: bool = False,
        out: str | Path | None = None) -> dict:
    """Collect, train, and track a random smooth reference for ``steps`` samples.

    Parameters
    ----------
    trajectories, train_steps : int
        Size of the dataset (100-step trajectories) and of the training run.
    steps : int
        Closed-loop samples (0.1 s each).
    t_ini, horizon : int
        Measured past T_ini and planning horizon N_h; the model's windows are T_ini + N_h long.
    quick : bool
        Tiny budget (seconds): 150 trajectories, 120 training steps, 40 samples.
    out : path, optional
        Folder for ``closed_loop.png``.

    Returns
    -------
    dict
        ``rms_error`` (m), ``oracle_rms_error`` (m, the model-based oracle with the true state),
        ``max_abs_error`` (m), ``reference_rms``, ``mean_solve_ms``, ``steps``, the timings
        ``collect_s``, ``train_s``, ``loop_s``, and ``plot`` (path or None).
    """
    width = 256
    if quick:
        trajectories, train_steps, steps, horizon, width = 150, 120, 40, 10, 64
    t_start = time.perf_counter()

    # 1. Data: input-output trajectories from random initial states under random excitation.
    data = collect(ENV_ID, trajectories, 100 if not quick else 40, seed=seed)
    t_collect = time.perf_counter() - t_start

    # 2. The behaviour model: a denoiser on windows of T_ini + N_h samples of (u, y).
    t0 = time.perf_counter()
    cfg = TrainConfig(window=t_ini + horizon, steps=train_steps, width=width, seed=seed,
                      warmup_steps=min(200, train_steps // 10), val_every=0, checkpoint_every=0,
                      progress=not quick)
    model = train(cfg, data)
    t_train = time.perf_counter() - t0

    # 3. The controller: reference, horizon, weights and actuator limits in physical units.
    reference = make_reference("random", ENV_ID, steps, seed=seed + 1, amplitude=1.0)
    problem = TrackingProblem.for_env(ENV_ID, reference, horizon, Q=1.0, R=0.01)
    tracker = DenoisingTracker.from_model(
        model, problem, data, candidate_stride=5,
        sigma=0.02, solver="nesterov", iterations=60 if quick else 300,
        iterations_per_step=10 if quick else 20)

    # 4. A plain Gymnasium loop on the true system.
    t0 = time.perf_counter()
    y, solve_times = drive(tracker, steps, seed)
    t_loop = time.perf_counter() - t0

    # A yardstick: the model-based oracle (true model and state, same horizon), same loop. It
    # applies zero force during the tracker's warm-up, so both start acting from the same state.
    oracle = make_baseline("oracle", ENV_ID, reference, 1.0, 0.01, horizon=horizon)
    y_oracle, _ = drive(oracle, steps, seed, warmup=t_ini)

    def rms(outputs: np.ndarray) -> float:
        err = reference.select(outputs)[t_ini:] - reference.values[t_ini:]
        return float(np.sqrt(np.mean(err ** 2)))

    error = reference.select(y)[t_ini:] - reference.values[t_ini:]
    result = {
        "rms_error": rms(y),
        "oracle_rms_error": rms(y_oracle),
        "max_abs_error": float(np.max(np.abs(error))),
        "reference_rms": float(np.sqrt(np.mean(reference.values[t_ini:] ** 2))),
        "mean_solve_ms": float(1e3 * np.mean(solve_times[t_ini:])),
        "steps": steps,
        "collect_s": t_collect,
        "train_s": t_train,
        "loop_s": t_loop,
        "total_s": time.perf_counter() - t_start,
        "plot": None,
    }
    if out is not None:
        from ddcontrol.evaluate.plots import plot_tracking

        t = np.arange(steps) * reference.dt
        result["plot"] = str(plot_tracking(
            t, reference.values, {"denoising tracker": reference.select(y),
                                  "oracle (true model)": reference.select(y_oracle)},
            Path(out) / "closed_loop.png", ["position [m]"],
            title=f"{ENV_ID}: closed loop, RMS error {result['rms_error']:.3g} m",
            shade_until=t_ini * reference.dt))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="closed-loop samples (0.1 s)")
    parser.add_argument("--train-steps", type=int, default=3000, help="training steps")
    parser.add_argument("--out", default=None, help="folder for closed_loop.png")
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    args = parser.parse_args()
    r = run(steps=args.steps, train_steps=args.train_steps, quick=args.quick, out=args.out)
    print(f"RMS tracking error {r['rms_error']:.4f} m over {r['steps']} samples (oracle with the "
          f"true model {r['oracle_rms_error']:.4f} m, reference RMS {r['reference_rms']:.3f} m); "
          f"max error {r['max_abs_error']:.3f} m; {r['mean_solve_ms']:.1f} ms per re-plan")
    print(f"collect {r['collect_s']:.1f} s, train {r['train_s']:.1f} s, "
          f"loop {r['loop_s']:.1f} s, total {r['total_s']:.1f} s")
    if r["plot"]:
        print(f"plot: {r['plot']}")


if __name__ == "__main__":
    main()

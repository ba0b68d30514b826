"""The paper's finite-horizon experiments: plan once on the learned manifold, replay in the simulator.

What it shows: the setting of *Landing with the Score* (ICLR 2026) for the double pendulum
('swing' reference on both angles) and the unicycle ('figure-eight' in the plane):

* every training trajectory starts from one fixed initial state ``x0``
  (``collect(..., initial_states=x0)``), so the behaviour manifold is the set of trajectories
  from ``x0`` and no measured past is needed (T_ini = 0, windows = horizon);
* a denoiser is trained on those whole trajectories;
* :func:`~ddcontrol.evaluate.finite_horizon.finite_horizon_experiment` minimises the tracking cost
  over the manifold from the best training trajectory (DRGD), then replays the planned inputs in
  the true simulator from ``x0``.

Reported per system: the predicted cost (inputs with the model's outputs), the replayed true cost,
the cost of the best training trajectory (what one gets by picking from the data), and the
manifold deviation ‖y_pred − y_true‖ / ‖y_true‖ of the replay.

Data and σ per system (what ``benchmarks/bench_tracking.py --experiment paper`` found): the
pendulum's data use the "mixed" excitation and σ = 0.1; the unicycle's use smooth Gaussian inputs
(bandwidth 0.2, amplitude 0.6), which fill the input space, and σ = 0.2. With the "mixed"
excitation (held levels, PRBS, sums of sines: lower-dimensional supports) the unicycle's plan
leaves the data's support at once and its replay costs many times the best trajectory's.

Budget. Data are cheap (20,000 trajectories, the paper's count, simulate in about 2 s); training
is what costs. With 18 minutes of training per system on one CPU core (28,000-54,000 steps,
``--train-steps``) the benchmark's replays beat the best training trajectory on both systems:
the pendulum's within 0.4 % of the model-based optimum (deviation 0.007), the unicycle's at 1.41x
the optimum against the best trajectory's 3.2x (deviation 0.13). The default here trains 2,000
steps per system (about a minute each): the model is still rough, the optimiser exploits its
errors, and the replay may come out *worse* than the best training trajectory, with a large
manifold deviation and ``drifted`` set. That is exactly what the replay check is for: a predicted
cost is worth nothing until the true system confirms it.

Run::

    python examples/paper_finite_horizon.py --out runs/examples/paper            # ~2.5 minutes
    python examples/paper_finite_horizon.py --systems pendulum --train-steps 20000 \\
        --width 512 --iterations 3000 --device cuda                              # larger
    python examples/paper_finite_horizon.py --quick                              # seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ddcontrol.data import collect
from ddcontrol.evaluate.finite_horizon import finite_horizon_experiment
from ddcontrol.score import TrainConfig, train
from ddcontrol.tracking.reference import make_reference

# system: (env id, reference, fixed initial state, input weight R, excitation, σ)
SYSTEMS = {
    "pendulum": ("ddcontrol/DoublePendulum-v0", "swing", np.zeros(4), 0.01, ("mixed", {}), 0.1),
    "unicycle": ("ddcontrol/Unicycle-v0", "figure-eight", np.zeros(5), 0.01,
                 ("gaussian", {"bandwidth": 0.2, "amplitude": 0.6}), 0.2),
}


def run(*, systems: tuple[str, ...] = ("pendulum", "unicycle"), trajectories: int = 20000,
        horizon: int = 100, train_steps: int = 2000, width: int = 256, iterations: int = 1000,
        sigma: float | None = None, seed: int = 0, device: str = "cpu", quick: bool = False,
        out: str | Path | None = None) -> dict:
    """Run the finite-horizon experiment on each of ``systems``.

    Parameters
    ----------
    systems : tuple of str
        Any of ``"pendulum"``, ``"unicycle"``.
    trajectories, horizon : int
        Dataset size; every trajectory is ``horizon`` steps long from the fixed initial state.
    train_steps, width : int
        Training steps and hidden width of the residual MLP denoiser.
    iterations : int
        Solver iterations of the plan.
    sigma : float, optional
        Noise level of the projection (normalised units); default per system (``SYSTEMS``).
    device : str
        ``"cpu"`` or ``"cuda"``: where the model trains and the plan is solved.
    quick : bool
        Tiny budget (seconds): horizon 20, 200 trajectories, 100 training steps.
    out : path, optional
        Folder for ``<system>_outputs.png`` and ``results.json``.

    Returns
    -------
    dict
        Per system: ``predicted_cost``, ``replay_cost``, ``best_training_cost``,
        ``manifold_deviation``, ``replay_beats_best_window``, ``drifted``, ``iterations``,
        ``collect_s``, ``train_s``, ``solve_time_s``, ``plot`` (path or None).
    """
    if quick:
        trajectories, horizon, train_steps, width, iterations = 200, 20, 100, 64, 50
    results: dict = {}
    for name in systems:
        env_id, ref_name, x0, r_weight, (excitation, params), system_sigma = SYSTEMS[name]
        t0 = time.perf_counter()
        data = collect(env_id, trajectories, horizon, initial_states=x0, seed=seed,
                       excitation=excitation, excitation_params=params)
        collect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cfg = TrainConfig(window=horizon, steps=train_steps, width=width, seed=seed,
                          warmup_steps=min(200, train_steps // 10), val_every=0,
                          checkpoint_every=0, device=device, progress=not quick)
        model = train(cfg, data)
        train_s = time.perf_counter() - t0

        reference = make_reference(ref_name, env_id, horizon)
        res = finite_horizon_experiment(model, data, reference, horizon=horizon, Q=1.0,
                                        R=r_weight, sigma=sigma or system_sigma, solver="drgd",
                                        iterations=iterations, device=device)
        s = res.summary
        row = {k: s[k] for k in ("predicted_cost", "replay_cost", "best_training_cost",
                                 "initial_cost", "manifold_deviation",
                                 "replay_beats_best_window", "drifted", "iterations",
                                 "solve_time_s")}
        row.update(env_id=env_id, reference=ref_name, trajectories=trajectories,
                   horizon=horizon, train_steps=train_steps, collect_s=collect_s, train_s=train_s,
                   plot=None)
        if out is not None:
            from ddcontrol.evaluate.plots import plot_tracking

            ch = list(reference.channels)
            names = data.metadata["output_names"]
            row["plot"] = str(plot_tracking(
                np.arange(horizon) * reference.dt, reference.values,
                {"predicted (model)": res.plan.predicted_outputs[:, ch],
                 "replayed (true system)": res.replay.outputs[:, ch],
                 "best training trajectory": res.best_window_outputs[:, ch]},
                Path(out) / f"{name}_outputs.png", [names[c] for c in ch],
                title=f"{env_id}: '{ref_name}', finite horizon {horizon}"))
        results[name] = row
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--trajectories", type=int, default=20000, help="dataset size")
    parser.add_argument("--horizon", type=int, default=100, help="horizon = trajectory length")
    parser.add_argument("--train-steps", type=int, default=2000, help="training steps per system")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the denoiser")
    parser.add_argument("--iterations", type=int, default=1000, help="solver iterations")
    parser.add_argument("--sigma", type=float, default=None,
                        help="noise level of the projection (default: per system)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=None, help="folder for plots and results.json")
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    args = parser.parse_args()
    results = run(systems=tuple(args.systems), trajectories=args.trajectories,
                  horizon=args.horizon, train_steps=args.train_steps, width=args.width,
                  iterations=args.iterations, sigma=args.sigma, device=args.device,
                  quick=args.quick, out=args.out)
    for name, r in results.items():
        print(f"{name} ({r['reference']}, horizon {r['horizon']}): predicted cost "
              f"{r['predicted_cost']:.4g} | replayed true cost {r['replay_cost']:.4g} | best "
              f"training trajectory {r['best_training_cost']:.4g} | manifold deviation "
              f"{r['manifold_deviation']:.3g} | train {r['train_s']:.0f} s, plan "
              f"{r['solve_time_s']:.1f} s")
        if r["drifted"]:
            print("  the replay is far worse than predicted: the model is too rough at this "
                  "budget (raise --train-steps)")
        if r["plot"]:
            print(f"  plot: {r['plot']}")


if __name__ == "__main__":
    main()

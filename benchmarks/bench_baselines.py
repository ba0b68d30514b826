"""Baselines a control engineer would trust (issue 17): NMPC on a real solver, tuned DeePC, Koopman.

Experiments:

* ``nmpc``: the CasADi oracle (multiple shooting, IPOPT, warm-started) against the shooting
  oracle (Gauss-Newton single shooting, the torch/scipy cross-check) on the closed-loop setups of
  ``bench_tracking.py`` (double pendulum, swing, N = 30, R = 0.1; unicycle, figure of eight,
  N = 40, R = 0.001; Q = 1). For each: one closed-loop episode per oracle from the same initial
  state (seed 0): total cost and per-step solve-time percentiles; and cold open-loop plans from
  the same states (every ``--plan-every`` samples of the CasADi episode): plan cost and time of
  both. Writes ``results/nmpc_oracle.json``.
* ``deepc-tuning``: the held-out choice of DeePC's (T_ini, λ_g, λ_y) per system
  (:func:`ddcontrol.baselines.tuning.tune_deepc`) on the closed-loop setups' data (generated as
  in ``bench_tracking.py``, without training a model). Writes ``results/deepc_tuning.json``.
* ``koopman``: the held-out choice of the EDMD model (delays, observables, ridge) per system
  (:func:`ddcontrol.baselines.koopman.select_edmd`), same data. Writes
  ``results/koopman_selection.json``.
* ``guided``: guided diffusion (:func:`ddcontrol.solvers.guided.guided_plan`) against DRGD
  (the DenoisingTracker's finite-horizon plan) on the same trained denoiser, the same window
  cost, bounds and start (DRGD also with as many iterations as the sampler has levels):
  mass-spring-damper from one initial state (windows = horizon = 30,
  exact optimum known) and the double pendulum conditioned on a measured past (T_ini = 10,
  N = 30). Replay cost over the model-based optimum from the true state, replay deviation,
  time per plan. Models are trained once (``--minutes``) into ``models/guided-<setup>/``.
  Writes ``results/guided_vs_drgd.json``.

Run (the recorded results)::

    python benchmarks/bench_baselines.py --experiment nmpc
    python benchmarks/bench_baselines.py --experiment deepc-tuning
    python benchmarks/bench_baselines.py --experiment koopman
    python benchmarks/bench_baselines.py --experiment guided --minutes 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddcontrol.baselines.nmpc import CasadiOracle
from ddcontrol.baselines.oracle import ShootingOracle
from ddcontrol.data import TrajectoryDataset, collect, make_dynamics
from ddcontrol.evaluate.closed_loop import episode_metrics, run_episode
from ddcontrol.tracking.reference import make_reference

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).parent / "models"

# The closed-loop setups (bench_tracking.py; ddcontrol.tracking.defaults for the coupled masses):
# env, reference, horizon, R, data (n, length, excitation), T_ini of the denoising tracker.
SYSTEMS: dict[str, dict[str, Any]] = {
    "msd": dict(env="ddcontrol/MassSpringDamper-v0", ref="random", horizon=25, R=0.01,
                data=(1000, 100, "gaussian", {"bandwidth": 1.0, "amplitude": 0.4}), t_ini=5),
    "coupled": dict(env="ddcontrol/CoupledMasses-v0", ref="random", horizon=24, R=0.01,
                    data=(1000, 100, "gaussian", {"bandwidth": 1.0, "amplitude": 0.4}), t_ini=6),
    "pendulum": dict(env="ddcontrol/DoublePendulum-v0", ref="swing", horizon=30, R=0.1,
                     data=(5000, 100, "mixed", {}), t_ini=10),
    "unicycle": dict(env="ddcontrol/Unicycle-v0", ref="figure-eight", horizon=40, R=0.001,
                     data=(5000, 100, "gaussian", {"bandwidth": 0.2, "amplitude": 0.6}),
                     t_ini=5),
}


def _percentiles(times: np.ndarray) -> dict[str, float]:
    t = 1e3 * np.asarray(times)
    return {"mean_ms": float(t.mean()), "p50_ms": float(np.percentile(t, 50)),
            "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
            "max_ms": float(t.max())}


def nmpc_experiment(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("pendulum", "unicycle"):
        if args.systems and name not in args.systems:
            continue
        s = SYSTEMS[name]
        env, N, R = s["env"], s["horizon"], s["R"]
        dyn = make_dynamics(env)
        steps = args.steps or 200
        ref = make_reference(s["ref"], env, steps)
        row: dict[str, Any] = {"env": env, "horizon": N, "Q": 1.0, "R": R, "steps": steps}
        episodes = {}
        for label, cls in (("casadi", CasadiOracle), ("shooting", ShootingOracle)):
            t0 = time.perf_counter()
            ctrl = cls(dyn, ref, 1.0, R, horizon=N)
            setup = time.perf_counter() - t0
            n = steps if label == "casadi" else min(steps, args.shooting_steps or steps)
            ep = run_episode(env, ctrl, n, seed=0)
            met = episode_metrics(ep, ref, 1.0, R, input_low=dyn.input_low,
                                  input_high=dyn.input_high)
            episodes[label] = ep
            row[f"{label}_closed_loop"] = {"steps": n, "total_cost": met["total_cost"],
                                           "rms_error": met["rms_error"], "setup_s": setup,
                                           "error": ep.error, **_percentiles(ep.solve_times)}
            print(f"{name} {label}: {n} steps, cost {met['total_cost']:.5g}, solve "
                  f"{_percentiles(ep.solve_times)}", flush=True)
        # Same number of steps for the cost comparison when the shooting run was shortened.
        n_sh = row["shooting_closed_loop"]["steps"]
        if n_sh < steps:
            met = episode_metrics(_truncate(episodes["casadi"], n_sh), ref, 1.0, R,
                                  input_low=dyn.input_low, input_high=dyn.input_high)
            row["casadi_closed_loop"][f"total_cost_first_{n_sh}"] = met["total_cost"]
        # Cold open-loop plans from the same states.
        plans = []
        cas = CasadiOracle(dyn, ref, 1.0, R, horizon=N)
        sho = ShootingOracle(dyn, ref, 1.0, R, horizon=N)
        ep = episodes["casadi"]
        for k in range(0, min(len(ep.outputs), args.plan_steps), args.plan_every):
            x0, up = ep.states[k], ep.inputs[k - 1] if k else np.zeros(dyn.input_dim)
            r = ref.window(k, N)
            t0 = time.perf_counter()
            uc, yc = cas.plan(x0, r, u_prev=up)
            tc = time.perf_counter() - t0
            t0 = time.perf_counter()
            us, ys = sho.plan(x0, r, u_prev=up)
            ts = time.perf_counter() - t0
            ch = list(ref.channels)
            cc = float(np.sum((yc[:, ch] - r) ** 2) + R * np.sum(uc ** 2))
            cs = float(np.sum((ys[:, ch] - r) ** 2) + R * np.sum(us ** 2))
            plans.append({"k": k, "casadi_cost": cc, "shooting_cost": cs, "casadi_s": tc,
                          "shooting_s": ts, "casadi_status": cas.last_stats["status"]})
            print(f"  plan k={k}: casadi {cc:.6g} ({tc * 1e3:.1f} ms)  shooting {cs:.6g} "
                  f"({ts * 1e3:.0f} ms)", flush=True)
        ratios = np.array([p["casadi_cost"] / p["shooting_cost"] for p in plans])
        row["cold_plans"] = {"plans": plans, "casadi_over_shooting_max": float(ratios.max()),
                             "casadi_over_shooting_median": float(np.median(ratios)),
                             "casadi_time": _percentiles([p["casadi_s"] for p in plans]),
                             "shooting_time": _percentiles([p["shooting_s"] for p in plans])}
        out[name] = row
    return out


def _truncate(ep: Any, n: int) -> Any:
    from dataclasses import replace

    return replace(ep, outputs=ep.outputs[:n], inputs=ep.inputs[:n], requested=ep.requested[:n],
                   states=ep.states[:n + 1], solve_times=ep.solve_times[:n])


def system_data(name: str) -> TrajectoryDataset:
    """The closed-loop setup's dataset (as bench_tracking.py generates it; cached)."""
    s = SYSTEMS[name]
    n, length, exc, params = s["data"]
    # bench_tracking.py stores its datasets under models/<name>-loop/; reuse one if present.
    path = DATA / f"{name}-loop" / "data.npz"
    if path.exists():
        return TrajectoryDataset.load(path)
    data = collect(s["env"], n, length, excitation=exc, excitation_params=params, seed=0)
    data.save(path)
    return data


def deepc_tuning_experiment(args: argparse.Namespace) -> dict[str, Any]:
    from ddcontrol.baselines.tuning import tune_deepc

    out: dict[str, Any] = {}
    for name, s in SYSTEMS.items():
        if args.systems and name not in args.systems:
            continue
        data = system_data(name)
        t0 = time.perf_counter()
        res = tune_deepc(data, horizon=s["horizon"], seed=0)
        out[name] = {"env": s["env"], "horizon": s["horizon"], **res.to_dict(),
                     "tuning_time_s": time.perf_counter() - t0}
        print(f"{name}: {res.params}  held-out error {res.score:.4g} (default "
              f"{res.default_score:.4g})", flush=True)
    return out


def koopman_experiment(args: argparse.Namespace) -> dict[str, Any]:
    from ddcontrol.baselines.koopman import select_edmd

    out: dict[str, Any] = {}
    for name, s in SYSTEMS.items():
        if args.systems and name not in args.systems:
            continue
        data = system_data(name)
        t0 = time.perf_counter()
        _, report = select_edmd(data, horizon=s["horizon"], seed=0)
        out[name] = {"env": s["env"], "horizon": s["horizon"], **report,
                     "selection_time_s": time.perf_counter() - t0}
        print(f"{name}: {report['chosen']}  held-out error {report['score']:.4g}", flush=True)
    return out


GUIDED_SETUPS: dict[str, dict[str, Any]] = {
    "msd": dict(env="ddcontrol/MassSpringDamper-v0", n=4000, length=30, x0=[0.5, 0.0],
                excitation=("gaussian", {"bandwidth": 1.0, "amplitude": 0.4}), window=30,
                t_ini=0, ref="random", R=0.01, sigma=0.05),
    "pendulum": dict(env="ddcontrol/DoublePendulum-v0", n=3000, length=100, x0=None,
                     excitation=("mixed", {}), window=40, t_ini=10, ref="swing", R=0.1,
                     sigma=0.1),
}


def _guided_model(name: str, minutes: float) -> tuple[TrajectoryDataset, Any]:
    import sys

    from ddcontrol.score import TrainConfig, load_model, train

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_geometry import steps_for_budget

    s = GUIDED_SETUPS[name]
    folder = DATA / f"guided-{name}"
    path = folder / "data.npz"
    if path.exists():
        data = TrajectoryDataset.load(path)
    else:
        exc, params = s["excitation"]
        data = collect(s["env"], s["n"], s["length"], excitation=exc, excitation_params=params,
                       initial_states=None if s["x0"] is None else np.array(s["x0"]), seed=0)
        data.save(path)
    if not (folder / "checkpoint.pt").exists():
        cfg = TrainConfig(out=str(folder), window=s["window"], overwrite=True, progress=False)
        cfg.steps = steps_for_budget(cfg, data, minutes)
        print(f"training guided-{name}: {cfg.steps} steps (~{minutes} min)", flush=True)
        train(cfg, data)
    return data, load_model(folder, dataset=data)


def _guided_window_problem(model: Any, data: TrajectoryDataset, problem: Any, t_ini: int,
                           traj: int, sigma: float) -> tuple[Any, ...]:
    """What the DenoisingTracker builds for one plan, for guided_plan: the Problem on normalised
    windows, the pinned mask and values (measured past and current output) and the start."""
    import torch

    from ddcontrol.manifold import BehaviorManifold
    from ddcontrol.solvers import Problem

    norm = model.normalizer
    m, L = data.input_dim, model.window_length
    C = m + data.output_dim
    cost = problem.window_cost(norm, t_ini=t_ini, start=t_ini, dtype=torch.float32)
    lo = np.full((L, C), -np.inf)
    hi = np.full((L, C), np.inf)
    low = np.asarray(data.metadata["input_low"], float)
    high = np.asarray(data.metadata["input_high"], float)
    lo[t_ini:, :m] = (low - norm.mean[:m]) / norm.std[:m]
    hi[t_ini:, :m] = (high - norm.mean[:m]) / norm.std[:m]
    prob = Problem(BehaviorManifold(model.denoiser, sigma), cost, cost.egrad,
                   lower=torch.as_tensor(lo, dtype=torch.float32),
                   upper=torch.as_tensor(hi, dtype=torch.float32))
    if t_ini == 0:
        cands = data.windows(L, stride=data.length)
        mask = values = None
    else:
        cands = data.windows(L, stride=max(1, L // 4))
        block = np.full((t_ini + 1, C), np.nan)
        block[:t_ini, :m] = data.u[traj, :t_ini]
        block[:t_ini, m:] = data.y[traj, :t_ini]
        block[t_ini, m:] = data.y[traj, t_ini]
        meas = (block - norm.mean) / norm.std
        mask = torch.zeros(L, C, dtype=torch.bool)
        mask[: t_ini + 1] = torch.as_tensor(np.isfinite(meas))
        values = torch.zeros(L, C, dtype=torch.float32)
        values[: t_ini + 1] = torch.as_tensor(np.nan_to_num(meas), dtype=torch.float32)
    x = torch.as_tensor(norm.normalize(cands), dtype=torch.float32)
    score = cost(x)
    if mask is not None:
        d = (x - values) * mask
        score = score + 1e3 * (d * d).sum(dim=(-1, -2))
    x0 = x[torch.topk(score, 8, largest=False).indices].clone()
    if mask is not None:
        x0[:, mask] = values[mask]
    return prob, cost, mask, values, x0


LABELS = ("drgd", "drgd-short", "guided", "guided-1", "sampled")


def guided_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """Rows: ``drgd`` (``--iterations``), ``drgd-short`` (as many iterations as guided levels),
    ``guided`` (σ_max 0.5), ``guided-1`` (σ_max 1), ``sampled`` (no guidance, σ_max 0.5)."""
    import torch

    from ddcontrol.baselines.oracle import make_oracle
    from ddcontrol.evaluate.finite_horizon import finite_horizon_experiment
    from ddcontrol.evaluate.replay import replay
    from ddcontrol.solvers.guided import guided_plan
    from ddcontrol.tracking.problem import TrackingProblem

    out: dict[str, Any] = {}
    for name, s in GUIDED_SETUPS.items():
        if args.systems and name not in args.systems:
            continue
        data, model = _guided_model(name, args.minutes)
        env, t_ini, R, sigma = s["env"], s["t_ini"], s["R"], s["sigma"]
        N = model.window_length - t_ini
        dyn = make_dynamics(env)
        rows = []
        for seed in range(args.references):
            ref = make_reference(s["ref"], env, t_ini + N, **({"seed": seed} if s["ref"] ==
                                                             "random" else {}))
            traj = seed  # each reference from another trajectory's start
            drgd = finite_horizon_experiment(model, data, ref, horizon=N, Q=1.0, R=R,
                                             trajectory=traj, sigma=sigma, solver="nesterov",
                                             iterations=args.iterations)
            problem = TrackingProblem.for_env(env, ref, N, Q=1.0, R=R)
            prob, cost, mask, values, x0 = _guided_window_problem(model, data, problem, t_ini,
                                                                  traj, sigma)
            x_start = data.x[traj, t_ini]
            u_prev = data.u[traj, t_ini - 1] if t_ini else np.zeros(dyn.input_dim)
            oracle = make_oracle(dyn, ref, 1.0, R, horizon=N)
            u_o, y_o = oracle.plan(x_start, ref.window(t_ini, N), u_prev=u_prev)
            optimum = float(problem.cost(u_o, y_o, t_ini))
            # DRGD with as many denoiser evaluations as the guided sampler's levels.
            short = finite_horizon_experiment(model, data, ref, horizon=N, Q=1.0, R=R,
                                              trajectory=traj, sigma=sigma, solver="nesterov",
                                              iterations=args.guided_steps)
            row = {"seed": seed, "optimum": optimum}
            for label, res_fh in (("drgd", drgd), ("drgd-short", short)):
                row[label] = {"replay_cost": res_fh.summary["replay_cost"],
                              "ratio": res_fh.summary["replay_cost"] / optimum,
                              "deviation": res_fh.summary["manifold_deviation"],
                              "time_s": res_fh.summary["solve_time_s"]}
            for label, kw in (("guided", dict(steps=args.guided_steps, sigma_max=0.5)),
                              ("guided-1", dict(steps=args.guided_steps, sigma_max=1.0)),
                              ("sampled", dict(steps=args.guided_steps, sigma_max=0.5,
                                               step_size=0.0))):
                kw.setdefault("step_size", args.guidance / cost.lipschitz())
                t0 = time.perf_counter()
                with torch.no_grad():
                    w, res = guided_plan(prob, x0, mask=mask, values=values, num_samples=8,
                                         damping=0.1 if mask is not None else 1e-3, seed=seed,
                                         **kw)
                elapsed = time.perf_counter() - t0
                win = model.normalizer.denormalize(w.double().numpy())[t_ini:]
                u = np.clip(win[:, : dyn.input_dim], dyn.input_low, dyn.input_high)
                rep = replay(problem, dyn, x_start, u, win[:, dyn.input_dim:],
                             u_prev=u_prev if t_ini else None, start=t_ini)
                row[label] = {"replay_cost": rep.true_cost, "ratio": rep.true_cost / optimum,
                              "predicted_cost": rep.predicted_cost,
                              "deviation": rep.manifold_deviation, "time_s": elapsed}
            rows.append(row)
            print(f"{name} ref {seed}: optimum {optimum:.4g}; " + "; ".join(
                f"{k} {row[k]['ratio']:.3f}x ({row[k]['time_s']:.2f} s, dev "
                f"{row[k]['deviation']:.3f})" for k in LABELS),
                flush=True)
        summary = {k: {"median_ratio": float(np.median([r[k]["ratio"] for r in rows])),
                       "worst_ratio": float(np.max([r[k]["ratio"] for r in rows])),
                       "median_deviation": float(np.median([r[k]["deviation"] for r in rows])),
                       "median_time_s": float(np.median([r[k]["time_s"] for r in rows]))}
                   for k in LABELS}
        out[name] = {"env": env, "t_ini": t_ini, "horizon": N, "R": R, "sigma": sigma,
                     "drgd_iterations": args.iterations, "guided_steps": args.guided_steps,
                     "guidance": args.guidance, "summary": summary, "rows": rows}
        print(json.dumps(summary, indent=1), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", choices=("nmpc", "deepc-tuning", "koopman", "guided"),
                   required=True)
    p.add_argument("--systems", nargs="*", default=None)
    p.add_argument("--steps", type=int, default=None, help="closed-loop samples (default 200)")
    p.add_argument("--shooting-steps", type=int, default=None,
                   help="closed-loop samples of the (slow) shooting oracle (default: --steps)")
    p.add_argument("--plan-every", type=int, default=20)
    p.add_argument("--plan-steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per model")
    p.add_argument("--references", type=int, default=6)
    p.add_argument("--iterations", type=int, default=500, help="DRGD iterations")
    p.add_argument("--guided-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=1.0,
                   help="guidance step γ in units of 1/L of the window cost")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    fn = {"nmpc": nmpc_experiment, "deepc-tuning": deepc_tuning_experiment,
          "koopman": koopman_experiment, "guided": guided_experiment}[args.experiment]
    result = fn(args)
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                         "cpus": os.cpu_count(), "threads": args.threads,
                         "load_average_at_end": os.getloadavg()}
    fname = {"nmpc": "nmpc_oracle.json", "deepc-tuning": "deepc_tuning.json",
             "koopman": "koopman_selection.json",
             "guided": "guided_vs_drgd.json"}[args.experiment]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / fname).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {RESULTS / fname}")


if __name__ == "__main__":
    main()

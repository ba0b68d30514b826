"""Geometry of trained denoisers: projection and tangent errors, replay consistency.

Linear system (mass-spring-damper, L = 30): length-L windows form an affine subspace of dimension
L·m + n_x in normalised units; its exact projector P is built from the true model (impulse
responses of the simulator, mapped through the normaliser, orthonormalised). On held-out windows w
pushed off the subspace along its normal space, x = w + σ P⊥ε (so π(x) = w), and at the clean w:

* projection error  ‖D(x, σ) − P x‖ / dist(x, M)
* tangent error     ‖D'(w, σ) − P‖_F / ‖P‖_F   (Jacobian by autograd)

Nonlinear systems (double pendulum, unicycle): held-out windows plus σε are denoised, their inputs
replayed in the true simulator from the window's true initial state, and the replay consistency
‖y_denoised − y_true‖ / ‖y_true‖ is reported (over the whole batch; the undenoised noisy window is
the baseline). Replaying from the true initial state also counts moves *along* the manifold
(a denoised window may start from a slightly different state), so the replay from the initial
state that best explains the denoised window (Gauss-Newton fit) is reported as well: that one
measures only how far the window is from being a trajectory. Each table compares the trained
model with the exact empirical denoiser of the training windows.

Run: ``python benchmarks/bench_geometry.py [--systems linear pendulum unicycle] [--minutes M]``
(training budget per system; default 15; ``--eval-only`` re-evaluates the saved checkpoints).
Prints tables and writes ``benchmarks/results/geometry.json``. Targets: linear projection and
tangent errors ≤ 0.10 at the best σ; nonlinear replay consistency ≤ 0.05.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcontrol.data import TrajectoryDataset, collect, make_dynamics
from ddcontrol.score.checkpoint import load_model
from ddcontrol.score.closed_form import EmpiricalDenoiser
from ddcontrol.score.train import TrainConfig, train

SYSTEMS = {
    # name: (env id, trajectories, horizon, window, stride, excitation and its parameters)
    # The linear data must fill the behaviour subspace: PRBS levels, held inputs and sums of
    # sines (the "mixed" default) have lower-dimensional support, and the ideal denoiser then
    # projects onto that support, not onto the subspace. White Gaussian inputs at 2.5 std inside
    # the limits (about 1% clipped) fill it.
    "linear": ("ddcontrol/MassSpringDamper-v0", 400, 200, 30, 1,
               ("gaussian", {"bandwidth": 1.0, "amplitude": 0.4})),
    "pendulum": ("ddcontrol/DoublePendulum-v0", 20_000, 100, 100, 1, ("mixed", {})),
    "unicycle": ("ddcontrol/Unicycle-v0", 20_000, 100, 100, 1, ("mixed", {})),
}
EVAL_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2)


# -- exact linear geometry ------------------------------------------------------------------------
def linear_behaviour_basis(env_id: str, length: int, normalizer: Any
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Offset b (d,) and orthonormal basis Q (d, k) of the normalised window subspace.

    Physical windows are w = G θ with θ = (u_0..u_{L-1}, x_0, u_prev) (u_prev only matters with a
    feedthrough); the columns of G are the simulator's responses to unit θ (exact: linear, noise
    free, inputs well inside the limits). Normalising z = (w − mean)/std per channel gives
    z = S⁻¹Gθ − S⁻¹mean: offset b = −S⁻¹mean, span = range(S⁻¹G).
    """
    dyn = make_dynamics(env_id)
    m, n = dyn.input_dim, dyn.state_dim
    k = length * m + n + m
    theta = np.eye(k)
    u = theta[:, :length * m].reshape(k, length, m)
    x0 = theta[:, length * m:length * m + n]
    u_prev = theta[:, length * m + n:]
    y, _ = dyn.simulate(x0, u, u_prev=u_prev)
    g = np.concatenate([u, y], axis=-1).reshape(k, -1).T  # (d, k), window layout (L, C) flattened
    scale = np.tile(1.0 / normalizer.std, length)
    offset = -np.tile(normalizer.mean / normalizer.std, length)
    uq, sv, _ = np.linalg.svd(scale[:, None] * g, full_matrices=False)
    rank = int(np.sum(sv > sv[0] * 1e-9))
    return offset, uq[:, :rank]


def jacobian_rows(denoiser: Any, w: torch.Tensor, sigma: float) -> torch.Tensor:
    """Jacobian (d, d) of x ↦ D(x, σ) at one window w (L, C): d copies, one VJP per row."""
    d = w.numel()
    x = w.reshape(1, *w.shape).repeat(d, 1, 1).requires_grad_(True)
    out = denoiser(x, sigma)
    eye = torch.eye(d, dtype=w.dtype).reshape(d, *w.shape)
    (grad,) = torch.autograd.grad(out, x, grad_outputs=eye)
    return grad.reshape(d, d)


def linear_metrics(denoiser: Any, clean: torch.Tensor, offset: np.ndarray, basis: np.ndarray,
                   sigmas: tuple[float, ...], jac_points: int, seed: int) -> list[dict]:
    """Projection and tangent errors of ``denoiser`` on held-out clean windows (B, L, C)."""
    q = torch.as_tensor(basis, dtype=torch.float64)
    b = torch.as_tensor(offset, dtype=torch.float64)
    proj = q @ q.T
    flat = clean.reshape(clean.shape[0], -1).double()
    residual = float(((flat - b) - (flat - b) @ proj).norm(dim=1).max())
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas:
        eps = torch.randn(flat.shape, generator=gen, dtype=torch.float64)
        normal = eps - eps @ proj
        x = (flat + sigma * normal).reshape(clean.shape)
        with torch.no_grad():
            den = denoiser(x.float(), sigma).double().reshape(flat.shape)
        p_x = b + (x.reshape(flat.shape) - b) @ proj
        dist = (x.reshape(flat.shape) - p_x).norm(dim=1)
        proj_err = ((den - p_x).norm(dim=1) / dist)
        tan = []
        for w in clean[:jac_points]:
            jac = jacobian_rows(denoiser, w.float(), sigma).double()
            tan.append(float((jac - proj).norm() / proj.norm()))
        rows.append({"sigma": sigma, "projection_error": float(proj_err.mean()),
                     "projection_error_median": float(proj_err.median()),
                     "tangent_error": float(np.mean(tan)), "manifold_residual": residual})
    return rows


# -- nonlinear replay -----------------------------------------------------------------------------
def fit_initial_state(dyn: Any, x0: np.ndarray, u: np.ndarray, u_prev: np.ndarray,
                      y_target: np.ndarray, iters: int = 6) -> np.ndarray:
    """Initial states (B, n_x) whose replay of ``u`` best matches ``y_target`` (Gauss-Newton).

    Starts at ``x0``; Jacobians by forward differences of the batched simulator.
    """
    x = x0.copy()
    b, n = x.shape
    for _ in range(iters):
        y, _ = dyn.simulate(x, u, u_prev=u_prev)
        r = (y - y_target).reshape(b, -1)
        jac = np.empty((b, r.shape[1], n))
        for i in range(n):
            h = 1e-6 * (1.0 + np.abs(x[:, i]))
            xp = x.copy()
            xp[:, i] += h
            yp, _ = dyn.simulate(xp, u, u_prev=u_prev)
            jac[:, :, i] = (yp.reshape(b, -1) - y.reshape(b, -1)) / h[:, None]
        jtj = np.einsum("bki,bkj->bij", jac, jac) + 1e-10 * np.eye(n)
        x = x - np.linalg.solve(jtj, np.einsum("bki,bk->bi", jac, r)[..., None])[..., 0]
    return x


def replay_metrics(denoiser: Any, test: TrajectoryDataset, normalizer: Any, length: int,
                   stride: int, sigmas: tuple[float, ...], points: int, seed: int
                   ) -> list[dict]:
    """Replay consistency of denoised noisy held-out windows in the true simulator."""
    env_id = test.metadata["env_id"]
    dyn = make_dynamics(env_id, test.metadata.get("env_kwargs"))
    m = test.input_dim
    windows = test.windows(length, stride)
    x0, u_prev = test.window_initial_conditions(length, stride)
    pick = np.random.default_rng(seed).choice(len(windows), size=min(points, len(windows)),
                                              replace=False)
    windows, x0, u_prev = windows[pick], x0[pick], u_prev[pick]
    clean = torch.as_tensor(normalizer.normalize(windows), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas:
        noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
        row: dict[str, Any] = {"sigma": sigma}
        for name, x in (("noisy", noisy), ("denoised", None)):
            if x is None:
                with torch.no_grad():
                    x = denoiser(noisy, sigma)
            phys = normalizer.denormalize(x.double().numpy())
            u_hat, y_hat = phys[..., :m], phys[..., m:]
            y_true, _ = dyn.simulate(x0, u_hat, u_prev=u_prev)
            err = np.linalg.norm(y_hat - y_true) / np.linalg.norm(y_true)
            per = (np.linalg.norm((y_hat - y_true).reshape(len(x), -1), axis=1)
                   / np.linalg.norm(y_true.reshape(len(x), -1), axis=1))
            row[f"replay_{name}"] = float(err)
            row[f"replay_{name}_median_window"] = float(np.median(per))
            # Same, replayed from the initial state that best explains the window: separates
            # leaving the manifold from moving along it (a shifted initial state is on it).
            x_fit = fit_initial_state(dyn, x0, u_hat, u_prev, y_hat)
            y_fit, _ = dyn.simulate(x_fit, u_hat, u_prev=u_prev)
            row[f"replay_{name}_fitted_x0"] = float(np.linalg.norm(y_hat - y_fit)
                                                    / np.linalg.norm(y_fit))
        rows.append(row)
    return rows


# -- training within a time budget ----------------------------------------------------------------
def steps_for_budget(cfg: TrainConfig, data: TrajectoryDataset, minutes: float) -> int:
    """Steps that fit ``minutes`` of training, timed on a short probe run of the same model."""
    stamps: list[float] = []
    probe = TrainConfig(**{**cfg.__dict__, "steps": 40, "out": None, "progress": False,
                           "val_every": 0, "val_fraction": 0.0, "warmup_steps": 1})
    train(probe, data, callback=lambda step, rec: stamps.append(time.perf_counter()))
    per_step = float(np.median(np.diff(stamps[10:])))
    # 15% margin for validation, checkpoints and machine noise.
    return max(50, int(0.85 * minutes * 60 / per_step))


def overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to TrainConfig fields, values parsed as JSON when possible."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            raise SystemExit(f"--set: unknown TrainConfig field {key!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def tracker_overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to tracker keyword arguments, values as Python literals
    (``sigma=0.3``, ``solver="'drgd'"``, ``refine_sigma=None``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        try:
            if not sep:
                raise ValueError("no '='")
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise SystemExit(f"tracker option {pair!r}: KEY=VALUE with a Python literal value "
                             f"({exc})") from None
    return out


def run_system(name: str, args: argparse.Namespace) -> dict[str, Any]:
    env_id, n_traj, horizon, length, stride, (excitation, params) = SYSTEMS[name]
    n_traj = args.trajectories or n_traj
    horizon = args.horizon or horizon
    length = args.window or length
    if horizon < length:
        horizon = length
    if name != "linear" and args.window and args.window < horizon and stride == 1:
        stride = max(1, length // 4)  # shorter windows from longer trajectories, less overlap
    data = collect(env_id, n_traj, horizon, seed=args.seed, noise=False, excitation=excitation,
                   excitation_params=params)
    test = collect(env_id, max(64, n_traj // 20), horizon, seed=args.seed + 1, noise=False,
                   excitation=excitation, excitation_params=params)
    cfg = TrainConfig(arch=args.arch, window=length, stride=stride, seed=args.seed,
                      progress=not args.quiet, out=str(Path(args.runs) / name), overwrite=True,
                      **overrides(args.set))
    if args.eval_only:  # the checkpoint of an earlier run of this benchmark
        model = load_model(cfg.out, dataset=data)
        cfg = TrainConfig(**{**model.config, "channel_mult": tuple(model.config["channel_mult"])})
        steps, train_s = model.metadata["step"], float("nan")
        print(f"[{name}] evaluating {cfg.out} ({steps} steps)", flush=True)
    else:
        steps = args.steps or steps_for_budget(cfg, data, args.minutes)
        cfg = TrainConfig(**{**cfg.__dict__, "steps": steps})
        print(f"[{name}] {env_id}: {n_traj} x {horizon} steps, L={length}, stride={stride}, "
              f"{cfg.arch}, {steps} steps", flush=True)
        start = time.perf_counter()
        limit = None if args.steps else start + 60 * args.minutes
        # The step count comes from a short timing probe; if the machine gets busier, stop at
        # the budget anyway (the schedule then ends before its cosine tail; see steps_done).
        model = train(cfg, data, callback=lambda step, rec: limit is not None
                      and time.perf_counter() > limit)
        train_s = time.perf_counter() - start
    norm = model.normalizer
    denoisers = {"model": model.denoiser}
    if not args.no_empirical:
        train_windows = torch.as_tensor(data.windows(length, stride, normalized=True),
                                        dtype=torch.float32)
        denoisers["empirical"] = EmpiricalDenoiser(train_windows)
    result: dict[str, Any] = {"env_id": env_id, "trajectories": n_traj, "horizon": horizon,
                              "excitation": excitation, "excitation_params": params,
                              "window": length, "stride": stride, "steps": steps,
                              "steps_done": model.metadata["step"],
                              "train_s": round(train_s, 1), "config": cfg.__dict__,
                              "val": model.metadata.get("val"), "metrics": {}}
    if name == "linear":
        offset, basis = linear_behaviour_basis(env_id, length, norm)
        result["manifold_dim"] = int(basis.shape[1])
        result["ambient_dim"] = int(basis.shape[0])
        clean = torch.as_tensor(test.windows(length, stride, normalized=False), dtype=torch.float64)
        clean = norm.normalize(clean)
        pick = torch.as_tensor(np.random.default_rng(args.seed).choice(
            len(clean), size=min(args.points, len(clean)), replace=False))
        clean = clean[pick]
        for key, den in denoisers.items():
            result["metrics"][key] = linear_metrics(den, clean, offset, basis, EVAL_SIGMAS,
                                                    args.jac_points, args.seed)
    else:
        for key, den in denoisers.items():
            result["metrics"][key] = replay_metrics(den, test, norm, length, stride, EVAL_SIGMAS,
                                                    args.points, args.seed)
    return result


def print_table(name: str, res: dict[str, Any]) -> None:
    print(f"\n{name}: {res['env_id']}  L={res['window']}  steps={res['steps_done']}  "
          f"train {res['train_s'] or float('nan'):.0f} s")
    if name == "linear":
        print(f"  manifold dim {res['manifold_dim']} of {res['ambient_dim']}")
        print(f"  {'sigma':>6} | {'proj err':>9} {'tangent':>8} (model) | {'proj err':>9} "
              f"{'tangent':>8} (empirical)")
        cols = ("projection_error", "tangent_error")
    else:
        print(f"  {'sigma':>6} | {'noisy':>7} {'model':>7} {'empirical':>9} | {'model, fitted x0':>16}"
              "   replay ‖Δy‖/‖y‖")
        cols = ("replay_denoised",)
    for i, sigma in enumerate(EVAL_SIGMAS):
        mod = res["metrics"]["model"][i]
        emp = res["metrics"].get("empirical", [None] * len(EVAL_SIGMAS))[i]
        if name == "linear":
            e = [emp[c] if emp else float("nan") for c in cols]
            print(f"  {sigma:6.3f} | {mod[cols[0]]:9.4f} {mod[cols[1]]:8.4f}         | "
                  f"{e[0]:9.4f} {e[1]:8.4f}")
        else:
            e = emp["replay_denoised"] if emp else float("nan")
            print(f"  {sigma:6.3f} | {mod['replay_noisy']:7.4f} {mod['replay_denoised']:7.4f} "
                  f"{e:9.4f} | {mod['replay_denoised_fitted_x0']:16.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per system")
    parser.add_argument("--steps", type=int, default=None, help="fixed steps (overrides minutes)")
    parser.add_argument("--arch", default="mlp", choices=["mlp", "unet"])
    parser.add_argument("--window", type=int, default=None, help="override window length L")
    parser.add_argument("--trajectories", type=int, default=None)
    parser.add_argument("--horizon", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override TrainConfig fields, e.g. --set sigma_min=0.005 width=256")
    parser.add_argument("--points", type=int, default=256, help="held-out evaluation windows")
    parser.add_argument("--jac-points", type=int, default=32, help="windows for tangent error")
    parser.add_argument("--no-empirical", action="store_true")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the checkpoints in --runs instead of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="runs/bench_geometry", help="checkpoint folders")
    parser.add_argument("--out", default="benchmarks/results/geometry.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.systems:
        results[name] = run_system(name, args)
        print_table(name, results[name])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    for name, res in results.items():
        earlier = previous.get("systems", {}).get(name, {})
        if args.eval_only and earlier.get("steps_done") == res["steps_done"]:
            res["train_s"] = earlier.get("train_s")
    systems = {**previous.get("systems", {}), **results}
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "threads": args.threads,
                               "machine": platform.machine(), "torch": torch.__version__,
                               "eval_sigmas": list(EVAL_SIGMAS), "systems": systems,
                               "targets": {"projection_error": 0.10, "tangent_error": 0.10,
                                           "replay": 0.05}}, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

"""Solver benchmark: iterations to a tolerance, and the cost of one iteration against a bare VJP.

Part 1 (iterations). The same problems, solved by every solver from the same starts; counted is
the first iteration (= one denoiser forward + one VJP) at which the relative suboptimality
(f − f*)/(f₀ − f*) of a problem falls below the tolerance, worst case (max) and median over the
batch of problems:

* ``quad-k100`` / ``quad-k1000``: ½(x − c)ᵀA(x − c) on a 20-dim affine subspace of R^100 with
  condition number 1e2 / 1e3 on the subspace; exact LinearGaussianDenoiser (σ = 1e-3, prior std
  10); f* from the KKT system; tolerance 1e-6.
* ``rayleigh-s49``: xᵀAx on the unit sphere S^49 with the exact projection x/‖x‖ as the
  denoiser (the σ → 0 limit); eigenvalues logspace(0, 2), so κ ≈ 1000; f* = λ_min; tol 1e-6.
* ``empirical-s2``: ⟨c, x⟩ on S² with the EmpiricalDenoiser of 4,000 Fibonacci points at
  σ = 0.15; f* from a long fixed-step DRGD run; tolerance 1e-4 (the σ-geometry is only
  resolved to O(σ²)).

Step sizes are 1/L for every method (L the Lipschitz constant of the Riemannian gradient).

Part 2 (speed). For a denoiser network on windows of shape (B, 100, 7), B = 1 and 64, the wall
time per fixed-step DRGD iteration (cost ½‖x − r‖² with its analytic gradient, history on) versus
a bare forward + backward (VJP w.r.t. the input) of the same network (best of several repeats,
see ``time_network``), with 2 torch threads (``--threads 1 2`` adds a 1-thread table). Uses the
ResidualMLP and TemporalUNet of ``ddcontrol.score.networks`` in the EDM wrapper when importable,
and always a plain 4x512 SiLU MLP on the flattened window (labelled "standin-mlp"). Targets:
ratio ≤ 1.3, MLP ≤ 2 ms/iteration at B = 1 and ≤ 10 ms at B = 64.

Run: ``python benchmarks/bench_solvers.py [--quick] [--skip-speed] [--skip-iterations]
[--threads 2]``.
Prints tables and writes ``benchmarks/results/solvers.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ddcontrol.manifold import BehaviorManifold
from ddcontrol.score.closed_form import EmpiricalDenoiser, LinearGaussianDenoiser
from ddcontrol.solvers import DLF, DRGD, AcceleratedDRGD, Problem, Solver

RESULTS = Path(__file__).resolve().parent / "results" / "solvers.json"
DT = torch.float64


# -- part 1: iterations to tolerance -----------------------------------------------------------
class SphereProjection(nn.Module):
    """The exact nearest-point projection onto the unit sphere, x/‖x‖ (the σ → 0 denoiser)."""

    def forward(self, x: Tensor, sigma: Any) -> Tensor:
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def solvers_for(step: float, max_iterations: int, min_gradient_norm: float) -> dict[str, Solver]:
    """Every method at step 1/L, with the same stopping rules."""
    kw: dict[str, Any] = dict(max_iterations=max_iterations, min_gradient_norm=min_gradient_norm,
                              check_every=25)
    return {
        "DRGD": DRGD(step, **kw),
        "DRGD-exact-vjp (2 fwd/it)": DRGD(step, exact_vjp=True, **kw),
        "DRGD-Armijo": DRGD(step, line_search=True, **kw),
        "DRGD-Armijo (γ0 = 0.01/L)": DRGD(0.01 * step, line_search=True, max_step=10 * step,
                                           **kw),
        "DLF (hη = 0.5)": DLF(step, landing=0.5 / step, **kw),
        "HeavyBall β=0.9": AcceleratedDRGD(step, momentum=0.9, nesterov=False, **kw),
        "Nesterov β=0.9": AcceleratedDRGD(step, momentum=0.9, **kw),
        "Nesterov-FISTA+restart": AcceleratedDRGD(step, **kw),
    }


def quadratic_problem(kappa: float, batch: int = 8, d: int = 100, k: int = 20, seed: int = 0
                      ) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=DT))[0]
    mean = torch.randn(d, generator=g, dtype=DT)
    q = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=DT))[0]
    h = q @ torch.diag(torch.logspace(0, math.log10(kappa), k, dtype=DT)) @ q.T
    a = basis @ h @ basis.T + torch.eye(d, dtype=DT) - basis @ basis.T  # normal curvature 1
    c = 3 * torch.randn(batch, d, generator=g, dtype=DT)
    hs = basis.T @ a @ basis
    z = torch.linalg.solve(hs, basis.T @ a @ (c - mean).T).T
    x_star = mean + z @ basis.T

    def cost(x: Tensor) -> Tensor:
        r = x - c
        return 0.5 * ((r @ a) * r).sum(dim=1)

    den = LinearGaussianDenoiser(mean, basis, scales=torch.full((k,), 10.0, dtype=DT))
    return dict(manifold=BehaviorManifold(den, 1e-3), cost=cost, egrad=lambda x: (x - c) @ a,
                x0=mean.expand(batch, d).clone(), f_star=cost(x_star), lip=float(kappa), tol=1e-6,
                max_iterations=int(25 * kappa), min_gradient_norm=1e-9)


def rayleigh_problem(batch: int = 8, d: int = 50, seed: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))[0]
    lam = torch.logspace(0, 2, d, dtype=DT)
    a = q @ torch.diag(lam) @ q.T
    x0 = torch.randn(batch, d, generator=g, dtype=DT)
    x0 = x0 / x0.norm(dim=1, keepdim=True)
    return dict(manifold=BehaviorManifold(SphereProjection(), 1e-3),
                cost=lambda x: ((x @ a) * x).sum(1), egrad=lambda x: 2 * x @ a, x0=x0,
                f_star=torch.full((batch,), float(lam[0]), dtype=DT),
                lip=float(2 * (lam[-1] - lam[0])), tol=1e-6, max_iterations=30_000,
                min_gradient_norm=1e-7)


def empirical_sphere_problem(batch: int = 8, n: int = 4000, seed: int = 2) -> dict[str, Any]:
    i = torch.arange(n, dtype=DT) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    pts = torch.stack([phi.sin() * theta.cos(), phi.sin() * theta.sin(), phi.cos()], dim=1)
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(batch, 3, generator=g, dtype=DT)
    x0 = torch.randn(batch, 3, generator=g, dtype=DT)
    x0 = x0 / x0.norm(dim=1, keepdim=True)
    man = BehaviorManifold(EmpiricalDenoiser(pts), 0.15)
    cost = lambda x: (x * c).sum(1)  # noqa: E731
    lip = float(c.norm(dim=1).max())
    ref = DRGD(1 / lip, max_iterations=6000, min_gradient_norm=0.0).run(
        Problem(man, cost), initial_point=x0)
    return dict(manifold=man, cost=cost, egrad=lambda x: c.expand_as(x), x0=x0,
                f_star=ref.cost, lip=lip, tol=1e-4, max_iterations=3000, min_gradient_norm=0.0)


def iterations_to_tolerance(history: np.ndarray, f0: np.ndarray, f_star: np.ndarray,
                            tol: float) -> list[int | None]:
    """First iteration with (f − f*)/(f₀ − f*) ≤ tol, per problem (None if never)."""
    rel = (history - f_star[None, :]) / np.maximum(f0 - f_star, 1e-300)[None, :]
    out: list[int | None] = []
    for j in range(rel.shape[1]):
        hit = np.nonzero(rel[:, j] <= tol)[0]
        out.append(int(hit[0]) if hit.size else None)
    return out


def run_iterations(quick: bool = False) -> dict[str, Any]:
    problems: dict[str, Callable[[], dict[str, Any]]] = {
        "quad-k100": lambda: quadratic_problem(100.0),
        "quad-k1000": lambda: quadratic_problem(1000.0),
        "rayleigh-s49": rayleigh_problem,
        "empirical-s2": empirical_sphere_problem,
    }
    if quick:
        problems = {"quad-k100": problems["quad-k100"]}
    out: dict[str, Any] = {}
    for pname, make in problems.items():
        spec = make()
        prob = Problem(spec["manifold"], spec["cost"], spec["egrad"])
        f_star = spec["f_star"].numpy()
        rows: dict[str, Any] = {}
        for sname, solver in solvers_for(1.0 / spec["lip"], spec["max_iterations"],
                                         spec["min_gradient_norm"]).items():
            res = solver.run(prob, initial_point=spec["x0"])
            hist = res.history["cost"]
            # Suboptimality relative to the projected start (row 0 of the history).
            its = iterations_to_tolerance(hist, hist[0], f_star, spec["tol"])
            reached = [i for i in its if i is not None]
            rows[sname] = {
                "max": max(reached) if len(reached) == len(its) else None,
                "median": float(np.median(reached)) if len(reached) == len(its) else None,
                "reached": f"{len(reached)}/{len(its)}",
                "forwards_per_iteration": 2 if "exact" in sname else 1,
                "final_rel_subopt": float(np.max((res.cost.numpy() - f_star)
                                                 / np.maximum(hist[0] - f_star, 1e-300))),
                "wall_time_s": res.wall_time_s, "stop_reason": res.stop_reason,
            }
        out[pname] = {"tol": spec["tol"], "methods": rows}
    return out


def print_iterations(results: dict[str, Any]) -> None:
    for pname, block in results.items():
        print(f"\n{pname}: iterations to relative suboptimality {block['tol']:g} "
              "(max / median over problems)")
        print(f"  {'method':28s} {'max':>8s} {'median':>8s} {'reached':>8s} {'final':>10s}")
        for sname, r in block["methods"].items():
            mx = "-" if r["max"] is None else str(r["max"])
            md = "-" if r["median"] is None else f"{r['median']:.0f}"
            print(f"  {sname:28s} {mx:>8s} {md:>8s} {r['reached']:>8s} "
                  f"{r['final_rel_subopt']:10.1e}")


# -- part 2: speed -------------------------------------------------------------------------------
def _load() -> tuple[float, ...]:
    """1/5/15-minute load averages (timings on a shared machine are only as good as these)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return ()


class StandInMLP(nn.Module):
    """4x512 SiLU MLP on the flattened window; x + MLP(x) as a denoiser (σ ignored)."""

    def __init__(self, length: int = 100, channels: int = 7, width: int = 512) -> None:
        super().__init__()
        d = length * channels
        self.net = nn.Sequential(nn.Linear(d, width), nn.SiLU(), nn.Linear(width, width),
                                 nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, d))

    def forward(self, x: Tensor, sigma: Any) -> Tensor:
        return x + self.net(x.reshape(x.shape[0], -1)).reshape(x.shape)


def speed_networks(length: int = 100, channels: int = 7) -> dict[str, nn.Module]:
    """The project's networks in the EDM wrapper if importable, else the stand-in MLP."""
    try:
        from ddcontrol.score.networks import build_network
        from ddcontrol.score.precond import BehaviorDenoiser
    except ImportError:
        return {"standin-mlp": StandInMLP(length, channels)}
    nets = {arch: BehaviorDenoiser(build_network(arch, length, channels), length, channels)
            for arch in ("mlp", "unet")}
    nets["standin-mlp"] = StandInMLP(length, channels)
    return nets


def time_network(den: nn.Module, batch: int, n: int, repeats: int, sigma: float = 0.1
                 ) -> dict[str, float]:
    """Milliseconds per bare forward+VJP and per DRGD iteration, and their ratio.

    Each repeat times n bare forward+VJP calls and one DRGD run of n iterations (n + 1
    evaluations, setup included), interleaved so both see the same machine load; reported is
    the best repeat of each. The best, not the median: on a shared machine other processes only
    ever add time (with 2 threads an OpenMP barrier waiting on a descheduled thread adds
    milliseconds).
    """
    den.eval()  # parameters keep requires_grad=True, as in a freshly loaded checkpoint
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 100, 7, generator=g)
    u = torch.randn(batch, 100, 7, generator=g)
    ref = torch.randn(batch, 100, 7, generator=g)

    def bare() -> None:
        for _ in range(n):
            xg = x.detach().requires_grad_(True)
            out = den(xg, sigma)
            torch.autograd.grad(out, xg, u)

    prob = Problem(BehaviorManifold(den, sigma), lambda z: 0.5 * ((z - ref) ** 2).sum((1, 2)),
                   lambda z: z - ref)
    solver = DRGD(0.01, max_iterations=n - 1, min_gradient_norm=0.0, check_every=25)
    bare()
    solver.run(prob, initial_point=x)  # warm-up
    t_bare = t_drgd = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        bare()
        t_bare = min(t_bare, (time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        solver.run(prob, initial_point=x)
        t_drgd = min(t_drgd, (time.perf_counter() - t0) / n)
    return {"bare_ms": 1e3 * t_bare, "drgd_ms": 1e3 * t_drgd, "ratio": t_drgd / t_bare}


def run_speed(quick: bool = False, threads: int = 2) -> dict[str, Any]:
    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    for name, den in speed_networks().items():
        for batch in (1, 64):
            n = 10 if quick else (20 if name == "unet" else 50)
            out[f"{name}/B={batch}"] = time_network(den, batch, n, repeats=3 if quick else 7)
    return out


def print_speed(results: dict[str, Any]) -> None:
    print(f"\nDRGD iteration vs bare forward+VJP, windows (B, 100, 7), "
          f"{torch.get_num_threads()} threads, load average {_load()}")
    print(f"  {'network/batch':22s} {'bare ms':>9s} {'DRGD ms':>9s} {'ratio':>7s}")
    for key, r in results.items():
        print(f"  {key:22s} {r['bare_ms']:9.3f} {r['drgd_ms']:9.3f} {r['ratio']:7.2f}")


def run(quick: bool = False, iterations: bool = True, speed: bool = True,
        out_path: Path | None = RESULTS, threads: tuple[int, ...] = (2,)) -> dict[str, Any]:
    """Run the benchmark; returns (and writes, unless ``out_path`` is None) the results."""
    results: dict[str, Any] = {"meta": {"torch": torch.__version__, "python":
                                        platform.python_version(), "machine": platform.machine(),
                                        "quick": quick, "threads": list(threads),
                                        "load_average": list(_load())}}
    if iterations:
        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: one thread is fastest
        results["iterations"] = run_iterations(quick)
        torch.set_num_threads(n_threads)
        print_iterations(results["iterations"])
    if speed:
        results["speed"] = {}
        for n_threads in threads:
            results["speed"][f"threads={n_threads}"] = run_speed(quick, n_threads)
            print_speed(results["speed"][f"threads={n_threads}"])
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out_path}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one problem, short timings")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-iterations", action="store_true")
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="torch thread counts for the timings (one table each)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    run(args.quick, not args.skip_iterations, not args.skip_speed, args.out, tuple(args.threads))


if __name__ == "__main__":
    main()

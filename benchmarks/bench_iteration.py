"""Cost of one conditioned iteration (ConditionedDRGD, the tracker's solver) against the network.

For the unicycle (window 45 = T_ini 5 + horizon 40, 7 channels) and the double pendulum (window 40,
T_ini 10, 3 channels), a randomly initialised default denoiser (``build_denoiser``: ResidualMLP
width 256, depth 4, EDM wrapper; every linear layer re-drawn with std 0.5/√fan_in so that the
zero-initialised output and skip layers are not trivially zero; no training needed for timing)
and the tracker's setting of a receding-horizon solve: the measured past and the current output
pinned (40 and 32 coordinates), heavy-ball momentum 0.9, damping 0.05, trust radius 0.5, input
bounds on the future inputs, a quadratic tracking cost with its analytic gradient, history on,
checks every 50 iterations. Reported, in ms per iteration (one run of ``--iterations`` iterations
divided by its evaluations, median over repetitions, all variants interleaved in each
repetition so that they share the machine's load):

* ``bare``: one forward + one VJP w.r.t. the input of the same network at the same batch;
* ``before``: ConditionedDRGD of git revision ``--before-rev`` (forward over B·(k + 2) copies of
  the point, one backward), loaded from ``git show``;
* ``after``: this tree's ConditionedDRGD (one forward at B, one backward vectorised over the
  k + 2 cotangents), every iteration exact (``jacobian_every=1``);
* ``after_one_product``: ``after`` with every cotangent of a VJP in one matrix product per
  layer instead of chunks of at most :data:`~ddcontrol.score.frozen.VJP_ROWS` rows (what the
  chunks save at batch 64, where the k + 2 cotangents make 2,688 rows);
* ``after_chord5`` / ``after_chord10``: the same with ``jacobian_every=5`` / ``10``: the k pinned
  rows and the inverse of their k × k block are computed at 1 of 5 (10) iterations; the others
  reuse only that inverse and keep exact directions through two small backward passes (∇f,
  momentum and the pull, then the Eᵀλ), so the iterates stay close to the exact ones
  (``max_abs_diff_after_chord5``; equal where the Jacobian is constant, see
  ``tests/test_iteration.py``);
* ``after_chord5_reused``: the tracker's warm receding-horizon solves: ``jacobian_every=5`` with
  the rows reused too (``chord="reused"``: one backward pass over ∇f and the momentum) and no VJP
  at the last iterate (``final_gradient=False``); ``max_abs_diff_after_chord5_reused``.
* ``after_rows_bf16`` / ``after_chord5_reused_rows_bf16``: ``after`` and ``after_chord5_reused``
  with the pinned rows' hidden-layer products in bfloat16 (``row_dtype=torch.bfloat16``; the
  tracker's ``row_dtype="auto"`` on a CPU with native bfloat16 products and damping >= 0.05).
  From 128 rows (k x batch) on the rows take a pass of their own, the output and skip layers as
  gathers; below, they ride with the gradient's backward pass whatever the dtype, so at batch 1
  these equal ``after`` and ``after_chord5_reused`` up to timing noise.

At batch 1 the pass the tracker's solver makes (the σ-frozen network's forward with its slopes
and one VJP of 3 cotangents, :mod:`ddcontrol.score.frozen`; no autograd) is also timed after an
idle gap (``frozen_pass_after_idle_gap_ms``: ms per pass when each follows a ``time.sleep`` of 0,
0.1, 1 or 4 ms). In the tracker's loop passes come between other work and the wait for the next
sample; on a machine whose cache is shared with other tenants (a cloud VM) the weights of the
256-wide model (about 3 MB) are evicted while the core waits, and a pass after a gap costs more
than one right after another.

The final points of ``before`` and ``after`` are compared (max abs difference, float32): the
change is not meant to alter the iterates, so the iterations a step needs for a given
closed-loop cost are unchanged and a step's solve time scales with ms/iteration.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_iteration.py [--quick]``. Prints a table and
writes ``benchmarks/results/iteration.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import ddcontrol.score.frozen as frozen_module
from ddcontrol.manifold import BehaviorManifold
from ddcontrol.score.checkpoint import build_denoiser
from ddcontrol.solvers.conditioned import ConditionedDRGD
from ddcontrol.solvers.problem import Problem

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "iteration.json"
# name: (window L, T_ini, inputs m, outputs p, projection sigma)
SYSTEMS = {"unicycle": (45, 5, 2, 5, 0.05), "double_pendulum": (40, 10, 1, 2, 0.1)}
# Measured in closed loop (bench_tracker_options.py, 200 steps, seed 0, unbudgeted, 20 iterations
# per step): the iterations a step needs for the same closed-loop cost.
ITERATIONS_PER_STEP = (
    "before -> after: unchanged iterates (max_abs_diff_before_after), so the same iterations. "
    "chord (jacobian_every=5) at the same 20 iterations per step: unicycle figure of eight / "
    "circle / random path cost 1.3123 / 0.854 / 1.6746x the oracle against 1.3122 / 0.854 / "
    "1.6744x exact (default on the unicycle); double pendulum swing 1.66x against 1.04x (not "
    "used there). 10 iterations per step instead of 20 (unicycle, chord): 1.373 / 0.854x. "
    "chord5 reused (the unicycle's warm steps since session 14, 5 iterations per step, 9 suite "
    "runs, 3 seeds x 3 references): 0.9992-1.0013x the closed-loop cost with exact directions, "
    "so the same iterations per step; double pendulum with the rows reused every 2 / 4 "
    "iterations: +7-13 % / +20-24 % (seed 0, two references), so it keeps 1.")
SOLVER = {"step_size": 0.25, "momentum": 0.9, "damping": 0.05, "max_step": 0.5,
          "min_gradient_norm": 0.0, "check_every": 50, "record_history": True}


def load_before(rev: str) -> ModuleType | None:
    """ConditionedDRGD's module at git revision ``rev`` (None if git cannot produce it)."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:ddcontrol/solvers/conditioned.py"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no 'before' figures: {exc}", file=sys.stderr)
        return None
    path = Path(tempfile.mkdtemp()) / "conditioned_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("conditioned_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup(system: str, batch: int) -> dict[str, Any]:
    """Denoiser, pinned mask and values, problem and start point of one system."""
    length, t_ini, m, p, sigma = SYSTEMS[system]
    torch.manual_seed(0)
    den = build_denoiser({"arch": "mlp", "window_length": length, "input_dim": m,
                          "output_dim": p, "sigma_data": 1.0,
                          "net_kwargs": {"width": 256, "depth": 4}})
    for layer in den.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.5 / layer.in_features ** 0.5)
    den.eval().requires_grad_(False)
    c = m + p
    mask = torch.zeros(length, c, dtype=torch.bool)
    mask[:t_ini] = True  # the measured past
    mask[t_ini, m:] = True  # the current output
    values = 0.3 * torch.randn(length, c)
    ref = 0.5 * torch.randn(length, p)

    def cost(x: torch.Tensor) -> torch.Tensor:
        e = x[:, t_ini:, m:] - ref[t_ini:]
        return (e * e).sum(dim=(1, 2)) + 0.01 * (x[:, t_ini:, :m] ** 2).sum(dim=(1, 2))

    def egrad(x: torch.Tensor) -> torch.Tensor:
        g = torch.zeros_like(x)
        g[:, t_ini:, m:] = 2.0 * (x[:, t_ini:, m:] - ref[t_ini:])
        g[:, t_ini:, :m] = 0.02 * x[:, t_ini:, :m]
        return g

    lower = torch.full((length, c), -math.inf)
    lower[t_ini:, :m] = -1.0
    problem = Problem(BehaviorManifold(den, sigma), cost, egrad, lower=lower, upper=-lower)
    x0 = 0.3 * torch.randn(batch, length, c)
    return {"den": den, "mask": mask, "values": values, "problem": problem, "x0": x0,
            "sigma": sigma}


def variants(case: dict[str, Any], before: ModuleType | None, iterations: int
             ) -> dict[str, Callable[[], Any]]:
    """The timed callables, each running ``iterations + 1`` evaluations."""
    den, x0, sigma = case["den"], case["x0"], case["sigma"]
    u = torch.randn_like(x0)

    def bare() -> None:
        for _ in range(iterations + 1):
            x = x0.detach().requires_grad_(True)
            with torch.enable_grad():
                out = den(x, sigma)
            torch.autograd.grad(out, x, grad_outputs=u)

    def solve(cls: type, **kw: Any) -> Callable[[], Any]:
        def run() -> Any:
            solver = cls(case["mask"], case["values"], max_iterations=iterations, **SOLVER, **kw)
            return solver.run(case["problem"], initial_point=x0)
        return run

    out: dict[str, Callable[[], Any]] = {"bare": bare}
    if before is not None:
        out["before"] = solve(before.ConditionedDRGD)
    out["after"] = solve(ConditionedDRGD)
    exact = solve(ConditionedDRGD)

    def one_product() -> Any:  # the VJPs of all cotangents in one product per layer
        rows, frozen_module.VJP_ROWS = frozen_module.VJP_ROWS, 10 ** 9
        try:
            return exact()
        finally:
            frozen_module.VJP_ROWS = rows

    out["after_one_product"] = one_product
    out["after_chord5"] = solve(ConditionedDRGD, jacobian_every=5)
    out["after_chord10"] = solve(ConditionedDRGD, jacobian_every=10)
    # The tracker's warm receding-horizon solves: the rows reused too, no last VJP.
    out["after_chord5_reused"] = solve(ConditionedDRGD, jacobian_every=5, chord="reused",
                                       final_gradient=False)
    # The pinned rows' products in bfloat16 (the tracker's row_dtype="auto" on a CPU with
    # native bfloat16 products): every iteration exact, and the warm solves' setting.
    out["after_rows_bf16"] = solve(ConditionedDRGD, row_dtype=torch.bfloat16)
    out["after_chord5_reused_rows_bf16"] = solve(
        ConditionedDRGD, jacobian_every=5, chord="reused", final_gradient=False,
        row_dtype=torch.bfloat16)
    return out


GAPS_MS = (0.0, 0.1, 1.0, 4.0)


def idle_gap_effect(case: dict[str, Any], gaps_ms: tuple[float, ...] = GAPS_MS,
                    calls: int = 200) -> dict[str, float]:
    """ms per pass of the σ-frozen network (forward with slopes + one VJP of 3 cotangents) at
    the case's batch when each pass follows an idle gap of g ms (``time.sleep``; the gap is not
    timed), per g."""
    frozen, x0 = case["den"].frozen(case["sigma"]), case["x0"]
    u = torch.randn(3, *x0.shape)

    def one() -> None:
        _, slopes = frozen.forward(x0, keep=True)
        frozen.vjp(slopes, u)

    for _ in range(20):
        one()
    result = {}
    for gap in gaps_ms:
        total = 0.0
        for _ in range(calls):
            if gap:
                time.sleep(gap / 1e3)
            t = time.perf_counter()
            one()
            total += time.perf_counter() - t
        result[f"{gap:g}"] = 1e3 * total / calls
    return result


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds per call of each function, the functions interleaved in every rep."""
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-rev", default="f87602a",
                        help="git revision whose ConditionedDRGD is 'before'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = load_before(args.before_rev)
    plan = {1: (20, 5 if args.quick else 9), 64: (4, 2 if args.quick else 3)}
    rows = []
    print(f"{'system':16s} {'B':>3s} {'k':>3s} {'bare':>8s} {'before':>8s} {'after':>8s} "
          f"{'chord5':>8s} {'chord10':>8s}  ms/iteration; ratios to bare")
    for system in SYSTEMS:
        for batch, (iterations, reps) in plan.items():
            case = setup(system, batch)
            fns = variants(case, before, iterations)
            med = time_interleaved(fns, reps)
            ms = {k: 1e3 * v / (iterations + 1) for k, v in med.items()}
            row: dict[str, Any] = {"system": system, "batch": batch,
                                   "pinned": int(case["mask"].sum()),
                                   "window": list(case["mask"].shape),
                                   "iterations_per_run": iterations, "repetitions": reps,
                                   "ms_per_iteration": ms,
                                   "ratio_to_bare": {k: v / ms["bare"] for k, v in ms.items()}}
            if before is not None:
                p_before, p_after = fns["before"]().point, fns["after"]().point
                row["max_abs_diff_before_after"] = float((p_before - p_after).abs().max())
            for name in ("after_chord5", "after_chord5_reused", "after_rows_bf16",
                         "after_chord5_reused_rows_bf16"):
                row[f"max_abs_diff_{name}"] = float(
                    (fns[name]().point - fns["after"]().point).abs().max())
            if batch == 1:
                row["frozen_pass_after_idle_gap_ms"] = gaps = idle_gap_effect(
                    case, calls=50 if args.quick else 200)
                print(f"{'':16s} frozen pass after an idle gap of "
                      + ", ".join(f"{g} ms: {v:.2f} ms" for g, v in gaps.items()), flush=True)
            rows.append(row)
            r = row["ratio_to_bare"]
            print(f"{system:16s} {batch:3d} {row['pinned']:3d} {ms['bare']:8.2f} "
                  f"{ms.get('before', math.nan):8.2f} {ms['after']:8.2f} {ms['after_chord5']:8.2f}"
                  f" {ms['after_chord10']:8.2f}  before {r.get('before', math.nan):.1f}x, "
                  f"after {r['after']:.1f}x (in one product {r['after_one_product']:.1f}x), "
                  f"chord5 {r['after_chord5']:.2f}x, "
                  f"chord10 {r['after_chord10']:.2f}x, "
                  f"chord5 reused {r['after_chord5_reused']:.2f}x; rows in bfloat16: "
                  f"exact {r['after_rows_bf16']:.2f}x, chord5 reused "
                  f"{r['after_chord5_reused_rows_bf16']:.2f}x", flush=True)
    result = {"benchmark": "conditioned iteration vs bare forward+backward",
              "command": "OMP_NUM_THREADS=1 python benchmarks/bench_iteration.py"
                         + (" --quick" if args.quick else ""),
              "before_rev": args.before_rev if before is not None else None,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
              "platform": platform.platform(), "solver": SOLVER, "rows": rows,
              "iterations_per_step": ITERATIONS_PER_STEP}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

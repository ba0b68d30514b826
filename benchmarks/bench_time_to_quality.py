"""Time to quality: how a system's model improves with training time.

For one system and seed of the closed-loop suite, models are trained with the default
configuration for several step budgets (each a full run with its own cosine schedule, cached in
``benchmarks/models/suite/<system>-s<seed>-<steps>-ttq/``: the suite's data, its training
configuration, and its own timing), and each is measured by

* its training time: CPU seconds of this one-thread process (``time.process_time``), which
  on a machine shared with other jobs measures the work rather than their load (on an idle
  machine it equals the wall time), and the wall time beside it,
* the held-out conditioned prediction error: for windows of trajectories collected with another
  seed (never trained on), the measured past (T_ini steps) and the future inputs pinned, the
  model's future outputs at the system's σ against the true ones, ‖y_pred − y‖ / ‖y‖ (median
  and 90th percentile over the windows),
* optionally (``--closed-loop``) the tracker's closed-loop cost on the suite's references,
  iteration-limited (no per-step budget, so that the load does not change it), relative to the
  suite's oracle rows.

The target of issue 14 ("the double pendulum's closed-loop model reaching its current quality
in <= 3 minutes") reads off the curve: the first budget whose error (and cost) is within 5 % of
the largest budget's, and the minutes it took; with ``--target FILE``, of the largest budget of
another curve (an earlier training configuration's: the quality to reach). Models are trained
with the system's own training options (``SystemDefaults.train_options``: the double
pendulum's noise range 0.015-0.5), which name their cache folders and result files
(``time_to_quality_pendulum_t2_sigma_max0.5_sigma_min0.015.json``); the curves of the generic
range (0.01-1.0) are the files without them.

Run: ``python benchmarks/bench_time_to_quality.py --system pendulum --budgets 1000 2000 4000
6000 8000 --closed-loop``; writes ``benchmarks/results/time_to_quality_<system>.json`` and
``.png``. ``--threads N`` measures wall time on N threads (``..._t<N>.json``); ``--model
width=512`` or ``--model arch=unet`` (TrainConfig overrides) gives a capacity or architecture
curve of the same data (``..._width512.json``), to read against the default model's at equal
training minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_closed_loop_suite import (  # noqa: E402
    MODELS,
    SYSTEMS,
    _dataset,
    _label,
    training_options,
)
from bench_geometry import overrides  # noqa: E402

from ddcontrol._io import atomic_write  # noqa: E402
from ddcontrol.data import collect  # noqa: E402
from ddcontrol.evaluate.compare import compare  # noqa: E402
from ddcontrol.evaluate.controllers import make_controller  # noqa: E402
from ddcontrol.score import TrainConfig, load_model, train  # noqa: E402
from ddcontrol.score.sigma import conditioned_prediction_error  # noqa: E402
from ddcontrol.tracking.defaults import system_defaults  # noqa: E402
from ddcontrol.tracking.reference import make_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def variant_tag(model: dict[str, Any]) -> str:
    """``-width128-archunet`` for TrainConfig overrides (sorted), ``""`` for the defaults."""
    return "".join(f"-{k}{v}" for k, v in sorted(model.items()))


def trained(system: str, seed: int, steps: int, threads: int = 1,
            model: dict[str, Any] | None = None) -> tuple[Any, Any, dict[str, float]]:
    """The suite's data and a model of ``steps`` steps, the default configuration with the
    TrainConfig overrides ``model`` (trained once, cached with its CPU and wall seconds in
    ``timing.json``)."""
    d = system_defaults(SYSTEMS[system]["env"])
    model = training_options(system, model)  # the system's own options, as the suite's models
    folder = MODELS / (f"{system}-s{seed}-{steps}-ttq{'' if threads == 1 else f'-t{threads}'}"
                       f"{variant_tag(model)}")
    data = _dataset(system, seed)
    timing_file = folder / "timing.json"
    if not timing_file.exists():
        cfg = TrainConfig(out=str(folder), window=d.window, device="cpu", overwrite=True,
                          seed=seed, progress=False, steps=steps, val_every=0,
                          num_threads=threads, **model)
        cpu, wall = time.process_time(), time.perf_counter()
        train(cfg, data)
        timing = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
        text = json.dumps(timing).encode()
        atomic_write(timing_file, lambda fh: fh.write(text))
    timing = json.loads(timing_file.read_text())
    return data, load_model(folder, device="cpu", dataset=data), timing


def held_out_windows(system: str, model: Any, count: int, seed: int) -> torch.Tensor:
    """``count`` normalised windows (model frame) of trajectories collected with ``seed``."""
    spec, d = SYSTEMS[system], system_defaults(SYSTEMS[system]["env"])
    data = collect(spec["env"], max(count // 2, 8), spec["length"], excitation=d.excitation,
                   excitation_params=d.excitation_params, seed=seed)
    windows = torch.as_tensor(model.model_windows(data, model.window_length // 2),
                              dtype=torch.float32)
    pick = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(seed))
    return windows[pick[:count]]


def prediction_error(model: Any, windows: torch.Tensor, sigma: float, t_ini: int) -> np.ndarray:
    """Per-window relative error of the model's conditioned prediction (dimensionless)."""
    norm = model.normalizer
    err = conditioned_prediction_error(model.denoiser, windows, sigma, input_dim=model.input_dim,
                                       t_ini=t_ini, std=torch.as_tensor(norm.std),
                                       mean=torch.as_tensor(norm.mean))
    return err.detach().cpu().numpy()


def closed_loop(system: str, seed: int, data: Any, model: Any) -> list[dict[str, Any]]:
    """The tracker on the suite's references, iteration-limited, cost relative to the oracle."""
    spec = SYSTEMS[system]
    env, d = spec["env"], system_defaults(spec["env"])
    oracle = {(r["system"], r["reference"], r["seed"]): r["total_cost"] for r in json.loads(
        (RESULTS / "closed_loop_suite.json").read_text())["rows"] if r["controller"] == "oracle"}
    rows = []
    for name, params in spec["references"]:
        ref = make_reference(name, env, 200, **dict(params))
        opts = {**d.tracker_options(ref.dt), "step_time_budget": None}
        factory = partial(make_controller, "denoising", env, ref, d.Q, d.R, horizon=d.horizon,
                          data=data, model=model, t_ini=d.t_ini, options=opts)
        res = compare(env, {"denoising": factory}, ref, Q=d.Q, R=d.R, score_from=d.t_ini,
                      seeds=[seed], progress=False)
        label = _label(name, dict(params))
        cost = res.rows[0]["total_cost"]
        base = oracle.get((system, label, seed))
        rows.append({"reference": label, "total_cost": cost,
                     "cost_ratio": None if base is None else cost / base})
        print(f"    {label}: cost {cost:.4g}" + ("" if base is None else
                                                  f" ({cost / base:.3f}x the oracle)"),
              flush=True)
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    """Error (and closed-loop cost) against training minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    minutes = [r["train_minutes"] for r in runs]
    with_cl = all(r.get("median_cost_ratio") is not None for r in runs)
    fig, axes = plt.subplots(1, 2 if with_cl else 1, figsize=(10 if with_cl else 5.5, 4),
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot(minutes, [r["median_error"] for r in runs], "o-", label="median")
    ax.plot(minutes, [r["p90_error"] for r in runs], "s--", label="90th percentile")
    for r in runs:
        ax.annotate(f"{r['steps']}", (r["train_minutes"], r["median_error"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 4))
    unit = ("CPU min, one thread" if result.get("threads", 1) == 1
            else f"wall min, {result['threads']} threads")
    ax.set_xlabel(f"training time [{unit}]")
    ax.set_ylabel("held-out conditioned prediction error")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if with_cl:
        ax = axes[0, 1]
        ax.plot(minutes, [r["median_cost_ratio"] for r in runs], "o-", label="median")
        ax.plot(minutes, [r["worst_cost_ratio"] for r in runs], "s--", label="worst")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel(f"training time [{unit}]")
        ax.set_ylabel("closed-loop cost / oracle")
        ax.grid(alpha=0.3)
        ax.legend()
    extra = ", ".join(f"{k}={v}" for k, v in sorted(result.get("model", {}).items()))
    fig.suptitle(f"{result['system']}: quality against training time (seed {result['seed']}"
                 f"{', ' + extra if extra else ''})")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="pendulum", choices=list(SYSTEMS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budgets", nargs="+", type=int, default=[1000, 2000, 4000, 6000, 8000],
                   help="training steps of each model")
    p.add_argument("--windows", type=int, default=64, help="held-out windows")
    p.add_argument("--closed-loop", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE",
                   help="TrainConfig overrides for a capacity or architecture curve (e.g. "
                        "width=512, arch=unet); cached and written apart")
    p.add_argument("--target", default=None, metavar="FILE",
                   help="a time-to-quality JSON (in benchmarks/results) whose largest budget sets "
                        "the quality to reach (e.g. the curve of an earlier training "
                        "configuration); default: this run's largest budget")
    args = p.parse_args(argv)
    variant = overrides(args.model)
    torch.set_num_threads(args.threads)
    d = system_defaults(SYSTEMS[args.system]["env"])
    load = [list(os.getloadavg())]
    runs = []
    windows = None
    for steps in sorted(args.budgets):
        print(f"{args.system} seed {args.seed}: {steps} steps", flush=True)
        data, model, timing = trained(args.system, args.seed, steps, args.threads, variant)
        # One thread: CPU seconds (robust to other jobs' load). Several: the wall time, which
        # is what the threads buy and what a user waits for (CPU time counts every thread).
        seconds = timing["cpu_s"] if args.threads == 1 else timing["wall_s"]
        if windows is None:
            windows = held_out_windows(args.system, model, args.windows, 1000 + args.seed)
        sigma = d.resolve_sigma(model, data)
        err = prediction_error(model, windows, sigma, d.t_ini)
        run: dict[str, Any] = {"steps": steps, "sigma": sigma, "train_minutes": seconds / 60.0,
                               "train_wall_minutes": timing["wall_s"] / 60.0,
                               "median_error": float(np.median(err)),
                               "p90_error": float(np.percentile(err, 90))}
        print(f"    trained in {seconds / 60:.2f} CPU min; held-out error median "
              f"{run['median_error']:.4f}, p90 {run['p90_error']:.4f}", flush=True)
        if args.closed_loop:
            rows = closed_loop(args.system, args.seed, data, model)
            ratios = [r["cost_ratio"] for r in rows if r["cost_ratio"] is not None]
            run["closed_loop"] = rows
            run["median_cost_ratio"] = float(np.median(ratios)) if ratios else None
            run["worst_cost_ratio"] = float(np.max(ratios)) if ratios else None
        runs.append(run)
    last = runs[-1]
    if args.target:  # the quality of another curve's largest budget
        last = max(json.loads((RESULTS / args.target).read_text())["runs"],
                   key=lambda r: r["steps"])

    def within(r: dict[str, Any]) -> bool:
        ok = r["median_error"] <= 1.05 * last["median_error"]
        if args.closed_loop and r.get("median_cost_ratio") and last.get("median_cost_ratio"):
            ok = ok and r["median_cost_ratio"] <= 1.05 * last["median_cost_ratio"]
        return ok

    first = next((r for r in runs if within(r)), None)
    load.append(list(os.getloadavg()))
    result = {"benchmark": "time to quality", "system": args.system, "seed": args.seed,
              "sigma": d.sigma, "t_ini": d.t_ini, "held_out_windows": int(windows.shape[0]),
              "command": "python benchmarks/bench_time_to_quality.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "load_average_start_end": load, "threads": args.threads, "model": variant,
              "runs": runs,
              "reference_run_steps": last["steps"], "target": args.target,
              "target_quality": {k: last.get(k) for k in ("median_error",
                                                          "median_cost_ratio")},
              "first_within_5pct": None if first is None else {
                  "steps": first["steps"], "train_minutes": first["train_minutes"]}}
    tag = variant_tag(training_options(args.system, variant))  # the system's options too
    out = RESULTS / (f"time_to_quality_{args.system}"
                     f"{'' if args.threads == 1 else f'_t{args.threads}'}"
                     f"{tag.replace('-', '_')}.json")
    text = (json.dumps(result, indent=2) + "\n").encode()
    atomic_write(out, lambda fh: fh.write(text))
    plot(result, out.with_suffix(".png"))
    whose = f"{args.target}'s " if args.target else ""
    print(f"first budget within 5 % of {whose}{last['steps']}-step model: "
          + ("none" if first is None else
             f"{first['steps']} steps, {first['train_minutes']:.2f} min") + f"; wrote {out}")
    return result


if __name__ == "__main__":
    main()

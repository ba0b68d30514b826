"""σ sweep of the closed-loop tracker against the data-selected σ (``sigma="auto"``).

For each system and seed of the closed-loop suite (``bench_closed_loop_suite.py``: its cached
data and models, its 3 references, 200 steps, the oracle rows of ``closed_loop_suite.json``), the
tracker runs iteration-limited (``step_time_budget=None``, so the machine's load does not change
the result) with every system default except σ, which takes each value of the grid
0.02-0.3 (:data:`ddcontrol.score.sigma.SIGMA_GRID`). Beside each σ's closed-loop cost the
held-out criterion that the selection minimises (:func:`ddcontrol.score.sigma.select_sigma`) is
recorded, so one sees whether the criterion tracks the closed-loop cost.

``auto`` is the σ ``DenoisingTracker.from_model(..., sigma="auto")`` takes: the checkpoint's
stored selection. Checkpoints written before training stored one (or with a selection made by
another criterion) get the selection training makes now
(:func:`ddcontrol.score.sigma.auto_sigma_selection`), stored with
:func:`~ddcontrol.score.sigma.store_sigma`. An auto σ on the grid costs what that grid point
costs (same deterministic run); one off the grid is run too.

Writes ``benchmarks/results/sigma_sweep.json`` after every run (resumable: done runs are
skipped): ``runs`` (system, seed, reference, σ, total cost, cost ratio to the oracle, RMS error,
OOD steps, wall time), ``selection`` per system and seed (criterion errors per σ, the auto σ) and
``summary`` per system and seed (per σ the summed cost over the references and its ratio to the
summed oracle cost, the best σ, the auto σ, auto cost / best cost) and per system (the worst
seed). ``--plot`` draws ``benchmarks/results/sigma_sweep.png``: per system, the cost ratio to the
oracle and the RMS error against σ (log x), one line per seed, the auto σ marked, and the held-out
criterion against σ.

Run (one process, ``nice -n 19``, one thread)::

    python benchmarks/bench_sigma.py --systems unicycle pendulum msd coupled --seeds 0
    python benchmarks/bench_sigma.py --plot
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
    SYSTEMS,
    _label,
    dataset_and_model,
    model_folder,
)

from ddcontrol._io import atomic_write  # noqa: E402
from ddcontrol.evaluate.compare import compare  # noqa: E402
from ddcontrol.evaluate.controllers import make_controller  # noqa: E402
from ddcontrol.score.sigma import (  # noqa: E402
    AUTO_CRITERION,
    SIGMA_GRID,
    auto_criterion,
    auto_sigma_selection,
    conditioned_prediction_error,
    criterion_name,
    pick_sigma,
    plan_tracking_error,
    store_sigma,
)
from ddcontrol.tracking.defaults import system_defaults  # noqa: E402
from ddcontrol.tracking.reference import make_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TRAIN_STEPS = {"msd": 4000, "coupled": 4000, "pendulum": 8000, "unicycle": 8000}


def _model_ready(system: str, seed: int) -> bool:
    """The suite's model of ``system`` / ``seed`` is trained to the end (never train here)."""
    log = model_folder(system, seed, TRAIN_STEPS[system]) / "log.jsonl"
    if not log.exists():
        return False
    lines = log.read_text().strip().splitlines()
    return bool(lines) and json.loads(lines[-1]).get("event") == "done"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"runs": [], "selection": {}}


def _save(path: Path, doc: dict[str, Any]) -> None:
    doc["summary"] = summarise(doc)
    atomic_write(path, lambda fh: fh.write(json.dumps(doc, indent=1).encode()))


def _oracle() -> dict[tuple, float]:
    rows = json.loads((RESULTS / "closed_loop_suite.json").read_text())["rows"]
    return {(r["system"], r["reference"], r["seed"]): r["total_cost"] for r in rows
            if r["controller"] == "oracle" and not r["failed"]}


def selection_entry(system: str, seed: int, data: Any, model: Any, folder: Path,
                    restore: bool) -> dict[str, Any]:
    """The auto σ: the checkpoint's stored selection, made now (what training stores, from the
    trajectories training held out) and stored if missing, made by another criterion, or
    ``restore``. Its held-out errors per σ are the criterion the selection minimises."""
    cfg = model.config or {}
    _, held = data.split(1.0 - float(cfg.get("val_fraction", 0.1)), seed=int(cfg.get("seed", 0)))
    stored, made_s = model.sigma_selection, None
    if restore or stored is None or stored.get("criterion") != auto_criterion(model):
        t0 = time.perf_counter()
        fresh = auto_sigma_selection(model, held)
        made_s = time.perf_counter() - t0
        store_sigma(folder, fresh)
        stored = fresh.as_dict()
    return {"auto_sigma": float(stored["sigma"]), "auto_selection": stored,
            "criterion": stored.get("criterion"), "criterion_grid": list(stored["grid"]),
            "criterion_errors": list(stored["errors"]), "criterion_t_ini": stored["past_length"],
            "criterion_windows": stored["windows"], "selection_s": made_s}


def run(args: argparse.Namespace) -> None:
    path = RESULTS / f"{args.results}.json"
    doc = _load(path)
    oracle = _oracle()
    done = {(r["system"], r["seed"], r["reference"], r["sigma"]) for r in doc["runs"]}
    for system in args.systems:
        spec = SYSTEMS[system]
        env, d = spec["env"], system_defaults(spec["env"])
        for seed in args.seeds:
            if not _model_ready(system, seed):
                print(f"{system} seed {seed}: model not trained yet, skipped", flush=True)
                continue
            folder = model_folder(system, seed, TRAIN_STEPS[system])
            data, model = dataset_and_model(system, seed, TRAIN_STEPS[system], "cpu")
            key = f"{system}-s{seed}"
            if key not in doc["selection"] or args.restore_sigma or doc["selection"][key].get(
                    "criterion") != auto_criterion(model):
                doc["selection"][key] = selection_entry(system, seed, data, model, folder,
                                                        args.restore_sigma)
                _save(path, doc)
                data, model = dataset_and_model(system, seed, TRAIN_STEPS[system], "cpu")
            sel = doc["selection"][key]
            print(f"{key}: auto σ {sel['auto_sigma']}, criterion "
                  f"{dict(zip(sel['criterion_grid'], np.round(sel['criterion_errors'], 4)))}",
                  flush=True)
            if args.selection_only:
                continue
            sigmas = [float(s) for s in args.grid]
            if sel["auto_sigma"] not in sigmas:
                sigmas.append(sel["auto_sigma"])
            for sigma in sigmas:
                for name, params in spec["references"]:
                    label = _label(name, dict(params))
                    if (system, seed, label, sigma) in done:
                        continue
                    ref = make_reference(name, env, args.steps, **dict(params))
                    opts = {**d.tracker_options(ref.dt), "sigma": sigma,
                            "step_time_budget": None}
                    factory = partial(make_controller, "denoising", env, ref, d.Q, d.R,
                                      horizon=d.horizon, data=data, model=model, t_ini=d.t_ini,
                                      options=opts)
                    t0 = time.perf_counter()
                    res = compare(env, {"denoising": factory}, ref, Q=d.Q, R=d.R,
                                  score_from=d.t_ini, seeds=[seed], progress=False)
                    row = res.rows[0]
                    base = oracle.get((system, label, seed)) if args.steps == 200 else None
                    cost = row["total_cost"]
                    ok = not row["failed"] and cost is not None and np.isfinite(cost)
                    line = {"system": system, "seed": seed, "reference": label, "sigma": sigma,
                            "total_cost": float(cost) if ok else None,
                            "cost_ratio": float(cost / base) if ok and base else None,
                            "oracle_cost": base,
                            "rms_error": row["rms_error"] if ok else None,
                            "ood_steps": row.get("ood_steps"), "failed": bool(row["failed"]),
                            "error": row.get("error"), "wall_s": time.perf_counter() - t0}
                    doc["runs"].append(line)
                    done.add((system, seed, label, sigma))
                    _save(path, doc)
                    print(json.dumps(line), flush=True)
    _save(path, doc)


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Per system and seed: per σ the summed cost over the references (complete σ only), its
    ratio to the summed oracle cost, best σ, auto σ and auto cost / best cost; per system the
    worst seed."""
    out: dict[str, Any] = {}
    by: dict[tuple, dict[float, dict[str, dict[str, Any]]]] = {}
    for r in doc["runs"]:
        by.setdefault((r["system"], r["seed"]), {}).setdefault(r["sigma"], {})[r["reference"]] = r
    for (system, seed), per_sigma in sorted(by.items()):
        refs = len(SYSTEMS[system]["references"])
        table = {}
        for sigma, runs in sorted(per_sigma.items()):
            if len(runs) < refs:
                continue
            costs = [r["total_cost"] for r in runs.values()]
            failed = any(c is None for c in costs)
            oracle = [r["oracle_cost"] for r in runs.values()]
            total = float("inf") if failed else float(sum(costs))
            table[str(sigma)] = {
                "total_cost": None if failed else total,
                "cost_ratio": None if failed or None in oracle else total / sum(oracle),
                "cost_ratios": {k: r["cost_ratio"] for k, r in sorted(runs.items())},
                "rms_error": float(np.mean([r["rms_error"] for r in runs.values()]))
                if not failed else None}
        sel = doc["selection"].get(f"{system}-s{seed}", {})
        entry: dict[str, Any] = {"per_sigma": table, "auto_sigma": sel.get("auto_sigma")}
        finite = {s: v["total_cost"] for s, v in table.items() if v["total_cost"] is not None}
        grid = [s for s in finite if float(s) in SIGMA_GRID]
        if grid:
            best = min(grid, key=lambda s: finite[s])
            entry.update(best_sigma=float(best), best_cost=finite[best],
                         grid_complete=len(grid) == len(SIGMA_GRID))
            auto = sel.get("auto_sigma")
            if auto is not None and str(float(auto)) in table:
                a = table[str(float(auto))]["total_cost"]
                entry["auto_cost"] = a
                entry["auto_over_best"] = None if a is None else a / finite[best]
            # The σ the held-out criterion would pick (least error) and its cost.
            if sel.get("criterion_errors"):
                cs = sel["criterion_grid"][int(np.argmin(sel["criterion_errors"]))]
                entry["criterion_sigma"] = cs
                c = finite.get(str(float(cs)))
                entry["criterion_over_best"] = None if c is None else c / finite[best]
        out[f"{system}-s{seed}"] = entry
    systems: dict[str, Any] = {}
    for key, e in out.items():
        system = key.rsplit("-s", 1)[0]
        s = systems.setdefault(system, {"seeds": 0, "worst_auto_over_best": None})
        s["seeds"] += 1
        if e.get("auto_over_best") is not None:
            w = s["worst_auto_over_best"]
            s["worst_auto_over_best"] = max(w or 0.0, e["auto_over_best"])
    return {"per_seed": out, "per_system": systems}


CRITERIA = [(st, rule, plan) for plan in (False, True) for st in ("mean", "median")
            for rule in ("argmin", "robust", "interior")]


def criteria(args: argparse.Namespace) -> dict[str, Any]:
    """Held-out criteria against the closed-loop sweep: per model the relative conditioned
    prediction error of ``--criteria-windows`` held-out windows (training's validation windows,
    the tracker's T_ini) at every σ, and for each statistic (mean, median over the windows) and
    rule (argmin, robust: :func:`~ddcontrol.score.sigma.pick_sigma`) the σ picked, its
    closed-loop cost over the best σ's, and over 200 random subsets of 64 and 32 of the windows
    (the selection training makes uses 64) the share of picks within 5 % of the best and the
    worst pick. Written to ``sigma_criteria.json`` (the sweep's file is never touched)."""
    out = RESULTS / f"{args.results}_criteria.json"
    crit = json.loads(out.read_text()) if out.exists() else {"models": {}}
    sweep = summarise(_load(RESULTS / f"{args.results}.json"))["per_seed"]
    for system in args.systems:
        for seed in args.seeds:
            key = f"{system}-s{seed}"
            if not _model_ready(system, seed):
                continue
            if key not in crit["models"]:
                data, model = dataset_and_model(system, seed, TRAIN_STEPS[system], "cpu")
                cfg = model.config or {}
                _, held = data.split(1.0 - float(cfg.get("val_fraction", 0.1)),
                                     seed=int(cfg.get("seed", 0)))
                w = model.model_windows(held, int(cfg.get("stride", 1)))
                cap = int(cfg.get("val_windows", 2048))
                if w.shape[0] > cap:
                    w = w[np.linspace(0, w.shape[0] - 1, cap).astype(int)]
                n = min(args.criteria_windows, w.shape[0])
                w = w[np.sort(np.random.default_rng(0).choice(w.shape[0], n, replace=False))]
                x = torch.as_tensor(w, dtype=torch.float32)
                t = system_defaults(SYSTEMS[system]["env"]).t_ini
                std = torch.as_tensor(model.normalizer.std, dtype=torch.float32)
                mean = torch.as_tensor(model.normalizer.mean, dtype=torch.float32)
                t0 = time.perf_counter()
                per = [conditioned_prediction_error(model.denoiser, x, s, input_dim=model.input_dim,
                                                    t_ini=t, std=std, mean=mean).tolist()
                       for s in SIGMA_GRID]
                t1 = time.perf_counter()
                d = system_defaults(SYSTEMS[system]["env"])
                plan = [plan_tracking_error(model.denoiser, x, s, input_dim=model.input_dim,
                                            t_ini=t, std=std, mean=mean, Q=d.Q, R=d.R).tolist()
                        for s in SIGMA_GRID]
                crit["models"][key] = {"grid": list(SIGMA_GRID), "t_ini": t, "windows": n,
                                       "Q": d.Q, "R": d.R, "per_window_errors": per,
                                       "per_window_plan_errors": plan,
                                       "prediction_s": t1 - t0,
                                       "plan_s": time.perf_counter() - t1}
                atomic_write(out, lambda fh: fh.write(json.dumps(crit).encode()))
            entry = crit["models"][key]
            pred = np.nan_to_num(np.array(entry["per_window_errors"]), nan=np.inf)
            both = pred + np.nan_to_num(np.array(entry["per_window_plan_errors"]), nan=np.inf)
            table = sweep.get(key, {}).get("per_sigma", {})
            cost = {float(k): v["total_cost"] for k, v in table.items()
                    if v["total_cost"] is not None}
            if len([g for g in SIGMA_GRID if g in cost]) < len(SIGMA_GRID):
                entry["picks"] = None  # the sweep of this model is not complete yet
                continue
            best = min(cost[g] for g in SIGMA_GRID)
            ratios = [cost[g] / best for g in SIGMA_GRID]
            stat = {"mean": lambda e: e.mean(1), "median": lambda e: np.median(e, 1)}
            rng = np.random.default_rng(1)
            subsets = {k: [rng.choice(pred.shape[1], k, replace=False) for _ in range(200)]
                       for k in (64, 32) if k < pred.shape[1]}
            picks = {}
            for st, rule, with_plan in CRITERIA:
                per = both if with_plan else pred
                errors = stat[st](per)
                i = pick_sigma(errors, rule)
                row = {"errors": errors.tolist(), "sigma": SIGMA_GRID[i],
                       "cost_over_best": ratios[i]}
                for k, subs in subsets.items():
                    r = [ratios[pick_sigma(stat[st](per[:, idx]), rule)] for idx in subs]
                    row[f"within_5pct_{k}w"] = float(np.mean(np.array(r) <= 1.05))
                    row[f"worst_{k}w"] = float(max(r))
                picks[criterion_name(st, rule, with_plan)] = row
            entry["picks"] = picks
            entry["cost_over_best"] = {str(g): cost[g] / best for g in SIGMA_GRID}
    summary = {}
    for name in (criterion_name(*c) for c in CRITERIA):
        rows = {k: e["picks"][name] for k, e in crit["models"].items() if e.get("picks")}
        if rows:
            summary[name] = {"models": len(rows),
                             "within_5pct": sum(r["cost_over_best"] <= 1.05 for r in rows.values()),
                             "worst_cost_over_best": max(r["cost_over_best"] for r in rows.values()),
                             "worst_model": max(rows, key=lambda k: rows[k]["cost_over_best"])}
    crit["summary"] = summary
    atomic_write(out, lambda fh: fh.write(json.dumps(crit, indent=1).encode()))
    return summary


def plot(path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = _load(path)
    summary = summarise(doc)["per_seed"]
    systems = [s for s in SYSTEMS if any(k.startswith(s + "-s") for k in summary)]
    fig, axes = plt.subplots(3, len(systems), figsize=(3.6 * len(systems), 8.5), squeeze=False,
                             sharex=True)
    for j, system in enumerate(systems):
        ax_c, ax_r, ax_e = axes[0, j], axes[1, j], axes[2, j]
        for k, (key, e) in enumerate(sorted(summary.items())):
            if not key.startswith(system + "-s"):
                continue
            seed = key.rsplit("-s", 1)[1]
            color = f"C{k % 10}"
            rows = sorted((float(s), v) for s, v in e["per_sigma"].items()
                          if v["cost_ratio"] is not None)
            if rows:
                xs = [s for s, _ in rows]
                ax_c.plot(xs, [v["cost_ratio"] for _, v in rows], "o-", color=color,
                          label=f"seed {seed}")
                ax_r.plot(xs, [v["rms_error"] for _, v in rows], "o-", color=color)
            auto = e.get("auto_sigma")
            if auto is not None and str(float(auto)) in e["per_sigma"] and \
                    e["per_sigma"][str(float(auto))]["cost_ratio"] is not None:
                v = e["per_sigma"][str(float(auto))]
                ax_c.plot([auto], [v["cost_ratio"]], "*", ms=16, color=color, mec="k",
                          label=f"auto σ = {auto:g}" + (
                              f" ({e['auto_over_best']:.3f}x best)"
                              if e.get("auto_over_best") else ""))
                ax_r.plot([auto], [v["rms_error"]], "*", ms=16, color=color, mec="k")
            sel = doc["selection"].get(key, {})
            if sel.get("criterion_errors"):
                ax_e.plot(sel["criterion_grid"], sel["criterion_errors"], "o-", color=color)
                if auto is not None and float(auto) in sel["criterion_grid"]:
                    i = sel["criterion_grid"].index(float(auto))
                    ax_e.plot([auto], [sel["criterion_errors"][i]], "*", ms=16, color=color,
                              mec="k")
                parts = sel.get("auto_selection", {})
                if parts.get("prediction_errors"):  # the two terms of the criterion alone
                    ax_e.plot(sel["criterion_grid"], parts["prediction_errors"], "--",
                              color=color, lw=0.9)
                    ax_e.plot(sel["criterion_grid"], parts["plan_errors"], ":", color=color,
                              lw=0.9)
        ax_c.set_title(system)
        ax_c.set_xscale("log")
        ax_c.set_yscale("log")
        ax_c.grid(alpha=0.3, which="both")
        ax_c.legend(fontsize=7)
        ax_r.grid(alpha=0.3, which="both")
        ax_e.grid(alpha=0.3, which="both")
        ax_e.set_yscale("log")
        ax_e.set_xlabel("σ (normalised units)")
        for ax in (ax_c, ax_r, ax_e):  # the grid's values, not crowded log-scale minor labels
            ax.set_xticks(list(SIGMA_GRID), [f"{g:g}" for g in SIGMA_GRID], fontsize=7)
            ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        if j == 0:
            ax_c.set_ylabel("closed-loop cost / oracle\n(sum of 3 references)")
            ax_r.set_ylabel("RMS tracking error\n(mean of 3 references)")
            ax_e.set_ylabel(f"held-out criterion ({AUTO_CRITERION.split('-')[-2]})\n"
                            "— sum, -- prediction, : plan")
    fig.suptitle("Closed loop (200 steps, iteration-limited) against the projection σ; "
                 "★ the data-selected σ", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--grid", nargs="+", type=float, default=list(SIGMA_GRID))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--results", default="sigma_sweep")
    p.add_argument("--restore-sigma", action="store_true",
                   help="redo the auto selection and store it in the checkpoints")
    p.add_argument("--selection-only", action="store_true",
                   help="only (re)make the auto selections (stored in the checkpoints)")
    p.add_argument("--plot", action="store_true", help="only draw the plot from the JSON")
    p.add_argument("--criteria", action="store_true",
                   help="only compare held-out criteria with the sweep (RESULTS_criteria.json)")
    p.add_argument("--criteria-windows", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    path = RESULTS / f"{args.results}.json"
    if args.criteria:
        print(json.dumps(criteria(args), indent=1))
        return
    if not args.plot:
        run(args)
    plot(path, path.with_suffix(".png"))
    print(json.dumps(summarise(_load(path)), indent=1))


if __name__ == "__main__":
    main()

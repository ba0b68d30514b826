"""Closed-loop suite: every controller on several systems, references and seeds, one table.

For each system and seed ``s``: a dataset (collected with seed ``s``), a model (trained with seed
``s``, ``--minutes`` per model, cached in ``benchmarks/models/suite/<system>-s<s>-<steps>/``), then for
each reference a closed loop of ``--steps`` samples from the initial state drawn with seed ``s``,
for every controller, on the same reference, weights and noise. The tracker runs with the
system's defaults (:mod:`ddcontrol.tracking.defaults`) and no tuning flag.

Writes ``benchmarks/results/closed_loop_suite.json`` (``rows``: one per system x reference x
seed x controller, with ``system, reference, seed, controller, cost_ratio`` (to the oracle),
``rms_error, total_cost, solve_p50_ms, solve_p95_ms, solve_max_ms, dt_ms, bound_violations,
failed, error``; a failed run's cost and RMS error are null; ``summary``: per system and
controller the runs, failed runs and the first failure's reason, median and worst cost ratio
(over the runs that have one), median RMS error, median and worst solve p95, bound violations,
and the median ratio to DeePC's cost), ``closed_loop_suite.md`` (the summary table, one line per
system and controller, a controller that failed as ``FAILED k/n: reason``, then every run) and,
per run, the plots in ``benchmarks/results/suite/<system>-<reference>-s<seed>/`` (x-y paths of
every controller for the unicycle). Results are written after every run, so an interrupted suite
keeps what it did.

Run (the recorded results: one process per seed and controller, on a machine shared with other
jobs, so without per-step time budgets; then merged)::

    python benchmarks/bench_closed_loop_suite.py --systems unicycle --seeds 0 --train-steps 8000 \
        --controllers denoising --iteration-limited --results suite_denoising_s0   # s1, s2 alike
    python benchmarks/bench_closed_loop_suite.py --systems unicycle --seeds 0 1 2 \
        --controllers oracle --results suite_oracle
    python benchmarks/bench_closed_loop_suite.py --systems unicycle --seeds 0 1 2 \
        --controllers deepc,oracle          # stopped after 6 of 9 runs (1-4 s per DeePC step);
        # these 6 DeePC rows live only in closed_loop_suite.json (a merge keeps its other rows)
    python benchmarks/bench_closed_loop_suite.py --systems pendulum --seeds 0 --train-steps 8000 \
        --controllers denoising --iteration-limited --results suite_pendulum_denoising
    # (and oracle, deepc; seeds 1, 2 into suite_pendulum_<controller>_s<seed>)

The baselines (one process at a time, ``nice -n 19``, ``--threads 1``, 200 steps; the oracle's
rows of the pendulum and the unicycle are those above)::

    python benchmarks/bench_closed_loop_suite.py --threads 1 --steps 200 --systems msd \
        --seeds 0 1 2 --controllers oracle,lqr,lqr-id,best-window,koopman,deepc,deepc-tuned,sindy \
        --results suite_baselines_msd                     # coupled alike: suite_baselines_coupled
    python benchmarks/bench_closed_loop_suite.py --threads 1 --steps 200 --systems pendulum \
        --seeds 0 1 2 --controllers lqr,lqr-id,best-window,koopman,deepc-tuned,sindy \
        --results suite_baselines_pendulum
    python benchmarks/bench_closed_loop_suite.py --threads 1 --steps 200 --systems unicycle \
        --seeds 0 1 2 --controllers lqr,lqr-id,best-window,koopman,sindy \
        --results suite_baselines_unicycle
    python benchmarks/bench_closed_loop_suite.py --threads 1 --steps 200 --systems unicycle \
        --seeds 2 --controllers deepc --results suite_unicycle_deepc_s2    # the 3 missing runs
    python benchmarks/bench_closed_loop_suite.py --threads 1 --steps 200 --systems unicycle \
        --seeds 0 --controllers deepc-tuned --results suite_unicycle_deepc-tuned_s0
    python benchmarks/bench_closed_loop_suite.py --threads 1 --steps 200 --systems unicycle \
        --seeds 1 2 --controllers deepc-tuned --results suite_unicycle_deepc-tuned_s1_s2

``--data KEY=VALUE`` changes the data design (``trajectories=N`` and the excitation's
parameters, e.g. ``amplitude=0.9``: own data and model folders, recorded in every row;
``bench_data_design.py``), ``--tracker-set KEY=VALUE`` overrides tracker defaults (``sigma=0.3``),
``--train-set KEY=VALUE`` training settings (``width=128``: own model folders).

DeePC on the unicycle is slow (0.5-15 s per step): once the heading output winds far outside the
data, OSQP needs thousands of ADMM iterations per QP, up to its 20,000 limit, before the Clarabel
fallback solves it. Not run: the oracle's cross-check backends ``oracle-casadi`` /
``oracle-shooting`` (the ``oracle`` row is the CasADi NMPC on the nonlinear systems, the exact
QP on the linear ones). ``lqr`` on the unicycle is a FAILED row: not applicable (its
linearisation is not stabilisable). Then, merged::

    python benchmarks/bench_closed_loop_suite.py --merge suite_oracle suite_denoising_s0 \
        suite_denoising_s1 suite_denoising_s2 suite_pendulum_denoising suite_pendulum_oracle \
        suite_pendulum_deepc suite_pendulum_denoising_s1 suite_pendulum_oracle_s1 \
        suite_pendulum_deepc_s1 suite_pendulum_denoising_s2 suite_pendulum_oracle_s2 \
        suite_pendulum_deepc_s2 suite_baselines_msd suite_baselines_coupled \
        suite_baselines_pendulum suite_baselines_unicycle suite_unicycle_deepc_s2 \
        suite_unicycle_deepc-tuned_s0 suite_unicycle_deepc-tuned_s1_s2 \
        suite_denoising_v2_pendulum suite_denoising_v2_unicycle suite_denoising_v2_msd \
        suite_denoising_v2_coupled suite_denoising_v3_pendulum suite_denoising_v3_unicycle \
        suite_denoising_v3_linear suite_denoising_v4_msd suite_denoising_v5_unicycle \
        suite_denoising_v5_linear suite_denoising_v5_pendulum suite_denoising_v6_unicycle \
        suite_denoising_v7_pendulum suite_denoising_v9_linear suite_denoising_v10_unicycle

The denoising rows of the merged table are the ``suite_denoising_v2_<system>`` runs (session 4
code: cold start in ``reset``, explicit VJPs; every default, i.e. a per-step budget of 0.45 dt on
the mass-spring-damper, coupled masses and double pendulum and none on the unicycle), made with
``--systems <system> --seeds 0 1 2 --train-steps 8000`` (4000 for msd, coupled)
``--controllers denoising --results suite_denoising_v2_<system>``; they replace the older
iteration-limited ``suite_denoising_*`` rows (last file named wins). The pendulum's and the
unicycle's are in turn replaced by ``suite_denoising_v3_<system>`` (session 5 defaults: 8 cold
starts at ``reset``, the pendulum's σ 0.05, the unicycle's chord iterations
``jacobian_every=5``), made the same way, and the linear systems' by
``suite_denoising_v3_linear`` (``--systems msd coupled --train-steps 4000``); the
mass-spring-damper's then by ``suite_denoising_v4_msd`` (its σ default 0.05 -> 0.2). All
four are replaced by ``suite_denoising_v5_<unicycle|linear|pendulum>`` (session 6 defaults:
``sigma="auto"``, the σ training selected from held-out data; damping 0.01 on the linear
systems), made the same way (``--train-steps 4000`` for msd and coupled). The unicycle's
are in turn replaced by ``suite_denoising_v6_unicycle`` (5 warm iterations per step instead
of 20), made the same way; the pendulum's by ``suite_denoising_v7_pendulum`` (its models
trained on σ 0.015-0.5, ``SystemDefaults.train_options``), and the linear systems' by
``suite_denoising_v9_linear`` (the same training range and the ``interior`` σ rule; the range
alone, with the robust rule's σ 0.3: ``suite_denoising_v8_linear``). The unicycle's by
``suite_denoising_v10_unicycle`` (session 14: chord iterations that reuse the pinned rows, a
per-step budget cap of 0.9 dt that never binds), made the same way.

With every default (time budget 0.8 dt), seed 1 of the unicycle: ``--results
budget_check_unicycle``. Ablation without the symmetry: ``--symmetry none --results
ablation_nosym_s<seed>`` (same data, seeds and settings).
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

from ddcontrol._io import atomic_write  # noqa: E402
from ddcontrol.data import TrajectoryDataset, collect  # noqa: E402
from ddcontrol.evaluate.compare import compare, write_comparison  # noqa: E402
from ddcontrol.evaluate.controllers import make_controller  # noqa: E402
from ddcontrol.score import TrainConfig, load_model, train  # noqa: E402
from ddcontrol.tracking.defaults import system_defaults  # noqa: E402
from ddcontrol.tracking.reference import make_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = Path(__file__).parent / "models" / "suite"

# system: env, trajectories x length of the data, references (name, parameters)
SYSTEMS: dict[str, dict[str, Any]] = {
    "msd": dict(env="ddcontrol/MassSpringDamper-v0", n=1000, length=100,
                references=[("random", {"seed": 1}), ("random", {"seed": 2}),
                            ("sine", {"amplitude": 1.0})]),
    "coupled": dict(env="ddcontrol/CoupledMasses-v0", n=1000, length=100,
                    references=[("random", {"seed": 1}), ("random", {"seed": 2}),
                                ("sine", {"amplitude": 1.0})]),
    "pendulum": dict(env="ddcontrol/DoublePendulum-v0", n=5000, length=100,
                     references=[("swing", {}), ("swing", {"amplitude": [0.25, 0.35]}),
                                 ("swing", {"period": 9.0})]),
    "unicycle": dict(env="ddcontrol/Unicycle-v0", n=5000, length=100,
                     references=[("figure-eight", {}), ("circle", {}),
                                 ("random", {"seed": 3, "channels": (0, 1), "amplitude": 4.0,
                                             "max_cycles": 1.5})]),
}


def data_tag(design: dict[str, Any] | None) -> str:
    """``-amplitude0.9-trajectories2500`` for a data design (sorted), ``""`` for the defaults."""
    return "".join(f"-{k}{v}" for k, v in sorted((design or {}).items()))


def _dataset(system: str, seed: int, design: dict[str, Any] | None = None
             ) -> TrajectoryDataset:
    """The data of ``system`` for ``seed`` (collected once, shared by every model of it).

    ``design`` changes the data: ``trajectories`` (their number) and any parameter of the
    system's excitation (e.g. ``amplitude``, ``bandwidth``); the system's defaults otherwise.
    """
    spec, d = SYSTEMS[system], system_defaults(SYSTEMS[system]["env"])
    design = dict(design or {})
    path = MODELS / f"{system}-s{seed}{data_tag(design)}-data.npz"
    if path.exists():
        return TrajectoryDataset.load(path)
    n = int(design.pop("trajectories", spec["n"]))
    data = collect(spec["env"], n, spec["length"], excitation=d.excitation,
                   excitation_params={**d.excitation_params, **design}, seed=seed)
    data.save(path)
    return data


def model_folder(system: str, seed: int, steps: int, symmetry: str = "auto",
                 design: dict[str, Any] | None = None,
                 train_set: dict[str, Any] | None = None) -> Path:
    """Where :func:`dataset_and_model` caches the model of ``system``, ``seed``, ``design`` and
    training overrides ``train_set`` (with the system's own training options, which are part
    of the folder's name: a model trained before they changed is not taken for today's)."""
    return MODELS / (f"{system}-s{seed}-{steps}" + ("" if symmetry == "auto" else
                                                    f"-sym{symmetry}") + data_tag(design)
                     + data_tag(training_options(system, train_set)))


def training_options(system: str, train_set: dict[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`TrainConfig` overrides of ``system``'s model: the system's own
    (``SystemDefaults.train_options``), then ``train_set``."""
    return {**system_defaults(SYSTEMS[system]["env"]).train_options, **(train_set or {})}


def dataset_and_model(system: str, seed: int, steps: int, device: str, symmetry: str = "auto",
                      design: dict[str, Any] | None = None,
                      train_set: dict[str, Any] | None = None) -> tuple[TrajectoryDataset, Any]:
    """Collect (once) the data and train (once) the model of ``system`` for ``seed`` (and the
    data ``design`` of :func:`_dataset`; ``train_set``: :class:`TrainConfig` fields that
    differ from the defaults, e.g. ``{"width": 128}``)."""
    spec = SYSTEMS[system]
    d = system_defaults(spec["env"])
    folder = model_folder(system, seed, steps, symmetry, design, train_set)
    data = _dataset(system, seed, design)
    if not (folder / "checkpoint.pt").exists():
        cfg = TrainConfig(out=str(folder), window=d.window, device=device, overwrite=True,
                          seed=seed, progress=False, steps=steps, symmetry=symmetry,
                          **training_options(system, train_set))
        t0 = time.perf_counter()
        train(cfg, data)
        print(f"trained {system} seed {seed}: {steps} steps in "
              f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return data, load_model(folder, device=device, dataset=data)


def _label(name: str, params: dict[str, Any]) -> str:
    extra = "-".join(f"{k}{v}" for k, v in sorted(params.items()) if k not in ("channels",))
    return name + (f"-{extra}" if extra else "")


def _plot_paths(reference: Any, outputs: dict[str, np.ndarray], path: Path) -> None:
    """x-y paths of every controller (outputs (K, p) per name) against the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(reference.values[:, 0], reference.values[:, 1], "k--", lw=2, label="reference")
    for name, y in sorted(outputs.items()):
        if len(y):
            xy = reference.select(np.asarray(y))
            ax.plot(xy[:, 0], xy[:, 1], lw=1.4, label=name)
    # Frame the reference (with a margin): a path that diverges (Koopman MPC on some runs goes
    # hundreds of metres away) leaves the frame instead of shrinking every other path to a dot.
    lo, hi = reference.values[:, :2].min(axis=0), reference.values[:, :2].max(axis=0)
    pad = np.maximum(0.5 * (hi - lo).max(), 1.0)
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.set_title(path.parent.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    path = RESULTS / f"{args.results}.json"
    if args.fresh:
        path.unlink(missing_ok=True)
    # This run's rows replace those of the runs it repeats (same system, reference, seed and
    # controller) and every other row on disk is kept: controllers can be run separately.
    rows: list[dict[str, Any]] = []
    for system in args.systems:
        spec = SYSTEMS[system]
        env, d = spec["env"], system_defaults(spec["env"])
        for seed in args.seeds:
            if "denoising" in args.controllers:
                data, model = dataset_and_model(system, seed, args.train_steps, args.device,
                                                args.symmetry, args.data, args.train_set)
            else:  # the baselines need the data only
                data, model = _dataset(system, seed, args.data), None
            for ref_name, params in spec["references"]:
                params = dict(params)
                ref = make_reference(ref_name, env, args.steps, **params)
                label = _label(ref_name, params)
                opts = d.tracker_options(ref.dt)
                opts["device"] = args.device
                if args.iteration_limited:
                    opts["step_time_budget"] = None
                opts.update(args.tracker_set)
                factories = {n: partial(make_controller, n, env, ref, d.Q, d.R,
                                        horizon=d.horizon, data=data, model=model, t_ini=d.t_ini,
                                        options=opts if n == "denoising" else None)
                             for n in args.controllers}
                t0 = time.perf_counter()
                result = compare(env, factories, ref, Q=d.Q, R=d.R, score_from=d.t_ini,
                                 seeds=[seed], progress=False)
                out = RESULTS / "suite" / f"{system}-{label}-s{seed}" if (
                    args.results == "closed_loop_suite") else (
                    RESULTS / "suite" / args.results / f"{system}-{label}-s{seed}")
                write_comparison(result, out)
                if system == "unicycle":
                    _plot_paths(ref, {n: e[0].outputs for n, e in result.episodes.items()},
                                out / "paths.png")
                for r in result.rows:
                    times = np.array([t for e in result.episodes[r["controller"]]
                                      for t in e.solve_times]) * 1e3
                    rows = [o for o in rows if (o["system"], o["reference"], o["seed"],
                                                o["controller"]) != (system, label, seed,
                                                                     r["controller"])]
                    rows.append({
                        "system": system, "env_id": env, "reference": label, "seed": seed,
                        "controller": r["controller"], "total_cost": r["total_cost"],
                        "rms_error": r["rms_error"],
                        "solve_p50_ms": float(np.percentile(times, 50)) if times.size else None,
                        "solve_p95_ms": float(np.percentile(times, 95)) if times.size else None,
                        "solve_max_ms": float(times.max()) if times.size else None,
                        "dt_ms": ref.dt * 1e3, "bound_violations": r["bound_violations"],
                        "failed": r["failed"], "error": r.get("error"),
                        **({"ood_steps": r["ood_steps"],
                            "escalated_at": (ep := result.episodes[r["controller"]][0]
                                             ).escalated_at,
                            "escalations": ep.escalations, "sigma": ep.sigma}
                           if r.get("ood_steps") is not None else {}),
                        **({"data": args.data} if args.data else {}),
                        **({"tracker_set": args.tracker_set} if args.tracker_set else {}),
                        **({"train_set": args.train_set} if args.train_set else {})})
                print(f"{system} {label} seed {seed} ({time.perf_counter() - t0:.0f} s):\n"
                      f"{result.to_markdown()}", flush=True)
                _write(path, rows, args)
    return _write(path, rows, args)


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Cost ratios to the oracle and to DeePC of the same run (system, reference, seed)."""
    cost = {(r["system"], r["reference"], r["seed"], r["controller"]): r["total_cost"]
            for r in rows if not r["failed"]}
    for r in rows:
        key = (r["system"], r["reference"], r["seed"])
        for name, field in (("oracle", "cost_ratio"), ("deepc", "cost_ratio_deepc")):
            base = cost.get((*key, name))
            ok = base is not None and base > 0 and not r["failed"]
            r[field] = float(r["total_cost"] / base) if ok else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per system and controller: runs, failed runs (with the first reason), median and worst cost
    ratio to the oracle over the runs that have one, median RMS error, median and worst solve p95
    and the bound violations. A controller that failed every run is listed too (no ratios)."""
    _ratios(rows)
    out: dict[str, Any] = {}
    for system in sorted({r["system"] for r in rows}):
        out[system] = {}
        for ctrl in sorted({r["controller"] for r in rows if r["system"] == system}):
            mine = [r for r in rows if r["system"] == system and r["controller"] == ctrl]
            ok = [r for r in mine if not r["failed"]]
            failed = [r for r in mine if r["failed"]]
            ratios = np.array([r["cost_ratio"] for r in ok if r["cost_ratio"] is not None],
                              dtype=float)
            p95 = [r["solve_p95_ms"] for r in ok if r["solve_p95_ms"] is not None]
            rms = [r["rms_error"] for r in ok if r["rms_error"] is not None]
            vs = [r["cost_ratio_deepc"] for r in ok if r["cost_ratio_deepc"] is not None]
            out[system][ctrl] = {
                "runs": len(mine), "failed_runs": len(failed),
                "failure": str(failed[0]["error"]) if failed else None,
                "scored_runs": int(ratios.size),
                "median_cost_ratio": float(np.median(ratios)) if ratios.size else None,
                "worst_cost_ratio": float(ratios.max()) if ratios.size else None,
                "median_ratio_to_deepc": float(np.median(vs)) if vs else None,
                "median_rms_error": float(np.median(rms)) if rms else None,
                "median_solve_p95_ms": float(np.median(p95)) if p95 else None,
                "worst_solve_p95_ms": float(max(p95)) if p95 else None,
                "bound_violations": int(sum(r["bound_violations"] or 0 for r in ok)),
                "dt_ms": mine[0]["dt_ms"]}
    return out


def _finite(v: Any) -> Any:
    """JSON has no inf / NaN (a failed run's cost is inf): write None instead."""
    return None if isinstance(v, float) and not np.isfinite(v) else v


def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def summary_markdown(summary: dict[str, Any]) -> list[str]:
    """The summary as a Markdown table: one line per system and controller."""
    lines = ["| system | controller | runs | cost / oracle (median) | cost / oracle (worst) | "
             "RMS error (median) | solve p95 [ms] (median) | solve p95 [ms] (worst) | dt [ms] | "
             "bound viol. | status |", "|" + "---|" * 11]
    for system, ctrls in summary.items():
        for ctrl, s in ctrls.items():
            status = "ok" if not s["failed_runs"] else (
                f"FAILED {s['failed_runs']}/{s['runs']}: {str(s['failure'])[:80]}")
            lines.append(f"| {system} | {ctrl} | {s['runs']} | {_fmt(s['median_cost_ratio'])} | "
                         f"{_fmt(s['worst_cost_ratio'])} | {_fmt(s['median_rms_error'])} | "
                         f"{_fmt(s['median_solve_p95_ms'])} | {_fmt(s['worst_solve_p95_ms'])} | "
                         f"{_fmt(s['dt_ms'])} | {s['bound_violations']} | {status} |")
    return lines


def _key(r: dict[str, Any]) -> tuple:
    return r["system"], r["reference"], r["seed"], r["controller"]


def _write(path: Path, rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    # Merge with what is on disk now: suites of other controllers may run at the same time.
    mine = {_key(r) for r in rows}
    disk = json.loads(path.read_text()).get("rows", []) if path.exists() else []
    rows = sorted(rows + [r for r in disk if _key(r) not in mine], key=_key)
    rows = [{k: _finite(v) for k, v in r.items()} for r in rows]
    summary = summarise(rows)
    doc = {"command": "python benchmarks/bench_closed_loop_suite.py " + " ".join(sys.argv[1:]),
           "threads": torch.get_num_threads(), "train_steps": args.train_steps,
           "steps": args.steps, "iteration_limited": args.iteration_limited,
           **({"data": args.data} if args.data else {}),
           **({"tracker_set": args.tracker_set} if args.tracker_set else {}),
           **({"train_set": args.train_set} if args.train_set else {}),
           "summary": summary, "rows": rows}
    atomic_write(path, lambda fh: fh.write(json.dumps(doc, indent=1, default=str).encode()))
    lines = ["Summary (per system and controller; cost ratios over the runs that have one):", "",
             *summary_markdown(summary), "", "Runs:", "",
             "| system | reference | seed | controller | cost / oracle | cost / DeePC | RMS error "
             "| solve p95 [ms] | dt [ms] | bound viol. | status |", "|" + "---|" * 11]
    for r in rows:
        status = "ok" if not r["failed"] else f"FAILED: {str(r['error'])[:60]}"
        lines.append(f"| {r['system']} | {r['reference']} | {r['seed']} | {r['controller']} | "
                     f"{_fmt(r['cost_ratio'])} | {_fmt(r['cost_ratio_deepc'])} | "
                     f"{_fmt(r['rms_error'])} | {_fmt(r['solve_p95_ms'])} | {_fmt(r['dt_ms'])} | "
                     f"{r['bound_violations']} | {status} |")
    atomic_write(path.with_suffix(".md"), lambda fh: fh.write(("\n".join(lines) + "\n").encode()))
    return doc


def merge(names: list[str]) -> dict[str, Any]:
    """Fold the rows of ``results/<name>.json`` (controllers run separately, e.g. one process per
    seed) into ``closed_loop_suite.json`` and draw every controller's path per run (unicycle)
    from their episodes in ``results/suite/<name>/<run>/results.json``."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for name in names:  # a run in several files: the last file named wins
        for r in json.loads((RESULTS / f"{name}.json").read_text())["rows"]:
            by_key[_key(r)] = r
    rows = list(by_key.values())
    path = RESULTS / "closed_loop_suite.json"
    args = argparse.Namespace(train_steps=None, steps=None, iteration_limited=None, data={},
                              tracker_set={}, train_set={})
    doc = _write(path, rows, args)
    runs = {}
    for name in ["."] + names:
        for res in sorted((RESULTS / "suite" / name).glob("*/results.json")):
            runs.setdefault(res.parent.name, []).append(json.loads(res.read_text()))
    for run, parts in runs.items():
        if not run.startswith("unicycle"):
            continue
        # The run's folder name is <system>-<reference label>-s<seed>.
        system = run.split("-")[0]
        label = run[len(system) + 1:].rsplit("-s", 1)[0]
        ref = next(make_reference(n, parts[0]["env_id"], parts[0]["steps"], **dict(prm))
                   for n, prm in SYSTEMS[system]["references"] if _label(n, dict(prm)) == label)
        outputs = {k: v[0]["outputs"] for p in parts for k, v in p["episodes"].items()}
        _plot_paths(ref, outputs, RESULTS / "suite" / run / "paths_all.png")
    return doc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``; default ``sys.argv``), with ``data`` and ``tracker_set``
    parsed to dicts: also how other benchmarks call :func:`run`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--controllers", type=lambda s: s.split(","),
                   default=["denoising", "deepc", "oracle"])
    p.add_argument("--train-steps", type=int, default=15000, help="training steps per model")
    p.add_argument("--steps", type=int, default=200, help="closed-loop samples")
    p.add_argument("--symmetry", default="auto", choices=["auto", "none"],
                   help="model symmetry (ablation: none)")
    p.add_argument("--results", default="closed_loop_suite",
                   help="name of the results files in benchmarks/results/")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fresh", action="store_true", help="drop every earlier row")
    p.add_argument("--iteration-limited", action="store_true",
                   help="no per-step time budget (each step runs its iterations): for a machine "
                        "shared with other jobs, where wall-clock budgets measure the load")
    p.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE",
                   help="data design: trajectories=N and excitation parameters (amplitude=0.9, "
                        "bandwidth=0.4); own data and model folders, recorded in every row")
    p.add_argument("--tracker-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override the tracker's system defaults (Python literals: sigma=0.3)")
    p.add_argument("--train-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override training settings (TrainConfig fields: width=128 depth=3); "
                        "own model folders, recorded in every row")
    p.add_argument("--merge", nargs="+", metavar="NAME",
                   help="only fold results/NAME.json files (separate runs) into the suite file")
    args = p.parse_args(argv)
    args.data, args.train_set = (
        {k: json.loads(v) for k, _, v in (pair.partition("=") for pair in pairs)}
        for pairs in (args.data, args.train_set))
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_geometry import tracker_overrides

    args.tracker_set = tracker_overrides(args.tracker_set)
    return args


def main() -> None:
    args = parse_args()
    if args.merge:
        print(json.dumps(merge(args.merge)["summary"], indent=1))
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    doc = run(args)
    print(json.dumps(doc["summary"], indent=1))


if __name__ == "__main__":
    main()

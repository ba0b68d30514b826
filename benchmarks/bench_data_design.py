"""Data design against the closed loop: how the unicycle's tracking depends on its data.

The unicycle's training data are 5,000 trajectories of smooth Gaussian accelerations
(``amplitude`` 0.6 of the input range; :data:`ddcontrol.tracking.defaults.SYSTEM_DEFAULTS`).
For each design that changes one of them (``--amplitudes``, ``--trajectories``), the
closed-loop suite (``bench_closed_loop_suite.py --data KEY=VALUE``: its own data and model,
8,000 training steps, the suite's 3 references, 200 steps, iteration-limited, every tracker
default) runs at the σ training selected ("auto") and, with ``--sigmas``, at fixed σ for the
amplitudes. The default design's rows are the suite's own (``closed_loop_suite.json``); costs
are divided by the suite's oracle rows (same reference, seed and initial state).

Writes ``benchmarks/results/data_design_unicycle.json`` (per design, seed and σ: the cost over
the oracle per reference, the σ used, the data's speed and turn-rate quantiles) and
``data_design_unicycle.png`` (the worst cost over the oracle against each design parameter).

Run (the recorded results came from the same suite runs, one process per design and seed, one
thread each, started by hand)::

    python benchmarks/bench_data_design.py --amplitudes 0.3 0.9 --trajectories --seeds 0 1
    python benchmarks/bench_data_design.py --amplitudes --trajectories 1250 2500 --seeds 0
    python benchmarks/bench_data_design.py --summarise --seeds 0 1   # table and plot only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_closed_loop_suite import (  # noqa: E402
    RESULTS,
    _dataset,
    _label,
    data_tag,
    model_folder,
)
from bench_closed_loop_suite import SYSTEMS as SUITE  # noqa: E402

from ddcontrol._io import atomic_write  # noqa: E402

DEFAULT = {"amplitude": 0.6, "trajectories": SUITE["unicycle"]["n"]}
"""The default design's parameters."""


def result_name(design: dict[str, Any], sigma: float | None) -> str:
    """The suite's results file of one design (and fixed σ; None: auto)."""
    return ("data_design_unicycle_" + "_".join(f"{k}{v}" for k, v in sorted(design.items()))
            + ("" if sigma is None else f"_sigma{sigma}"))


def designs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One design per value given: a single parameter changed from :data:`DEFAULT`."""
    return ([{"amplitude": a} for a in args.amplitudes]
            + [{"trajectories": n} for n in args.trajectories])


def fixed_sigmas(design: dict[str, Any], args: argparse.Namespace) -> list[float | None]:
    """The σ runs of a design: None (auto), then ``--sigmas`` for the amplitude designs."""
    return [None, *(args.sigmas if "amplitude" in design else [])]


def run(args: argparse.Namespace) -> None:
    """The suite for each design, seed and σ (its results files are resumable)."""
    import bench_closed_loop_suite as suite

    for design in designs(args):
        for sigma in fixed_sigmas(design, args):
            argv = ["--systems", "unicycle", "--seeds", *map(str, args.seeds),
                    "--controllers", "denoising", "--train-steps", "8000",
                    "--iteration-limited", "--results", result_name(design, sigma),
                    "--data", *(f"{k}={v}" for k, v in design.items())]
            if sigma is not None:
                argv += ["--tracker-set", f"sigma={sigma}"]
            suite.run(suite.parse_args(argv))


def _coverage(seed: int, design: dict[str, Any]) -> dict[str, float]:
    """Speed and turn-rate quantiles of a design's data (physical units)."""
    data = _dataset("unicycle", seed, design or None)
    names = list(data.metadata["output_names"])
    v = np.abs(data.y[..., names.index("v")])
    w = np.abs(data.y[..., names.index("omega")])
    return {"speed_p50": float(np.median(v)), "speed_p99": float(np.quantile(v, 0.99)),
            "turn_rate_p50": float(np.median(w)), "turn_rate_p99": float(np.quantile(w, 0.99))}


def _sigma_of(seed: int, design: dict[str, Any]) -> float | None:
    """The σ stored with a design's model (training's selection)."""
    from ddcontrol.score import load_model

    folder = model_folder("unicycle", seed, 8000, design=design)
    return load_model(folder).sigma if (folder / "checkpoint.pt").exists() else None


def summarise(args: argparse.Namespace) -> dict[str, Any]:
    suite_rows = json.loads((RESULTS / "closed_loop_suite.json").read_text())["rows"]
    oracle = {(r["reference"], r["seed"]): r["total_cost"] for r in suite_rows
              if r["system"] == "unicycle" and r["controller"] == "oracle"}
    labels = [_label(n, dict(p)) for n, p in SUITE["unicycle"]["references"]]
    runs, coverage = [], {}
    for design in [{}, *designs(args)]:
        for sigma in fixed_sigmas(design, args):
            if not design:
                rows = [r for r in suite_rows if r["system"] == "unicycle"
                        and r["controller"] == "denoising"]
            else:
                path = RESULTS / f"{result_name(design, sigma)}.json"
                if not path.exists():
                    continue
                rows = json.loads(path.read_text())["rows"]
            for seed in args.seeds:
                cost = {r["reference"]: r["total_cost"] for r in rows if r["seed"] == seed}
                if not all(lab in cost for lab in labels):
                    continue
                ratios = {lab: cost[lab] / oracle[(lab, seed)] for lab in labels}
                key = (seed, data_tag(design))
                if key not in coverage:  # a design's data serve its auto and fixed-σ rows
                    coverage[key] = _coverage(seed, design)
                runs.append({"design": {**DEFAULT, **design}, "changed": sorted(design),
                             "seed": seed,
                             "sigma": _sigma_of(seed, design) if sigma is None else sigma,
                             "sigma_source": "auto" if sigma is None else "fixed",
                             "cost_over_oracle": ratios,
                             "worst": max(ratios.values()),
                             "median": float(np.median(list(ratios.values()))),
                             "data": coverage[key]})
    return {"benchmark": "data design (unicycle) against the closed loop",
            "command": "python benchmarks/bench_data_design.py " + " ".join(sys.argv[1:]),
            "default_design": DEFAULT, "references": labels, "runs": runs}


def plot(doc: dict[str, Any], path: Path) -> None:
    """Per design parameter: the worst cost over the oracle against its value, one line per
    seed and σ source, the default design on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(DEFAULT)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        mine = [r for r in doc["runs"] if r["changed"] in ([], [key])]
        for source, marker in (("auto", "o"), ("fixed", "s")):
            for seed in sorted({r["seed"] for r in mine}):
                rows = sorted((r for r in mine if r["seed"] == seed and (
                    r["sigma_source"] == source or (source == "fixed" and not r["changed"]))),
                    key=lambda r: r["design"][key])
                if source == "fixed" and not any(r["sigma_source"] == "fixed" for r in rows):
                    continue
                if not rows:
                    continue
                ax.plot([r["design"][key] for r in rows], [r["worst"] for r in rows],
                        marker=marker, ls="-" if source == "auto" else "--",
                        label=f"seed {seed}, σ {source}")
                for r in rows:
                    ax.annotate(f"σ {r['sigma']:g}", (r["design"][key], r["worst"]),
                                textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(1.3, color="k", lw=0.8, ls=":", label="issue 12 bar (1.3x)")
        ax.axvline(DEFAULT[key], color="0.6", lw=0.8, ls="--", label="default")
        ax.set_yscale("log")
        ax.set_xlabel({"amplitude": "excitation amplitude (fraction of the input range)",
                       "trajectories": "training trajectories"}[key])
        ax.set_ylabel("worst closed-loop cost / oracle (3 references)")
        ax.legend(fontsize=7)
    fig.suptitle("unicycle: data design against the closed loop")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--amplitudes", nargs="*", type=float, default=[0.3, 0.9])
    p.add_argument("--trajectories", nargs="*", type=int, default=[1250, 2500])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--sigmas", nargs="*", type=float, default=[0.3],
                   help="fixed σ run beside the auto σ (amplitude designs)")
    p.add_argument("--summarise", action="store_true", help="table and plot from the files")
    args = p.parse_args()
    if not args.summarise:
        run(args)
    doc = summarise(args)
    out = RESULTS / "data_design_unicycle.json"
    atomic_write(out, lambda fh: fh.write(json.dumps(doc, indent=1).encode()))
    plot(doc, RESULTS / "data_design_unicycle.png")
    for r in doc["runs"]:
        design = ", ".join(f"{k} {r['design'][k]}" for k in r["changed"]) or "default"
        print(f"{design}, seed {r['seed']}, σ {r['sigma']:g} ({r['sigma_source']}): "
              + " / ".join(f"{v:.3f}" for v in r["cost_over_oracle"].values()))


if __name__ == "__main__":
    main()

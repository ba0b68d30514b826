"""Data design against the closed loop: how the unicycle's tracking depends on its excitation.

The unicycle's training data are smooth Gaussian accelerations (``amplitude`` of the input
range, ``bandwidth``; :data:`ddcontrol.tracking.defaults.SYSTEM_DEFAULTS`, amplitude 0.6). For
each amplitude, the closed-loop suite (``bench_closed_loop_suite.py --data amplitude=A``: its
own data and model, 8,000 training steps, the suite's 3 references, 200 steps,
iteration-limited, every tracker default) runs at the σ training selected ("auto") and, with
``--sigmas``, at fixed σ too. The default amplitude's rows are the suite's own
(``closed_loop_suite.json``); costs are divided by the suite's oracle rows (same reference,
seed and initial state).

Writes ``benchmarks/results/data_design_unicycle.json`` (per amplitude, seed and σ: the cost
over the oracle per reference, the σ used, the data's speed and turn-rate quantiles) and
``data_design_unicycle.png`` (cost over the oracle against the amplitude, log scale).

Run (the recorded results; one process per amplitude and seed, one thread each)::

    python benchmarks/bench_data_design.py --amplitudes 0.3 0.9 --seeds 0 1 --sigmas 0.3
    python benchmarks/bench_data_design.py --summarise        # table and plot only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_closed_loop_suite import MODELS, RESULTS, _dataset, _label  # noqa: E402
from bench_closed_loop_suite import SYSTEMS as SUITE  # noqa: E402

from ddcontrol._io import atomic_write  # noqa: E402

DEFAULT_AMPLITUDE = 0.6


def result_name(amplitude: float, sigma: float | None) -> str:
    """The suite's results file of one design (and fixed σ; None: auto)."""
    return f"data_design_unicycle_amplitude{amplitude}" + ("" if sigma is None
                                                            else f"_sigma{sigma}")


def run(args: argparse.Namespace) -> None:
    """The suite for each amplitude, seed and σ (its results files are resumable)."""
    import bench_closed_loop_suite as suite

    for amplitude in args.amplitudes:
        for sigma in [None, *args.sigmas]:
            ns = argparse.Namespace(
                systems=["unicycle"], seeds=args.seeds, controllers=["denoising"],
                train_steps=8000, steps=200, symmetry="auto", device="cpu", fresh=False,
                iteration_limited=True, data={"amplitude": amplitude},
                tracker_set={} if sigma is None else {"sigma": sigma},
                results=result_name(amplitude, sigma))
            suite.run(ns)


def _coverage(seed: int, amplitude: float) -> dict[str, float]:
    """Speed and turn-rate quantiles of a design's data (physical units)."""
    design = None if amplitude == DEFAULT_AMPLITUDE else {"amplitude": amplitude}
    data = _dataset("unicycle", seed, design)
    names = list(data.metadata["output_names"])
    v = np.abs(data.y[..., names.index("v")])
    w = np.abs(data.y[..., names.index("omega")])
    return {"speed_p50": float(np.median(v)), "speed_p99": float(np.quantile(v, 0.99)),
            "turn_rate_p50": float(np.median(w)), "turn_rate_p99": float(np.quantile(w, 0.99))}


def _sigma_of(seed: int, amplitude: float) -> float | None:
    """The σ stored with a design's model (training's selection)."""
    from ddcontrol.score import load_model

    tag = "" if amplitude == DEFAULT_AMPLITUDE else f"-amplitude{amplitude}"
    folder = MODELS / f"unicycle-s{seed}-8000{tag}"
    return load_model(folder).sigma if (folder / "checkpoint.pt").exists() else None


def summarise(amplitudes: list[float], seeds: list[int], sigmas: list[float]) -> dict[str, Any]:
    suite_rows = json.loads((RESULTS / "closed_loop_suite.json").read_text())["rows"]
    oracle = {(r["reference"], r["seed"]): r["total_cost"] for r in suite_rows
              if r["system"] == "unicycle" and r["controller"] == "oracle"}
    labels = [_label(n, dict(p)) for n, p in SUITE["unicycle"]["references"]]
    runs = []
    for amplitude in sorted({DEFAULT_AMPLITUDE, *amplitudes}):
        for sigma in [None, *sigmas]:
            if amplitude == DEFAULT_AMPLITUDE:
                if sigma is not None:
                    continue
                rows = [r for r in suite_rows if r["system"] == "unicycle"
                        and r["controller"] == "denoising"]
            else:
                path = RESULTS / f"{result_name(amplitude, sigma)}.json"
                if not path.exists():
                    continue
                rows = json.loads(path.read_text())["rows"]
            for seed in seeds:
                cost = {r["reference"]: r["total_cost"] for r in rows if r["seed"] == seed}
                if not all(lab in cost for lab in labels):
                    continue
                ratios = {lab: cost[lab] / oracle[(lab, seed)] for lab in labels}
                runs.append({"amplitude": amplitude, "seed": seed,
                             "sigma": _sigma_of(seed, amplitude) if sigma is None else sigma,
                             "sigma_source": "auto" if sigma is None else "fixed",
                             "cost_over_oracle": ratios,
                             "worst": max(ratios.values()),
                             "median": float(np.median(list(ratios.values()))),
                             "data": _coverage(seed, amplitude)})
    return {"benchmark": "data design (unicycle excitation amplitude) against the closed loop",
            "command": "python benchmarks/bench_data_design.py " + " ".join(sys.argv[1:]),
            "references": labels, "runs": runs}


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for source, marker in (("auto", "o"), ("fixed", "s")):
        for seed in sorted({r["seed"] for r in doc["runs"]}):
            rows = sorted((r for r in doc["runs"] if r["sigma_source"] == source
                           and r["seed"] == seed), key=lambda r: r["amplitude"])
            if not rows:
                continue
            ax.plot([r["amplitude"] for r in rows], [r["worst"] for r in rows],
                    marker=marker, ls="-" if source == "auto" else "--",
                    label=f"seed {seed}, σ {source}"
                    + ("" if source == "auto" else f" {rows[0]['sigma']:g}"))
            for r in rows:
                ax.annotate(f"σ {r['sigma']:g}", (r["amplitude"], r["worst"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(1.3, color="k", lw=0.8, ls=":", label="issue 12 bar (1.3x)")
    ax.set_yscale("log")
    ax.set_xlabel("excitation amplitude (fraction of the input range)")
    ax.set_ylabel("worst closed-loop cost / oracle (3 references)")
    ax.set_title("unicycle: data design against the closed loop")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--amplitudes", nargs="+", type=float, default=[0.3, 0.9])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--sigmas", nargs="*", type=float, default=[0.3],
                   help="fixed σ run beside the auto σ")
    p.add_argument("--summarise", action="store_true", help="table and plot from the files")
    args = p.parse_args()
    if not args.summarise:
        run(args)
    doc = summarise(args.amplitudes, args.seeds, args.sigmas)
    out = RESULTS / "data_design_unicycle.json"
    atomic_write(out, lambda fh: fh.write(json.dumps(doc, indent=1).encode()))
    plot(doc, RESULTS / "data_design_unicycle.png")
    for r in doc["runs"]:
        print(f"amplitude {r['amplitude']:g} seed {r['seed']} σ {r['sigma']:g} "
              f"({r['sigma_source']}): " + " / ".join(f"{v:.3f}" for v in
                                                      r["cost_over_oracle"].values()))


if __name__ == "__main__":
    main()

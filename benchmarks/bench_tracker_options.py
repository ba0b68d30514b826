"""One closed loop of the DenoisingTracker on a suite case with tracker options overridden.

Usage: ``python benchmarks/bench_tracker_options.py SYSTEM SEED REF_INDEX STEPS [key=value ...]``
(values are Python literals), e.g. ``pendulum 0 0 200 solver="'guided'"`` or
``unicycle 1 0 200 step_time_budget=None jacobian_every=20``. Uses the suite's cached data and
models (``bench_closed_loop_suite.py``); prints one JSON line (cost, cost / the suite's oracle
row, per-step wall times against dt, flagged steps) and appends it to ``--out``
(default ``benchmarks/results/tracker_options.jsonl``).

Recorded (``tracker_options.jsonl``): ``solver="'guided'"`` (guided diffusion, up to 20 levels
per step within the 0.45 dt budget) on the double pendulum, seed 0, the suite's 3 references:
3.90x / 2.88x / 3.53x the oracle (an earlier run of the same command, not saved: 5.16x / 1.89x /
1.19x; the levels a step gets depend on the machine's load), against DRGD's 1.06x / 1.13x /
1.07x (suite rows); 140-190 of 200 steps flagged out of distribution. Guided sampling loses to
DRGD in closed loop as it does on finite-horizon plans (``bench_baselines.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_closed_loop_suite import SYSTEMS, _label, dataset_and_model  # noqa: E402
from bench_geometry import tracker_overrides  # noqa: E402

from ddcontrol.evaluate.compare import compare  # noqa: E402
from ddcontrol.evaluate.controllers import make_controller  # noqa: E402
from ddcontrol.tracking.defaults import system_defaults  # noqa: E402
from ddcontrol.tracking.reference import make_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TRAIN_STEPS = {"msd": 4000, "coupled": 4000, "pendulum": 8000, "unicycle": 8000}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--out=")]
    out = next((Path(a[6:]) for a in sys.argv[1:] if a.startswith("--out=")),
               RESULTS / "tracker_options.jsonl")
    system, seed, ref_index, steps = args[0], int(args[1]), int(args[2]), int(args[3])
    over = tracker_overrides(args[4:])
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    spec = SYSTEMS[system]
    env, d = spec["env"], system_defaults(spec["env"])
    data, model = dataset_and_model(system, seed, TRAIN_STEPS[system], "cpu")
    name, params = spec["references"][ref_index]
    ref = make_reference(name, env, steps, **dict(params))
    opts = {**d.tracker_options(ref.dt), **over}
    factory = partial(make_controller, "denoising", env, ref, d.Q, d.R, horizon=d.horizon,
                      data=data, model=model, t_ini=d.t_ini, options=opts)
    t0 = time.perf_counter()
    res = compare(env, {"denoising": factory}, ref, Q=d.Q, R=d.R, score_from=d.t_ini,
                  seeds=[seed], progress=False)
    episode, row = res.episodes["denoising"][0], res.rows[0]
    label = _label(name, dict(params))
    oracle = {(r["system"], r["reference"], r["seed"]): r["total_cost"] for r in json.loads(
        (RESULTS / "closed_loop_suite.json").read_text())["rows"] if r["controller"] == "oracle"}
    ref_cost = oracle.get((system, label, seed)) if steps == 200 else None
    times = np.asarray(episode.solve_times[d.t_ini:]) * 1e3
    line = {"system": system, "reference": label, "seed": seed,
            "options": {k: repr(v) for k, v in over.items()}, "total_cost": row["total_cost"],
            "cost_ratio": None if ref_cost is None else row["total_cost"] / ref_cost,
            "dt_ms": ref.dt * 1e3, "step_p50_ms": float(np.median(times)),
            "step_p95_ms": float(np.percentile(times, 95)), "step_max_ms": float(times.max()),
            "ood_steps": row.get("ood_steps"), "wall_s": time.perf_counter() - t0}
    print(json.dumps(line))
    with open(out, "a") as fh:
        fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()

"""Dataset generation speed: paper-scale datasets (20,000 trajectories x 100 steps) per system.

Run: ``python benchmarks/bench_generate.py [--trajectories N] [--horizon T] [--repeats R]``.
Prints a table and writes ``benchmarks/results/generate.json``. Target: the unicycle dataset in
under 5 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from ddcontrol.data import collect

SYSTEMS = ["ddcontrol/Unicycle-v0", "ddcontrol/DoublePendulum-v0",
           "ddcontrol/MassSpringDamper-v0", "ddcontrol/CoupledMasses-v0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=20_000)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="best of R runs")
    parser.add_argument("--out", default="benchmarks/results/generate.json")
    args = parser.parse_args()
    rows = []
    for env_id in SYSTEMS:
        times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            collect(env_id, args.trajectories, args.horizon, seed=r)
            times.append(time.perf_counter() - start)
        rows.append({"env_id": env_id, "best_s": min(times), "median_s": sorted(times)[len(times) // 2]})
        print(f"{env_id:32s} best {min(times):6.2f} s   median {rows[-1]['median_s']:6.2f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"trajectories": args.trajectories, "horizon": args.horizon,
                               "cpu_count": os.cpu_count(), "machine": platform.machine(),
                               "results": rows, "target_unicycle_s": 5.0}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

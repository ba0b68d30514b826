"""``ddcontrol demo``: the main job end to end on a small default."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ddcontrol.data import collect
from ddcontrol.evaluate.plots import plot_dataset


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on a small default",
        description="Generate a dataset for a system, and write plots and a summary.")
    p.add_argument("--env", default="ddcontrol/MassSpringDamper-v0", help="environment id")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a much smaller budget (for tests)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    n, t = (50, 50) if args.quick else (1000, 100)
    data = collect(args.env, n, t, seed=args.seed, progress=True)
    data_path = data.save(out / "data.npz")
    plot = plot_dataset(data, out / "dataset.png")
    summary = {"env_id": args.env, "dataset": str(data_path), "trajectories": n, "horizon": t,
               "wall_time_s": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"dataset: {data_path}\nplot:    {plot}\nresults: {out / 'results.json'}")
    return 0

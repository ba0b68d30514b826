"""Training speed: steps/s of the demo's behaviour model, for 1 and 2 torch threads.

Run: ``python benchmarks/bench_training.py [--baseline-rev HEAD] [--threads 1 2] [--steps 300]
[--repeats 3] [--width 512] [--nproc 2]``.

The model and data are the demo's (mass-spring-damper, 1,000 trajectories x 100 steps,
residual MLP 4 x 512, windows of 30 steps, batch 256). Each configuration trains
``--steps`` steps ``--repeats`` times, interleaving thread counts so that load from other jobs
on a shared machine hits every configuration alike; the rate is timed between the first
``--warmup`` steps and the last one (no validation, no checkpoint). ``--nproc 2`` also times
data-parallel training with 2 gloo processes on this machine (same global batch).

``--baseline-rev REV`` also times ``ddcontrol/score/train.py`` as it is in git revision REV
(the code before a change), interleaved with the current code in the same process, so that
"before" and "after" see the same machine load. Results go to
``benchmarks/results/training.json``: medians over the repeats, every run, and the load
average at the start and the end (on a shared machine, compare ratios within one run).

Recorded (2 shared cores, load average 10-11 from other jobs; see the JSON files):
``--baseline-rev HEAD --threads 1 2 --steps 60 --warmup 10 --repeats 3`` (cut at 590 s):
1 thread 3.85 / 5.84 / 6.21 steps/s against 3.57 / 5.24 / 5.67 before the change (paired
runs, +8 to +11 %), 2 threads 0.45 / 1.02 (before: 0.52 / 0.71); ``--threads 1 --nproc 2
--steps 60 --warmup 10 --repeats 2 --out benchmarks/results/training_distributed.json``:
1 process 5.80 steps/s, 2 gloo processes 3.73 steps/s (median).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ddcontrol.data import collect

# The module (``ddcontrol.score.train`` as an attribute is the function it exports).
current = importlib.import_module("ddcontrol.score.train")

ENV_ID = "ddcontrol/MassSpringDamper-v0"


def baseline_module(rev: str, folder: Path) -> Any:
    """``ddcontrol/score/train.py`` of git revision ``rev``, imported as a separate module."""
    source = subprocess.run(["git", "show", f"{rev}:ddcontrol/score/train.py"], check=True,
                            capture_output=True, text=True).stdout
    path = folder / "train_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("_train_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def time_steps(module: Any, steps: int, width: int, threads: int, data: Any,
               warmup: int) -> float:
    """Steps per second of the demo's training run between step ``warmup`` and the last step.

    The demo's configuration (``module.TrainConfig``), without validation, checkpoints or a
    progress bar; the callback only reads the clock.
    """
    cfg = module.TrainConfig(window=30, steps=steps, width=width, seed=0, val_every=0,
                             checkpoint_every=0, log_every=100, progress=False,
                             num_threads=threads)
    stamps: dict[int, float] = {}

    def stamp(step: int, record: dict) -> None:
        if step in (warmup, steps):
            stamps[step] = time.perf_counter()

    module.train(cfg, data, callback=stamp)
    return (steps - warmup) / (stamps[steps] - stamps[warmup])


def time_distributed(nproc: int, steps: int, width: int, warmup: int, data_path: Path) -> float:
    """Steps per second of ``ddcontrol train --nproc N`` (from its log's timestamps)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", "import sys; from ddcontrol.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "train", "--data", str(data_path), "--out", tmp,
               "--nproc", str(nproc), "--window", "30", "--steps", str(steps), "--width",
               str(width), "--val-every", "0", "--checkpoint-every", "0", "--log-every",
               str(warmup), "--no-progress", "--num-threads", "1", "--overwrite"]
        subprocess.run(cmd, check=True, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        records = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    times = {r["step"]: r["time_s"] for r in records if "loss" in r}
    first = min(times)
    return (steps - first) / (times[steps] - times[first])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-rev", default=None,
                        help="also time train.py of this git revision (e.g. HEAD)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nproc", type=int, nargs="*", default=[],
                        help="also time N data-parallel gloo processes (one thread each)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=512, help="MLP width (the demo's: 512)")
    parser.add_argument("--out", default="benchmarks/results/training.json")
    args = parser.parse_args()
    data = collect(ENV_ID, 1000, 100, seed=0)
    load_start = os.getloadavg()
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_path = data.save(Path(tmp) / "msd.npz")
        variants = {"current": current}
        if args.baseline_rev is not None:
            variants[args.baseline_rev] = baseline_module(args.baseline_rev, Path(tmp))
        for r in range(args.repeats):
            for t in args.threads:
                for name, module in variants.items():
                    rate = time_steps(module, args.steps, args.width, t, data, args.warmup)
                    rates.setdefault(f"{name}_threads_{t}", []).append(rate)
                    print(f"repeat {r}: {name:>8s} {t} thread(s): {rate:6.2f} steps/s",
                          flush=True)
                    write_results(args, rates, load_start)
            for n in args.nproc:
                rate = time_distributed(n, args.steps, args.width, args.warmup, data_path)
                rates.setdefault(f"current_nproc_{n}", []).append(rate)
                print(f"repeat {r}: {n} process(es): {rate:6.2f} steps/s", flush=True)
                write_results(args, rates, load_start)
    summary = write_results(args, rates, load_start)
    for k, v in summary.items():
        print(f"{k:>24s}: median {v['median_steps_per_s']:6.2f} steps/s")
    print(f"wrote {args.out}")


def write_results(args: argparse.Namespace, rates: dict[str, list[float]],
                  load_start: tuple[float, float, float]) -> dict[str, Any]:
    """Write the JSON file (after every measurement: a run cut short keeps what it measured)."""
    summary = {k: {"median_steps_per_s": statistics.median(v), "runs": v}
               for k, v in rates.items()}
    out = Path(args.out)
    results = {
        "model": {"env_id": ENV_ID, "trajectories": 1000, "horizon": 100, "window": 30,
                  "arch": "mlp", "width": args.width, "depth": 4, "batch_size": 256},
        "machine": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "torch": torch.__version__},
        "command": " ".join(["python", *sys.argv]),
        "baseline_rev": args.baseline_rev, "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "results": summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return summary


if __name__ == "__main__":
    main()

"""Escalation on persistent flags: the tracker's ``on_ood="escalate"`` against ``"warn"``.

Under ``on_ood="escalate"`` a :class:`~ddcontrol.tracking.tracker.DenoisingTracker` plans as under
``"warn"`` until a third of the last horizon's steps have been flagged out of the data's
distribution by its own confidence, then plans at the next σ of its ladder ``escalate_sigma``
(default: the σ of the selection grid above the plans' own, one grid step per escalation), and
climbs again each time a third of the steps planned on a rung are flagged. This benchmark reads
closed-loop suite results (``bench_closed_loop_suite.py``, iteration-limited, one file per policy)
and compares, run by run, the total cost relative to the suite's oracle
(``closed_loop_suite.json``; the oracle does not depend on the data):

* **stress**: models of data that never showed the task's speeds and turn rates (the unicycle's
  excitation amplitude 0.3 instead of 0.6), whose auto σ (0.07) sends plans out of the data:
  ``warn`` (today's default), the ladder, one rung to 0.3 (the policy before the ladder), one
  rung to 0.1, the ladder with a faster trigger (an eighth of the horizon instead of a third),
  and the conservative σ fixed from the start;
* **check**: the suite's own models under each escalation against ``warn`` with the same code
  and settings: a run that never escalates plans exactly as under ``warn``; the ones that
  escalate show what a false alarm costs. The ladder's check covers the double pendulum's 9
  runs only: the other 27 suite runs (unicycle and linear systems) have no flagged step under
  ``warn`` (``suite_warn_check*``), so no escalation can happen there.

Produce the inputs (one suite per line; ``--tracker-set`` takes all its KEY=VALUE pairs after
one flag; values are Python literals)::

    python benchmarks/bench_closed_loop_suite.py --systems unicycle --seeds 0 1 2 \\
        --train-steps 8000 --controllers denoising --iteration-limited --data amplitude=0.3 \\
        --tracker-set "on_ood='escalate'" --results suite_escalate_ladder_unicycle_amplitude0.3
    #   the same with --tracker-set "on_ood='warn'"  --results suite_warn_unicycle_amplitude0.3
    #   with --tracker-set "on_ood='escalate'" "escalate_sigma=0.1"
    #                                   --results suite_escalate_sigma0.1_unicycle_amplitude0.3
    #   and with --tracker-set sigma=0.3 --results suite_sigma0.3_unicycle_amplitude0.3
    python benchmarks/bench_closed_loop_suite.py --systems pendulum --seeds 0 1 2 \\
        --train-steps 8000 --controllers denoising --iteration-limited \\
        --tracker-set "on_ood='escalate'" --results suite_escalate_ladder_check_pendulum
    #   and --tracker-set "on_ood='warn'" --results suite_warn_check (with unicycle too);
    #   --systems msd coupled --train-steps 4000 ... --results suite_warn_check_linear

The one-rung-to-0.3 files (``suite_escalate_unicycle_amplitude0.3``, ``suite_escalate_check``,
``suite_escalate_check_linear``) were written before the ladder, when ``on_ood='escalate'``
meant that policy (today: add ``escalate_sigma=0.3``). The faster trigger's files
(``*_ladder_eighth_*``) come from the same commands with ``ESCALATION_FRACTION`` set to 1/8 in
``ddcontrol/tracking/receding.py`` (an experiment). Then ``python benchmarks/bench_escalation.py``
prints the tables and writes ``benchmarks/results/escalation.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_closed_loop_suite import _fmt as fmt  # noqa: E402

from ddcontrol._io import atomic_write  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STRESS = {"warn": "suite_warn_unicycle_amplitude0.3",
          "ladder": "suite_escalate_ladder_unicycle_amplitude0.3",
          "to 0.3": "suite_escalate_unicycle_amplitude0.3",
          "to 0.1": "suite_escalate_sigma0.1_unicycle_amplitude0.3",
          "ladder, 1/8": "suite_escalate_ladder_eighth_unicycle_amplitude0.3",
          "sigma 0.3": "suite_sigma0.3_unicycle_amplitude0.3"}
#: The escalation policies checked on the suite's own models (files per policy).
CHECK = {"ladder": ("suite_escalate_ladder_check_pendulum",),
         "to 0.3": ("suite_escalate_check", "suite_escalate_check_linear"),
         "ladder, 1/8": ("suite_escalate_ladder_eighth_check_pendulum",)}
WARN = ("suite_warn_check", "suite_warn_check_linear")


def _rows(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        print(f"  (missing {path.name}: run the suite command in this script's docstring)")
        return []
    return [r for r in json.loads(path.read_text())["rows"] if r["controller"] == "denoising"]


def _run_key(r: dict[str, Any]) -> tuple[str, str, int]:
    return r["system"], r["reference"], r["seed"]


def _stats(ratios: list[float]) -> dict[str, Any]:
    a = np.asarray([x for x in ratios if x is not None], dtype=float)
    return {"runs": int(a.size), "median": float(np.median(a)) if a.size else None,
            "worst": float(a.max()) if a.size else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(RESULTS / "escalation.json"))
    args = p.parse_args(argv)
    suite = json.loads((RESULTS / "closed_loop_suite.json").read_text())["rows"]
    oracle = {_run_key(r): r["total_cost"] for r in suite
              if r["controller"] == "oracle" and not r["failed"]}
    warned = {_run_key(r): r["total_cost"] for name in WARN for r in _rows(name)
              if not r["failed"]}

    def ratio(key: tuple, cost: float | None) -> float | None:
        base = oracle.get(key)
        return None if cost is None or not base else cost / base

    def escalations(r: dict[str, Any]) -> list[int]:
        at = r.get("escalations")  # files from before the ladder: one step at most
        return list(at) if at is not None else ([] if r.get("escalated_at") is None
                                                else [r["escalated_at"]])

    # Stress: every policy on the same runs.
    by_policy = {policy: {_run_key(r): r for r in _rows(name)} for policy, name in STRESS.items()}
    keys = sorted(set().union(*[set(v) for v in by_policy.values()]))
    stress_rows = []
    for key in keys:
        row: dict[str, Any] = {"system": key[0], "reference": key[1], "seed": key[2]}
        for policy, runs in by_policy.items():
            r = runs.get(key)
            cost = None if r is None or r["failed"] else r["total_cost"]
            row[policy] = {"total_cost": cost, "cost_ratio": ratio(key, cost),
                           "ood_steps": None if r is None else r.get("ood_steps"),
                           "escalations": None if r is None else escalations(r)}
        stress_rows.append(row)
    stress_summary = {policy: _stats([r[policy]["cost_ratio"] for r in stress_rows])
                      for policy in STRESS}

    # Check: the suite's own models under each escalation against "warn" (same settings).
    checks: dict[str, Any] = {}
    for policy, names in CHECK.items():
        rows = []
        for name in names:
            for r in _rows(name):
                key = _run_key(r)
                base = warned.get(key)
                rows.append({"system": key[0], "reference": key[1], "seed": key[2],
                             "escalations": escalations(r), "ood_steps": r.get("ood_steps"),
                             "cost_ratio": ratio(key, r["total_cost"]),
                             "warn_cost_ratio": ratio(key, base),
                             "cost_over_warn": None if not base else r["total_cost"] / base})
        over = [r["cost_over_warn"] for r in rows if r["cost_over_warn"] is not None]
        quiet = [r["cost_over_warn"] for r in rows
                 if not r["escalations"] and r["cost_over_warn"] is not None]
        checks[policy] = {"summary": {
            "runs": len(rows), "escalated_runs": sum(bool(r["escalations"]) for r in rows),
            "max_flagged_steps": max((r["ood_steps"] or 0 for r in rows), default=None),
            "cost_over_warn": {"min": float(min(over)) if over else None,
                               "max": float(max(over)) if over else None},
            "unescalated_cost_over_warn": {"min": float(min(quiet)) if quiet else None,
                                           "max": float(max(quiet)) if quiet else None}},
            "runs": rows}
    result = {"benchmark": "escalation on persistent flags (on_ood='escalate' vs 'warn')",
              "command": "python benchmarks/bench_escalation.py",
              "inputs": {"stress": STRESS, "check": CHECK, "warn": WARN},
              "stress": {"summary": stress_summary, "runs": stress_rows},
              "check": checks}

    lines = ["Stress (unicycle, data of excitation amplitude 0.3; cost / oracle (flagged steps); "
             "the ladder's escalation steps):", "",
             "| reference | seed | " + " | ".join(STRESS) + " | ladder's steps |",
             "|" + "---|" * (len(STRESS) + 3)]
    for r in stress_rows:
        cells = [f"{fmt(r[p]['cost_ratio'])} ({fmt(r[p]['ood_steps'])})" for p in STRESS]
        steps = ", ".join(str(k) for k in (r["ladder"]["escalations"] or [])) or "–"
        lines.append(f"| {r['reference']} | {r['seed']} | " + " | ".join(cells)
                     + f" | {steps} |")
    lines += ["", "| policy | runs | median | worst |", "|---|---|---|---|"]
    lines += [f"| {p} | {s['runs']} | {fmt(s['median'])} | {fmt(s['worst'])} |"
              for p, s in stress_summary.items()]
    lines += ["", "Check (the suite's own models; cost over the same run under warn):", "",
              "| policy | runs | escalated | max flagged steps | cost / warn, all runs | "
              "runs that did not escalate |", "|---|---|---|---|---|---|"]
    for policy, c in checks.items():
        sm, q = c["summary"], c["summary"]["unescalated_cost_over_warn"]
        a = sm["cost_over_warn"]
        lines.append(f"| {policy} | {sm['runs']} | {sm['escalated_runs']} | "
                     f"{fmt(sm['max_flagged_steps'])} | {fmt(a['min'])}-{fmt(a['max'])} | "
                     f"{fmt(q['min'])}-{fmt(q['max'])} |")
    for policy, c in checks.items():
        for r in c["runs"]:
            if r["escalations"]:
                lines.append(f"- {policy}: {r['system']} {r['reference']} seed {r['seed']} "
                             f"escalated at {', '.join(map(str, r['escalations']))}: cost / "
                             f"oracle {fmt(r['cost_ratio'])} (warn: "
                             f"{fmt(r['warn_cost_ratio'])})")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    atomic_write(out, lambda fh: fh.write((json.dumps(result, indent=1) + "\n").encode()))
    atomic_write(out.with_suffix(".md"), lambda fh: fh.write(text.encode()))
    print(f"wrote {out} and {out.with_suffix('.md').name}")
    return result


if __name__ == "__main__":
    main()

"""The closed-loop suite's documented ``--merge`` command and the escalation summary (benchmarks
are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_for_test", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def _suite_module():
    return _bench_module("bench_closed_loop_suite")


def _row(controller: str, cost: float, seed: int = 0) -> dict:
    return {"system": "msd", "reference": "random", "seed": seed, "controller": controller,
            "total_cost": cost, "rms_error": 0.1, "failed": False, "error": None,
            "solve_p50_ms": 1.0, "solve_p95_ms": 2.0, "solve_max_ms": 3.0, "dt_ms": 100.0,
            "bound_violations": 0}


def test_merge_folds_result_files_and_the_last_named_wins(tmp_path, monkeypatch):
    suite = _suite_module()
    monkeypatch.setattr(suite, "RESULTS", tmp_path)
    (tmp_path / "old.json").write_text(json.dumps(
        {"rows": [_row("oracle", 2.0), _row("denoising", 4.0), _row("denoising", 3.0, seed=1)]}))
    (tmp_path / "new.json").write_text(json.dumps({"rows": [_row("denoising", 2.2)]}))
    doc = suite.merge(["old", "new"])
    rows = {(r["controller"], r["seed"]): r for r in doc["rows"]}
    assert rows[("denoising", 0)]["total_cost"] == 2.2  # the later file's run replaces the older
    assert rows[("denoising", 0)]["cost_ratio"] == 2.2 / 2.0
    assert rows[("denoising", 1)]["total_cost"] == 3.0  # a run only in the older file stays
    summary = doc["summary"]["msd"]["denoising"]
    assert summary["runs"] == 2 and summary["worst_cost_ratio"] == summary["median_cost_ratio"]
    on_disk = json.loads((tmp_path / "closed_loop_suite.json").read_text())
    assert on_disk["rows"] == doc["rows"] and "data" not in on_disk
    table = (tmp_path / "closed_loop_suite.md").read_text()
    assert "| msd | denoising | 2 | 1.1 | 1.1 |" in table



def test_escalation_summary_compares_policies_run_by_run(tmp_path, monkeypatch):
    bench = _bench_module("bench_escalation")
    monkeypatch.setattr(bench, "RESULTS", tmp_path)

    def rows(*runs, ladder=True):  # (seed, cost, flagged, escalation steps)
        return {"rows": [{**_row("denoising", cost, seed), "ood_steps": flagged,
                          **({"escalations": at} if ladder else
                             {"escalated_at": at[0] if at else None})}
                         for seed, cost, flagged, at in runs]}

    def write(name, doc):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))

    write("closed_loop_suite", {"rows": [_row("oracle", 2.0, 0), _row("oracle", 4.0, 1)]})
    write(bench.STRESS["warn"], rows((0, 20.0, 90, []), (1, 4.4, 1, [])))
    write(bench.STRESS["ladder"], rows((0, 3.0, 12, [19, 33]), (1, 4.4, 1, [])))
    # A file from before the ladder (one escalation step, no list) reads the same way.
    write(bench.STRESS["to 0.3"], rows((0, 2.6, 14, [19]), (1, 4.4, 1, []), ladder=False))
    write(bench.STRESS["sigma 0.3"], rows((0, 2.4, 0, []), (1, 6.0, 0, [])))
    write(bench.CHECK["ladder"][0], rows((0, 2.2, 0, []), (1, 16.0, 15, [24])))
    write(bench.WARN[0], rows((0, 2.2, 0, []), (1, 4.0, 12, [])))
    result = bench.main(["--out", str(tmp_path / "escalation.json")])
    stress = result["stress"]["summary"]
    assert stress["warn"] == {"runs": 2, "median": (10.0 + 1.1) / 2, "worst": 10.0}
    assert stress["ladder"]["worst"] == 1.5 and stress["sigma 0.3"]["worst"] == 1.5
    assert stress["to 0.1"]["runs"] == 0  # a missing file leaves its column empty
    run0 = result["stress"]["runs"][0]
    assert run0["ladder"] == {"total_cost": 3.0, "cost_ratio": 1.5, "ood_steps": 12,
                              "escalations": [19, 33]}
    assert run0["to 0.3"]["escalations"] == [19]
    check = result["check"]["ladder"]["summary"]
    assert check["runs"] == 2 and check["escalated_runs"] == 1 and check["max_flagged_steps"] == 15
    assert check["unescalated_cost_over_warn"] == {"min": 1.0, "max": 1.0}
    assert check["cost_over_warn"] == {"min": 1.0, "max": 4.0}
    escalated = [r for r in result["check"]["ladder"]["runs"] if r["escalations"]]
    assert escalated[0]["cost_over_warn"] == 4.0 and escalated[0]["warn_cost_ratio"] == 1.0
    table = (tmp_path / "escalation.md").read_text()
    assert table.count("| random | ") == 2 and "| 19, 33 |" in table

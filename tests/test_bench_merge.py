"""The closed-loop suite's documented ``--merge`` command (benchmarks are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _suite_module():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_suite_for_test",
                                                      BENCH / "bench_closed_loop_suite.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


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

"""``benchmarks/bench_devices.py`` runs end to end on a CPU-only machine: CPU figures, and a GPU
reported as not available (with the reason) rather than failing or being skipped silently."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_devices_for_test",
                                                      BENCH / "bench_devices.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_devices_side_by_side_on_cpu(tmp_path, capsys):
    bench = _module()
    out = tmp_path / "devices.json"
    doc = bench.main(["--env", "ddcontrol/MassSpringDamper-v0", "--train-steps", "6",
                      "--warmup", "2", "--closed-loop-steps", "25", "--trajectories", "40",
                      "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    cpu = doc["devices"]["cpu"]
    assert cpu["available"] and cpu["training"]["steps_per_s"] > 0
    track = cpu["tracking"]
    assert 0 < track["step_p50_ms"] <= track["step_p95_ms"] <= track["step_max_ms"]
    assert track["dt_ms"] == pytest.approx(100.0) and not track["failed"]
    cuda = doc["devices"]["cuda"]
    if not torch.cuda.is_available():
        assert not cuda["available"] and "CUDA is not available" in cuda["reason"]
    printed = capsys.readouterr().out
    assert "| cpu (" in printed and "| cuda" in printed


def test_devices_rejects_a_loop_shorter_than_the_horizon(tmp_path):
    bench = _module()
    with pytest.raises(SystemExit):
        bench.main(["--env", "ddcontrol/MassSpringDamper-v0", "--closed-loop-steps", "5",
                    "--out", str(tmp_path / "x.json")])

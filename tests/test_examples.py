"""Every example in ``examples/`` runs end to end on its quick budget and returns sane figures."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_example_is_listed_and_tested():
    scripts = {p.stem for p in EXAMPLES.glob("*.py")}
    assert scripts == {"track_in_closed_loop", "paper_finite_horizon", "bring_your_own_system",
                       "sphere_optimisation"}
    readme = (EXAMPLES / "README.md").read_text()
    for name in scripts:
        assert f"python examples/{name}.py" in readme
        assert load_example(name).__doc__.strip()


def test_track_in_closed_loop(tmp_path):
    r = load_example("track_in_closed_loop").run(quick=True, out=tmp_path)
    # Tracks at all: a diverging or saturated loop is far off the reference (zero input gives
    # about reference_rms).
    assert 0 < r["rms_error"] < 1.5 * r["reference_rms"]
    assert r["steps"] == 40 and r["mean_solve_ms"] > 0
    assert Path(r["plot"]).is_file() and Path(r["plot"]).stat().st_size > 1000


def test_paper_finite_horizon(tmp_path):
    results = load_example("paper_finite_horizon").run(quick=True, out=tmp_path)
    assert set(results) == {"pendulum", "unicycle"}
    for r in results.values():
        for key in ("predicted_cost", "replay_cost", "best_training_cost", "manifold_deviation"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        # Started at the best training window and lowered the model's cost from there.
        assert r["initial_cost"] == pytest.approx(r["best_training_cost"], rel=1e-3)
        assert r["predicted_cost"] < r["initial_cost"]
        assert r["horizon"] == 20 and r["iterations"] > 0
        assert Path(r["plot"]).is_file()
    assert (tmp_path / "results.json").is_file()


def test_bring_your_own_system(tmp_path):
    module = load_example("bring_your_own_system")
    r = module.run(quick=True, out=tmp_path)
    # The recorded episodes replay exactly in the env (same seed, same inputs).
    assert r["replay_check"] == 0.0
    for key in ("predicted_cost", "replay_cost", "zero_input_cost", "output_deviation",
                "closed_loop_cost", "closed_loop_zero_input_cost", "final_abs_theta_dot"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    # The plan lowers the model's cost, and the closed loop beats doing nothing.
    assert r["predicted_cost"] < r["initial_cost"]
    assert r["closed_loop_cost"] < r["closed_loop_zero_input_cost"]
    assert [Path(p).name for p in r["plots"]] == ["pendulum_plan.png", "pendulum_closed_loop.png"]
    assert all(Path(p).is_file() for p in r["plots"])


def test_sphere_optimisation(tmp_path):
    r = load_example("sphere_optimisation").run(quick=True, out=tmp_path)
    sigma = r["sigma"]
    for solver, s in r["projection"].items():
        # The exact projection: every start lands on x* = -c/|c| to solver tolerance.
        assert s["max_distance"] < 1e-5, solver
    for solver, s in r["empirical"].items():
        # The empirical denoiser's fixed points sit about sigma^2 inside the sphere.
        assert s["max_distance"] < 2 * sigma ** 2, solver
        assert s["mean_radius"] == pytest.approx(1 - sigma ** 2, abs=0.3 * sigma ** 2), solver
        assert s["max_cost_gap"] < 2 * sigma ** 2 * 3.0, solver
    assert (tmp_path / "sphere_results.json").is_file()

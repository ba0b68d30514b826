"""The README's Python quick tour runs as written (with its budgets shrunk to seconds)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
TOUR = "README quick tour"


def quick_tour() -> str:
    """The tour's code with its budgets shrunk (every replaced text must be in it)."""
    text = README.read_text()
    block = re.search(r"## Quick tour \(Python\)\n\n.*?```python\n(.*?)```", text, re.S)
    assert block, "README has no quick tour"
    code = block.group(1)
    for big, small in (("num_trajectories=1000", "num_trajectories=60"),
                       ("steps=3000", "steps=30, width=64, depth=1, progress=False, val_every=0"),
                       ("length=150", "length=30"),
                       ("from_model(model, problem, data)",
                        "from_model(model, problem, data, iterations=10, iterations_per_step=2)"),
                       ("print(compare(", "table = (compare("),
                       ("print(episode_metrics(", "rms = (episode_metrics(")):
        assert big in code, big
        code = code.replace(big, small)
    return code


def table_rows(table: str) -> dict[str, str]:
    """Controller -> status column of a ``ComparisonResult.to_markdown()`` table."""
    lines = table.splitlines()
    assert lines[0].startswith("| controller") and lines[0].rstrip().endswith("| status |")
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    return {c[0]: c[-1] for c in cells}


def test_quick_tour_runs_and_every_controller_succeeds():
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        exec(compile(quick_tour(), TOUR, "exec"), namespace)  # noqa: S102
    # The tour uses the current vocabulary: nothing it calls warns about a deprecated spelling.
    assert not [str(w.message) for w in caught
                if issubclass(w.category, DeprecationWarning) and w.filename == TOUR]
    assert math.isfinite(namespace["rms"]) and not namespace["episode"].failed
    assert len(namespace["episode"].outputs) == 30
    # compare() writes a row for a controller that crashed too: every status must be "ok".
    rows = table_rows(namespace["table"])
    assert list(rows) == ["denoising", "deepc", "lqr"]
    assert all(status == "ok" for status in rows.values()), rows


def test_a_failed_row_fails_the_check():
    """The table check above catches a controller that fails (it cannot pass vacuously)."""
    from ddcontrol.evaluate import compare
    from ddcontrol.tracking import TrackingProblem, make_reference

    class Crashing:
        name, last_solve_time_s = "crashing", 0.0

        def reset(self, observation, info=None):
            pass

        def act(self, observation, info=None):
            raise RuntimeError("boom")

    env_id = "ddcontrol/MassSpringDamper-v0"
    problem = TrackingProblem.for_env(env_id, make_reference("step", env_id, length=6), 4)
    table = compare(problem, {"crashing": Crashing}, progress=False).to_markdown()
    rows = table_rows(table)
    assert list(rows) == ["crashing"] and rows["crashing"].startswith("FAILED")

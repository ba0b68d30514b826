"""The layers' seams: environment lookup in ``envs``, a torch-free problem layer, lazy imports."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MSD = "ddcontrol/MassSpringDamper-v0"


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (nothing imported yet) from the repository root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_baselines_and_the_problem_do_not_load_torch():
    code = (
        "import sys\n"
        "import ddcontrol.baselines\n"
        "assert 'torch' not in sys.modules, 'ddcontrol.baselines loaded torch'\n"
        "from ddcontrol.tracking import TrackingProblem, make_reference\n"
        "import numpy as np\n"
        "ref = make_reference('step', 'ddcontrol/MassSpringDamper-v0', 20)\n"
        "prob = TrackingProblem.for_env('ddcontrol/MassSpringDamper-v0', ref, 10)\n"
        "c = prob.cost(np.zeros((3, 10, 1)), np.zeros((3, 10, 1)))\n"
        "assert c.shape == (3,), c.shape\n"
        "assert 'torch' not in sys.modules, 'the tracking problem loaded torch'\n"
        "print('ok')\n")
    proc = run_python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_envs_import_nothing_of_ddcontrol():
    proc = run_python("import sys, envs, envs.registry\n"
                      "bad = sorted(m for m in sys.modules if m.startswith('ddcontrol'))\n"
                      "assert not bad, bad\n"
                      "print(envs.make_dynamics('ddcontrol/MassSpringDamper-v0').output_dim)\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr[-2000:]


def test_score_package_loads_the_training_loop_on_first_use():
    proc = run_python(
        "import sys, ddcontrol.score as s\n"
        "assert 'ddcontrol.score.train' not in sys.modules\n"
        "from ddcontrol.score.train import TrainConfig\n"
        "from ddcontrol.score import train\n"
        "assert callable(train) and not isinstance(train, type(sys)), train\n"
        "assert s.TrainConfig is TrainConfig and s.train is train\n"
        "print('ok')\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_lazy_names_resolve_to_the_defining_modules():
    import ddcontrol.solvers as solvers
    import ddcontrol.tracking as tracking
    from ddcontrol.solvers.conditioned import ConditionedDRGD
    from ddcontrol.tracking import problem, tracker, window_cost

    assert solvers.ConditionedDRGD is ConditionedDRGD and "ConditionedDRGD" in solvers.__all__
    assert tracking.DenoisingTracker is tracker.DenoisingTracker
    assert tracking.WindowCost is window_cost.WindowCost is problem.WindowCost
    assert problem.FramedWindowCost is window_cost.FramedWindowCost
    for name in tracking.__all__:
        assert getattr(tracking, name) is not None
    with pytest.raises(AttributeError):
        tracking.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError):
        problem.NoSuchThing  # noqa: B018


def test_window_cost_matches_the_problem_cost():
    import torch

    from ddcontrol.data import collect
    from ddcontrol.tracking import TrackingProblem, make_reference

    data = collect(MSD, 5, 12, seed=0, noise=False)
    ref = make_reference("sine", MSD, 12)
    prob = TrackingProblem.for_env(MSD, ref, 8, Q=2.0, R=0.1)
    cost = prob.window_cost(data.normalizer, t_ini=4)
    assert cost.mean.dtype == torch.float32
    x = torch.as_tensor(data.windows(12, normalized=True)[:3], dtype=torch.float32)
    w = data.normalizer.denormalize(x.numpy())
    np.testing.assert_allclose(cost(x).numpy(), prob.cost(w[:, 4:, :1], w[:, 4:, 1:]), rtol=1e-4)


@pytest.mark.parametrize("channels", [(0, 1), (1, 2, 3), (0, 2), (3, 1)])
def test_window_cost_gradient_for_consecutive_and_scattered_channels(channels):
    """Consecutive tracked channels are taken as a slice, others by index: the cost equals the
    problem's and the analytic gradient equals autograd's either way."""
    import torch

    from ddcontrol.data import collect
    from ddcontrol.tracking import TrackingProblem
    from ddcontrol.tracking.reference import Reference

    uni = "ddcontrol/Unicycle-v0"
    data = collect(uni, 4, 12, seed=0, noise=False)
    rng = np.random.default_rng(0)
    ref = Reference(rng.normal(size=(20, len(channels))), channels=channels, output_dim=5,
                    dt=data.dt)
    prob = TrackingProblem.for_env(uni, ref, 8, Q=np.diag(np.arange(1.0, len(channels) + 1)),
                                   R=0.1)
    cost = prob.window_cost(data.normalizer, t_ini=4, dtype=torch.float64)
    assert isinstance(cost.y_idx, slice) == (list(channels) == list(
        range(channels[0], channels[-1] + 1)))
    x = torch.as_tensor(data.windows(12, normalized=True)[:3], dtype=torch.float64)
    w = data.normalizer.denormalize(x.numpy())
    np.testing.assert_allclose(cost(x).numpy(),
                               prob.cost(w[:, 4:, :2], w[:, 4:, 2:]), rtol=1e-9)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(cost(xg).sum(), xg)
    torch.testing.assert_close(cost.egrad(x), auto)
    f, g = cost.value_and_egrad(x)
    torch.testing.assert_close(f, cost(x), rtol=1e-12, atol=0)
    torch.testing.assert_close(g, auto)


def test_problem_evaluates_a_cost_with_value_and_egrad_in_one_call():
    """The tracker's costs (window cost, its framed form, the past penalty) give cost and
    gradient in one call; Problem uses it, and both equal the separate evaluations."""
    import torch

    from ddcontrol.data import collect
    from ddcontrol.manifold import BehaviorManifold
    from ddcontrol.solvers.problem import Problem
    from ddcontrol.symmetry import symmetry_for
    from ddcontrol.tracking import TrackingProblem
    from ddcontrol.tracking.conditioning import PastPenalty, conditioned_cost
    from ddcontrol.tracking.reference import Reference
    from ddcontrol.tracking.window_cost import FramedWindowCost

    uni = "ddcontrol/Unicycle-v0"
    data = collect(uni, 4, 12, seed=0, noise=False)
    rng = np.random.default_rng(1)
    ref = Reference(rng.normal(size=(20, 2)), channels=(0, 1), output_dim=5, dt=data.dt)
    prob = TrackingProblem.for_env(uni, ref, 8, Q=1.0, R=0.1)
    sym = symmetry_for(data.metadata, 2)
    framed = FramedWindowCost(prob.window_cost(data.normalizer, t_ini=4, dtype=torch.float64),
                              sym, data.normalizer)
    framed.set_frame(np.array([1.0, -2.0, 0.7]))
    x = torch.as_tensor(data.windows(12, normalized=True)[:3], dtype=torch.float64)
    measured = x[0, :5].clone()
    measured[0, :2] = float("nan")
    f, g = conditioned_cost(framed, measured + 0.1, 3.0)
    assert isinstance(f, PastPenalty)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(f(xg).sum(), xg)
    torch.testing.assert_close(g(x), auto)
    calls: list[str] = []
    fused = f.value_and_egrad
    f.value_and_egrad = lambda z: calls.append("fused") or fused(z)
    problem = Problem(BehaviorManifold(lambda z, s: z, 0.1), f, g)
    cost, grad = problem.cost_and_egrad(x)
    assert calls == ["fused"]
    torch.testing.assert_close(cost, f(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, auto)
    # Another gradient than the cost's own is used as given.
    other = Problem(BehaviorManifold(lambda z, s: z, 0.1), f, lambda z: torch.zeros_like(z))
    assert float(other.cost_and_egrad(x)[1].abs().max()) == 0.0 and calls == ["fused"]


def test_make_dynamics_lives_in_envs_and_the_old_names_still_work():
    import envs
    import envs.registry
    from ddcontrol.data import make_dynamics as data_make_dynamics
    from ddcontrol.errors import UnknownNameError
    from envs.errors import EnvError

    dyn = envs.registry.make_dynamics("ddcontrol/Unicycle-v0", {"outputs": ["x", "y"]})
    assert tuple(dyn.output_names) == ("x", "y")
    assert envs.make_dynamics is envs.registry.make_dynamics
    old = data_make_dynamics("ddcontrol/Unicycle-v0", {"outputs": ["x", "y"]})
    assert type(old) is type(dyn) and tuple(old.output_names) == ("x", "y")
    with pytest.raises(envs.registry.UnknownEnvironmentError, match="ddcontrol/Nope-v0"):
        envs.registry.make_dynamics("ddcontrol/Nope-v0")
    assert issubclass(envs.registry.UnknownEnvironmentError, EnvError)
    # The data-layer name keeps its old exception type.
    with pytest.raises(UnknownNameError, match="ddcontrol/Nope-v0"):
        data_make_dynamics("ddcontrol/Nope-v0")
    with pytest.raises(envs.registry.UnknownEnvironmentError, match="no batched"):
        envs.registry.make_dynamics("Pendulum-v1")


@pytest.mark.parametrize("package", ["tracking", "baselines", "evaluate", "manifold.py",
                                     "symmetry.py", "trust.py"])
def test_environment_lookup_does_not_go_through_the_data_layer(package):
    path = ROOT / "ddcontrol" / package
    files = [path] if path.suffix == ".py" else sorted(path.glob("*.py"))
    assert files
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddcontrol.data"):
                names = {a.name for a in node.names}
                assert "make_dynamics" not in names, f"{f.name} imports make_dynamics from data"

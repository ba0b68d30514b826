"""Side-by-side comparison of controllers in closed loop on the same problems.

Every controller runs in the true environment on the same reference, initial states (seeds) and
noise; the table reports RMS tracking error, total cost, cost ratio to the oracle, input energy,
bound violations and solve times. A controller that cannot be built, raises, or returns NaN is
reported as failed and the run goes on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddcontrol.data.gym_env import EnvLike, env_label, env_spec, make_env
from ddcontrol.errors import ConfigurationError
from ddcontrol.evaluate.closed_loop import (
    Episode,
    Policy,
    episode_metrics,
    problem_env,
    run_episode,
)
from ddcontrol.evaluate.plots import plot_series, plot_tracking
from ddcontrol.tracking.problem import TrackingProblem
from ddcontrol.tracking.reference import Reference

COLUMNS = ("controller", "rms_error", "total_cost", "cost_ratio", "input_energy",
           "bound_violations", "mean_solve_ms", "max_solve_ms", "failed")


@dataclass
class ComparisonResult:
    """Outcome of :func:`compare`.

    Attributes
    ----------
    rows : list of dict
        One row per controller (metrics averaged over seeds; ``cost_ratio`` is the mean over
        seeds of total cost / the oracle's total cost), keys ``COLUMNS`` plus ``error``.
    episodes : dict of name -> list of Episode
        Every run, per seed.
    """

    env_id: str
    reference: Reference
    seeds: list[int]
    score_from: int
    rows: list[dict[str, Any]]
    episodes: dict[str, list[Episode]] = field(repr=False)
    output_names: list[str] = field(default_factory=list)

    def row(self, name: str) -> dict[str, Any]:
        """The table row of controller ``name``."""
        for r in self.rows:
            if r["controller"] == name:
                return r
        raise KeyError(name)

    def to_markdown(self) -> str:
        """The table as Markdown (one row per controller)."""
        head = ["controller", "RMS error", "total cost", "cost / oracle", "input energy",
                "bound viol.", "OOD steps", "mean solve [ms]", "max solve [ms]", "status"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            status = "ok" if not r["failed"] else f"FAILED: {str(r.get('error'))[:80]}"
            lines.append("| " + " | ".join([
                r["controller"], _fmt(r["rms_error"]), _fmt(r["total_cost"]),
                _fmt(r["cost_ratio"]), _fmt(r["input_energy"]), str(r["bound_violations"]),
                "-" if r.get("ood_steps") is None else str(r["ood_steps"]),
                _fmt(r["mean_solve_ms"]), _fmt(r["max_solve_ms"]), status]) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"env_id": self.env_id, "reference": self.reference.name,
                "reference_channels": list(self.reference.channels), "seeds": self.seeds,
                "score_from": self.score_from, "steps": self.reference.steps,
                "table": [{k: _jsonable(v) for k, v in r.items()} for r in self.rows]}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, np.generic):
        return v.item()
    return v


def compare(problem: TrackingProblem | EnvLike, controllers: Mapping[str, Callable[[], Policy]],
            reference: Reference | None = None, *, Q: Any = None, R: Any = None,
            seeds: Sequence[int] = (0,), score_from: int | None = None,
            env_kwargs: dict[str, Any] | None = None,
            initial_states: Sequence[np.ndarray] | None = None,
            progress: bool = True, env: EnvLike | None = None,
            paced: bool = False) -> ComparisonResult:
    """Run every controller in closed loop for the reference's length in samples, per seed.

    ``compare(problem, controllers)``: the :class:`~ddcontrol.tracking.problem.TrackingProblem`
    brings the environment, the reference (its length is the episode length), Q, R and T_ini
    (the warm-up, ``score_from``). The older form ``compare(env_id, controllers, reference,
    Q=..., R=...)`` gives them separately.

    Parameters
    ----------
    problem : TrackingProblem, or str, gymnasium.Env or callable
        The problem; or (older form) a registered id, an ``Env`` instance or a factory (any env
        with 1-D ``Box`` spaces; see :func:`~ddcontrol.evaluate.closed_loop.run_episode` for
        how episodes may end early).
    controllers : mapping name -> factory
        Each factory builds the controller (called once; the controller is reset per seed).
        A factory that raises marks that controller failed ("not applicable", ...).
    reference : Reference
        Older form only: targets for the whole episode; its length is the episode length.
    Q, R : weights of the reported cost (older form only).
    seeds : environment seeds (initial state and noise); one episode per seed.
    score_from : the common warm-up (default: the problem's ``t_ini``, else 0): for samples
        ``k < score_from`` every controller's input is replaced by zero (the data-driven ones
        measure their T_ini past meanwhile, applying zero themselves), and the metrics count
        samples ``k >= score_from`` only.
    env_kwargs : older form only (a problem holds its own).
    initial_states : optional, one state per seed, instead of the env's random start.
    env : with a problem: the environment to run in, instead of the problem's ``env_id`` (an
        ``Env`` instance or a factory, e.g. for a problem built from measured data).
    paced : run every episode against the wall clock, one sample per sampling time
        (:func:`~ddcontrol.evaluate.closed_loop.run_episode`).

    Raises
    ------
    ConfigurationError
        A problem and any of reference, Q, R, env_kwargs; without a problem, a missing one.
    """
    if isinstance(problem, TrackingProblem):
        env_id, env_kwargs, reference, Q, R = _problem_terms(problem, env, reference, Q, R,
                                                             env_kwargs)
        if score_from is None:
            score_from = problem.t_ini or 0
    else:
        if env is not None:
            raise ConfigurationError("compare: env= goes with a TrackingProblem; the older form "
                                     "takes the environment as its first argument")
        missing = [k for k, v in (("reference", reference), ("Q", Q), ("R", R)) if v is None]
        if missing:
            raise ConfigurationError(f"compare: pass a TrackingProblem, or {', '.join(missing)} "
                                     "with the environment")
        env_id = problem
        if score_from is None:
            score_from = 0
    probe, owned = make_env(env_id, env_kwargs)
    dyn = env_spec(probe, env_label(env_id, probe))
    if owned:
        probe.close()
    steps = reference.steps
    episodes: dict[str, list[Episode]] = {}
    metrics: dict[str, list[dict[str, Any]]] = {}
    names = list(controllers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) * len(seeds), desc="closed loop", unit="episode")
    for name in names:
        try:
            ctrl = controllers[name]()
            if getattr(ctrl, "name", None) != name:
                try:
                    ctrl.name = name
                except AttributeError:
                    pass
            build_error = None
        except Exception as exc:  # noqa: BLE001 - reported in the table
            ctrl, build_error = None, f"{type(exc).__name__}: {exc}"
        episodes[name], metrics[name] = [], []
        for i, seed in enumerate(seeds):
            if ctrl is None:
                ep = Episode(name, np.zeros((0, dyn.output_dim)), np.zeros((0, dyn.input_dim)),
                             np.zeros((0, dyn.input_dim)), np.zeros((0, 0)), np.zeros(0),
                             build_error)
            else:
                x0 = None if initial_states is None else initial_states[i]
                ep = run_episode(env_id, ctrl, steps, seed=seed, initial_state=x0,
                                 env_kwargs=env_kwargs, warmup=score_from, paced=paced)
                ep.name = name
            ep.metrics = episode_metrics(ep, reference, Q, R, input_low=dyn.input_low,
                                         input_high=dyn.input_high, score_from=score_from)
            episodes[name].append(ep)
            metrics[name].append(ep.metrics)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    rows = []
    for name in names:
        ms = metrics[name]
        row: dict[str, Any] = {"controller": name}
        for key in ("rms_error", "total_cost", "input_energy", "mean_solve_ms"):
            row[key] = float(np.mean([m[key] for m in ms]))
        row["max_solve_ms"] = float(np.max([m["max_solve_ms"] for m in ms]))
        row["bound_violations"] = int(np.sum([m["bound_violations"] for m in ms]))
        ood = [m.get("ood_steps") for m in ms if m.get("ood_steps") is not None]
        row["ood_steps"] = int(np.sum(ood)) if ood else None  # steps flagged out of the data
        # Episodes whose tracker escalated to its conservative projection (on_ood="escalate").
        row["escalated"] = sum(m.get("escalated_at") is not None for m in ms)
        row["failed"] = any(m["failed"] for m in ms)
        row["error"] = next((m["error"] for m in ms if m["error"]), None)
        if "oracle" in metrics and not any(m["failed"] for m in metrics["oracle"]):
            ratios = [m["total_cost"] / max(o["total_cost"], 1e-300)
                      for m, o in zip(ms, metrics["oracle"])]
            row["cost_ratio"] = float(np.mean(ratios))
        else:
            row["cost_ratio"] = float("nan")
        rows.append(row)
    return ComparisonResult(dyn.label, reference, list(seeds), score_from, rows, episodes,
                            list(dyn.output_names))


def _problem_terms(problem: TrackingProblem, env: EnvLike | None, reference: Any, Q: Any,
                   R: Any, env_kwargs: dict[str, Any] | None
                   ) -> tuple[EnvLike, dict[str, Any] | None, Reference, Any, Any]:
    """Environment, its keywords, reference, Q and R of ``compare(problem, ...)``."""
    extra = [k for k, v in (("reference", reference), ("Q", Q), ("R", R),
                            ("env_kwargs", env_kwargs)) if v is not None]
    if extra:
        raise ConfigurationError(f"compare: the TrackingProblem already holds {', '.join(extra)}"
                                 "; pass the problem alone")
    if not isinstance(problem.reference, Reference):
        raise ConfigurationError("compare needs the problem's reference as a Reference or an "
                                 "array of targets (its length is the episode's), not a function "
                                 "of time")
    env_id, env_kwargs = problem_env(problem, env, "compare")
    return env_id, env_kwargs, problem.reference, problem.Q, problem.R


def write_comparison(result: ComparisonResult, out: str | Path, *, seed_index: int = 0,
                     extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``table.md`` and the plots (outputs vs reference for every
    controller, inputs, solve time per step) of ``result`` into folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref = result.reference
    names = result.output_names or [f"y{c}" for c in range(ref.output_dim)]
    names_y = [names[c] for c in ref.channels]
    t = np.arange(ref.steps) * ref.dt
    ok = {n: eps[seed_index] for n, eps in result.episodes.items() if len(eps[seed_index].outputs)}
    paths = {
        "outputs": plot_tracking(t, ref.values, {n: ref.select(e.outputs) for n, e in ok.items()},
                                 out / "outputs.png", names_y,
                                 title=f"{result.env_id}: '{ref.name}' reference, seed "
                                       f"{result.seeds[seed_index]}",
                                 shade_until=result.score_from * ref.dt or None,
                                 markers={n: e.flagged_steps for n, e in ok.items()
                                          if e.flagged_steps}),
        "inputs": plot_series({n: e.inputs for n, e in ok.items()}, out / "inputs.png",
                              "step", "applied input", title="inputs"),
        "solve_times": plot_series({n: 1e3 * e.solve_times for n, e in ok.items()},
                                   out / "solve_times.png", "step", "solve time [ms]",
                                   title="per-step solve time", logy=True),
    }
    table = result.to_markdown()
    (out / "table.md").write_text(table + "\n")
    payload = {**result.to_dict(), **(extra or {}),
               "episodes": {n: [{"outputs": e.outputs.tolist(), "inputs": e.inputs.tolist(),
                                 "solve_times_s": e.solve_times.tolist(), "error": e.error,
                                 "flagged_steps": e.flagged_steps}
                                for e in eps] for n, eps in result.episodes.items()}}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_jsonable))
    paths["table"] = out / "table.md"
    paths["results"] = out / "results.json"
    return paths

"""Tracker settings per system, in one place.

The benchmarks, ``ddcontrol track``, ``compare`` and ``demo``, and in Python
:meth:`DenoisingTracker.from_model <ddcontrol.tracking.tracker.DenoisingTracker.from_model>` and
``make_controller``, take a system's settings from :func:`system_defaults` so that a user gets,
without flags, what was measured to work on it (a per-step time budget included). A system not
listed gets :data:`GENERIC`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SystemDefaults", "GENERIC", "SYSTEM_DEFAULTS", "system_defaults"]


@dataclass(frozen=True)
class SystemDefaults:
    """Closed-loop tracking settings of one system.

    Attributes
    ----------
    window : int
        Model window L = T_ini + N_h, steps.
    t_ini : int
        Measured past that conditions each plan, steps.
    sigma : float or "auto"
        Projection noise level (normalised units). ``"auto"`` (every system's default): the σ
        that training selected from held-out data and stored in the checkpoint
        (:data:`ddcontrol.score.sigma.AUTO_CRITERION`), resolved when a tracker is built from
        a model (:meth:`resolve_sigma`). Over the σ sweep of ``benchmarks/bench_sigma.py``
        (4 systems x 3 seeds, σ 0.02-0.3, 3 references each, iteration-limited) it cost at most
        1.039x the best σ of each model, where the hand-tuned per-system values it replaced
        cost up to 1.087x (double pendulum, 0.05), and the best fixed σ per system chosen in
        hindsight up to 1.013x.
    Q, R : float
        Output and input weights of the tracking cost.
    solver : str
        Tracker solver name.
    iterations_per_step : int
        Iterations of each warm receding-horizon solve. 20 except on the unicycle, whose closed
        loop needs few: over its 9 suite runs (3 seeds x 3 references, 200 steps) 5 iterations
        cost 1.2-8.3 % more than 20 (median 2.0 %; 8 iterations: -0.4 to +2.1 %) at a third of
        the time per step; 3 cost 10 % more on the figure of eight (seed 0), 2 cost 39 %, and
        1 (what a 0.45 dt budget leaves on 172 of 200 steps) 14-16x. The double pendulum keeps
        20: 10 cost 0.98-1.20x as much over its 9 suite runs (median 1.015x; iteration-limited,
        session 18), and 20 already fit its budget (p95 at most 0.45 dt).
    jacobian_every : int
        Warm solves compute the pinned coordinates' Jacobian rows every this many iterations
        and reuse them and the inverse of their small block in between
        (:class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`, ``chord="reused"``). Measured
        per system: on the unicycle 5 gives the same closed loop as 1 (seed 0, three
        references: 1.3123x / 0.854x / 1.6746x the oracle against 1.3122x / 0.854x / 1.6744x,
        reusing the inverse alone with exact directions; reusing the rows too cost 0.9992x to
        1.0013x that over the 9 suite runs, at one backward pass per iteration instead of two)
        at about half the time per iteration; on the double pendulum it does not (seed 0,
        swing: 1.66x against 1.04x; 3 with the rows reused, over its 9 suite runs: 1.05-1.49x
        the cost of 1, median 1.13x, iteration-limited), so the generic default is 1.
    num_starts : int
        Cold starts (at ``reset``, and in :meth:`plan` without a warm start) solved at once
        from the best candidate windows, the best kept. 8 rather than 1 moved the unicycle's
        worst closed loops from 1.31x / 1.67x the oracle to 1.08x / 1.04x (figure of eight and
        random path, seed 0) and the double pendulum's seed-1 runs from 1.41 / 1.51 / 1.37x to
        1.39 / 1.34 / 1.19x; only the reset's one-off cold start pays for it.
    refine_iterations : int
        Gauss-Newton iterations that pull a finite-horizon plan's outputs onto the manifold for
        its final inputs (:meth:`DenoisingTracker.plan`; receding-horizon steps skip it), at
        the plan's σ. 30 on every system: on the double pendulum's demo plan 30 rather than 8
        brought the prediction's deviation from the replay from 0.21 to 0.026 (same inputs);
        with 30 at the plan's σ, ``bench_conditioned_prediction.py`` gave a median deviation of
        0.012 on the mass-spring-damper and 0.010 on the double pendulum.
    refine_sigma : float or None
        σ at which that refinement ends (normalised units); None: the plan's σ. Which is
        better depends on the model: at the plan's σ the mass-spring-damper's plans deviated
        0.012 (median; 0.078 refined at 0.02), the unicycle's 0.047 (0.036 refined at 0.02).
    refine_sigma_start : float or None
        σ at which that refinement starts, if above the plan's (normalised units; None: at the
        plan's σ); it anneals to ``refine_sigma`` over the first half of the iterations, with
        ``damping`` as its Tikhonov damping (the tracker's ``refine_damping``). A solve leaves
        outputs that the cost pulled towards the reference, often beyond the data, where the
        learned pull at a small σ is weak: begun at 0.3, the refinement is first pulled towards
        the data. On ``bench_conditioned_prediction.py``'s plans from measured pasts (begun at
        the plan's σ with damping 1e-3 -> now, median / p90 / worst deviation): double
        pendulum 0.011 / 0.036 / 0.239 -> 0.0074 / 0.025 / 0.076, unicycle 0.036 / 0.092 /
        0.104 -> 0.035 / 0.087 / 0.112, mass-spring-damper 0.0052 / 0.010 / 0.021 -> 0.0055 /
        0.0082 / 0.015. With 8 iterations it is worse than none (4 left at the final σ).
    damping : float
        Tikhonov damping of the plan's least-squares solves for the pinned measured past
        (:class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`). A smaller one fits the
        past's weakly observable directions (the mass-spring-damper's velocity, seen through
        5 position samples) instead of shrinking them: see the linear systems' entries.
    step_time_fraction : float or None
        Per-step time budget of the tracker's ``act()`` as a fraction of the sampling time
        (None: no budget, every warm step runs ``iterations_per_step``).
    reference : str
        The system's usual reference family (a label for users and scripts; the demo's own
        reference and start are in :data:`ddcontrol.cli.demo.PRESETS`).
    excitation : str, excitation_params : dict
        Data design for training data.
    sigma_rule : str
        How ``sigma="auto"`` picks σ from the held-out errors on its grid
        (:func:`ddcontrol.score.sigma.pick_sigma`): ``"robust"`` (the least worst-of-three
        neighbours; ties to the larger σ) or ``"interior"`` (the same, never the grid's end).
        Used by the selection at the end of training and by ``resolve_sigma`` on a stored one.
    train_options : dict
        :class:`~ddcontrol.score.train.TrainConfig` fields of this system's models that differ
        from the generic training defaults (applied by ``ddcontrol demo`` and the benchmarks'
        training; ``ddcontrol train`` takes them as flags, e.g. ``--sigma-min 0.015
        --sigma-max 0.5``). See the double pendulum's entry.
    """

    window: int = 30
    t_ini: int = 5
    sigma: float | str = "auto"
    Q: float = 1.0
    R: float = 0.01
    solver: str = "nesterov"
    iterations_per_step: int = 20
    jacobian_every: int = 1
    num_starts: int = 8
    refine_iterations: int = 30
    refine_sigma: float | None = None
    refine_sigma_start: float | None = 0.3
    damping: float = 0.05
    step_time_fraction: float | None = 0.45
    reference: str = "random"
    excitation: str = "mixed"
    excitation_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    sigma_rule: str = "robust"
    train_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def horizon(self) -> int:
        """Planning horizon N_h = window − T_ini, steps."""
        return self.window - self.t_ini

    def resolve_sigma(self, model: Any, dataset: Any = None) -> float:
        """σ (normalised units) for a tracker on ``model``: :attr:`sigma` if a number, else the
        model's stored selection (or one made now from ``dataset``'s held-out trajectories;
        :func:`ddcontrol.score.sigma.resolve_sigma`)."""
        if not isinstance(self.sigma, str):
            return float(self.sigma)
        from ddcontrol.score.sigma import resolve_sigma

        return resolve_sigma(model, dataset, t_ini=self.t_ini
                             if 0 < self.t_ini < model.window_length else None)

    def refine_options(self) -> dict[str, Any]:
        """The refinement's keyword arguments of
        :class:`~ddcontrol.tracking.tracker.DenoisingTracker` (``refine_*``)."""
        return {"refine_iterations": self.refine_iterations, "refine_sigma": self.refine_sigma,
                "refine_sigma_start": self.refine_sigma_start, "refine_damping": self.damping}

    def tracker_options(self, dt: float) -> dict[str, Any]:
        """Keyword arguments of :class:`~ddcontrol.tracking.tracker.DenoisingTracker`."""
        return {"sigma": self.sigma, "solver": self.solver,
                "iterations_per_step": self.iterations_per_step,
                "jacobian_every": self.jacobian_every, "num_starts": self.num_starts,
                **self.refine_options(), "damping": self.damping,
                "step_time_budget": None if self.step_time_fraction is None
                else self.step_time_fraction * dt}


GENERIC = SystemDefaults()

SYSTEM_DEFAULTS: dict[str, SystemDefaults] = {
    # σ "auto" on every system (the class docstring). Hand-tuned values before it, for the
    # record: mass-spring-damper 0.2, coupled masses 0.05, double pendulum 0.05, unicycle 0.2.
    # Damping 0.01 on the linear systems: finite-horizon plans from a measured past
    # (bench_conditioned_prediction.py, 32 plans, σ 0.3) cost 1.026x the exact optimum at the
    # median on the mass-spring-damper against 1.354x at 0.05 (1.044x at 0.003), and 1.046x
    # against 1.097x on the coupled masses.
    # The linear systems train on the noise levels the planner uses (0.015-0.5, as the double
    # pendulum) and pick σ by the "interior" rule: their held-out criterion is flat from 0.15
    # to 0.3, where the robust rule takes the grid's end. Both together (3 seeds x 3
    # references, 200 steps, the per-step budget, closed_loop_suite.json): median / worst
    # 1.0075x / 1.014x the oracle on the mass-spring-damper and 1.012x / 1.040x on the coupled
    # masses, against 1.038x / 1.136x and 1.026x / 1.042x with the generic range and the robust
    # rule (the new range with the robust rule: 1.007x / 1.018x and 1.023x / 1.191x).
    # Finite-horizon plans from a measured past (32 plans, 8,000 steps): median 1.003x and
    # 1.008x the exact optimum (σ 0.2) against 1.016x and 1.040x (σ 0.3, new range) and 1.026x
    # and 1.046x (generic range).
    "ddcontrol/MassSpringDamper-v0": SystemDefaults(
        window=30, t_ini=5, R=0.01, damping=0.01, reference="random", excitation="gaussian",
        excitation_params={"bandwidth": 1.0, "amplitude": 0.4}, sigma_rule="interior",
        train_options={"sigma_min": 0.015, "sigma_max": 0.5}),
    "ddcontrol/CoupledMasses-v0": SystemDefaults(
        window=30, t_ini=6, R=0.01, damping=0.01, reference="random", excitation="gaussian",
        excitation_params={"bandwidth": 1.0, "amplitude": 0.4}, sigma_rule="interior",
        train_options={"sigma_min": 0.015, "sigma_max": 0.5}),
    # Training noise over 0.015-0.5 instead of 0.01-1.0: the planner uses σ 0.02-0.3, and on
    # this system the narrower range spends the training where it is used. Closed-loop suite
    # (9 runs, 8,000 steps, the per-step budget): median / worst 1.049x / 1.231x the oracle
    # against 1.129x / 1.331x with the generic range, same code; iteration-limited 1.04x /
    # 1.09x against 1.06x / 1.16x. Time to quality (seed 0, 2 threads): held-out conditioned
    # prediction error 0.029 after 4,000 steps in 2.4 min against 0.032 after 8,000 in 4.0
    # min. Not on the unicycle: its canonical windows need the large σ (held-out error
    # 0.41-0.44 at every σ after 8,000 steps over 0.015-0.5, against 0.12-0.30, and closed
    # loops 12-26x the oracle).
    "ddcontrol/DoublePendulum-v0": SystemDefaults(
        window=40, t_ini=10, R=0.1, reference="swing", excitation="mixed",
        train_options={"sigma_min": 0.015, "sigma_max": 0.5}),
    # Smooth Gaussian accelerations fill the input space (held levels and PRBS do not); the
    # model learns canonical windows (planar symmetry), so data near the origin cover any pose.
    # A large σ keeps plans near the data's speeds and turn rates: on the figure of eight (80
    # steps, seed 0, iteration-limited) σ 0.05 / 0.1 / 0.2 gave 5.3x / 1.65x / 1.29x the
    # oracle's cost; at 0.05 the plan drove backwards at speeds the data never showed.
    # 5 warm iterations per step (the class docstring): 13-20 ms (p50) against dt = 50 ms on
    # 2 CPU cores (bench_realtime.py, 9 runs; 20 iterations took about 100 ms). The budget is a
    # cap at 0.9 dt, not the others' 0.45 dt: the cap never cut an iteration (the same costs
    # as iteration-limited, every step within 0.6 dt), while 0.45 dt, under load, cut some
    # steps to 2-4 iterations and cost up to 9 % more (realtime_unicycle_budget045.json: 8 of
    # 9 runs within 1 %, the figure of eight at seed 0 +9.2 %; before this session's cheaper
    # iterations it left 1 iteration and cost 14-16x). Quality first.
    "ddcontrol/Unicycle-v0": SystemDefaults(
        window=45, t_ini=5, R=0.001, reference="figure-eight", excitation="gaussian",
        excitation_params={"bandwidth": 0.2, "amplitude": 0.6}, step_time_fraction=0.9,
        iterations_per_step=5, jacobian_every=5, refine_sigma=0.02),
}


def system_defaults(env_id: str | None) -> SystemDefaults:
    """The settings of ``env_id`` (:data:`GENERIC` for a system without its own)."""
    return SYSTEM_DEFAULTS.get(env_id or "", GENERIC)

"""Riemannian solvers on the behaviour manifold: DRGD, DLF and momentum DRGD (batched), and
guided diffusion sampling on the same denoiser."""

from ddcontrol.solvers.accelerated import AcceleratedDRGD
from ddcontrol.solvers.base import Solver
from ddcontrol.solvers.conditioned import ConditionedDRGD
from ddcontrol.solvers.dlf import DLF
from ddcontrol.solvers.drgd import DRGD
from ddcontrol.solvers.guided import GuidedDiffusion, guided_plan
from ddcontrol.solvers.problem import Problem
from ddcontrol.solvers.result import SolverResult

__all__ = ["Problem", "Solver", "SolverResult", "DRGD", "DLF", "AcceleratedDRGD",
           "ConditionedDRGD", "GuidedDiffusion", "guided_plan"]

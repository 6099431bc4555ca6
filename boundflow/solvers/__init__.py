"""Solver back end (MILP / LP / mixed-integer bilinear programs).

* :mod:`~boundflow.solvers.program` — solver-independent programs with rigorous LP bounds;
* :mod:`~boundflow.solvers.backends` — HiGHS (LP, MILP) and SCIP (bilinear) back ends;
* :mod:`~boundflow.solvers.executor` — serial, process-pool and Ray execution of many solves;
* :mod:`~boundflow.solvers.network` — network encodings, ``compute_bounds(method="lp"|"milp")``;
* :mod:`~boundflow.solvers.training_step` — one SGD step as a program (MIBP-Cert).
"""

from boundflow.solvers.backends import MODES, make_solver
from boundflow.solvers.executor import make_executor, minimize_all
from boundflow.solvers.network import network_bounds
from boundflow.solvers.program import Program
from boundflow.solvers.training_step import build_step, solver_step

__all__ = [
    "MODES",
    "Program",
    "build_step",
    "make_executor",
    "make_solver",
    "minimize_all",
    "network_bounds",
    "solver_step",
]

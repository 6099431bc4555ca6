"""The mathematical-programming layer of BoundFlow, importable without torch.

* :mod:`solvers.program` — :class:`Program`: bounded continuous and binary variables, linear
  rows, bilinear products; :meth:`Program.safe_bound` turns *any* row multipliers into a
  rigorous lower bound (weak duality over the variable box);
* :mod:`solvers.backends` — HiGHS (``highspy``: LP and MILP) and SCIP (``pyscipopt``: LP, MILP
  and exact mixed-integer bilinear programs);
* :mod:`solvers.pulp_backend` — any MILP solver PuLP drives (its bundled CBC by default, or
  Gurobi/CPLEX where installed), and LP/MPS export;
* :mod:`solvers.cvxpy_backend` — cvxpy (convex programs; LPs through an interior-point solver);
* :mod:`solvers.sdp` — the SDP relaxation of a program (cvxpy; Clarabel), with a rigorous bound
  from any dual multipliers;
* :mod:`solvers.executor` — serial, process-pool and Ray execution of many solves with results
  that do not depend on the executor.

Every back end's ``minimize(c)`` returns a number ``b <= c @ x`` for every feasible ``x`` and
documents why (a proven dual bound; never an incumbent).  ``boundflow.encode`` builds these
programs from networks and training steps.
"""

from solvers.backends import BACKENDS, MODES, Outcome, make_solver
from solvers.executor import EXECUTORS, make_executor, minimize_all
from solvers.program import LinearForm, Program

__all__ = [
    "BACKENDS",
    "EXECUTORS",
    "MODES",
    "LinearForm",
    "Outcome",
    "Program",
    "make_executor",
    "make_solver",
    "minimize_all",
]

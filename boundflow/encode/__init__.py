"""Networks and training steps as programs of the torch-free :mod:`solvers` package.

* :mod:`~boundflow.encode.network` — a captured graph as an LP / MILP / bilinear program,
  ``compute_bounds(method="lp" | "milp")``;
* :mod:`~boundflow.encode.training_step` — one SGD step as a program (MIBP-Cert).
"""

from boundflow.encode.network import network_bounds
from boundflow.encode.training_step import build_step, solver_step

__all__ = ["build_step", "network_bounds", "solver_step"]

"""BoundFlow: deterministic bound propagation for PyTorch.

Main entry points:

* :class:`IntervalTensor` — run any PyTorch model on interval inputs and parameters, with
  interval gradients from ``loss.backward()``;
* :func:`compute_bounds` — output bounds of a model over an input box;
* :func:`interval_parameters` — a model's parameters as intervals for ``functional_call``;
* :func:`sound_rounding` — make every rule sound against floating-point rounding too.
"""

from boundflow.api import compute_bounds, interval_parameters
from boundflow.domains.base import register_domain
from boundflow.domains.interval import IntervalTensor, implements
from boundflow.domains.interval.domain import IntervalDomain
from boundflow.domains.linear import AlphaCrownDomain, CrownDomain, ForwardDomain
from boundflow.errors import BoundFlowError, DomainError, IntervalOpError, UnsupportedOperation
from boundflow.rounding import sound_rounding
from boundflow.solvers.network import SolverDomain
from boundflow.specs import Box

register_domain(IntervalDomain())
register_domain(CrownDomain())
register_domain(AlphaCrownDomain())
register_domain(ForwardDomain())
register_domain(SolverDomain("lp"))
register_domain(SolverDomain("milp"))

__version__ = "0.1.0"

__all__ = [
    "Box",
    "BoundFlowError",
    "DomainError",
    "IntervalOpError",
    "IntervalTensor",
    "UnsupportedOperation",
    "compute_bounds",
    "implements",
    "interval_parameters",
    "sound_rounding",
]

"""BoundFlow: deterministic bound propagation for PyTorch.

Main entry points:

* :class:`IntervalTensor` — run any PyTorch model on interval inputs and parameters, with
  interval gradients from ``loss.backward()``;
* :func:`compute_bounds` — output bounds of a model over an input box;
* :func:`prepare` — a model bound to a domain once, answering ``bounds(spec, output_spec)``
  for many specs (:class:`Box`, :class:`LinfBall`, :class:`LinearSpec`, :class:`OutputSpec`);
* :func:`interval_parameters` — a model's parameters as intervals for ``functional_call``;
* :func:`sound_rounding` — make every rule sound against floating-point rounding too.
"""

from boundflow.api import clear_cache, compute_bounds, interval_parameters, prepare
from boundflow.bounds import Bounds
from boundflow.domains.interval import IntervalTensor, implements
from boundflow.domains.interval.domain import IntervalDomain
from boundflow.domains.linear import AlphaCrownDomain, CrownDomain, ForwardDomain
from boundflow.domains.registry import get_domain, register_domain
from boundflow.errors import BoundFlowError, DomainError, IntervalOpError, UnsupportedOperation
from boundflow.rounding import sound_rounding
from boundflow.specs import Box, LinearSpec, LinfBall, OutputSpec

register_domain(IntervalDomain())
register_domain(CrownDomain())
register_domain(AlphaCrownDomain())
register_domain(ForwardDomain())

__version__ = "0.1.0"

__all__ = [
    "Bounds",
    "Box",
    "LinearSpec",
    "LinfBall",
    "OutputSpec",
    "get_domain",
    "prepare",
    "BoundFlowError",
    "DomainError",
    "IntervalOpError",
    "IntervalTensor",
    "UnsupportedOperation",
    "compute_bounds",
    "clear_cache",
    "implements",
    "interval_parameters",
    "sound_rounding",
]

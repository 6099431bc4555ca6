"""The interface every abstract domain implements: a domain, its prepared models, and the branching hooks.

A domain binds a model (and its parameter box) once — :meth:`Domain.prepare` returns a
:class:`PreparedModel` — and the prepared model answers many queries: ``bounds(spec, output)``
for input specs (:mod:`boundflow.specs`) and an optional output spec, returning
:class:`~boundflow.bounds.Bounds`.  The verifier, the benchmarks, point-cloud certification and
certified prediction all go through this interface.  :class:`BranchingPrepared` adds what
branch and bound needs.  Method names become domains in :mod:`boundflow.domains.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from boundflow.bounds import Bounds
from boundflow.specs import InputSpec, OutputSpec

__all__ = [
    "BranchingPrepared",
    "Domain",
    "DomainBase",
    "PreparedModel",
    "apply_output",
]


class PreparedModel(Protocol):
    """What every prepared model offers: a model bound to a domain (and to the parameter box it
    was prepared with), answering many queries.  ``bounds`` must be *sound*: for every input in
    ``spec`` (a :class:`~boundflow.specs.Box`, :class:`~boundflow.specs.LinearSpec`, ...) and
    every parameter vector in the box, the model's output (or ``C @ y - d`` per sample under
    ``output``) lies in ``[lower, upper]``.  A deadline set by :func:`boundflow.deadline.within`
    applies to each query: iterative methods stop there with the sound bounds they have, the
    others raise :class:`~boundflow.deadline.DeadlineExceeded`."""

    def bounds(self, spec: InputSpec, output: OutputSpec | None = None) -> Bounds: ...


@runtime_checkable
class BranchingPrepared(PreparedModel, Protocol):
    """A prepared model that branch and bound can split (the linear domain's): it names the
    nodes whose splits help and bounds sub-domains given as extra bounds on those nodes.

    ``bounds(spec, output, splits=, known=, warm=)``: ``splits`` maps node names to
    ``(lower, upper)`` (batch first, node-shaped, ``±inf`` where free) that hold on each
    sample's sub-domain; the result is sound on that sub-domain and also carries
    ``Bounds.empty`` (sub-domains whose splits contradict a sound bound), ``Bounds.intermediate``
    (each split node's bounds) and ``Bounds.scores`` (branching scores).  ``known``: sound
    bounds already known on each sub-domain (a parent's), intersected with ``splits``;
    ``warm``: earlier results' ``Bounds.params`` to start optimisation from.
    ``cheap_lookahead``: children's bounds cost less than a query (the search looks ahead)."""

    cheap_lookahead: bool

    def bounds(
        self,
        spec: InputSpec,
        output: OutputSpec | None = None,
        *,
        splits: dict | None = None,
        known: dict | None = None,
        warm: dict | None = None,
    ) -> Bounds: ...

    def split_nodes(self, batch: int, like: torch.Tensor, general: bool = False) -> list[str]:
        """Names of the nodes whose sign splits help (ReLU inputs; ``general``: also sigmoid and
        tanh inputs) in the graph for ``batch`` inputs shaped like ``like`` (one sample)."""
        ...

    def node_shapes(self, batch: int, like: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Node name -> shape (batch first) in that graph."""
        ...


class Domain(Protocol):
    """An abstract domain: ``prepare`` binds a model once (:func:`boundflow.compute_bounds` is
    the one-shot form, reusing the prepared model while the model is unchanged)."""

    name: str

    def prepare(self, model: nn.Module, params: Mapping[str, torch.Tensor] | None = None) -> PreparedModel: ...


class DomainBase:
    """The base of the domains: a name and ``prepare``."""

    name = "base"

    def prepare(self, model: nn.Module, params=None) -> PreparedModel:  # pragma: no cover - abstract
        raise NotImplementedError


def apply_output(lower: torch.Tensor, upper: torch.Tensor, output: OutputSpec | None) -> Bounds:
    """Subtract the output spec's ``d`` (the ``C`` part is applied by the domain)."""
    if output is not None and output.d is not None:
        d = torch.as_tensor(output.d, dtype=lower.dtype, device=lower.device)
        lower, upper = lower - d, upper - d
    return Bounds(lower, upper)

"""The interface every abstract domain implements, and the registry ``compute_bounds`` uses.

A domain binds a model (and its parameter box) once — :meth:`Domain.prepare` returns a
:class:`PreparedModel` — and the prepared model answers many queries: ``bounds(spec, output)``
for input specs (:mod:`boundflow.specs`) and an optional output spec, returning
:class:`~boundflow.bounds.Bounds`.  The verifier, the benchmarks, point-cloud certification and
certified prediction all go through this interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn

from boundflow.bounds import Bounds
from boundflow.specs import InputSpec, OutputSpec

__all__ = [
    "Domain",
    "DomainBase",
    "PreparedModel",
    "DOMAINS",
    "register_domain",
    "get_domain",
    "canonical_method",
    "METHOD_ALIASES",
    "apply_output",
]


class PreparedModel(Protocol):
    """A model bound to a domain.  ``bounds`` must be *sound*: for every input in ``spec`` and
    every parameter vector in the box it was prepared with, the model's output (or ``C @ y - d``
    per sample under ``output``) lies in ``[lower, upper]``."""

    def bounds(self, spec: InputSpec, output: OutputSpec | None = None) -> Bounds: ...


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


DOMAINS: dict[str, Domain] = {}
# registered on first use, so that importing boundflow does not import the solver stack
_LAZY = {m: "boundflow.encode.network" for m in ("lp", "milp", "mibp", "sdp")}


def register_domain(domain: Domain) -> Domain:
    DOMAINS[domain.name] = domain
    return domain


METHOD_ALIASES = {"interval": "ibp"}


def canonical_method(method: str) -> str:
    """The registered name of ``method`` (``"interval"`` is another name for ``"ibp"``)."""
    return METHOD_ALIASES.get(method, method)


def get_domain(method: str | Domain) -> Domain:
    """The registered domain named ``method``; a domain instance (anything with ``prepare``) is
    returned as is, so configured domains (``ForwardDomain(maxpool="tight")``) plug in too."""
    if not isinstance(method, str) and callable(getattr(method, "prepare", None)):
        return method
    method = canonical_method(method)
    if method in DOMAINS:
        return DOMAINS[method]
    if method in _LAZY:
        import importlib

        return register_domain(importlib.import_module(_LAZY[method]).SolverDomain(method))
    raise ValueError(f"unknown method {method!r}; available: {', '.join(sorted(set(DOMAINS) | set(_LAZY)))}")

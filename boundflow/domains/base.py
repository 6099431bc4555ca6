"""The interface every abstract domain implements, and the registry ``compute_bounds`` uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn

from boundflow.specs import Box

__all__ = ["Domain", "DOMAINS", "RESERVED", "register_domain", "get_domain"]


class Domain(Protocol):
    """An abstract domain.  ``bounds`` must be *sound*: for every input in ``spec`` and every
    parameter vector in ``params`` (plain tensors = exact), the model's output (or ``C @ y``
    per sample when a specification matrix ``C`` is given) lies in ``[lower, upper]``."""

    name: str

    def bounds(
        self,
        model: nn.Module,
        spec: Box,
        params: Mapping[str, torch.Tensor] | None = None,
        C: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


DOMAINS: dict[str, Domain] = {}

# method names promised by the design whose domains have not landed yet
RESERVED: dict[str, str] = {}


def register_domain(domain: Domain) -> Domain:
    DOMAINS[domain.name] = domain
    return domain


def get_domain(method: str | Domain) -> Domain:
    """The registered domain named ``method``; a domain instance (anything with ``bounds``) is
    returned as is, so configured domains (``ForwardDomain(maxpool="tight")``) plug in too."""
    if not isinstance(method, str) and callable(getattr(method, "bounds", None)):
        return method
    if method in DOMAINS:
        return DOMAINS[method]
    if method in RESERVED:
        raise NotImplementedError(
            f"method={method!r} is reserved for {RESERVED[method]} and is not implemented yet; "
            f"available methods: {', '.join(sorted(DOMAINS))}"
        )
    raise ValueError(
        f"unknown method {method!r}; available: {', '.join(sorted(DOMAINS))}; "
        f"reserved for later: {', '.join(sorted(RESERVED))}"
    )

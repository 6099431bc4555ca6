"""Interval bound propagation (IBP) behind the common :class:`~boundflow.domains.base.Domain`
interface."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from boundflow.domains.interval.tensor import IntervalTensor, lohi
from boundflow.specs import Box

__all__ = ["IntervalDomain"]


class IntervalDomain:
    """``bounds`` runs the model on an ``IntervalTensor``.  Sound for every input in the box and
    every parameter inside ``params`` (intervals or exact tensors; missing names use the model's
    own values), in exact arithmetic on the floating-point inputs, and additionally against
    rounding inside :func:`boundflow.sound_rounding`."""

    name = "ibp"

    def bounds(
        self, model: nn.Module, spec: Box, params: Mapping[str, torch.Tensor] | None = None, C=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = IntervalTensor(spec.lower, spec.upper)
        with torch.no_grad():
            if params:
                out = functional_call(model, dict(params), (x,), strict=False)
            else:
                out = model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}; compute_bounds needs a single tensor output")
        lo, hi = lohi(out)
        if C is None:
            return lo.clone(), hi.clone()
        return spec_bounds(lo, hi, C)


def spec_bounds(lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds of ``C @ y`` per sample for ``y`` in ``[lo, hi]`` (``C``: ``(S, n)`` or
    ``(B, S, n)``); result ``(B, S)``."""
    b = lo.shape[0]
    lo, hi = lo.reshape(b, 1, -1), hi.reshape(b, 1, -1)
    C = torch.as_tensor(C, dtype=lo.dtype)
    if C.dim() == 2:
        C = C.unsqueeze(0)
    cp, cn = C.clamp(min=0), C.clamp(max=0)
    return (cp * lo + cn * hi).sum(-1), (cp * hi + cn * lo).sum(-1)

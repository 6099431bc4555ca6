"""Interval bound propagation (IBP) behind the common :class:`~boundflow.domains.base.Domain`
interface."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from boundflow.bounds import Bounds
from boundflow.domains.base import DomainBase, apply_output
from boundflow.domains.interval.tensor import IntervalTensor, lohi
from boundflow.specs import InputSpec, OutputSpec

__all__ = ["IntervalDomain", "IntervalPrepared", "spec_bounds"]


class IntervalPrepared:
    """A model bound to interval propagation (nothing to capture: the model runs on an
    ``IntervalTensor``).  Sound for every input of the spec (a :class:`~boundflow.specs.LinearSpec`
    is bounded through its bounding box) and every parameter inside ``params`` (intervals or exact
    tensors; missing names use the model's own values), in exact arithmetic on the floating-point
    inputs, and additionally against rounding inside :func:`boundflow.sound_rounding`."""

    def __init__(self, model: nn.Module, params: Mapping[str, torch.Tensor] | None = None):
        self.model, self.params = model, dict(params) if params else None

    def output_box(self, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
        box = spec.box()
        x = IntervalTensor(box.lower, box.upper)
        with torch.no_grad():
            out = functional_call(self.model, self.params, (x,), strict=False) if self.params else self.model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}; compute_bounds needs a single tensor output")
        lo, hi = lohi(out)
        return lo.clone(), hi.clone()

    def bounds(self, spec: InputSpec, output: OutputSpec | None = None) -> Bounds:
        lo, hi = self.output_box(spec)
        if output is None:
            return Bounds(lo, hi)
        return apply_output(*spec_bounds(lo, hi, output.C), output)


class IntervalDomain(DomainBase):
    """Interval bound propagation: the model runs on an ``IntervalTensor`` (see
    :class:`IntervalPrepared` for the guarantee)."""

    name = "ibp"

    def prepare(self, model: nn.Module, params: Mapping[str, torch.Tensor] | None = None) -> IntervalPrepared:
        return IntervalPrepared(model, params)


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

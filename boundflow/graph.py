"""Capture a model as one ATen-level FX graph, parameters as explicit inputs."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["CapturedGraph", "capture"]


@dataclass
class CapturedGraph:
    """``gm(x, *params)`` computes ``model(x)``; ``param_names[i]`` names the (i+1)-th
    placeholder.  Shapes in the graph (e.g. ``view`` sizes) are those of the example input."""

    gm: fx.GraphModule
    param_names: list[str]
    params: list[torch.Tensor]
    radii: list[torch.Tensor | None] | None = None

    @property
    def input_node(self) -> fx.Node:
        return next(n for n in self.gm.graph.nodes if n.op == "placeholder")


_INPLACE_VIEWS = {
    torch.ops.aten.squeeze_.dim: torch.ops.aten.squeeze.dim,
    torch.ops.aten.squeeze_.default: torch.ops.aten.squeeze.default,
    torch.ops.aten.unsqueeze_.default: torch.ops.aten.unsqueeze.default,
    torch.ops.aten.t_.default: torch.ops.aten.t.default,
    torch.ops.aten.transpose_.default: torch.ops.aten.transpose.int,
}


def _functionalize_view_inplace(gm: fx.GraphModule) -> None:
    """Replace in-place view ops (``squeeze_`` from 1-D ``matmul``) by their out-of-place forms
    where the mutated value has no other user, so every domain sees a pure graph."""
    changed = False
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in _INPLACE_VIEWS:
            src = n.args[0]
            if isinstance(src, fx.Node) and len(src.users) == 1:
                n.target = _INPLACE_VIEWS[n.target]
                changed = True
    if changed:
        gm.recompile()


_SPLITS = {torch.ops.aten.split_with_sizes.default, torch.ops.aten.split.Tensor, torch.ops.aten.unbind.int}


def _splits_to_slices(gm: fx.GraphModule) -> None:
    """Replace each ``getitem(split(x, ...), k)`` (``split_with_sizes``, ``split``, ``unbind``)
    by the slice (or ``select``) of ``x`` it is, so the domains see plain re-indexing ops
    instead of a tuple-valued op; the same values."""
    changed = False
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in _SPLITS or not n.users:
            continue
        if any(u.op != "call_function" or u.target is not operator.getitem for u in n.users):
            continue
        x = n.args[0]
        shape = x.meta["val"].shape if isinstance(x, fx.Node) and "val" in x.meta else None
        if shape is None:
            continue
        if n.target is torch.ops.aten.unbind.int:
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            dim = dim % len(shape)
            for u in list(n.users):
                with gm.graph.inserting_before(u):
                    new = gm.graph.call_function(torch.ops.aten.select.int, (x, dim, u.args[1]))
                new.meta = dict(u.meta)
                u.replace_all_uses_with(new)
                gm.graph.erase_node(u)
        else:
            dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)
            dim = dim % len(shape)
            if n.target is torch.ops.aten.split.Tensor:
                size = int(n.args[1])
                sizes = [min(size, shape[dim] - s) for s in range(0, shape[dim], size)]
            else:
                sizes = [int(v) for v in n.args[1]]
            starts = [sum(sizes[:k]) for k in range(len(sizes))]
            for u in list(n.users):
                k = u.args[1]
                with gm.graph.inserting_before(u):
                    new = gm.graph.call_function(torch.ops.aten.slice.Tensor, (x, dim, starts[k], starts[k] + sizes[k]))
                new.meta = dict(u.meta)
                u.replace_all_uses_with(new)
                gm.graph.erase_node(u)
        gm.graph.erase_node(n)
        changed = True
    if changed:
        gm.recompile()


def _is_interval(t) -> bool:
    """An interval-valued tensor (``IntervalTensor`` or anything with ``lower``, ``upper`` and
    ``is_exact``): the graph layer stays independent of the domains."""
    return all(hasattr(t, a) for a in ("lower", "upper", "is_exact"))


def capture(
    model: nn.Module, example_input: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None
) -> CapturedGraph:
    """Trace ``model`` on ``example_input`` with ``make_fx`` into ATen ops.  Parameters and
    buffers (``params`` overrides by name) become placeholders after the input.  An
    ``IntervalTensor`` in ``params`` is traced at its centre and its radius recorded in
    ``radii`` (bounded weights)."""
    named = {n: t.detach() for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    radius: dict[str, torch.Tensor] = {}
    if params:
        for n, t in params.items():
            if n not in named:
                raise KeyError(f"capture: {n!r} is not a parameter or buffer of {type(model).__name__}")
            if _is_interval(t):
                c = (t.lower + t.upper) / 2
                named[n] = c
                if not t.is_exact():
                    # a radius that covers both ends despite the rounding of the centre
                    r = torch.maximum(t.upper - c, c - t.lower)
                    radius[n] = torch.nextafter(r, torch.full_like(r, float("inf")))
            else:
                named[n] = t.detach() if isinstance(t, torch.Tensor) else t
    names = list(named)

    def f(x, *ps):
        return functional_call(model, dict(zip(names, ps, strict=True)), (x,))

    with torch.no_grad():
        gm = make_fx(f)(example_input, *[named[n] for n in names])
    _functionalize_view_inplace(gm)
    _splits_to_slices(gm)
    return CapturedGraph(gm, names, [named[n] for n in names], [radius.get(n) for n in names])

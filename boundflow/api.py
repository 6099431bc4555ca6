"""Public entry points: :func:`compute_bounds`, :func:`prepare` and :func:`interval_parameters`."""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from boundflow.domains.base import Domain, PreparedModel
from boundflow.domains.interval.tensor import IntervalTensor
from boundflow.domains.registry import get_domain
from boundflow.errors import DomainError
from boundflow.specs import Box, OutputSpec

__all__ = ["compute_bounds", "interval_parameters", "prepare", "clear_cache"]


def interval_parameters(
    model: nn.Module,
    radius: float | torch.Tensor | Mapping[str, float | torch.Tensor] = 0.0,
    *,
    requires_grad: bool = True,
    dtype: torch.dtype | None = None,
) -> dict[str, IntervalTensor]:
    """Every parameter of ``model`` as an ``IntervalTensor`` ``[p - radius, p + radius]``.

    ``radius`` is one number for all parameters, or a mapping name -> radius (missing names get
    0).  The dict plugs into ``torch.func.functional_call(model, params, x)``; with
    ``requires_grad`` (default) ``loss.backward()`` fills each entry's ``.grad`` with interval
    gradients.  Buffers (BatchNorm statistics) are not included: they stay exact.
    """
    out: dict[str, IntervalTensor] = {}
    for name, p in model.named_parameters():
        r = radius.get(name, 0.0) if isinstance(radius, Mapping) else radius
        center = p.detach().to(dtype) if dtype is not None else p.detach()
        out[name] = IntervalTensor.from_center_radius(center.clone(), r, requires_grad=requires_grad)
    if isinstance(radius, Mapping):
        unknown = set(radius) - set(out)
        if unknown:
            raise KeyError(f"interval_parameters: no parameter named {sorted(unknown)} in {type(model).__name__}")
    return out


def _params_in(model: nn.Module, params, dtype) -> dict[str, torch.Tensor] | None:
    """Every parameter and buffer in ``dtype`` with ``params`` overriding by name (checked)."""
    full: dict[str, torch.Tensor] = {}
    if dtype is not None:
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            full[name] = t.detach().to(dtype) if t.is_floating_point() else t
    if params:
        known = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        unknown = set(params) - known
        if unknown:
            raise KeyError(
                f"compute_bounds: params names {sorted(unknown)} are not parameters of {type(model).__name__}"
            )
        for name, t in params.items():
            full[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return full or None


def prepare(
    model: nn.Module,
    method: str | Domain = "crown",
    params: Mapping[str, torch.Tensor] | None = None,
    *,
    dtype: torch.dtype | None = torch.float64,
) -> PreparedModel:
    """``model`` bound to the domain ``method`` once (graph captured on first use, per batch
    shape); the result answers ``bounds(spec, output_spec)`` for many input specs
    (:class:`~boundflow.specs.Box`, :class:`~boundflow.specs.LinfBall`,
    :class:`~boundflow.specs.LinearSpec`) with the guarantee of :func:`compute_bounds`.  Specs
    must be in ``dtype`` (float64 by default)."""
    return get_domain(method).prepare(model, _params_in(model, params, dtype))


def compute_bounds(
    model: nn.Module,
    x_lower: torch.Tensor,
    x_upper: torch.Tensor,
    method: str | Domain = "ibp",
    params: Mapping[str, torch.Tensor] | None = None,
    C: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds ``(lower, upper)`` on ``model(x)`` for every ``x`` with
    ``x_lower <= x <= x_upper`` and every parameter vector in ``params``.

    ``method``: ``"ibp"`` (interval bound propagation; ``"interval"`` is the same), ``"crown"`` (linear relaxation by
    back-substitution on the captured ATen graph, never looser than ``ibp`` per output) or
    ``"alpha-crown"`` (CROWN with optimised ReLU slopes, never looser than ``crown``) or
    ``"forward"`` (forward-mode linear bounds, for low-dimensional inputs); a configured domain
    instance works too (``ForwardDomain(maxpool="tight")``).
    ``"lp"`` (LP relaxation: triangle ReLU relaxation on CROWN's intermediate bounds, solved by
    HiGHS with a rigorous dual bound) and ``"milp"`` (exact for ReLU/max-pool networks with
    exact weights: big-M binaries, HiGHS branch and bound) solve one program per sample and
    are never looser than ``crown``; ``"sdp"`` (the SDP relaxation of Raghunathan et al. with
    the LP's rows, for small networks: never looser than ``lp``; cvxpy, :mod:`solvers.sdp`)
    too; see :func:`boundflow.encode.network_bounds` for time limits, parallel executors and
    exact bilinear weights (``mibp``).
    ``C``: a specification matrix ``(S, n_out)`` or ``(B, S, n_out)``; then the result bounds
    ``C @ y`` per sample, shape ``(B, S)`` (bounded directly, not via the output box).
    ``params``: name -> tensor or ``IntervalTensor`` (see :func:`interval_parameters`); names
    not given use the model's own values.  ``dtype``: the computation runs in this dtype
    (float64 by default; the model is not modified); ``None`` keeps the input's dtype.

    Guarantee: sound in exact arithmetic on the floating-point inputs; wrap the call in
    :func:`boundflow.sound_rounding` to also cover rounding.  The model must be in the mode you
    want bounded (BatchNorm in training mode is not supported; call ``model.eval()``).

    Calls without ``params`` reuse the model prepared (and captured) by an earlier call with the
    same model, method and dtype while nothing about the model changed: every parameter and
    buffer value equal to the prepared copy (any write: ``.data``, an optimiser step,
    ``load_state_dict``), the same submodules, ``training`` flags, hooks and simple attributes.
    Models with other kinds of attributes (lists, objects, a replaced ``forward``) are prepared
    afresh on every call.  :func:`clear_cache` forgets the prepared models (at most
    ``ONE_SHOT_CACHE`` are kept).
    """
    domain = get_domain(method)
    x_lower = torch.as_tensor(x_lower)
    x_upper = torch.as_tensor(x_upper)
    if dtype is not None:
        x_lower, x_upper = x_lower.to(dtype), x_upper.to(dtype)
    spec = Box(x_lower, x_upper)
    for name, t in (("x_lower", x_lower), ("x_upper", x_upper)):
        if t.is_floating_point() and bool(torch.isinf(t).any()):
            n = int(torch.isinf(t).sum())
            raise DomainError(f"compute_bounds: {name} contains inf in {n} entries; every method needs a finite box")
    output = None if C is None else OutputSpec(torch.as_tensor(C, dtype=x_lower.dtype))
    _no_nan_parameters(model, params)
    prepared = _one_shot(model, method, dtype) if params is None else None
    if prepared is None:
        prepared = domain.prepare(model, _params_in(model, params, dtype))
    res = prepared.bounds(spec, output)
    # an infinite input box can leave 0 * inf = NaN in a bound: nothing is known there
    lower = torch.where(torch.isnan(res.lower), -math.inf, res.lower)
    upper = torch.where(torch.isnan(res.upper), math.inf, res.upper)
    return lower, upper


ONE_SHOT_CACHE = 8
_CACHE: OrderedDict[tuple, tuple[weakref.ref, dict, PreparedModel]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_SIMPLE = (int, float, bool, str, type(None), torch.dtype, torch.device)


def clear_cache() -> None:
    """Forget the models :func:`compute_bounds` prepared for reuse."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _simple(v) -> bool:
    return isinstance(v, _SIMPLE) or (isinstance(v, tuple) and all(_simple(u) for u in v))


def _structure(model: nn.Module, method: str, dtype) -> tuple | None:
    """What the captured graph can depend on besides tensor values, or None where that cannot
    be told (then nothing is reused)."""
    mods = []
    for name, m in model.named_modules():
        attrs = []
        for k, v in vars(m).items():
            if k.startswith("_") or k == "training":
                continue
            if not _simple(v):
                return None  # a list, an object, a plain tensor, a replaced forward: not tracked
            attrs.append((k, v))
        hooks = tuple(
            id(h)
            for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._state_dict_hooks)
            for h in d.values()
        )
        mods.append((name, id(m), type(m), m.training, tuple(attrs), hooks))
    tensors = tuple(
        (n, t.dtype, tuple(t.shape), t.device) for n, t in list(model.named_parameters()) + list(model.named_buffers())
    )
    return (id(model), method, dtype, tuple(mods), tensors)


def _unchanged(model: nn.Module, held: dict) -> bool:
    """Every parameter and buffer of ``model`` equals the copy the prepared model holds."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h = held.get(name)
        if h is None or t.shape != h.shape or not _equal_as(t.detach(), h):
            return False
    return True


def _equal_as(t: torch.Tensor, h: torch.Tensor, chunk: int = 1 << 20) -> bool:
    """``t`` converted to ``h``'s dtype equals ``h``; a chunk at a time, so a large model's
    check does not hold a converted copy of a whole parameter."""
    if t.dtype == h.dtype or not t.is_floating_point():
        return torch.equal(t, h)
    a, b = t.reshape(-1), h.reshape(-1)
    return all(torch.equal(a[i : i + chunk].to(h.dtype), b[i : i + chunk]) for i in range(0, a.numel(), chunk))


def _one_shot(model: nn.Module, method, dtype) -> PreparedModel | None:
    """The model prepared for ``method`` in ``dtype``, reused while it is unchanged (see
    :func:`compute_bounds`); None where reuse cannot be made safe."""
    if not isinstance(method, str) or dtype is None:
        return None
    key = _structure(model, method, dtype)
    if key is None:
        return None
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is model and _unchanged(model, hit[1]):
            _CACHE.move_to_end(key)
            return hit[2]
    # copies (``.to`` of a tensor already in ``dtype`` is the tensor itself): the values this
    # preparation is for, compared on every reuse
    held = {n: t.clone() for n, t in (_params_in(model, None, dtype) or {}).items()}
    prepared = get_domain(method).prepare(model, held or None)
    with _CACHE_LOCK:
        _CACHE[key] = (weakref.ref(model), held, prepared)
        while len(_CACHE) > ONE_SHOT_CACHE:
            _CACHE.popitem(last=False)
    return prepared


def _no_nan_parameters(model: nn.Module, params) -> None:
    """A NaN weight makes every concrete output NaN, which no bound contains: refuse it."""
    from boundflow.domains.interval.tensor import lohi

    given = dict(params or {})
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        t = given.get(name, p)
        parts = lohi(t) if isinstance(t, IntervalTensor) else (t,)
        if any(x.is_floating_point() and bool(torch.isnan(x).any()) for x in parts):
            raise DomainError(f"compute_bounds: {'params' if name in given else 'model'} {name!r} contains NaN")

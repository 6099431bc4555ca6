"""``IntervalTensor``: a ``torch.Tensor`` wrapper subclass holding elementwise lower and upper
bounds, and the dispatcher that evaluates every ATen op on it through the rule table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_map

from boundflow import rounding
from boundflow.domains.interval.table import FUNCTION_OVERRIDES, RULES
from boundflow.errors import BoundFlowError, DomainError, IntervalOpError, UnsupportedOperation, where_called

__all__ = ["IntervalTensor", "make", "lohi", "is_exact", "exact_value", "is_interval"]

_NEG_INF = float("-inf")
_POS_INF = float("inf")


def _describe_bad(mask: torch.Tensor) -> str:
    n = int(mask.sum())
    first = torch.nonzero(mask)[0].tolist() if n else []
    return f"{n} of {mask.numel()} entries (first at index {tuple(first)})"


def _promoted(lower, upper) -> tuple[torch.Tensor, torch.Tensor]:
    """``lower`` and ``upper`` as tensors of one dtype (the promotion of both: float32 with
    float64 gives float64; a Python number takes the other bound's dtype, or the default
    dtype), every conversion rounded outwards: a value the dtype cannot hold exactly becomes
    the next representable value below (lower) or above (upper), never one inside."""
    given_lo, given_hi = isinstance(lower, torch.Tensor), isinstance(upper, torch.Tensor)
    lo_t = lower if given_lo else _number(lower)
    if upper is None:
        if given_lo:
            return lo_t, lo_t.clone()
        dt = lo_t.dtype if not lo_t.is_floating_point() else torch.get_default_dtype()
        return _convert(lo_t, dt, -1), _convert(lo_t, dt, 1)
    hi_t = upper if given_hi else _number(upper)
    if given_lo != given_hi:  # a tensor and a number: the tensor's dtype (floating if needed)
        t, n = (lo_t, hi_t) if given_lo else (hi_t, lo_t)
        dt = t.dtype if t.is_floating_point() or not n.is_floating_point() else torch.get_default_dtype()
        device = t.device
    else:
        if not given_lo:
            lo_t, hi_t = lo_t.to(torch.get_default_dtype()), hi_t.to(torch.get_default_dtype())
        dt = torch.promote_types(lo_t.dtype, hi_t.dtype)
        device = lo_t.device
    return _convert(lo_t, dt, -1).to(device), _convert(hi_t, dt, 1).to(device)


def _number(v) -> torch.Tensor:
    """A Python number or nested list as a tensor that holds it exactly (float64, int64)."""
    t = torch.as_tensor(v)
    return torch.as_tensor(v, dtype=torch.float64) if t.is_floating_point() else t


def _convert(t: torch.Tensor, dtype: torch.dtype, direction: int) -> torch.Tensor:
    """``t`` in ``dtype``, rounded away from the interval's inside (``direction`` -1: down)."""
    if t.dtype == dtype:
        return t
    out = t.to(dtype)
    if not dtype.is_floating_point:
        return out
    away = torch.full_like(out, direction * math.inf)
    if t.is_floating_point():
        if torch.finfo(t.dtype).bits < torch.finfo(dtype).bits:
            return out  # widening a float is exact
        back = out.to(t.dtype)  # narrowing: step outwards where it rounded inwards
        inward = back > t if direction < 0 else back < t
        return torch.where(inward, torch.nextafter(out, away), out)
    # integers: exact below 2**(mantissa bits + 1), else possibly rounded either way
    inexact = out.abs() >= 2.0 / torch.finfo(dtype).eps
    return torch.where(inexact, torch.nextafter(out, away), out) if bool(inexact.any()) else out


class IntervalTensor(torch.Tensor):
    """A tensor of intervals ``[lower, upper]`` that runs through ordinary PyTorch code.

    Every ATen op applied to an ``IntervalTensor`` is evaluated by a sound rule: the result
    contains the op's value for *every* concrete choice of operands inside the operand
    intervals (in exact arithmetic on the floating-point inputs; inside
    :func:`boundflow.sound_rounding` also against floating-point rounding).  Because this
    happens below autograd, ``nn.Module`` forward passes, ``torch.func.functional_call`` and
    ``loss.backward()`` work unchanged, and gradients come out as ``IntervalTensor`` bounds on
    every concrete gradient.

    The wrapper itself carries shape, dtype, device and ``requires_grad``; the bounds live in
    two plain tensors of the same shape, dtype and device.
    """

    _lower: torch.Tensor
    _upper: torch.Tensor
    __slots__ = ("_lower", "_upper", "_mr")

    @staticmethod
    def __new__(
        cls,
        lower: torch.Tensor | float,
        upper: torch.Tensor | float | None = None,
        *,
        requires_grad: bool = False,
        check: bool = True,
    ) -> IntervalTensor:
        if isinstance(lower, IntervalTensor):
            raise TypeError("IntervalTensor(lower, upper) takes plain tensors; got an IntervalTensor as lower")
        if isinstance(upper, IntervalTensor):
            raise TypeError("IntervalTensor(lower, upper) takes plain tensors; got an IntervalTensor as upper")
        lower, upper = _promoted(lower, upper)
        if check:
            _validate(lower, upper)
        lower = lower.detach()
        upper = upper.detach()
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            lower.shape,
            dtype=lower.dtype,
            device=lower.device,
            requires_grad=requires_grad,
        )
        r._lower = lower
        r._upper = upper
        r._mr = None
        return r

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_center_radius(
        cls, center: torch.Tensor, radius: torch.Tensor | float, *, requires_grad: bool = False
    ) -> IntervalTensor:
        """``[center - radius, center + radius]``; ``radius`` must be non-negative."""
        center = torch.as_tensor(center)
        radius = torch.as_tensor(radius, dtype=center.dtype, device=center.device)
        if (radius < 0).any():
            raise ValueError(f"radius must be non-negative: {_describe_bad(radius < 0)} are negative")
        radius = radius.expand_as(center) if radius.dim() <= center.dim() else radius
        return cls(center - radius, center + radius, requires_grad=requires_grad)

    @classmethod
    def from_eps(
        cls,
        x: torch.Tensor,
        eps: torch.Tensor | float,
        clamp: tuple[float, float] | None = None,
        *,
        requires_grad: bool = False,
    ) -> IntervalTensor:
        """The ℓ∞ ball ``[x - eps, x + eps]``, optionally intersected with ``[clamp[0], clamp[1]]``
        (e.g. ``(0, 1)`` for pixel data)."""
        x = torch.as_tensor(x)
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if (eps_t < 0).any():
            raise ValueError(f"eps must be non-negative: {_describe_bad(eps_t < 0)} are negative")
        lo, hi = x - eps_t, x + eps_t
        if clamp is not None:
            cmin, cmax = clamp
            if cmin > cmax:
                raise ValueError(f"clamp range ({cmin}, {cmax}) is empty")
            lo, hi = lo.clamp(cmin, cmax), hi.clamp(cmin, cmax)
        return cls(lo, hi, requires_grad=requires_grad)

    @classmethod
    def exact(cls, x: torch.Tensor, *, requires_grad: bool = False) -> IntervalTensor:
        """The zero-width interval ``[x, x]``."""
        x = torch.as_tensor(x)
        return cls(x, x.clone(), requires_grad=requires_grad)

    # -- properties -----------------------------------------------------------------------
    @property
    def lower(self) -> torch.Tensor:
        """Elementwise lower bound (a plain tensor)."""
        return self._lower

    @property
    def upper(self) -> torch.Tensor:
        """Elementwise upper bound (a plain tensor)."""
        return self._upper

    @property
    def center(self) -> torch.Tensor:
        """``(lower + upper) / 2``."""
        return (self._lower + self._upper) / 2

    @property
    def radius(self) -> torch.Tensor:
        """``(upper - lower) / 2``."""
        return (self._upper - self._lower) / 2

    @property
    def width(self) -> torch.Tensor:
        """``upper - lower``."""
        return self._upper - self._lower

    def contains(self, x: torch.Tensor | float, *, atol: float = 0.0, elementwise: bool = False) -> Any:
        """Whether ``lower - atol <= x <= upper + atol`` for every entry (a Python bool), or per
        entry with ``elementwise=True`` (a bool tensor).  ``x`` must broadcast to this shape."""
        if isinstance(x, IntervalTensor):
            inside = (x.lower >= self._lower - atol) & (x.upper <= self._upper + atol)
        else:
            x = torch.as_tensor(x, device=self._lower.device)
            try:
                torch.broadcast_shapes(x.shape, self._lower.shape)
            except RuntimeError:
                raise ValueError(
                    f"contains(): value of shape {tuple(x.shape)} does not broadcast to the interval's shape "
                    f"{tuple(self._lower.shape)}"
                ) from None
            inside = (x >= self._lower - atol) & (x <= self._upper + atol)
        return inside if elementwise else bool(inside.all())

    def is_exact(self) -> bool:
        """True when every entry has zero width."""
        return bool(torch.equal(self._lower, self._upper))

    # -- torch protocol -------------------------------------------------------------------
    def __tensor_flatten__(self):
        return ["_lower", "_upper"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return IntervalTensor(inner["_lower"], inner["_upper"], check=False)

    def __reduce_ex__(self, protocol):
        return (_rebuild, (self._lower, self._upper, self.requires_grad))

    def __deepcopy__(self, memo):
        return IntervalTensor(self._lower.clone(), self._upper.clone(), requires_grad=self.requires_grad, check=False)

    def __repr__(self, *, tensor_contents=None) -> str:  # noqa: D105
        return _repr(self)

    def __format__(self, spec: str) -> str:
        return _repr(self)

    def __bool__(self) -> bool:
        if self._lower.numel() != 1:
            raise RuntimeError("the truth value of an IntervalTensor with more than one entry is ambiguous")
        if torch.equal(self._lower, self._upper):
            return bool(self._lower.item())
        raise DomainError(f"the truth value of {self!r} is not determined: the interval contains both outcomes")

    def tolist(self):
        """``[[lower, upper], ...]`` pairs."""
        return torch.stack([self._lower, self._upper], dim=-1).tolist()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        override = FUNCTION_OVERRIDES.get(func)
        if override is not None:
            result = override(*args, **kwargs)
            if result is not NotImplemented:
                return result
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return dispatch(func, args, kwargs or {})


def _rebuild(lower: torch.Tensor, upper: torch.Tensor, requires_grad: bool) -> IntervalTensor:
    return IntervalTensor(lower, upper, requires_grad=requires_grad, check=False)


def _validate(lower: torch.Tensor, upper: torch.Tensor) -> None:
    if lower.shape != upper.shape:
        raise ValueError(
            f"IntervalTensor: lower has shape {tuple(lower.shape)} but upper has shape {tuple(upper.shape)}"
        )
    if lower.device != upper.device:
        raise ValueError(f"IntervalTensor: lower is on {lower.device} but upper is on {upper.device}")
    if lower.is_floating_point():
        for name, t in (("lower", lower), ("upper", upper)):
            nan = torch.isnan(t)
            if nan.any():
                raise ValueError(f"IntervalTensor: {name} contains NaN in {_describe_bad(nan)}")
            inf = torch.isinf(t)
            if inf.any():
                raise ValueError(f"IntervalTensor: {name} contains inf in {_describe_bad(inf)}")
    bad = lower > upper
    if bad.any():
        raise ValueError(f"IntervalTensor: lower > upper in {_describe_bad(bad)}")


def _repr(t: IntervalTensor) -> str:
    lo, hi = t._lower, t._upper
    head = f"IntervalTensor(shape={tuple(lo.shape)}, dtype={lo.dtype}"
    if lo.device.type != "cpu":
        head += f", device={lo.device}"
    if t.requires_grad:
        head += ", requires_grad=True"
    if t.grad_fn is not None:
        head += f", grad_fn={type(t.grad_fn).__name__}"
    if lo.numel() <= 24:
        fmt = "{:.6g}" if lo.is_floating_point() else "{}"

        def nest(a, b, depth: int) -> str:
            if not isinstance(a, list):
                return f"[{fmt.format(a)}, {fmt.format(b)}]"
            sep = ", " if depth == lo.dim() - 1 else ",\n   " + " " * depth
            return "(" + sep.join(nest(x, y, depth + 1) for x, y in zip(a, b)) + ")"

        return f"{head},\n  {nest(lo.tolist(), hi.tolist(), 0)})"
    if lo.is_floating_point():
        w = hi - lo
        return (
            f"{head},\n  lower in [{lo.min().item():.6g}, {lo.max().item():.6g}], "
            f"upper in [{hi.min().item():.6g}, {hi.max().item():.6g}], "
            f"width mean {w.mean().item():.3g} max {w.max().item():.3g})"
        )
    return f"{head})"


# ---------------------------------------------------------------------------------------
# helpers used by the rules
# ---------------------------------------------------------------------------------------


def is_interval(x: Any) -> bool:
    return isinstance(x, IntervalTensor)


def lohi(x: Any) -> tuple[Any, Any]:
    """``(lower, upper)`` of an operand; plain tensors and numbers are exact, returned as the
    same object twice (rules test ``lo is hi`` to skip work on exact operands)."""
    if isinstance(x, IntervalTensor):
        return x._lower, x._upper
    return x, x


def is_exact(x: Any) -> bool:
    """True for non-interval operands (plain tensors, numbers, None)."""
    return not isinstance(x, IntervalTensor)


def exact_value(x: Any, what: str) -> Any:
    """The plain value of an operand that must be exact (indices, masks, shapes).  An interval
    with zero width is accepted; a proper interval raises :class:`DomainError`."""
    if isinstance(x, IntervalTensor):
        if torch.equal(x._lower, x._upper):
            return x._lower
        raise DomainError(
            f"{what} must be exact, but it is an interval with {_describe_bad(x._lower != x._upper)} undetermined"
        )
    return x


def make(
    lo: torch.Tensor, hi: torch.Tensor, *, exact: bool = False, rounded: bool = False, nan_free: bool = False
) -> IntervalTensor:
    """Wrap rule results.  NaN bounds (from ``inf - inf`` or ``0 * inf``) become ``-inf``/``+inf``
    so a bound is never NaN; ``nan_free`` skips that check for rules that cannot create NaN
    from NaN-free operands (monotone functions, selections).  Under
    :func:`boundflow.sound_rounding`, results are widened by one ulp unless ``exact``
    (structural ops: no arithmetic) or ``rounded`` (the rule rounded itself)."""
    if hi is lo:
        hi = lo.clone()
    if lo.is_floating_point() and not exact:
        # a NaN anywhere makes the sum NaN (so may inf - inf: then the repair pass is a no-op)
        if not nan_free and lo.numel() and torch.isnan(lo.sum() + hi.sum()):
            lo = torch.nan_to_num(lo, nan=_NEG_INF, posinf=_POS_INF, neginf=_NEG_INF)
            hi = torch.nan_to_num(hi, nan=_POS_INF, posinf=_POS_INF, neginf=_NEG_INF)
        if not rounded and rounding.rounding_enabled():
            lo, hi = rounding.widen_ulp(lo, hi)
    return _wrap(lo, hi)


def _wrap(lo: torch.Tensor, hi: torch.Tensor) -> IntervalTensor:
    """Wrap two same-shape bound tensors without any checks (rule results)."""
    r = torch.Tensor._make_wrapper_subclass(IntervalTensor, lo.shape, dtype=lo.dtype, device=lo.device)
    r._lower = lo
    r._upper = hi
    r._mr = None
    return r


# Bumped by every in-place write that the interval rules make into bounds.  Inside
# ``__torch_dispatch__`` autograd's version counters are not bumped by in-place ops (that
# happens in the ADInplaceOrView layer above), so they alone cannot tell a cache that a bound
# changed through an in-place rule or through a view of it.
_WRITES = [0]


def note_write() -> None:
    """Record an in-place write into interval bounds (invalidates every midpoint-radius cache)."""
    _WRITES[0] += 1


def _cache_key(x: IntervalTensor) -> tuple[int, int, int]:
    return (x._lower._version, x._upper._version, _WRITES[0])


def doubled_mid_rad(x: IntervalTensor) -> dict[str, torch.Tensor]:
    """``{"m2": lower + upper, "r2": upper - lower}`` (twice the midpoint and radius), cached on
    ``x`` until any bound is modified in place: the key holds the bounds' version counters
    (writes from outside, e.g. ``x.lower.mul_(2)``) and the count of in-place writes made by
    the interval rules (writes through ``x`` itself, its views or its base).  Callers may add
    derived entries (``"mag2"``, ``"absm2"``) to the returned dict; they must not modify the
    cached tensors."""
    cache = x._mr
    lo, hi = x._lower, x._upper
    key = _cache_key(x)
    if cache is not None and cache["v"] == key:
        return cache
    cache = {"v": key, "m2": torch.add(lo, hi), "r2": torch.sub(hi, lo)}
    x._mr = cache
    return cache


def propagate_mid_rad(src: Any, out: Any, op: Any, args: tuple, kwargs: dict) -> None:
    """After a view-like op, give ``out`` the view of ``src``'s cached midpoint/radius."""
    cache = getattr(src, "_mr", None) if isinstance(src, IntervalTensor) else None
    if cache is None or not isinstance(out, IntervalTensor):
        return
    if cache["v"] != _cache_key(src):
        return
    new = {"v": _cache_key(out)}
    for k, t in cache.items():
        if k != "v":
            new[k] = op(t, *args[1:], **kwargs)
    out._mr = new


def _shapes(args: Sequence[Any]) -> str:
    def d(a: Any) -> str:
        if isinstance(a, IntervalTensor):
            return f"IntervalTensor{tuple(a.shape)}:{str(a.dtype).replace('torch.', '')}"
        if isinstance(a, torch.Tensor):
            return f"Tensor{tuple(a.shape)}:{str(a.dtype).replace('torch.', '')}"
        if isinstance(a, (list, tuple)) and any(isinstance(b, torch.Tensor) for b in a):
            return "[" + ", ".join(d(b) for b in a) + "]"
        return repr(a)

    return ", ".join(d(a) for a in args)


# When a list, every op dispatched to the interval domain is appended (used by the test suite
# to prove each required op is exercised by a containment test).
OP_TRACE: list | None = None


def dispatch(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    """Evaluate ``func`` on interval operands through the rule table."""
    if OP_TRACE is not None:
        OP_TRACE.append(func)
    rule = RULES.get(func)
    if rule is None:
        schema = func._schema
        if schema.is_mutable and schema.name.endswith("_"):
            return _inplace(func, args, kwargs)
        raise UnsupportedOperation(
            f"no interval rule for {func} (called from {where_called()}). "
            "Register one with @boundflow.domains.interval.implements(torch.ops."
            f"{str(func)}) and add a containment test; see docs/interval.md."
        )
    try:
        return rule.fn(*args, **kwargs)
    except BoundFlowError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise IntervalOpError(f"{func} failed on operands ({_shapes(args)}): {e}") from e


def _inplace(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    """``op_`` = out-of-place rule, written back into the first operand's bounds."""
    base = func._schema.name.split("::")[-1][:-1]
    packet = getattr(torch.ops.aten, base, None)
    out_of_place = getattr(packet, func._overloadname, None) if packet is not None else None
    if out_of_place is None or out_of_place not in RULES:
        raise UnsupportedOperation(
            f"no interval rule for {func} or its out-of-place form (called from {where_called()})"
        )
    result = dispatch(out_of_place, args, kwargs)
    return write_into(args[0], result, str(func))


def write_into(target: Any, result: Any, what: str) -> Any:
    """Store ``result`` into ``target`` in place (``target`` keeps its identity and storage)."""
    r_lo, r_hi = lohi(result)
    note_write()
    if isinstance(target, IntervalTensor):
        with torch.no_grad():
            target._lower.copy_(r_lo)
            target._upper.copy_(r_hi)
        return target
    if r_lo is r_hi or torch.equal(r_lo, r_hi):
        with torch.no_grad():
            target.copy_(r_lo)
        return target
    raise UnsupportedOperation(
        f"{what}: the in-place result on a plain tensor of shape {tuple(target.shape)} is an interval; "
        f"a plain tensor cannot hold it (called from {where_called()}). Make the target an IntervalTensor."
    )


def unwrap_all(tree: Any, which: str) -> Any:
    """Replace every ``IntervalTensor`` in a pytree by its lower (``which='lo'``) or upper
    bound."""
    idx = 0 if which == "lo" else 1
    return tree_map(lambda a: lohi(a)[idx] if isinstance(a, IntervalTensor) else a, tree)

"""Outward rounding: make interval results sound against floating-point rounding as well.

Inside ``with boundflow.sound_rounding():`` every interval rule widens its result outward:

* correctly rounded IEEE operations (``+ - * /``, ``sqrt``, casts, comparisons) by one ulp
  (``torch.nextafter``), which covers the single rounding of each such operation;
* dot products, matrix products, convolutions and sums over ``n`` terms additionally by the
  classical a-priori bound ``gamma_{n+2} * (|A| @ |B|)`` (Higham, *Accuracy and Stability of
  Numerical Algorithms*, Thm. 3.5) with ``gamma_n = n u / (1 - n u)``, evaluated on magnitude
  bounds of the operands, plus a factor of 2 margin; this holds for any summation order, so it
  covers blocked/BLAS/vectorised kernels;
* transcendental functions (``exp``, ``log``, ``tanh``, ``sigmoid``, ``softplus``, ``softmax``
  ...) by ``TRANSCENDENTAL_ULPS`` relative ulps plus the smallest subnormal.  This relies on the
  *assumption* that torch's CPU kernels for these functions are accurate to that many ulps
  (SLEEF/glibc document at most 1-4 ulp); it is not a proof about the kernels.

Not covered: hardware or library bugs, flush-to-zero/denormals-are-zero modes, non-IEEE
accelerators, and ops that a rule evaluates through third-party code whose error is
undocumented.  Outside the context manager, bounds are sound in exact real arithmetic applied to
the floating-point inputs, and in practice their error is of the order of the rounding error of
the concrete computation.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

__all__ = ["sound_rounding", "rounding_enabled", "TRANSCENDENTAL_ULPS"]

TRANSCENDENTAL_ULPS = 8

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("boundflow_sound_rounding", default=False)


@contextlib.contextmanager
def sound_rounding(enabled: bool = True) -> Iterator[None]:
    """Context manager under which every interval rule rounds its result outward.

    See the module docstring for exactly what is covered.  Nesting is allowed;
    ``sound_rounding(False)`` switches it off inside an enclosing block.
    """
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def rounding_enabled() -> bool:
    """True inside ``sound_rounding()``."""
    return _ENABLED.get()


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def widen_ulp(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One ulp outward (no-op for integer and bool tensors)."""
    if not _is_float(lo):
        return lo, hi
    return (
        torch.nextafter(lo, torch.full_like(lo, -float("inf"))),
        torch.nextafter(hi, torch.full_like(hi, float("inf"))),
    )


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def widen_abs(lo: torch.Tensor, hi: torch.Tensor, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen by a non-negative absolute error bound ``err``, then one more ulp."""
    lo, hi = lo - err, hi + err
    return widen_ulp(lo, hi)


def widen_rel(lo: torch.Tensor, hi: torch.Tensor, ulps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen by ``ulps`` relative ulps of each bound plus the smallest subnormal."""
    if not _is_float(lo):
        return lo, hi
    fi = torch.finfo(lo.dtype)
    tiny = fi.smallest_normal * fi.eps
    lo_err = lo.abs() * (ulps * fi.eps) + tiny
    hi_err = hi.abs() * (ulps * fi.eps) + tiny
    return widen_ulp(lo - lo_err, hi + hi_err)


def dot_error(n: int, magnitude: torch.Tensor) -> torch.Tensor:
    """An upper bound on the rounding error of any floating-point evaluation of a sum of ``n``
    products whose exact magnitude sum is at most ``magnitude`` (itself computed in floating
    point, hence the margin)."""
    u = unit_roundoff(magnitude.dtype)
    nn_ = n + 2
    gamma = nn_ * u / (1 - nn_ * u)
    return magnitude * (2.0 * gamma) + torch.finfo(magnitude.dtype).smallest_normal

"""Input and output specifications shared by all domains.

Input specs (one per sample, batch first): :class:`Box`, :class:`LinfBall` and
:class:`LinearSpec` (inputs as affine functions of a few parameters plus a box remainder: the
Taylor relaxation of point-cloud transformations).  Each knows its bounding box
(:meth:`box`) and how to concretise a linear function over itself (:meth:`concretize`: the exact
range of ``A x + c`` over the spec).  The output spec :class:`OutputSpec` ``(C, d)`` asks for
bounds on ``C @ y - d`` per sample instead of on ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Box", "LinfBall", "LinearSpec", "OutputSpec", "InputSpec", "as_box"]


def _range(A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact range of ``A @ x`` (``A``: ``(B, S, n)``) over the box ``lo <= x <= hi`` (``(B, n)``)."""
    lo, hi = lo.reshape(lo.shape[0], 1, -1), hi.reshape(hi.shape[0], 1, -1)
    ap, an = A.clamp(min=0), A.clamp(max=0)
    return (ap * lo + an * hi).sum(-1), (ap * hi + an * lo).sum(-1)


@dataclass(frozen=True)
class Box:
    """The axis-aligned box ``lower <= x <= upper`` (same shape; validated on creation)."""

    lower: torch.Tensor
    upper: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.lower, torch.Tensor) or not isinstance(self.upper, torch.Tensor):
            raise TypeError("Box(lower, upper) takes tensors")
        if self.lower.shape != self.upper.shape:
            raise ValueError(
                f"Box: lower has shape {tuple(self.lower.shape)} but upper has shape {tuple(self.upper.shape)}"
            )
        for name, t in (("lower", self.lower), ("upper", self.upper)):
            if t.is_floating_point() and torch.isnan(t).any():
                raise ValueError(f"Box: {name} contains NaN in {int(torch.isnan(t).sum())} entries")
        bad = self.lower > self.upper
        if bad.any():
            first = tuple(torch.nonzero(bad)[0].tolist())
            raise ValueError(f"Box: lower > upper in {int(bad.sum())} of {bad.numel()} entries (first at {first})")

    def box(self) -> Box:
        return self

    def concretize(self, A: torch.Tensor, c: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact range ``(lo, hi)``, shape ``(B, S)``, of ``A @ x.flatten() + c`` over the box
        (``A``: ``(B, S, n)``)."""
        lo, hi = _range(A, self.lower, self.upper)
        return lo + c, hi + c


class LinfBall(Box):
    """``|x - center|_inf <= eps``: the box ``[center - eps, center + eps]`` (``eps >= 0``, a
    number or a tensor broadcast to ``center``)."""

    def __init__(self, center: torch.Tensor, eps: float | torch.Tensor):
        center = torch.as_tensor(center)
        eps_t = torch.as_tensor(eps, dtype=center.dtype)
        if (eps_t < 0).any() or torch.isnan(eps_t).any():
            raise ValueError(f"LinfBall: eps must be >= 0, got {eps}")
        object.__setattr__(self, "lower", center - eps_t)
        object.__setattr__(self, "upper", center + eps_t)
        self.__post_init__()


@dataclass(frozen=True)
class LinearSpec:
    """Inputs ``x = (slope @ theta + nu).reshape(B, *shape)`` for every ``theta`` in
    ``[theta_lower, theta_upper]`` (``(B, k)``) and every ``nu`` in ``[rem_lower, rem_upper]``
    (``(B, n)``); ``slope``: ``(B, n, k)``.  The parameters ``theta`` are shared by all ``n``
    entries, which is what makes it tighter than its bounding box."""

    slope: torch.Tensor
    theta_lower: torch.Tensor
    theta_upper: torch.Tensor
    rem_lower: torch.Tensor
    rem_upper: torch.Tensor
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        b, n, k = self.slope.shape
        want = {"theta_lower": (b, k), "theta_upper": (b, k), "rem_lower": (b, n), "rem_upper": (b, n)}
        for name, shp in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shp:
                raise ValueError(f"LinearSpec: {name} has shape {got}, expected {shp} (slope is {(b, n, k)})")
        size = 1
        for s in self.shape:
            size *= s
        if size != n:
            raise ValueError(f"LinearSpec: shape {self.shape} has {size} entries, the slope has {n} rows")
        Box(self.theta_lower, self.theta_upper)  # validates the two boxes
        Box(self.rem_lower, self.rem_upper)

    def concretize(self, A: torch.Tensor, c: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact range of ``A @ x.flatten() + c`` over the spec: ``(A slope) theta`` over the theta
        box plus ``A nu`` over the remainder box."""
        t_lo, t_hi = _range(A @ self.slope, self.theta_lower, self.theta_upper)
        r_lo, r_hi = _range(A, self.rem_lower, self.rem_upper)
        return t_lo + r_lo + c, t_hi + r_hi + c

    def box(self) -> Box:
        """The bounding box of the inputs (loses the shared ``theta``)."""
        b = self.slope.shape[0]
        eye = torch.eye(self.slope.shape[1], dtype=self.slope.dtype, device=self.slope.device).expand(b, -1, -1)
        lo, hi = self.concretize(eye)
        return Box(lo.reshape(b, *self.shape), hi.reshape(b, *self.shape))

    def lift(self, model: nn.Module) -> tuple[nn.Module, Box]:
        """The same question as a box question: a network of ``z = (theta, nu)`` that computes
        ``model(x(z))``, and the box of ``z``.  Linear domains bound it exactly as well as they
        bound ``model`` composed with the affine map (the map is a first, affine layer)."""
        z_lo = torch.cat([self.theta_lower, self.rem_lower], 1)
        z_hi = torch.cat([self.theta_upper, self.rem_upper], 1)
        return _Lifted(model, self.slope, self.shape), Box(z_lo, z_hi)


class _Lifted(nn.Module):
    """``z = (theta, nu)`` -> ``model((slope @ theta + nu).reshape(B, *shape))``."""

    def __init__(self, model: nn.Module, slope: torch.Tensor, shape: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("slope", slope)
        self.k, self.shape = slope.shape[2], shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        theta, nu = z[:, : self.k], z[:, self.k :]
        x = torch.bmm(self.slope, theta.unsqueeze(-1)).squeeze(-1) + nu
        return self.model(x.reshape(-1, *self.shape))


@dataclass(frozen=True)
class OutputSpec:
    """Bound ``C @ y - d`` per sample instead of ``y``: ``C`` is ``(S, n_out)`` or
    ``(B, S, n_out)``, ``d`` (optional) broadcasts to ``(B, S)``."""

    C: torch.Tensor
    d: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.C, torch.Tensor) or self.C.dim() not in (2, 3):
            raise ValueError(f"OutputSpec: C must be a (S, n_out) or (B, S, n_out) tensor, got {self.C!r}")

    @staticmethod
    def margins(
        label: int, n_classes: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> OutputSpec:
        """``y[label] - y[j]`` for every other class ``j`` (rows in class order)."""
        if not 0 <= label < n_classes:
            raise ValueError(f"OutputSpec.margins: label {label} is not one of {n_classes} classes")
        others = [j for j in range(n_classes) if j != label]
        C = torch.zeros(len(others), n_classes, dtype=dtype, device=device)
        C[:, label] = 1.0
        C[torch.arange(len(others), device=device), others] = -1.0
        return OutputSpec(C)


InputSpec = Box | LinearSpec


def as_box(spec: InputSpec) -> Box:
    return spec.box()

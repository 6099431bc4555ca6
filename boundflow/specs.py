"""Input specifications shared by all domains."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Box"]


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

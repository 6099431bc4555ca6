"""Small reference networks shared by the command line, the benchmarks and the demo."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["mlp", "hidden_mlp"]


def mlp(
    widths: list[int], act: type[nn.Module] = nn.ReLU, seed: int | None = 0, dtype: torch.dtype = torch.float64
) -> nn.Sequential:
    """``Linear - act - ... - Linear`` through ``widths`` (input first, output last), initialised
    after ``torch.manual_seed(seed)`` (``None``: the global generator as it is)."""
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        raise ValueError(f"mlp: widths must be at least two positive sizes, got {widths}")
    if seed is not None:
        torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        mods += [nn.Linear(a, b), act()]
    mods.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*mods).to(dtype)


def hidden_mlp(d_in: int, d_out: int, hidden: int, layers: int, seed: int | None = 0) -> nn.Sequential:
    """``layers`` linear layers, each hidden one ``hidden`` wide, ReLU in between (float64): the
    training command's network, ``mlp([d_in] + [hidden] * (layers - 1) + [d_out])``."""
    return mlp([d_in] + [hidden] * (layers - 1) + [d_out], seed=seed)

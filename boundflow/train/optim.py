"""Bounded SGD: ``torch.optim.SGD``'s update (momentum, weight decay; no dampening, no
Nesterov) in interval arithmetic on interval parameters."""

from __future__ import annotations

import torch

from boundflow.domains.interval import IntervalTensor, arith, lohi

__all__ = ["IntervalSGD"]


class IntervalSGD:
    """For every concrete parameter vector ``p`` in the box, gradient ``g`` in the interval
    gradient and momentum buffer in its box, the concrete SGD update lands in the new box.

    The update is evaluated as ``p' = (1 - lr*wd) p - lr (mu * buf + g)``, with
    ``buf' = mu * buf + g + wd * p``: the same function as torch's
    ``g += wd p; buf = mu buf + g; p -= lr buf``, with ``p`` appearing once, so the interval
    result is tighter (no dependency blow-up from ``p - lr*wd*p``)."""

    def __init__(self, params: dict[str, IntervalTensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params = params
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self) -> None:
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        for name, p in self.params.items():
            if p.grad is None:
                continue
            g = lohi(p.grad)
            g = (g[0].clone(), g[1].clone())
            pb = (p.lower, p.upper)
            if mu:
                if name in self.buffers:
                    step_dir = arith.add(arith.scale(self.buffers[name], mu), g)
                else:
                    step_dir = g
                buf = arith.add(step_dir, arith.scale(pb, wd)) if wd else step_dir
                self.buffers[name] = (buf[0].clone(), buf[1].clone())
            else:
                step_dir = g
            shrink = arith.scale(pb, 1 - lr * wd) if wd else pb
            new = arith.sub(shrink, arith.scale(step_dir, lr))
            p._lower.copy_(new[0])
            p._upper.copy_(new[1])

    def state_dict(self) -> dict:
        return {"buffers": {k: (a.clone(), b.clone()) for k, (a, b) in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {k: (a.clone(), b.clone()) for k, (a, b) in state["buffers"].items()}

"""Bounded losses: custom autograd functions whose backward is one closed-form interval rule.

Each takes logits (plain tensor or ``IntervalTensor``) and a target given as *bounds*: exact
labels, or for label-flipping a set of possible labels per sample.  Mean reduction over the
batch.  Gradients are the tight range of the per-sample derivative:

* ``bce``: single logit ``z``, label ``y in {0, 1}``: ``(sigmoid(z) - y) / N`` (monotone in z);
* ``cross_entropy``: ``(softmax(z) - onehot(y)) / N`` with FullCert's per-coordinate softmax
  bounds ``l_i = exp(l_i) / (exp(l_i) + sum_{j!=i} exp(u_j))`` (upper symmetric);
* ``hinge``: single logit, ``s = 2y - 1``: ``-s / N`` where ``s z < 1`` for every value, 0 where
  ``s z >= 1`` for every value, their hull otherwise;
* ``mse``: ``2 (z - t) / numel`` with ``t`` the label (single output) or its one-hot vector, or
  the float regression target (one per output).

With zero-width logits and exact labels each reproduces the torch loss and gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from boundflow import rounding
from boundflow.domains.interval import IntervalTensor, arith, lohi, make
from boundflow.domains.interval.rules_softmax import log_softmax_bounds

__all__ = ["bounded_loss", "plain_loss", "LOSSES", "Target"]

LOSSES = ("bce", "cross_entropy", "hinge", "mse")


class Target:
    """Label bounds for a batch: ``y`` nominal labels (n,) — class indices, or float regression
    targets (n,) or (n, outputs) —, ``sets`` optional bool (n, C) of possible labels."""

    def __init__(self, y: torch.Tensor, sets: torch.Tensor | None = None, n_classes: int | None = None):
        self.y = y
        self.sets = sets
        self.n_classes = n_classes if n_classes is not None else (sets.shape[1] if sets is not None else None)

    def onehot_bounds(self, c: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of the one-hot label vector: upper 1 where the class is possible, lower 1
        where it is the only possible class."""
        if self.sets is None:
            oh = F.one_hot(self.y, c).to(dtype)
            return oh, oh
        s = self.sets[:, :c].to(dtype)
        single = self.sets[:, :c].sum(1, keepdim=True) == 1
        return s * single.to(dtype), s

    def scalar_bounds(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of a 0/1 label (binary tasks)."""
        if self.sets is None:
            y = self.y.to(dtype)
            return y, y
        can0, can1 = self.sets[:, 0], self.sets[:, 1]
        return (~can0).to(dtype), can1.to(dtype)


def _flat_logit(z_lo: torch.Tensor) -> bool:
    return z_lo.dim() == 1 or (z_lo.dim() == 2 and z_lo.shape[1] == 1)


class _BoundedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, kind: str, target: Target):
        z_lo, z_hi = lohi(logits)
        shape = z_lo.shape
        if kind in ("bce", "hinge"):
            if not _flat_logit(z_lo):
                raise ValueError(f"loss {kind!r} needs one logit per sample, got logits of shape {tuple(shape)}")
            z_lo, z_hi = z_lo.reshape(-1), z_hi.reshape(-1)
        n = z_lo.shape[0]
        if kind == "bce":
            y_lo, y_hi = target.scalar_bounds(z_lo.dtype)
            lo, hi = _bce_bounds(z_lo, z_hi, y_lo, y_hi)
            g_lo, g_hi = torch.sigmoid(z_lo) - y_hi, torch.sigmoid(z_hi) - y_lo
        elif kind == "hinge":
            y_lo, y_hi = target.scalar_bounds(z_lo.dtype)
            lo, hi, g_lo, g_hi = _hinge_bounds(z_lo, z_hi, y_lo, y_hi)
        elif kind == "cross_entropy":
            c = z_lo.shape[1]
            o_lo, o_hi = target.onehot_bounds(c, z_lo.dtype)
            ls_lo, ls_hi = log_softmax_bounds(z_lo, z_hi, 1)
            big = torch.finfo(z_lo.dtype).max
            # loss = -log_softmax[y] for some possible y: hull over the label set
            lo = (-ls_hi).masked_fill(o_hi == 0, big).amin(1)
            hi = (-ls_lo).masked_fill(o_hi == 0, -big).amax(1)
            g_lo, g_hi = ls_lo.exp() - o_hi, ls_hi.exp() - o_lo
        elif kind == "mse":
            if target.y.is_floating_point():  # regression targets, one per output
                t_lo = t_hi = _regression_target(target.y, shape, z_lo.dtype)
            elif _flat_logit(z_lo):
                t_lo, t_hi = target.scalar_bounds(z_lo.dtype)
                t_lo, t_hi = t_lo.reshape(shape), t_hi.reshape(shape)
            else:
                t_lo, t_hi = target.onehot_bounds(z_lo.shape[1], z_lo.dtype)
            d = arith.sub((z_lo, z_hi), (t_lo, t_hi))
            sq = arith.square(d)
            m = z_lo.numel()
            loss = _divided(*arith.reduce_sum(sq, list(range(sq[0].dim()))), m)
            ctx.save_for_backward(*_divided(2 * d[0], 2 * d[1], m))
            ctx.shape = shape
            return make(loss[0], loss[1])
        else:
            raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")
        if rounding.rounding_enabled():  # sigmoid/softmax minus a label in [0, 1]: both ends <= 1 in size
            err = (
                (rounding.TRANSCENDENTAL_ULPS + 2)
                * torch.finfo(g_lo.dtype).eps
                * (1 + torch.maximum(g_lo.abs(), g_hi.abs()))
            )
            g_lo, g_hi = rounding.widen_abs(g_lo, g_hi, err)
        ctx.save_for_backward(*_divided(g_lo, g_hi, n))
        ctx.shape = shape
        return make(*_divided(*arith.reduce_sum((lo, hi), list(range(lo.dim()))), n))

    @staticmethod
    def backward(ctx, grad):
        g_lo, g_hi = ctx.saved_tensors
        out = arith.mul((g_lo, g_hi), lohi(grad))
        return make(out[0].reshape(ctx.shape), out[1].reshape(ctx.shape)), None, None


def _divided(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo, hi] / n`` (``n > 0``), one ulp outward under ``sound_rounding``."""
    lo, hi = lo / n, hi / n
    return rounding.widen_ulp(lo, hi) if rounding.rounding_enabled() else (lo, hi)


def _bce_bounds(z_lo, z_hi, y_lo, y_hi):
    """Range of ``softplus(z) - y z`` over the box: convex in z, linear in y."""
    from boundflow.domains.interval.rules_loss import _bce_range

    a = _bce_range(z_lo, z_hi, y_lo, None)
    if torch.equal(y_lo, y_hi):
        return a
    return arith.hull(a, _bce_range(z_lo, z_hi, y_hi, None))


def _hinge_bounds(z_lo, z_hi, y_lo, y_hi):
    """``max(0, 1 - s z)`` with ``s = 2y - 1`` for y in {y_lo, y_hi}: monotone in z for fixed s."""
    outs = []
    for y in (y_lo, y_hi):
        s = 2 * y - 1
        a, b = F.relu(1 - s * z_lo), F.relu(1 - s * z_hi)
        loss = (torch.minimum(a, b), torch.maximum(a, b))
        # derivative -s where s z < 1, 0 where s z >= 1
        sz_lo, sz_hi = torch.minimum(s * z_lo, s * z_hi), torch.maximum(s * z_lo, s * z_hi)
        active_all, active_none = sz_hi < 1, sz_lo >= 1
        d = -s
        g_lo = torch.where(active_all, d, torch.where(active_none, 0.0, torch.clamp(d, max=0)))
        g_hi = torch.where(active_all, d, torch.where(active_none, 0.0, torch.clamp(d, min=0)))
        outs.append((loss, (g_lo, g_hi)))
    (l1, g1), (l2, g2) = outs
    lo, hi = arith.hull(l1, l2)
    g_lo, g_hi = arith.hull(g1, g2)
    return lo, hi, g_lo, g_hi


def _regression_target(y: torch.Tensor, shape, dtype) -> torch.Tensor:
    if y.numel() != _numel(shape):
        raise ValueError(f"mse: {y.numel()} regression targets for outputs of shape {tuple(shape)}")
    return y.to(dtype).reshape(shape)


def _numel(shape) -> int:
    n = 1
    for s_ in shape:
        n *= s_
    return n


def _check_targets(y: torch.Tensor, kind: str) -> None:
    if y.is_floating_point() and kind != "mse":
        raise ValueError(f"loss {kind!r} needs class labels; float regression targets take loss='mse'")


def bounded_loss(logits: torch.Tensor, target: Target | torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss of ``kind`` (``bce``, ``cross_entropy``, ``hinge``, ``mse``) with a sound,
    tight interval gradient.  ``target``: labels (an int tensor, or float regression targets
    for ``mse``) or a :class:`Target`."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose from {', '.join(LOSSES)}")
    if not isinstance(target, Target):
        y = torch.as_tensor(target)
        target = Target(y if y.is_floating_point() else y.to(torch.int64))
    _check_targets(target.y, kind)
    if not isinstance(logits, IntervalTensor):
        if target.sets is not None:
            raise ValueError("label sets need interval logits; wrap the logits in an IntervalTensor")
        return plain_loss(logits, target.y, kind)
    return _BoundedLoss.apply(logits, kind, target)


def plain_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The same losses on plain tensors (the nominal run and the replay tests use these)."""
    _check_targets(y, kind)
    if kind == "mse" and y.is_floating_point():
        return F.mse_loss(logits, _regression_target(y, logits.shape, logits.dtype))
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), y.to(logits.dtype))
    if kind == "hinge":
        return F.relu(1 - (2 * y.to(logits.dtype) - 1) * logits.reshape(-1)).mean()
    if kind == "cross_entropy":
        return F.cross_entropy(logits, y)
    if kind == "mse":
        t = (
            y.to(logits.dtype).reshape(logits.shape)
            if _flat_logit(logits)
            else F.one_hot(y, logits.shape[1]).to(logits.dtype)
        )
        return F.mse_loss(logits, t)
    raise ValueError(f"unknown loss {kind!r}; choose from {', '.join(LOSSES)}")

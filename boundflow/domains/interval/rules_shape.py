"""Shape, view, indexing, copy and factory ops: exact on each bound.

Index, mask and shape operands must be exact; an interval index (e.g. ``x[x > 0]`` with an
undecided comparison) raises :class:`boundflow.DomainError`.
"""

from __future__ import annotations

import torch

from boundflow.domains.interval.generic import accumulating, available, factory, structural
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import IntervalTensor, lohi, make, note_write, propagate_mid_rad, write_into

aten = torch.ops.aten

structural(*available("permute.default", "transpose.int", "t.default", "expand.default"), keep_cache=True)
structural(
    *available(
        "squeeze.default",
        "squeeze.dim",
        "squeeze.dims",
        "unsqueeze.default",
        "cat.default",
        "stack.default",
        "slice.Tensor",
        "select.int",
        "index.Tensor",
        "_unsafe_index.Tensor",
        "index_select.default",
        "gather.default",
        "clone.default",
        "detach.default",
        "alias.default",
        "split.Tensor",
        "split_with_sizes.default",
        "unbind.int",
        "flip.default",
        "roll.default",
        "repeat.default",
        "constant_pad_nd.default",
        "slice_backward.default",
        "select_backward.default",
        "diagonal_backward.default",
        "unfold.default",
        "diagonal.default",
        "scatter.src",
        "scatter.value",
        "fill.Scalar",
        "embedding.default",
    )
)

factory(
    *available(
        "ones_like.default",
        "zeros_like.default",
        "empty_like.default",
        "full_like.default",
        "new_zeros.default",
        "new_ones.default",
        "new_empty.default",
        "new_full.default",
        "new_empty_strided.default",
    )
)


def _numel(t) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 1


accumulating(aten.index_put.default, lambda self, indices, values, accumulate=False: _numel(values) + 1)
accumulating(aten._unsafe_index_put.default, lambda self, indices, values, accumulate=False: _numel(values) + 1)
accumulating(aten.scatter_add.default, lambda self, dim, index, src: _numel(src) + 1)
_index_add_terms = lambda self, dim, index, source, alpha=1: _numel(source) + 2  # noqa: E731
_index_add_positive = accumulating(aten.index_add.default, _index_add_terms, register=False)


@implements(aten.index_add.default)
def index_add(self, dim, index, source, alpha=1):
    """``self + alpha * source`` scattered along ``dim``: monotone in ``source`` for
    ``alpha >= 0``; a negative ``alpha`` is rewritten exactly as ``|alpha| * (-source)``."""
    if alpha < 0:
        if isinstance(source, IntervalTensor):
            source = IntervalTensor(-source.upper, -source.lower, check=False)
        else:
            source = -source
        alpha = -alpha
    return _index_add_positive(self, dim, index, source, alpha=alpha)


accumulating(
    aten.embedding_dense_backward.default,
    lambda grad, indices, num_weights, padding_idx, scale_grad_by_freq: _numel(indices) + 2,
)


@implements(aten.copy_.default)
def copy_(self, src, non_blocking: bool = False):
    """In-place copy: the target keeps its identity; its bounds become those of ``src``
    (cast to the target dtype; casting is monotone so the cast bounds contain the cast value)."""
    if isinstance(src, IntervalTensor) and isinstance(self, torch.Tensor) and src.dtype != self.dtype:
        src = to_copy(src, dtype=self.dtype)  # the cast's own rule (truth values, integer range)
    src_lo, src_hi = lohi(src)
    if isinstance(self, IntervalTensor) and not isinstance(src, IntervalTensor):
        src_hi = src_lo
    if not isinstance(self, IntervalTensor):
        return write_into(self, src, "aten.copy_")
    note_write()
    with torch.no_grad():
        self._lower.copy_(src_lo.expand_as(self._lower) if isinstance(src_lo, torch.Tensor) else src_lo)
        self._upper.copy_(src_hi.expand_as(self._upper) if isinstance(src_hi, torch.Tensor) else src_hi)
    return self


def _view_rule(op):
    def rule(self, size):
        """A view of each bound; where a bound is not viewable with this shape (its strides
        differ from the wrapper's), a reshaped copy (same values)."""
        lo, hi = lohi(self)

        def v(t):
            try:
                return op(t, size)
            except RuntimeError:
                return t.reshape(size)

        out = make(v(lo), v(hi), exact=True)
        propagate_mid_rad(self, out, lambda t, *a: v(t), (self, size), {})
        return out

    return rule


implements(aten.view.default)(_view_rule(aten.view.default))
implements(aten._unsafe_view.default)(_view_rule(aten._unsafe_view.default))
accumulating(aten.unfold_backward.default, lambda grad, input_sizes, dim, size, step: size + 1)


@implements(aten._to_copy.default)
def to_copy(self, **kwargs):
    """Dtype/device conversion.  Rounding to nearest is monotone, so the converted bounds
    contain the converted value; under ``sound_rounding`` a narrowing float conversion is
    widened by one ulp so the bounds also contain the unrounded value."""
    lo, hi = lohi(self)
    target = kwargs.get("dtype") or lo.dtype
    if target == torch.bool and lo.dtype != torch.bool:
        # truth values: certainly True where 0 is excluded, possibly True unless exactly 0
        certain, possible = (lo > 0) | (hi < 0), (lo != 0) | (hi != 0)
        other = {k: v for k, v in _copy_kwargs(kwargs).items() if k != "dtype"}
        return make(certain.to(**other), possible.to(**other), exact=True)
    if not target.is_floating_point and not target.is_complex and target != torch.bool and lo.dtype != torch.bool:
        _check_int_range(lo, hi, target)
    r_lo, r_hi = lo.to(**_copy_kwargs(kwargs)), hi.to(**_copy_kwargs(kwargs))
    narrowing = (
        r_lo.is_floating_point() and lo.is_floating_point() and torch.finfo(r_lo.dtype).eps > torch.finfo(lo.dtype).eps
    )
    return make(r_lo, r_hi, exact=not narrowing)


def _check_int_range(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype) -> None:
    """A cast to an integer type truncates (monotone) only inside the type's range; outside it
    values wrap or are undefined, so an interval reaching out of range is refused."""
    info = torch.iinfo(dtype)
    if lo.is_floating_point():
        bad = (lo != hi) & ((lo <= info.min - 1) | (hi >= info.max + 1))
    else:
        bad = (lo != hi) & ((lo < info.min) | (hi > info.max))
    if bad.any():
        from boundflow.errors import DomainError

        raise DomainError(
            f"cast to {dtype}: the interval leaves the type's range [{info.min}, {info.max}] in "
            f"{int(bad.sum())} of {lo.numel()} entries, where the cast wraps around (not monotone)"
        )


def _copy_kwargs(kwargs: dict) -> dict:
    out = {
        k: v for k, v in kwargs.items() if k in ("dtype", "device", "non_blocking", "memory_format") and v is not None
    }
    return out


@implements(aten._local_scalar_dense.default)
def local_scalar(self):
    """``.item()`` only for an exact interval."""
    lo, hi = lohi(self)
    if torch.equal(lo, hi):
        return lo.item()
    from boundflow.errors import DomainError

    raise DomainError(f".item() of an interval with width {float((hi - lo).max()):.3g}: the value is not determined")


@implements(*available("is_same_size.default"))
def is_same_size(a, b):
    return a.shape == b.shape


@implements(aten.equal.default)
def equal(a, b):
    """``torch.equal`` on intervals compares the bounds (structural identity), not values."""
    a_lo, a_hi = lohi(a)
    b_lo, b_hi = lohi(b)
    return bool(torch.equal(a_lo, b_lo) and torch.equal(a_hi, b_hi))


@implements(*available("native_dropout.default", "bernoulli_.float", "bernoulli.default", "bernoulli.p"))
def random_ops(*args, **kwargs):
    """Random masks have no interval semantics here: refuse with a pointer to eval mode."""
    from boundflow.errors import UnsupportedOperation, where_called

    raise UnsupportedOperation(
        "random ops (Dropout in training mode) are not supported on intervals: the bound would have to "
        f"cover every mask. Call model.eval() (called from {where_called()})."
    )

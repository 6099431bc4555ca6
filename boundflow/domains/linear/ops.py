"""One classification of ATen ops for the linear domain and the solver encodings."""

from __future__ import annotations

import torch

aten = torch.ops.aten

__all__ = ["MOVING", "POSITIVE_LINEAR", "REINDEX_OPS", "AFFINE_OPS", "PRODUCT_OPS", "TUPLE_OPS"]

# ops that only move or select entries: the solver encodings apply them to a tensor of
# variable indices
MOVING = {
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.permute.default,
    aten.transpose.int,
    aten.t.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.expand.default,
    aten.clone.default,
    aten.detach.default,
    aten.alias.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.index_select.default,
    aten.flip.default,
}
# linear maps with non-negative coefficients (moving, selecting, averaging or padding entries)
POSITIVE_LINEAR = MOVING | {
    aten.avg_pool2d.default,
    aten._adaptive_avg_pool2d.default,
    aten.mean.dim,
    aten.sum.dim_IntList,
    aten.constant_pad_nd.default,
    aten._to_copy.default,
}
REINDEX_OPS = MOVING | {aten.lift_fresh_copy.default}
# ops that are affine in their non-constant tensor operands (jointly, for several operands)
AFFINE_OPS = POSITIVE_LINEAR | {
    aten.cat.default,
    aten.stack.default,
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.add.Scalar,
    aten.sub.Scalar,
    aten.neg.default,
    aten.rsub.Scalar,
    aten.addmm.default,
    aten.mm.default,
    aten.bmm.default,
    aten.mv.default,
    aten.convolution.default,
    aten._native_batch_norm_legit_no_training.default,
    aten.lift_fresh_copy.default,
}
# ops affine when all but one tensor operand is constant

# ops affine when all but one tensor operand is constant
PRODUCT_OPS = {
    aten.mul.Tensor,
    aten.mul.Scalar,
    aten.div.Tensor,
    aten.div.Scalar,
    aten.addmm.default,
    aten.mm.default,
    aten.bmm.default,
    aten.mv.default,
    aten.convolution.default,
}

TUPLE_OPS = {
    aten.native_batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    aten.max_pool2d_with_indices.default,
}

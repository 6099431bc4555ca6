"""Matrix products, convolutions and batch normalisation (eval mode), forward and backward.

Products of two intervals use the midpoint-radius form (:func:`arith.bilinear`): three
products of the plain kind, exact when one operand is exact.
"""

from __future__ import annotations

import math

import torch

from boundflow import rounding
from boundflow.domains.interval import arith
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import doubled_mid_rad, exact_value, is_exact, lohi, make
from boundflow.errors import UnsupportedOperation, where_called

aten = torch.ops.aten


def _product(f, a, b, n_terms: int):
    (lo, hi), rounded = arith.bilinear(f, lohi(a), lohi(b), n_terms)
    return lo, hi, rounded


_MATMUL = {
    "mm": (torch.mm, torch.addmm, "addmm_"),
    "bmm": (torch.bmm, torch.baddbmm, "baddbmm_"),
    "mv": (torch.mv, torch.addmv, "addmv_"),
}


def _derived(cache: dict, key: str) -> torch.Tensor:
    """``mag2 = |m2| + r2`` (twice the magnitude bound) and ``absm2 = |m2|``, cached."""
    if key not in cache:
        cache[key] = cache["m2"].abs().add_(cache["r2"]) if key == "mag2" else cache["m2"].abs()
    return cache[key]


def matmul_affine(kind: str, a, b, bias=None, beta: float = 1, alpha: float = 1):
    """``beta * bias + alpha * (A @ B)`` for ``kind`` in ``mm``/``bmm``/``mv``, in
    midpoint-radius form with the scalings fused into BLAS calls:

        c = alpha/4 * m2A @ m2B,   r = |alpha|/4 * (mag2A @ r2B + r2A @ |m2B|)

    with ``m2 = lo + hi``, ``r2 = hi - lo``, ``mag2 = |m2| + r2`` (exact scalings by powers of
    two of the midpoint/radius; cached per operand, so a weight or activation used in the
    forward and the backward pass is converted once).  Same bound as :func:`arith.bilinear`.
    Under ``sound_rounding`` it defers to :func:`arith.bilinear`, which adds the rounding
    error bound."""
    plain, add_f, add_inplace = _MATMUL[kind]
    if rounding.rounding_enabled() or (is_exact(a) and is_exact(b)):
        prod, rounded = arith.bilinear(plain, lohi(a), lohi(b), a.shape[-1])
        if alpha != 1:
            prod = arith.scale(prod, alpha)
        if bias is not None and beta != 0:
            prod = arith.add(arith.scale(lohi(bias), beta) if beta != 1 else lohi(bias), prod)
            rounded = False
        return make(*prod, rounded=rounded)
    exact_bias = bias is not None and beta != 0 and is_exact(bias)
    lo_a = lohi(a)[0]
    zero = lo_a.new_zeros(())
    base = bias if exact_bias else zero
    base_beta = beta if exact_bias else 0
    aa = abs(alpha)
    if is_exact(b):
        ca = doubled_mid_rad(a)
        c = add_f(base, ca["m2"], b, beta=base_beta, alpha=alpha * 0.5)
        r = add_f(zero, ca["r2"], b.abs(), beta=0, alpha=aa * 0.5)
    elif is_exact(a):
        cb = doubled_mid_rad(b)
        c = add_f(base, a, cb["m2"], beta=base_beta, alpha=alpha * 0.5)
        r = add_f(zero, a.abs(), cb["r2"], beta=0, alpha=aa * 0.5)
    else:
        ca, cb = doubled_mid_rad(a), doubled_mid_rad(b)
        c = add_f(base, ca["m2"], cb["m2"], beta=base_beta, alpha=alpha * 0.25)
        r = add_f(zero, _derived(ca, "mag2"), cb["r2"], beta=0, alpha=aa * 0.25)
        getattr(r, add_inplace)(ca["r2"], _derived(cb, "absm2"), alpha=aa * 0.25)
    lo, hi = torch.sub(c, r), c.add_(r)
    if bias is not None and beta != 0 and not exact_bias:
        return make(*arith.add(arith.scale(lohi(bias), beta) if beta != 1 else lohi(bias), (lo, hi)))
    return make(lo, hi)


@implements(aten.mm.default)
def mm(a, b):
    return matmul_affine("mm", a, b)


@implements(aten.bmm.default)
def bmm(a, b):
    return matmul_affine("bmm", a, b)


@implements(aten.mv.default)
def mv(a, b):
    return matmul_affine("mv", a, b)


@implements(aten.dot.default)
def dot(a, b):
    lo, hi, r = _product(torch.dot, a, b, a.shape[-1])
    return make(lo, hi, rounded=r)


@implements(aten.addmm.default)
def addmm(bias, a, b, beta=1, alpha=1):
    return matmul_affine("mm", a, b, bias, beta, alpha)


@implements(aten.baddbmm.default)
def baddbmm(bias, a, b, beta=1, alpha=1):
    return matmul_affine("bmm", a, b, bias, beta, alpha)


@implements(aten.addmv.default)
def addmv(bias, a, b, beta=1, alpha=1):
    return matmul_affine("mv", a, b, bias, beta, alpha)


def _conv_terms(weight, transposed: bool, groups: int) -> int:
    k = math.prod(weight.shape[2:])
    return max(weight.shape[0], weight.shape[1] * groups) * k


@implements(aten.convolution.default)
def convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """Convolution (any dimensionality, stride, padding, dilation, groups, transposed)."""

    def f(x, w):
        return aten.convolution.default(x, w, None, stride, padding, dilation, transposed, output_padding, groups)

    lo, hi, r = _product(f, input, weight, _conv_terms(weight, transposed, groups))
    if bias is None:
        return make(lo, hi, rounded=r)
    return make(*arith.add((lo, hi), _per_channel(bias, lo.dim())))


def _per_channel(t, ndim: int) -> arith.Bounds:
    """A per-channel vector (bias, BN weight) as bounds broadcastable over ``(N, C, ...)``."""
    shape = [1, -1] + [1] * (ndim - 2)
    lo, hi = lohi(t)
    if lo is hi:
        v = lo.reshape(shape)
        return v, v
    return lo.reshape(shape), hi.reshape(shape)


@implements(aten.convolution_backward.default)
def convolution_backward(
    grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask
):
    """``grad_input`` is bilinear in (grad_output, weight), ``grad_weight`` in (grad_output,
    input), ``grad_bias`` a sum of grad_output."""
    conv_args = (stride, padding, dilation, transposed, output_padding, groups)

    def part(which: int):
        """Bilinear map for one output of convolution_backward (the other operand only
        supplies its shape)."""
        mask = [which == 0, which == 1, False]
        shape_holder = lohi(input)[0] if which == 0 else lohi(weight)[0]

        def f(g, other):
            x, w = (shape_holder, other) if which == 0 else (other, shape_holder)
            return aten.convolution_backward.default(g, x, w, None, *conv_args, mask)[which]

        return f

    results: list = [None, None, None]
    if output_mask[0]:
        lo, hi, r = _product(part(0), grad_output, weight, _conv_terms(weight, transposed, groups))
        results[0] = make(lo, hi, rounded=r)
    if output_mask[1]:
        n = grad_output.shape[0] * max(math.prod(grad_output.shape[2:]), math.prod(input.shape[2:]))
        lo, hi, r = _product(part(1), grad_output, input, n)
        results[1] = make(lo, hi, rounded=r)
    if output_mask[2]:
        dims = [0] + list(range(2, grad_output.dim()))
        results[2] = make(*arith.reduce_sum(lohi(grad_output), dims))
    return tuple(results)


# -- batch normalisation (eval mode) ---------------------------------------------------------


def _bn_train_error() -> UnsupportedOperation:
    return UnsupportedOperation(
        "BatchNorm in training mode (batch statistics) has no interval rule: the batch mean and variance "
        f"of interval data are not implemented. Call model.eval() first (called from {where_called()})."
    )


def _channel_shape(x) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


def _bn_scale(running_var, eps: float, shape) -> arith.Bounds:
    """``1 / sqrt(running_var + eps)`` per channel: exact (one object twice) normally; under
    ``sound_rounding`` an interval holding the real value (the sum is rounded once, ``rsqrt``
    is allowed ``TRANSCENDENTAL_ULPS``)."""
    rv = exact_value(running_var, "running_var")
    if not rounding.rounding_enabled():
        inv = torch.rsqrt(rv + eps).reshape(shape)
        return inv, inv
    s_lo, s_hi = rounding.widen_ulp(rv + eps, rv + eps)
    lo, hi = rounding.widen_rel(torch.rsqrt(s_hi), torch.rsqrt(s_lo), rounding.TRANSCENDENTAL_ULPS)
    return lo.clamp(min=0).reshape(shape), hi.reshape(shape)


def _bn_eval(input, weight, bias, running_mean, running_var, eps):
    shape = _channel_shape(input)
    rm = exact_value(running_mean, "running_mean").reshape(shape)
    inv = _bn_scale(running_var, eps, shape)
    xn = arith.mul(arith.sub(lohi(input), (rm, rm)), inv)
    if weight is not None:
        xn = arith.mul(xn, _per_channel(weight, input.dim()))
    if bias is not None:
        xn = arith.add(xn, _per_channel(bias, input.dim()))
    out = make(*xn)
    empty = lohi(input)[0].new_zeros(0)
    return out, make(empty, empty.clone(), exact=True), make(empty, empty.clone(), exact=True)


@implements(aten.native_batch_norm.default)
def native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    if training or running_mean is None:
        raise _bn_train_error()
    return _bn_eval(input, weight, bias, running_mean, running_var, eps)


@implements(aten._native_batch_norm_legit_no_training.default)
def native_batch_norm_no_training(input, weight, bias, running_mean, running_var, momentum, eps):
    return _bn_eval(input, weight, bias, running_mean, running_var, eps)


@implements(aten.native_batch_norm_backward.default)
def native_batch_norm_backward(
    grad_out, input, weight, running_mean, running_var, save_mean, save_invstd, train, eps, output_mask
):
    """Eval mode: ``dx = g w / sqrt(var + eps)``, ``dw = sum g (x - mean) / sqrt(var + eps)``,
    ``db = sum g`` over batch and spatial dimensions."""
    if train:
        raise _bn_train_error()
    shape = _channel_shape(grad_out)
    inv = _bn_scale(running_var, eps, shape)
    g = lohi(grad_out)
    dims = [0] + list(range(2, grad_out.dim()))
    results: list = [None, None, None]
    if output_mask[0]:
        if weight is None:
            results[0] = make(*arith.mul(g, inv))
        else:
            results[0] = make(*arith.mul(g, arith.mul(_per_channel(weight, grad_out.dim()), inv)))
    if output_mask[1]:
        rm = exact_value(running_mean, "running_mean").reshape(shape)
        xn = arith.mul(arith.sub(lohi(input), (rm, rm)), inv)
        results[1] = make(*arith.reduce_sum(arith.mul(g, xn), dims))
    if output_mask[2]:
        results[2] = make(*arith.reduce_sum(g, dims))
    return tuple(results)

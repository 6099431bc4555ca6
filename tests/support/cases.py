"""The containment cases: one or more per rule family, each a function of a hypothesis draw
that returns ``(fn, args)``.  Every ``Iv`` argument is bounded; gradients are checked with
respect to every ``Iv`` argument."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from tests.support.containment import Iv, random_interval

D = torch.float64


def _gen(draw) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))


def _dims(draw, n: int, lo: int = 1, hi: int = 5) -> list[int]:
    return [draw(st.integers(lo, hi)) for _ in range(n)]


def _iv(draw, g, shape, **kw) -> Iv:
    width = draw(st.sampled_from([0.0, 0.05, 0.5, 2.0]))
    return random_interval(g, shape, width=kw.pop("width", width), **kw)


def _t(g, shape, scale=1.0, low=None) -> torch.Tensor:
    t = torch.randn(*shape, generator=g, dtype=D) * scale
    return t.abs() + low if low is not None else t


CASES: dict[str, object] = {}

SHAPE_OPS = [
    "view",
    "reshape",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "expand",
    "slice",
    "select",
    "index",
    "index_bool",
    "gather",
    "index_select",
    "flip",
    "t",
    "contiguous",
    "narrow",
    "split",
    "unbind",
    "repeat",
    "pad",
    "roll",
    "chunk",
    "unfold",
]
UNARY = [
    "neg",
    "abs",
    "square",
    "pow2",
    "pow3",
    "pow_half",
    "pow_neg",
    "sqrt",
    "rsqrt",
    "exp",
    "log",
    "log1p",
    "expm1",
    "sign_mul",
    "clamp",
    "clamp_min",
    "pow_base",
]
REDUCTIONS = [
    "sum",
    "sum_dim",
    "mean",
    "mean_dim",
    "amax",
    "amax_keep",
    "max_dim",
    "max_all",
    "min_dim",
    "amin",
    "logsumexp",
    "cumsum",
    "min_all",
    "argmax",
    "aten_amax",
    "aten_max_dim",
    "aten_max",
]
LOSSES = [
    "ce",
    "ce_weight",
    "ce_sum",
    "nll",
    "mse",
    "mse_interval_target",
    "bce",
    "bce_pos_weight",
    "bce_interval_target",
    "bce_none",
]


def case(name: str, variants: list[str] | None = None):
    """Register a case; with ``variants`` one case per variant (``name[variant]``), so every
    variant runs whatever hypothesis draws."""

    def deco(f):
        if variants is None:
            CASES[name] = f
        else:
            for v in variants:
                CASES[f"{name}[{v}]"] = lambda draw, v=v: f(draw, v)
        return f

    return deco


# -- linear algebra --------------------------------------------------------------------------


@case("linear_interval_weights")
def _(draw):
    g = _gen(draw)
    b, i, o = _dims(draw, 3)
    lead = draw(st.sampled_from([[], [2]]))
    return F.linear, [_iv(draw, g, [*lead, b, i]), _iv(draw, g, [o, i]), _iv(draw, g, [o])]


@case("linear_exact_weights")
def _(draw):
    g = _gen(draw)
    b, i, o = _dims(draw, 3)
    return F.linear, [_iv(draw, g, [b, i]), _t(g, [o, i]), _t(g, [o])]


@case("linear_exact_input")
def _(draw):
    g = _gen(draw)
    b, i, o = _dims(draw, 3)
    return F.linear, [_t(g, [b, i]), _iv(draw, g, [o, i]), None]


@case("matmul", ["mm", "bmm", "broadcast", "mv", "dot"])
def _(draw, kind):
    g = _gen(draw)
    m, k, n, bt = _dims(draw, 4)
    shapes = {
        "mm": ([m, k], [k, n]),
        "bmm": ([bt, m, k], [bt, k, n]),
        "broadcast": ([bt, m, k], [k, n]),
        "mv": ([m, k], [k]),
        "dot": ([k], [k]),
    }[kind]
    a = _iv(draw, g, shapes[0])
    b = _iv(draw, g, shapes[1]) if draw(st.booleans()) else _t(g, shapes[1])
    return torch.matmul, [a, b]


@case("conv1d")
def _(draw):
    g = _gen(draw)
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    stride, pad, dil = draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    length = dil * (k - 1) + 1 + draw(st.integers(0, 4))

    def f(x, w, b):
        return F.conv1d(x, w, b, stride=stride, padding=pad, dilation=dil, groups=groups)

    w = _iv(draw, g, [cout, cin // groups, k]) if draw(st.booleans()) else _t(g, [cout, cin // groups, k])
    return f, [_iv(draw, g, [2, cin, length]), w, _iv(draw, g, [cout])]


@case("conv2d")
def _(draw):
    g = _gen(draw)
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    stride, pad, dil = draw(st.integers(1, 2)), draw(st.integers(0, 1)), draw(st.integers(1, 2))
    hw = dil * (k - 1) + 1 + draw(st.integers(0, 3))

    def f(x, w, b):
        return F.conv2d(x, w, b, stride=stride, padding=pad, dilation=dil, groups=groups)

    w = _iv(draw, g, [cout, cin // groups, k, k])
    b = _iv(draw, g, [cout]) if draw(st.booleans()) else None
    return f, [_iv(draw, g, [2, cin, hw, hw]), w, b]


@case("batch_norm_eval")
def _(draw):
    g = _gen(draw)
    c = draw(st.integers(1, 3))
    spatial = draw(st.sampled_from([[], [3], [2, 3]]))
    rm, rv = _t(g, [c]), _t(g, [c], low=0.2)

    def f(x, w, b):
        return F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5)

    return f, [_iv(draw, g, [2, c, *spatial]), _iv(draw, g, [c]), _iv(draw, g, [c])]


# -- activations -----------------------------------------------------------------------------

_ACT = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "softplus_beta": lambda x: F.softplus(x, beta=2.0, threshold=1.0),
    "hardtanh": F.hardtanh,
    "relu6": F.relu6,
    "elu": F.elu,
    "elu_alpha2": lambda x: F.elu(x, alpha=2.0),
    "sin": torch.sin,
    "cos": torch.cos,
}


@case("activations", sorted(_ACT))
def _(draw, name):
    g = _gen(draw)
    return _ACT[name], [_iv(draw, g, _dims(draw, 2), scale=draw(st.sampled_from([0.3, 1.0, 4.0])))]


# -- pooling ---------------------------------------------------------------------------------


@case("max_pool2d")
def _(draw):
    g = _gen(draw)
    k = draw(st.integers(1, 3))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    d = draw(st.integers(1, 2))
    ceil = draw(st.booleans())
    hw = d * (k - 1) + 1 + draw(st.integers(0, 4))
    narrow = draw(st.booleans())

    def f(x):
        return F.max_pool2d(x, k, s, p, d, ceil_mode=ceil)

    return f, [_iv(draw, g, [2, 2, hw, hw + 1], width=0.05 if narrow else 1.0)]


@case("max_pool1d")
def _(draw):
    g = _gen(draw)
    k, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    length = k + draw(st.integers(0, 5))

    def f(x):
        return F.max_pool1d(x, k, s)

    return f, [_iv(draw, g, [2, 3, length])]


@case("avg_pool", ["2d", "1d"])
def _(draw, kind):
    g = _gen(draw)
    k = draw(st.integers(1, 3))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    ceil, cip = draw(st.booleans()), draw(st.booleans())
    hw = k + draw(st.integers(0, 4))
    if kind == "2d":
        return (lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)), [
            _iv(draw, g, [2, 2, hw, hw])
        ]
    return (lambda x: F.avg_pool1d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)), [_iv(draw, g, [2, 2, hw])]


@case("adaptive_avg_pool", ["2d", "1d"])
def _(draw, kind):
    g = _gen(draw)
    out = draw(st.sampled_from([1, 2, 3, (2, 1)]))
    if kind == "2d":
        return (lambda x: F.adaptive_avg_pool2d(x, out)), [_iv(draw, g, [2, 2, 5, 4])]
    o = out if isinstance(out, int) else out[0]
    return (lambda x: F.adaptive_avg_pool1d(x, o)), [_iv(draw, g, [2, 2, 7])]


@case("dropout_eval_flatten")
def _(draw):
    g = _gen(draw)
    return (lambda x: torch.flatten(F.dropout(x, 0.5, training=False), 1)), [_iv(draw, g, [2, 3, 2, 2])]


# -- shape ops -------------------------------------------------------------------------------


@case("shape_ops", SHAPE_OPS)
def _(draw, op):
    g = _gen(draw)
    a, b, c = _dims(draw, 3, 1, 4)
    idx = torch.randint(0, a, (3,), generator=g)
    gidx = torch.randint(0, b, (a, 2, c), generator=g)
    mask = torch.rand(a, generator=g) < 0.5
    fns = {
        "view": lambda x: x.view(a * b, c) * 1.0,
        "reshape": lambda x: x.permute(2, 0, 1).reshape(-1),
        "permute": lambda x: x.permute(2, 0, 1),
        "transpose": lambda x: x.transpose(0, 2),
        "squeeze": lambda x: x.unsqueeze(1).squeeze(1).squeeze(),
        "unsqueeze": lambda x: x.unsqueeze(0).unsqueeze(-1),
        "expand": lambda x: x.unsqueeze(0).expand(3, a, b, c),
        "slice": lambda x: x[:, 1:, ::2],
        "select": lambda x: x[0, :, -1],
        "index": lambda x: x[idx],
        "index_bool": lambda x: x[mask],
        "gather": lambda x: x.gather(1, gidx),
        "index_select": lambda x: x.index_select(0, idx),
        "flip": lambda x: x.flip(0, 2),
        "t": lambda x: x[0].t(),
        "contiguous": lambda x: x.transpose(0, 1).contiguous(),
        "narrow": lambda x: x.narrow(2, 0, max(1, c - 1)),
        "split": lambda x: torch.split(x, 1, dim=2),
        "unbind": lambda x: torch.unbind(x, 1),
        "repeat": lambda x: x.repeat(2, 1, 1),
        "pad": lambda x: F.pad(x, (1, 2), value=0.5),
        "roll": lambda x: torch.roll(x, 1, 0),
        "chunk": lambda x: torch.chunk(x, 2, 2),
        "unfold": lambda x: x.unfold(2, 1, 1),
    }
    return fns[op], [_iv(draw, g, [a, b, c])]


@case("cat_stack", ["cat", "stack"])
def _(draw, kind):
    g = _gen(draw)
    a, b = _dims(draw, 2)
    other = _iv(draw, g, [a, b]) if draw(st.booleans()) else _t(g, [a, b])
    if kind == "cat":
        return (lambda x, y: torch.cat([x, y * 2.0], dim=1)), [_iv(draw, g, [a, b]), other]
    return (lambda x, y: torch.stack([x, y], dim=0)), [_iv(draw, g, [a, b]), other]


@case("scatter_index_put")
def _(draw):
    g = _gen(draw)
    n = draw(st.integers(2, 5))
    idx = torch.randint(0, n, (n,), generator=g)

    def f(x, v):
        y = x.clone()
        y = y.index_put((idx,), v, accumulate=True)
        return y.scatter_add(0, idx, v)

    return f, [_iv(draw, g, [n]), _iv(draw, g, [n])]


# -- elementwise arithmetic ------------------------------------------------------------------


@case("add_sub_mul", ["add", "sub", "mul", "rsub", "alpha", "scalar", "addcmul"])
def _(draw, op):
    g = _gen(draw)
    shape = _dims(draw, 2)
    other = _iv(draw, g, shape) if draw(st.booleans()) else _t(g, shape)
    fns = {
        "add": lambda x, y: x + y,
        "sub": lambda x, y: x - y,
        "mul": lambda x, y: x * y,
        "rsub": lambda x, y: 2.0 - x * 3 + y,
        "alpha": lambda x, y: torch.add(x, y, alpha=-1.5),
        "scalar": lambda x, y: (x * -2.0 + 1.0) / 3.0 - y,
        "addcmul": lambda x, y: torch.addcmul(x, x, y, value=0.5),
    }
    return fns[op], [_iv(draw, g, shape), other]


@case("div", ["div", "reciprocal"])
def _(draw, kind):
    g = _gen(draw)
    shape = _dims(draw, 2)
    sign = draw(st.sampled_from([1.0, -1.0]))
    den = _iv(draw, g, shape, low=0.3, width=0.5)
    den = Iv(den.lo * sign, den.hi * sign) if sign > 0 else Iv(-den.hi, -den.lo)
    if kind == "div":
        return (lambda x, y: x / y), [_iv(draw, g, shape), den]
    return (lambda x, y: torch.reciprocal(y) + x / 2.0), [_iv(draw, g, shape), den]


@case("unary_math", UNARY)
def _(draw, name):
    g = _gen(draw)
    shape = _dims(draw, 2)
    positive = name in ("pow_half", "pow_neg", "sqrt", "rsqrt", "log", "log1p")
    x = _iv(draw, g, shape, low=0.2 if positive else None)
    fns = {
        "neg": lambda x: -x,
        "abs": torch.abs,
        "square": torch.square,
        "pow2": lambda x: x**2,
        "pow3": lambda x: x**3,
        "pow_half": lambda x: x**0.5,
        "pow_neg": lambda x: x**-1.5,
        "sqrt": torch.sqrt,
        "rsqrt": torch.rsqrt,
        "exp": torch.exp,
        "log": torch.log,
        "log1p": torch.log1p,
        "expm1": torch.expm1,
        "sign_mul": lambda x: torch.sign(x) * 2.0,
        "clamp": lambda x: x.clamp(-0.5, 0.7),
        "clamp_min": lambda x: torch.clamp(x, min=0.1),
        "pow_base": lambda x: torch.pow(2.0, x),
    }
    return fns[name], [x]


@case("binary_minmax", ["maximum", "minimum", "clamp_t"])
def _(draw, op):
    g = _gen(draw)
    shape = _dims(draw, 2)
    y = _iv(draw, g, shape) if draw(st.booleans()) else _t(g, shape)
    fns = {
        "maximum": torch.maximum,
        "minimum": torch.minimum,
        "clamp_t": lambda x, y: torch.clamp(x, min=y, max=y + 1.0),
    }
    return fns[op], [_iv(draw, g, shape), y]


@case(
    "compare",
    [f"{o}-{m}" for o in ["gt", "ge", "lt", "le", "eq", "ne"] for m in ["where", "bool", "masked_fill", "logic"]],
)
def _(draw, variant):
    op, mode = variant.split("-")
    g = _gen(draw)
    shape = _dims(draw, 2)
    cmp = {
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
    }[op]
    if mode == "where":
        return (lambda x, y: torch.where(cmp(x, y), x * 2.0, y - 1.0)), [_iv(draw, g, shape), _iv(draw, g, shape)]
    if mode == "masked_fill":
        return (lambda x, y: x.masked_fill(cmp(x, y), 0.25)), [_iv(draw, g, shape), _iv(draw, g, shape)]
    if mode == "logic":
        return (lambda x, y: torch.logical_or(cmp(x, y), ~(x > 0.0)) & (y < 1.0)), [
            _iv(draw, g, shape),
            _iv(draw, g, shape),
        ]
    return (lambda x, y: cmp(x, y)), [_iv(draw, g, shape), _t(g, shape) if draw(st.booleans()) else 0.0]


# -- reductions ------------------------------------------------------------------------------


@case("reductions", REDUCTIONS)
def _(draw, name):
    g = _gen(draw)
    shape = _dims(draw, 3, 1, 4)
    fns = {
        "sum": torch.sum,
        "sum_dim": lambda x: x.sum((0, 2)),
        "mean": torch.mean,
        "mean_dim": lambda x: x.mean(1, keepdim=True),
        "amax": lambda x: x.amax(1),
        "amax_keep": lambda x: torch.amax(x, (0, 2), keepdim=True),
        "max_dim": lambda x: torch.max(x, 2),
        "max_all": lambda x: x.max(),
        "min_dim": lambda x: x.min(dim=0, keepdim=True),
        "amin": lambda x: x.amin(-1),
        "logsumexp": lambda x: torch.logsumexp(x, 1),
        "cumsum": lambda x: torch.cumsum(x, 1),
        "min_all": torch.min,
        "argmax": lambda x: x.argmax(1),
        # the ATen ops directly, bypassing the torch-level override: autograd then uses torch's own
        # mask-based formulas, which must stay sound (if loose) through the comparison rules
        "aten_amax": lambda x: torch.ops.aten.amax.default(x, [1]),
        # (max.dim forward only: its backward scatters by the argmax, which is undecided)
        "aten_max_dim": lambda x: torch.ops.aten.max.dim(x.detach(), 2),
        "aten_max": lambda x: torch.ops.aten.max.default(x),
    }
    narrow = draw(st.booleans())
    return fns[name], [_iv(draw, g, shape, width=0.01 if narrow else 1.0)]


# -- softmax and losses ----------------------------------------------------------------------


@case("softmax", ["softmax", "log_softmax"])
def _(draw, kind):
    g = _gen(draw)
    shape = _dims(draw, 2)
    dim = draw(st.sampled_from([0, 1, -1]))
    scale = draw(st.sampled_from([1.0, 10.0]))
    f = (lambda x: F.softmax(x, dim)) if kind == "softmax" else (lambda x: F.log_softmax(x, dim))
    return f, [_iv(draw, g, shape, scale=scale)]


@case("losses", LOSSES)
def _(draw, name):
    g = _gen(draw)
    b, c = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    y = torch.randint(0, c, (b,), generator=g)
    w = torch.rand(c, generator=g, dtype=D) + 0.1
    yb = (torch.rand(b, c, generator=g, dtype=D) < 0.5).to(D)
    if name == "ce":
        return (lambda z: F.cross_entropy(z, y)), [_iv(draw, g, [b, c])]
    if name == "ce_weight":
        return (lambda z: F.cross_entropy(z, y, weight=w)), [_iv(draw, g, [b, c])]
    if name == "ce_sum":
        return (lambda z: F.cross_entropy(z, y, reduction="sum")), [_iv(draw, g, [b, c])]
    if name == "nll":
        return (lambda z: F.nll_loss(F.log_softmax(z, 1), y, reduction="none")), [_iv(draw, g, [b, c])]
    if name == "mse":
        return (lambda z: F.mse_loss(z, yb)), [_iv(draw, g, [b, c])]
    if name == "mse_interval_target":
        return (lambda z, t: F.mse_loss(z, t, reduction="sum")), [_iv(draw, g, [b, c]), _iv(draw, g, [b, c])]
    if name == "bce":
        return (lambda z: F.binary_cross_entropy_with_logits(z, yb)), [_iv(draw, g, [b, c], scale=3.0)]
    if name == "bce_pos_weight":
        pw = torch.rand(c, generator=g, dtype=D) * 3
        return (lambda z: F.binary_cross_entropy_with_logits(z, yb, pos_weight=pw)), [_iv(draw, g, [b, c])]
    if name == "bce_interval_target":
        t = _iv(draw, g, [b, c], width=0.5)
        t = Iv(t.lo.clamp(0, 1), t.hi.clamp(0, 1))
        return (lambda z, t: F.binary_cross_entropy_with_logits(z, t)), [_iv(draw, g, [b, c]), t]
    return (lambda z: F.binary_cross_entropy_with_logits(z, yb, weight=w, reduction="none")), [_iv(draw, g, [b, c])]


# -- ATen ops called directly (rules that eager modules rarely emit) -------------------------

A = torch.ops.aten


def _direct(draw, g):
    a, b = _dims(draw, 2, 2, 4)
    x = _iv(draw, g, [a, b])
    return a, b, x


DIRECT = {
    "amin": lambda a, b, g: ((lambda x: A.amin.default(x, [1])), []),
    "min_default": lambda a, b, g: ((lambda x: A.min.default(x)), []),
    "min_dim": lambda a, b, g: ((lambda x: A.min.dim(x.detach(), 0)), []),
    "argmin": lambda a, b, g: ((lambda x: A.argmin.default(x, 1)), []),
    "addcdiv": lambda a, b, g: ((lambda x, y: A.addcdiv.default(x, x, y, value=0.3)), ["pos"]),
    "addmv": lambda a, b, g: ((lambda x, y: A.addmv.default(x[:, 0], x, y[0], beta=0.5, alpha=2.0)), ["iv"]),
    "baddbmm": lambda a, b, g: (
        (
            lambda x, y: A.baddbmm.default(
                x[:, :1].expand(a, a).unsqueeze(0), x.unsqueeze(0), y.t().unsqueeze(0), beta=0.5, alpha=2.0
            )
        ),
        ["iv"],
    ),
    "bitwise_or_xor": lambda a, b, g: ((lambda x, y: ((x > 0) | (y > 0)) ^ (x < y)), ["iv"]),
    "logical_not_xor": lambda a, b, g: ((lambda x, y: torch.logical_xor(torch.logical_not(x > 0), y > 0)), ["iv"]),
    "rounding_ops": lambda a, b, g: (
        (lambda x: torch.floor(x) + torch.ceil(x) * 2 + torch.round(x) + torch.trunc(x)),
        [],
    ),
    "clamp_min_max": lambda a, b, g: (
        (
            lambda x, y: (
                A.clamp_min.default(x, -0.2)
                + A.clamp_max.default(x, 0.3)
                + A.clamp_min.Tensor(x, y)
                + A.clamp_max.Tensor(x, y)
            )
        ),
        ["iv"],
    ),
    "fmax_fmin": lambda a, b, g: ((lambda x, y: torch.fmax(x, y) - torch.fmin(x, y * 2.0)), ["iv"]),
    "erf_exp2": lambda a, b, g: ((lambda x: torch.erf(x) + torch.exp2(x)), []),
    "log2_log10": lambda a, b, g: ((lambda x: torch.log2(x) + torch.log10(x)), ["pos_x"]),
    "all_any": lambda a, b, g: (
        (
            lambda x, y: torch.stack(
                [
                    (x > y).all(),
                    (x > 0).any(),
                    (x < y).all(1).any(),
                    (x > y).any(1).all(),
                    (x < 0).all((0, 1)),
                    (x < 1).any((0, 1)),
                ]
            )
        ),
        ["iv"],
    ),
    "lerp": lambda a, b, g: ((lambda x, y: torch.lerp(x, y, 0.3)), ["iv"]),
    "masked_fill_tensor": lambda a, b, g: ((lambda x, y: x.masked_fill(x > y, y[0, 0])), ["iv"]),
    "narrow_split_sizes": lambda a, b, g: (
        (lambda x: torch.cat(torch.split(x.narrow(1, 0, b), [1, b - 1], 1)[::-1], 1)),
        [],
    ),
    "scatter": lambda a, b, g: (
        (
            lambda x, y: x.scatter(0, torch.zeros(1, b, dtype=torch.long), y[:1]).scatter(
                1, torch.zeros(a, 1, dtype=torch.long), 0.5
            )
        ),
        ["iv"],
    ),
    "squeeze_dims_diag": lambda a, b, g: ((lambda x: x.unsqueeze(0).unsqueeze(2).squeeze((0, 2)).diagonal()), []),
    "sub_rsub_square": lambda a, b, g: (
        (lambda x, y: A.sub.Scalar(x, 1.5) + A.rsub.Tensor(x, y) + torch.square(x)),
        ["iv"],
    ),
    "embedding": lambda a, b, g: ((lambda w: F.embedding(torch.tensor([[0, a - 1], [1, 0]]), w)), []),
    "factories_fill": lambda a, b, g: (
        (
            lambda x: (
                x
                + torch.full_like(x, 2.0)
                + x.new_ones(x.shape)
                + x.new_full(x.shape, 3.0)
                + A.fill.Scalar(x, 0.5)
                + x.new_empty(x.shape).fill_(1.0)
                + torch.empty_like(x).copy_(x)
            )
        ),
        [],
    ),
    "to_copy_alias": lambda a, b, g: ((lambda x: x.to(torch.float32).to(D) + A.alias.default(x)), []),
    "bn_legit_no_training": lambda a, b, g: (
        (
            lambda x, w: A._native_batch_norm_legit_no_training.default(
                x, w[0], w[1], torch.linspace(-1, 1, b, dtype=D), torch.linspace(0.5, 2, b, dtype=D), 0.1, 1e-5
            )[0]
        ),
        ["iv"],
    ),
    "unsafe_index": lambda a, b, g: ((lambda x: A._unsafe_index.Tensor(x, [torch.tensor([0, a - 1])])), []),
    "expand_view": lambda a, b, g: ((lambda x: x.t().reshape(-1)), []),
}


@case("aten_direct", sorted(DIRECT))
def _(draw, name):
    g = _gen(draw)
    a, b, x = _direct(draw, g)
    fn, extra = DIRECT[name](a, b, g)
    if "pos_x" in extra:
        x = _iv(draw, g, [a, b], low=0.2)
    args = [x]
    if "iv" in extra:
        args.append(_iv(draw, g, [a, b]))
    if "pos" in extra:
        args.append(_iv(draw, g, [a, b], low=0.3))
    return fn, args

"""The containment cases: one or more per rule family, each a function of a hypothesis draw
that returns ``(fn, args)``.  Every ``Iv`` argument is bounded; gradients are checked with
respect to every ``Iv`` argument."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from tests.containment import Iv, random_interval

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


def case(name: str):
    def deco(f):
        CASES[name] = f
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


@case("matmul_mm_bmm_mv")
def _(draw):
    g = _gen(draw)
    m, k, n, bt = _dims(draw, 4)
    kind = draw(st.sampled_from(["mm", "bmm", "broadcast", "mv", "dot"]))
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
}


@case("activations")
def _(draw):
    g = _gen(draw)
    name = draw(st.sampled_from(sorted(_ACT)))
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


@case("avg_pool")
def _(draw):
    g = _gen(draw)
    k = draw(st.integers(1, 3))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    ceil, cip = draw(st.booleans()), draw(st.booleans())
    hw = k + draw(st.integers(0, 4))
    if draw(st.booleans()):
        return (lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)), [_iv(draw, g, [2, 2, hw, hw])]
    return (lambda x: F.avg_pool1d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)), [_iv(draw, g, [2, 2, hw])]


@case("adaptive_avg_pool")
def _(draw):
    g = _gen(draw)
    out = draw(st.sampled_from([1, 2, 3, (2, 1)]))
    if draw(st.booleans()):
        return (lambda x: F.adaptive_avg_pool2d(x, out)), [_iv(draw, g, [2, 2, 5, 4])]
    o = out if isinstance(out, int) else out[0]
    return (lambda x: F.adaptive_avg_pool1d(x, o)), [_iv(draw, g, [2, 2, 7])]


@case("dropout_eval_flatten")
def _(draw):
    g = _gen(draw)
    return (lambda x: torch.flatten(F.dropout(x, 0.5, training=False), 1)), [_iv(draw, g, [2, 3, 2, 2])]


# -- shape ops -------------------------------------------------------------------------------


@case("shape_ops")
def _(draw):
    g = _gen(draw)
    a, b, c = _dims(draw, 3, 1, 4)
    op = draw(
        st.sampled_from(
            ["view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "expand", "slice", "select",
             "index", "index_bool", "gather", "index_select", "flip", "t", "contiguous", "narrow", "split", "unbind",
             "repeat", "pad", "roll", "chunk", "unfold"]
        )
    )
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


@case("cat_stack")
def _(draw):
    g = _gen(draw)
    a, b = _dims(draw, 2)
    other = _iv(draw, g, [a, b]) if draw(st.booleans()) else _t(g, [a, b])
    if draw(st.booleans()):
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


@case("add_sub_mul")
def _(draw):
    g = _gen(draw)
    shape = _dims(draw, 2)
    op = draw(st.sampled_from(["add", "sub", "mul", "rsub", "alpha", "scalar", "addcmul"]))
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


@case("div")
def _(draw):
    g = _gen(draw)
    shape = _dims(draw, 2)
    sign = draw(st.sampled_from([1.0, -1.0]))
    den = _iv(draw, g, shape, low=0.3, width=0.5)
    den = Iv(den.lo * sign, den.hi * sign) if sign > 0 else Iv(-den.hi, -den.lo)
    if draw(st.booleans()):
        return (lambda x, y: x / y), [_iv(draw, g, shape), den]
    return (lambda x, y: torch.reciprocal(y) + x / 2.0), [_iv(draw, g, shape), den]


@case("unary_math")
def _(draw):
    g = _gen(draw)
    shape = _dims(draw, 2)
    name = draw(st.sampled_from(["neg", "abs", "square", "pow2", "pow3", "pow_half", "pow_neg", "sqrt", "rsqrt",
                                 "exp", "log", "log1p", "expm1", "sign_mul", "clamp", "clamp_min", "pow_base"]))
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


@case("clamp_tensor_maximum")
def _(draw):
    g = _gen(draw)
    shape = _dims(draw, 2)
    op = draw(st.sampled_from(["maximum", "minimum", "clamp_t"]))
    y = _iv(draw, g, shape) if draw(st.booleans()) else _t(g, shape)
    fns = {
        "maximum": torch.maximum,
        "minimum": torch.minimum,
        "clamp_t": lambda x, y: torch.clamp(x, min=y, max=y + 1.0),
    }
    return fns[op], [_iv(draw, g, shape), y]


@case("where_compare")
def _(draw):
    g = _gen(draw)
    shape = _dims(draw, 2)
    op = draw(st.sampled_from(["gt", "ge", "lt", "le", "eq", "ne"]))
    cmp = {
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
    }[op]
    mode = draw(st.sampled_from(["where", "bool", "masked_fill", "logic"]))
    if mode == "where":
        return (lambda x, y: torch.where(cmp(x, y), x * 2.0, y - 1.0)), [_iv(draw, g, shape), _iv(draw, g, shape)]
    if mode == "masked_fill":
        return (lambda x, y: x.masked_fill(cmp(x, y), 0.25)), [_iv(draw, g, shape), _iv(draw, g, shape)]
    if mode == "logic":
        return (lambda x, y: torch.logical_or(cmp(x, y), ~(x > 0.0)) & (y < 1.0)), [_iv(draw, g, shape), _iv(draw, g, shape)]
    return (lambda x, y: cmp(x, y)), [_iv(draw, g, shape), _t(g, shape) if draw(st.booleans()) else 0.0]


# -- reductions ------------------------------------------------------------------------------


@case("reductions")
def _(draw):
    g = _gen(draw)
    shape = _dims(draw, 3, 1, 4)
    name = draw(st.sampled_from(["sum", "sum_dim", "mean", "mean_dim", "amax", "amax_keep", "max_dim", "max_all",
                                 "min_dim", "amin", "logsumexp", "cumsum", "min_all", "argmax"]))
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
    }
    narrow = draw(st.booleans())
    return fns[name], [_iv(draw, g, shape, width=0.01 if narrow else 1.0)]


# -- softmax and losses ----------------------------------------------------------------------


@case("softmax")
def _(draw):
    g = _gen(draw)
    shape = _dims(draw, 2)
    dim = draw(st.sampled_from([0, 1, -1]))
    scale = draw(st.sampled_from([1.0, 10.0]))
    f = (lambda x: F.softmax(x, dim)) if draw(st.booleans()) else (lambda x: F.log_softmax(x, dim))
    return f, [_iv(draw, g, shape, scale=scale)]


@case("losses")
def _(draw):
    g = _gen(draw)
    b, c = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    name = draw(st.sampled_from(["ce", "ce_weight", "ce_sum", "nll", "mse", "mse_interval_target", "bce", "bce_pos_weight",
                                 "bce_interval_target", "bce_none"]))
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

"""Patches mode: CROWN bounds of every neuron of a convolution, with each neuron's
coefficients kept on its receptive field only.

The identity specification of a convolution's output ``(C_o, H_o, W_o)`` has ``C_o H_o W_o``
rows, and in matrix form each row holds a full ``(C, H, W)`` coefficient tensor at every earlier
node, almost all of it zero.  Here row ``(o, i, j)`` holds a ``(C, k_h, k_w)`` *patch* at the
window whose top-left corner is ``(i s_h - p_h, j s_w - p_w)`` of that node (one window geometry
``(k, s, p)`` per node for all rows; auto_LiRPA's "patches" mode has the same idea).  Through a
convolution the patch is the transposed convolution of the patch with the kernel (the window
grows to ``(k - 1) s_c + k_c``, its stride becomes ``s s_c`` and its offset ``p s_c + p_c``);
through an elementwise op (a relaxation, or ``x + c``, ``x * c`` with constant ``c``) it is
multiplied by the op's slopes on the same window.  Window entries outside the node's grid stand
for the convolution's zero padding: they are zeroed before anything is read from them.

The chain is followed from the convolution back through convolutions (constant weights,
``groups = 1``, no dilation), elementwise relaxations and elementwise affine ops with constant
operands, to the input; at the first other node (pooling, a residual sum, a flatten, ...) the
patches are written out as the dense coefficient tensor and the ordinary back-substitution
(:func:`~boundflow.domains.linear.backward.backsub`) continues from there.  The bounds are the
matrix mode's, in exact arithmetic (the tests compare both on random architectures).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

from boundflow import deadline
from boundflow.domains.linear.backward import backsub, is_zero, through_lines
from boundflow.domains.linear.maxpool import pool_lines
from boundflow.domains.linear.relaxations import RELAXATIONS
from boundflow.domains.linear.state import BoundState, _bounded, _is_tuple_head, _shape, relaxation_lines

aten = torch.ops.aten

__all__ = ["Rows", "patch_bounds", "patch_chain", "patch_entries", "uses_matrix_mode"]

# elementwise affine ops with one variable operand: (op, how the constant operand enters)
_ELEMENTWISE = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.neg.default}


# the largest transposed-convolution matrix (on one patch) built for the matrix-product path
_MATRIX_ENTRIES = 2**22


@dataclass
class _Window:
    """Window geometry at a node: size, stride and top-left offset (per axis) of row
    ``(i, j)``'s patch, and the output grid ``(H_o, W_o)`` of the starting convolution."""

    k: tuple[int, int]
    s: tuple[int, int]
    p: tuple[int, int]
    out: tuple[int, int]

    def through_conv(self, kc, sc, pc) -> _Window:
        return _Window(
            tuple((k - 1) * s_c + k_c for k, s_c, k_c in zip(self.k, sc, kc, strict=True)),
            tuple(s * s_c for s, s_c in zip(self.s, sc, strict=True)),
            tuple(p * s_c + p_c for p, s_c, p_c in zip(self.p, sc, pc, strict=True)),
            self.out,
        )


def _conv_args(state: BoundState, node: fx.Node):
    """``(input, weight, bias or None, stride, padding)`` of a 2-D convolution this mode
    handles (constant, unbounded weights; no dilation, groups or transposition), else ``None``."""
    if node.op != "call_function" or node.target is not aten.convolution.default or node.kwargs:
        return None
    x, w, b, stride, padding, dilation, transposed, _, groups = node.args
    if not isinstance(x, fx.Node) or x in state.const or not isinstance(w, fx.Node) or w not in state.const:
        return None
    if b is not None and not (isinstance(b, fx.Node) and b in state.const):
        return None
    if _bounded(state, [w, b]) or transposed or groups != 1 or any(d != 1 for d in dilation):
        return None
    if state.const[w].dim() != 4 or len(_shape(state, x)) != 4:
        return None
    bias = state.const[b] if b is not None else None
    return x, state.const[w], bias, tuple(stride), tuple(padding)


def _pool_args(state: BoundState, node: fx.Node):
    """Average pooling as the depthwise convolution it is (``(input, weight, None, stride,
    padding)`` as :func:`_conv_args` gives), where padding counts as zeros and no divisor or
    ceil mode changes the mean; else ``None``."""
    if node.op != "call_function" or node.target is not aten.avg_pool2d.default or node.kwargs:
        return None
    x, k = node.args[0], list(node.args[1])
    if not isinstance(x, fx.Node) or x in state.const or len(_shape(state, x)) != 4:
        return None
    k = k * 2 if len(k) == 1 else k
    stride = list(node.args[2]) if len(node.args) > 2 and node.args[2] else k
    stride = stride * 2 if len(stride) == 1 else stride
    pad = list(node.args[3]) if len(node.args) > 3 else [0, 0]
    pad = pad * 2 if len(pad) == 1 else pad
    ceil = node.args[4] if len(node.args) > 4 else False
    include = node.args[5] if len(node.args) > 5 else True
    divisor = node.args[6] if len(node.args) > 6 else None
    if ceil or divisor is not None or (not include and any(pad)):
        return None
    c = _shape(state, x)[1]
    w = torch.eye(c, dtype=state.x_lo.dtype, device=state.x_lo.device).reshape(c, c, 1, 1).expand(c, c, *k)
    return x, w / (k[0] * k[1]), None, tuple(stride), tuple(pad)


def _zero_pad(state: BoundState, node: fx.Node):
    """``(input, (top, left))`` for a zero padding of the last two dimensions by non-negative
    amounts (the window moves by the top and left padding), else ``None``."""
    if node.op != "call_function" or node.target is not aten.constant_pad_nd.default or node.kwargs:
        return None
    x, pad = node.args[0], list(node.args[1])
    value = node.args[2] if len(node.args) > 2 else 0.0
    if not isinstance(x, fx.Node) or x in state.const or value != 0 or any(p < 0 for p in pad):
        return None
    if any(pad[4:]) or len(_shape(state, x)) != 4:
        return None
    pad = pad + [0] * (4 - len(pad))
    return x, (pad[2], pad[0])


def _max_pool_args(state: BoundState, node: fx.Node):
    """``(pool node, input, kernel, stride, padding)`` where ``node`` is the values of a 2-D max
    pooling (``getitem(max_pool2d_with_indices(x, ...), 0)``, no dilation or ceil mode) whose
    input has bounds, else ``None``."""
    if node.op != "call_function" or node.target is not operator.getitem or node.args[1] != 0:
        return None
    mp = node.args[0]
    if not isinstance(mp, fx.Node) or mp.target is not aten.max_pool2d_with_indices.default or mp.kwargs:
        return None
    x, args = mp.args[0], list(mp.args[1:]) + [None] * (6 - len(mp.args))
    if not isinstance(x, fx.Node) or x not in state.lower or len(_shape(state, x)) != 4:
        return None
    k = list(args[0]) * (2 if len(args[0]) == 1 else 1)
    stride = list(args[1]) if args[1] else k
    stride = stride * (2 if len(stride) == 1 else 1)
    pad = list(args[2]) if args[2] is not None else [0]
    pad = pad * (2 if len(pad) == 1 else 1)
    dilation = list(args[3]) if args[3] is not None else [1]
    if any(d != 1 for d in dilation) or args[4]:
        return None
    return mp, x, tuple(k), tuple(stride), tuple(pad)


def _batch_norm_args(state: BoundState, node: fx.Node):
    """``(input, scale, shift)`` of batch norm at inference (the first output of
    ``native_batch_norm`` without training, constant unbounded statistics), per channel
    ``(C, 1, 1)``; else ``None``."""
    if not _is_tuple_head(node):
        return None
    bn = node.args[0]
    if bn.kwargs:
        return None
    if bn.target is aten.native_batch_norm.default:
        x, weight, bias, mean, var, training, _, eps = bn.args
        if training:
            return None
    else:
        x, weight, bias, mean, var, _, eps = bn.args
    parts = [weight, bias, mean, var]
    if not isinstance(x, fx.Node) or x in state.const or len(_shape(state, x)) != 4:
        return None
    if any(isinstance(a, fx.Node) and (a not in state.const or a in state.radius) for a in parts):
        return None
    if mean is None or var is None:
        return None
    dt = state.x_lo.dtype
    mean, var = state.const[mean].to(dt), state.const[var].to(dt)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * state.const[weight].to(dt)
    shift = -mean * scale
    if bias is not None:
        shift = shift + state.const[bias].to(dt)
    return x, scale.reshape(-1, 1, 1), shift.reshape(-1, 1, 1)


def _elementwise_args(state: BoundState, node: fx.Node):
    """``(variable input, scale, shift)`` for ``y = scale * x + shift`` elementwise with
    constant ``scale``/``shift`` broadcastable to ``x``'s shape (batch norm at inference
    included), else ``None``."""
    bn = _batch_norm_args(state, node)
    if bn is not None:
        return bn
    if node.op != "call_function" or node.target not in _ELEMENTWISE or node.kwargs:
        return None
    args = list(node.args)
    if node.target is aten.neg.default:
        x = args[0]
        return (x, -1.0, 0.0) if isinstance(x, fx.Node) and x not in state.const else None
    if len(args) != 2:
        return None
    var = [i for i, a in enumerate(args) if isinstance(a, fx.Node) and a not in state.const]
    if len(var) != 1:
        return None
    i = var[0]
    x, c = args[i], args[1 - i]
    if isinstance(c, fx.Node):
        if c in state.radius:
            return None
        c = state.const[c]
    if isinstance(c, torch.Tensor):
        c = c.to(state.x_lo.dtype)
        if c.dim() > 4 or torch.broadcast_shapes(c.shape, _shape(state, x)) != _shape(state, x):
            return None
    if node.target is aten.add.Tensor:
        return x, 1.0, c
    if node.target is aten.sub.Tensor:
        return (x, 1.0, -c) if i == 0 else (x, -1.0, c)
    if node.target is aten.mul.Tensor:
        return x, c, 0.0
    return (x, 1.0 / c, 0.0) if i == 0 else None  # c / x is not affine


# ops that only rearrange their input's entries (each output entry is one input entry, each
# input entry appears once): the box of the input, rearranged, is exactly the set of values
REARRANGE = {
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.permute.default,
    aten.transpose.int,
    aten.clone.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
}


def _rearranged_input(state: BoundState, node: fx.Node) -> bool:
    """Whether ``node`` is the input or a rearrangement or slice of it (a reshape of the flat
    input to an image, a channels-last permutation, some of its channels): each entry is one
    input entry and no entry appears twice, so its interval bounds are the input box itself and
    patches end there as they would at the input."""
    while node is not state.graph.input_node:
        if node.op != "call_function" or not isinstance(node.args[0], fx.Node):
            return False
        selects = node.target is aten.slice.Tensor and (len(node.args) < 5 or int(node.args[4]) >= 1)
        if node.target not in REARRANGE and not selects:  # a slice picks distinct entries
            return False
        if any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
            return False
        node = node.args[0]
    return True


def _apply(t: torch.Tensor, transform: tuple) -> torch.Tensor:
    """``t`` (a node's tensor, any batch size) through a rearrangement ``transform``: a tuple
    of ``("permute", dims)`` / ``("view", shape without the batch)`` applied in order."""
    for kind, arg in transform:
        t = t.permute(*arg) if kind == "permute" else t.reshape(t.shape[0], *arg)
    return t


def _layout(shape, transform) -> tuple[int, ...]:
    """A node's shape in the convolution's layout."""
    if not transform:
        return tuple(shape)
    return (shape[0], *_apply(torch.empty(1, *shape[1:], device="meta"), transform).shape[1:])


def _in_layout(t, shape, transform, like: torch.Tensor) -> torch.Tensor:
    """``t`` (a number, or a tensor broadcastable to the node's ``shape``) in the convolution's
    layout: broadcast to the node's shape (keeping a batch dimension of 1) and rearranged."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if not transform:
        return t
    b = t.shape[0] if t.dim() == len(shape) else 1
    return _apply(t.expand(b, *shape[1:]), transform)


def _is_identity(shape, transform) -> bool:
    """Whether ``transform`` takes every entry of a node of ``shape`` to the same flat position
    (only unit dimensions moved, added or dropped)."""
    probe = torch.arange(math.prod(shape[1:]), device="cpu").reshape(1, *shape[1:])  # a host-side index map
    return bool(torch.equal(_apply(probe, transform).reshape(-1), probe.reshape(-1)))


def _rearrangement(state: BoundState, node: fx.Node):
    """``(input, op)`` where ``node`` only rearranges one varying input's entries with the batch
    kept in front (a permutation, a reshape or a copy, a zero padding by nothing), else ``None``."""
    if node.op == "call_function" and node.target is aten.constant_pad_nd.default and not node.kwargs:
        x = node.args[0]
        if isinstance(x, fx.Node) and x not in state.const and not any(int(p) for p in node.args[1]):
            return x, None  # (vmapped graphs pad by zero entries: a copy)
        return None
    if node.op != "call_function" or node.target not in REARRANGE:
        return None
    if node.kwargs and node.target is not aten.clone.default:
        return None
    x = node.args[0]
    if not isinstance(x, fx.Node) or x in state.const or any(isinstance(a, fx.Node) for a in node.args[1:]):
        return None
    shape, out = _shape(state, x), _shape(state, node)
    if out[0] != shape[0]:
        return None
    if node.target is aten.permute.default:
        dims = tuple(int(d) % len(shape) for d in node.args[1])
        return (x, ("permute", dims)) if dims[0] == 0 else None
    if node.target is aten.transpose.int:
        a, b = (int(d) % len(shape) for d in node.args[1:3])
        dims = list(range(len(shape)))
        dims[a], dims[b] = dims[b], dims[a]
        return (x, ("permute", tuple(dims))) if dims[0] == 0 else None
    if node.target is aten.clone.default:
        return x, None
    return x, ("view", tuple(out[1:]))


def _padded(win: _Window, top_left) -> _Window:
    """The window on a zero padding's input: the same entries, shifted by the padding."""
    return _Window(win.k, win.s, (win.p[0] + top_left[0], win.p[1] + top_left[1]), win.out)


def _union(wins: list) -> _Window | None:
    """The smallest window holding every window of ``wins`` (same stride and output grid), or
    ``None`` where they do not share a stride and grid."""
    first = wins[0]
    if any(w.s != first.s or w.out != first.out for w in wins):
        return None
    p = tuple(max(w.p[a] for w in wins) for a in range(2))
    k = tuple(p[a] + max(w.k[a] - w.p[a] for w in wins) for a in range(2))
    return _Window(k, first.s, p, first.out)


def _embed(P: torch.Tensor, win: _Window, into: _Window) -> torch.Tensor:
    """Patches ``(rows, B', C, k_h, k_w)`` on ``win`` written into the larger window ``into``
    (zeros around)."""
    if win == into:
        return P
    top, left = into.p[0] - win.p[0], into.p[1] - win.p[1]
    bottom, right = into.k[0] - win.k[0] - top, into.k[1] - win.k[1] - left
    return F.pad(P, (left, right, top, bottom))


def _residual(state: BoundState, node: fx.Node):
    """``(x, y, sign of y)`` for ``x + y`` / ``x - y`` of two varying operands of the sum's own
    shape (a residual connection), else ``None``."""
    if node.op != "call_function" or node.target not in (aten.add.Tensor, aten.sub.Tensor) or node.kwargs:
        return None
    if len(node.args) != 2 or not all(isinstance(a, fx.Node) and a not in state.const for a in node.args):
        return None
    x, y = node.args
    if _bounded(state, [x, y]) or _shape(state, x) != _shape(state, node) or _shape(state, y) != _shape(state, node):
        return None
    return x, y, (1.0 if node.target is aten.add.Tensor else -1.0)


def _moved(state: BoundState, node: fx.Node, transform: tuple):
    """``(input, its transform)`` where ``node`` is a rearrangement (:func:`_rearrangement`)
    whose output is in ``transform``'s layout, else ``None``."""
    moved = _rearrangement(state, node)
    if moved is None:
        return None
    inp, op = moved
    new = transform if op is None else (op, *transform)
    in_shape = tuple(_shape(state, inp))
    if new and _layout(in_shape, new) == in_shape and _is_identity(in_shape, new):
        new = ()  # back in the convolution's layout (e.g. a unit dimension dropped again)
    return inp, new


def _unapply(t: torch.Tensor, node_shape, transform: tuple) -> torch.Tensor:
    """The inverse of :func:`_apply`: ``t`` in the convolution's layout (any leading size) back
    in the node's layout."""
    before = []
    m = torch.empty(1, *node_shape[1:], device="meta")
    for op in transform:
        before.append(tuple(m.shape))
        m = _apply(m, (op,))
    for (kind, arg), shape in zip(reversed(transform), reversed(before), strict=True):
        if kind == "permute":
            inv = [0] * len(arg)
            for i, d in enumerate(arg):
                inv[d] = i
            t = t.permute(*inv)
        else:
            t = t.reshape(t.shape[0], *shape[1:])
    return t


def patch_chain(state: BoundState, node: fx.Node, residuals: bool = True) -> list | None:
    """The steps patches mode takes from convolution ``node`` back to the input, in reverse
    topological order: ``[(kind, node, window, transform), ...]`` with kind ``"conv"``,
    ``"relax"``, ``"affine"``, ``"sum"`` (a residual connection: the patch goes to both
    operands), ``"move"`` (a rearrangement: the patch goes on with another ``transform``),
    ``"input"`` or ``"dense"`` (matrix mode from that node: the patches reaching it are written
    out and back-substituted, all such nodes together); ``None`` where ``node`` is not a
    convolution this mode handles, or an alpha-CROWN slope is keyed to it.

    Each node's window is the union of the windows reaching it (a residual block's two paths
    grow them differently).  Elementwise steps may sit behind rearrangements that keep the batch
    in front (a channels-last stretch between convolutions, as TensorFlow exports them; the unit
    dimension a vmapped graph carries): ``transform`` (see :func:`_apply`) takes such a node's
    tensors to the convolution's layout (empty: the same layout).  Residual sums are followed
    only where every path stays in patches mode (``residuals``), so that the paths meet at each
    later node before its relaxation lines are chosen: the bounds are the matrix mode's."""
    if any(start is node for (_, start) in state.alpha):
        return None
    conv = _conv_args(state, node)
    shape = _shape(state, node)
    if conv is not None:
        x, w, _, stride, padding = conv
        win = _Window(tuple(w.shape[2:]), stride, padding, tuple(shape[2:]))  # the kernel's, on x
        steps = [("conv", node, win, ())]
        incoming: dict = {x: [(win, ())]}
    elif len(shape) == 4 and (
        (residuals and _residual(state, node) is not None) or _max_pool_args(state, node) is not None
    ):
        # a residual sum (a ReLU's input in a ResNet) or max pooling's values (a sign's input
        # behind batch norm): each neuron starts as a 1 x 1 patch
        win = _Window((1, 1), (1, 1), (0, 0), tuple(shape[2:]))
        steps = [("start", node, win, ())]
        incoming = {node: [(win, ())]}
    else:
        return None
    order = {n: i for i, n in enumerate(state.graph.gm.graph.nodes)}

    def send(target, win, transform):
        incoming.setdefault(target, []).append((win, transform))

    while incoming:
        cur = max(incoming, key=lambda n: order[n])
        arriving = incoming.pop(cur)
        transforms = {t for _, t in arriving}
        win = _union([a[0] for a in arriving]) if len(transforms) == 1 else None
        transform = next(iter(transforms))
        node_shape = _shape(state, cur)
        shape = _layout(node_shape, transform) if win is not None else ()
        if win is None or len(shape) != 4:  # e.g. a view from a flat layer: matrix mode from here
            steps.append(("dense", cur, None, None))
            continue
        if _rearranged_input(state, cur):
            steps.append(("input", cur, win, transform))
            continue
        if win.k[0] >= shape[2] + win.p[0] and win.k[1] >= shape[3] + win.p[1]:
            steps.append(("dense", cur, None, None))  # the window covers the whole grid
            continue
        moved = _moved(state, cur, transform)
        if moved is not None:
            steps.append(("move", cur, win, transform))
            send(*moved[:1], win, moved[1])
            continue
        conv = (_conv_args(state, cur) or _pool_args(state, cur)) if not transform else None
        if conv is not None:
            steps.append(("conv", cur, win, ()))
            send(conv[0], win.through_conv(tuple(conv[1].shape[2:]), conv[3], conv[4]), ())
            continue
        padded = _zero_pad(state, cur) if not transform else None
        if padded is not None:
            steps.append(("pad", cur, win, ()))
            send(padded[0], _padded(win, padded[1]), ())
            continue
        pool = _max_pool_args(state, cur) if not transform else None
        if pool is not None and (pool[0], node) not in state.alpha:  # (an alpha-CROWN slope: matrix mode)
            steps.append(("maxpool", cur, win, ()))
            send(pool[1], win.through_conv(*pool[2:]), ())
            continue
        if cur.op == "call_function" and cur.target in RELAXATIONS and (cur, node) not in state.alpha:
            inp = cur.args[0]
            if inp in state.lower and _shape(state, inp) == node_shape:
                steps.append(("relax", cur, win, transform))
                send(inp, win, transform)
                continue
        affine = _elementwise_args(state, cur)
        if affine is not None and _shape(state, affine[0]) == node_shape:
            steps.append(("affine", cur, win, transform))
            send(affine[0], win, transform)
            continue
        res = _residual(state, cur) if residuals else None
        if res is not None:
            steps.append(("sum", cur, win, transform))
            send(res[0], win, transform)
            send(res[1], win, transform)
            continue
        steps.append(("dense", cur, None, None))
    residual = any(kind in ("sum", "start") for kind, *_ in steps)
    if residuals and residual and any(_oversized(state, cur, win, t) for kind, cur, win, t in steps[1:] if win):
        # a window larger than its node's grid: patches cost more than the dense rows there (and
        # in branch and bound every sample's rows carry their own), so no residual paths
        return patch_chain(state, node, residuals=False)
    if residuals and uses_matrix_mode(steps) and residual:
        # one path of a residual block in matrix mode, the other in patches: the two would meet
        # the same relaxations (and the input) separately, each choosing its own lines (sound,
        # but looser than matrix mode); so matrix mode from the residual sum instead
        return patch_chain(state, node, residuals=False)
    return steps


def _oversized(state: BoundState, node: fx.Node, win: _Window, transform: tuple) -> bool:
    """Whether ``win`` has more entries than ``node``'s grid."""
    shape = _layout(_shape(state, node), transform)
    return len(shape) == 4 and win.k[0] * win.k[1] > shape[2] * shape[3]


def uses_matrix_mode(steps: list) -> bool:
    """Whether some path of ``steps`` hands over to matrix mode (rows for every sample)."""
    return any(kind == "dense" for kind, *_ in steps)


def patch_entries(state: BoundState, steps: list, per_sample: bool) -> int:
    """An upper estimate of the largest coefficient tensor per row along ``steps`` (for
    chunking); ``per_sample``: each row is one sample's neuron, else every sample's."""
    b = 1 if per_sample else state.x_lo.shape[0]
    widest = max(math.prod(_shape(state, m)[1:]) for m in state.lower)
    most = 1
    for kind, cur, win, transform in steps[1:]:
        size = widest if kind == "dense" else _layout(_shape(state, cur), transform)[1] * math.prod(win.k)
        most = max(most, b * size)
    # a residual block keeps a patch on each path alive
    return most * (1 + sum(kind == "sum" for kind, *_ in steps))


@dataclass
class Rows:
    """The neurons bounded: output channel ``o`` and position ``pos = i W_o + j`` per row, and
    the sample ``b`` per row (``None``: every row for every sample)."""

    o: torch.Tensor
    pos: torch.Tensor
    b: torch.Tensor | None = None

    def at(self, unfolded: torch.Tensor) -> torch.Tensor:
        """``(positions, B or 1, ...)`` taken at each row: ``(rows, B or 1, ...)``."""
        if self.b is None or unfolded.shape[1] == 1:
            return unfolded[self.pos]
        return unfolded[self.pos, self.b].unsqueeze(1)


def _unfold(t: torch.Tensor, shape, win: _Window) -> torch.Tensor:
    """``t`` (broadcastable to the node's ``(B, C, H, W)``) on every position's window, zero
    outside the grid: ``(H_o W_o, B or 1, C, k_h, k_w)``."""
    b = shape[0] if t.dim() == 4 and t.shape[0] != 1 else 1
    t = t.expand(b, *shape[1:])
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = win.k, win.s, win.p, win.out
    h, w = shape[2], shape[3]
    bottom = max(0, (ho - 1) * sh + kh - ph - h)
    right = max(0, (wo - 1) * sw + kw - pw - w)
    padded = F.pad(t, (pw, right, ph, bottom))
    cols = F.unfold(padded, (kh, kw), stride=(sh, sw))  # (b, C kh kw, L)
    hp, wp = (padded.shape[2] - kh) // sh + 1, (padded.shape[3] - kw) // sw + 1
    cols = cols.reshape(b, shape[1], kh, kw, hp, wp)[..., :ho, :wo]
    return cols.permute(4, 5, 0, 1, 2, 3).reshape(ho * wo, b, shape[1], kh, kw)


def _dense(P: torch.Tensor, rows: Rows, shape, win: _Window) -> torch.Tensor:
    """Patches ``(rows, B', C, k_h, k_w)`` written out as ``(rows, B', C, H, W)`` (entries
    outside the grid dropped)."""
    r, b, c, kh, kw = P.shape
    (sh, sw), (ph, pw), (ho, wo) = win.s, win.p, win.out
    h, w = shape[2], shape[3]
    hc, wc = max(ph + h, (ho - 1) * sh + kh), max(pw + w, (wo - 1) * sw + kw)
    D = P.new_zeros(r, hc, wc, b, c)
    dev = P.device
    ys = (rows.pos // wo * sh).reshape(r, 1, 1) + torch.arange(kh, device=dev).reshape(1, kh, 1)
    xs = (rows.pos % wo * sw).reshape(r, 1, 1) + torch.arange(kw, device=dev).reshape(1, 1, kw)
    D[torch.arange(r, device=dev).reshape(r, 1, 1), ys, xs] = P.permute(0, 3, 4, 1, 2)
    return D[:, ph : ph + h, pw : pw + w].permute(0, 3, 4, 1, 2)


def _grid_mask(shape, win: _Window, like: torch.Tensor) -> torch.Tensor:
    """1 on every window entry inside the node's grid, 0 outside: ``(H_o W_o, 1, 1, k_h, k_w)``."""
    ones = torch.ones(1, 1, shape[2], shape[3], dtype=like.dtype, device=like.device)
    return _unfold(ones, (1, 1, *shape[2:]), win)


def _sum_patch(t: torch.Tensor) -> torch.Tensor:
    """Sum over ``(C, k_h, k_w)``: ``(rows, B')``."""
    return t.reshape(*t.shape[:2], -1).sum(-1)


def patch_bounds(state: BoundState, node: fx.Node, steps: list, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds ``(lb, ub)`` on the neurons ``rows`` of convolution ``node`` along ``steps`` from
    :func:`patch_chain`: shape ``(rows, B)``, or ``(rows, 1)`` for per-sample rows."""
    dt, dev = state.x_lo.dtype, state.x_lo.device
    if steps[0][0] == "start":  # the node's own neurons: one-hot 1 x 1 patches
        c = _shape(state, node)[1]
        P0 = torch.zeros(len(rows.o), 1, c, 1, 1, dtype=dt, device=dev)
        P0[torch.arange(len(rows.o), device=dev), 0, rows.o] = 1.0
        lb = ub = torch.zeros(len(rows.o), 1, dtype=dt, device=dev)
        pending: dict = {node: [(P0, P0, steps[0][2], ())]}
    else:
        _, w, bias, _, _ = _conv_args(state, node)
        w = w.to(dt)
        zero = torch.zeros(len(rows.o), 1, dtype=dt, device=dev)
        lb = ub = zero if bias is None else bias.to(dt)[rows.o].unsqueeze(1)
        P0 = w[rows.o].unsqueeze(1)  # (rows, B', C, k_h, k_w)
        pending = {steps[0][1].args[0]: [(P0, P0, steps[0][2], ())]}
    like = torch.zeros((), dtype=dt, device=dev)
    dense: dict = {}  # node -> (lA, uA) where matrix mode takes over

    def send(target, Pl, Pu, win, transform):
        pending.setdefault(target, []).append((Pl, Pu, win, transform))

    for kind, cur, win, transform in steps[1:]:
        deadline.check("patch bounds")
        parts = pending.pop(cur)
        node_shape = _shape(state, cur)
        if kind == "dense":  # every patch reaching it, written out in the node's own layout
            for Pl, Pu, w_i, t_i in parts:
                shape_i = _layout(node_shape, t_i)

                def out(P, shape_i=shape_i, w_i=w_i, t_i=t_i):
                    D = _dense(P, rows, shape_i, w_i)
                    r, b = D.shape[:2]
                    return _unapply(D.reshape(r * b, *D.shape[2:]), node_shape, t_i).reshape(r, b, *node_shape[1:])

                Al = out(Pl)
                Au = Al if Pu is Pl else out(Pu)
                if cur in dense:
                    ol, ou = dense[cur]
                    dense[cur] = (ol + Al, ol + Al) if ol is ou and Al is Au else (ol + Al, ou + Au)
                else:
                    dense[cur] = (Al, Au)
            continue
        shared = all(Pl is Pu for Pl, Pu, *_ in parts)
        Pl = sum(_embed(P, w_i, win) for P, _, w_i, _ in parts)
        Pu = Pl if shared else sum(_embed(P, w_i, win) for _, P, w_i, _ in parts)
        shape = _layout(node_shape, transform)

        def at(t):  # a node-shaped tensor (or number) on every row's window
            return rows.at(_unfold(_in_layout(t, node_shape, transform, like), shape, win))

        if kind == "input":  # the input, or a rearrangement of it with the input box as bounds
            lo, hi = at(state.lower[cur]), at(state.upper[cur])
            lb = lb + _sum_patch(Pl * lo) + _sum_patch(Pl.clamp(max=0) * (hi - lo))
            ub = ub + _sum_patch(Pu * hi) + _sum_patch(Pu.clamp(max=0) * (lo - hi))
        elif kind == "relax":
            lines = relaxation_lines(state, cur)
            a_l, b_l, a_u, b_u = (  # a zero offset (ReLU's lower line) is not gathered
                0.0 if i % 2 and is_zero(t) else at(t) for i, t in enumerate(lines)
            )
            Pl2, dl = through_lines(Pl, a_l, b_l, a_u, b_u, _sum_patch)
            Pu2, du = through_lines(Pu, a_u, b_u, a_l, b_l, _sum_patch)
            lb, ub = lb + dl, ub + du
            send(cur.args[0], Pl2, Pu2, win, transform)
        elif kind == "maxpool":  # each window's lower and upper line, spread over the window
            mp, x, k, sp, pp = _max_pool_args(state, cur)
            _, wl, wu, cu = pool_lines(state, mp)
            c, (oh, ow), n_k = shape[1], shape[2:], wl.shape[-1]

            def at_k(w, c=c, oh=oh, ow=ow, n_k=n_k):  # (B, C, O, K) -> (rows, B', C, K, k_h, k_w)
                t = w.reshape(w.shape[0], c, oh, ow, n_k).permute(0, 1, 4, 2, 3).reshape(w.shape[0], c * n_k, oh, ow)
                t = rows.at(_unfold(t, (t.shape[0], c * n_k, oh, ow), win))
                return t.reshape(*t.shape[:2], c, n_k, *t.shape[-2:])

            WL, WU, cu_at = at_k(wl), at_k(wu), at(cu.reshape(cu.shape[0], c, oh, ow))
            lb = lb + _sum_patch(Pl.clamp(max=0) * cu_at)
            ub = ub + _sum_patch(Pu.clamp(min=0) * cu_at)
            Ql = _spread(Pl.clamp(min=0), WL, k, sp) + _spread(Pl.clamp(max=0), WU, k, sp)
            Qu = _spread(Pu.clamp(min=0), WU, k, sp) + _spread(Pu.clamp(max=0), WL, k, sp)
            send(x, Ql, Qu, win.through_conv(k, sp, pp), ())
        elif kind == "affine":
            inp, scale, shift = _elementwise_args(state, cur)
            if isinstance(shift, torch.Tensor) or shift != 0:
                shift_u = at(shift)
                lb, ub = lb + _sum_patch(Pl * shift_u), ub + _sum_patch(Pu * shift_u)
            # the scale is zero outside the grid, which also clears those entries
            scale_u = at(scale)
            send(inp, *_both(lambda P: P * scale_u, Pl, Pu), win, transform)
        elif kind == "sum":  # a residual connection: the same patch on both operands
            x, y, sign = _residual(state, cur)
            send(x, Pl, Pu, win, transform)
            send(y, *((Pl, Pu) if sign > 0 else _both(torch.neg, Pl, Pu)), win, transform)
        elif kind == "move":
            inp, new = _moved(state, cur, transform)
            send(inp, Pl, Pu, win, new)
        elif kind == "pad":  # entries outside the input's grid are the zeros it pads with
            x, top_left = _zero_pad(state, cur)
            send(x, Pl, Pu, _padded(win, top_left), ())
        else:  # conv, or average pooling
            x, wc, bc, sc, pc = _conv_args(state, cur) or _pool_args(state, cur)
            mask = rows.at(_grid_mask(shape, win, like))
            Pl, Pu = _both(lambda P: P * mask, Pl, Pu)
            if bc is not None:
                bc = bc.to(dt).reshape(1, 1, -1, 1, 1)
                lb, ub = lb + _sum_patch(Pl * bc), ub + _sum_patch(Pu * bc)
            Pl, Pu = _both(lambda P: _through_conv(P, wc.to(dt), sc), Pl, Pu)
            send(x, Pl, Pu, win.through_conv(tuple(wc.shape[2:]), sc, pc), ())
    if dense:  # matrix mode from every node where patches stopped, in one back-substitution
        (first, (Al, Au)), *rest = dense.items()
        dl, du = backsub(state, first, Al, Au, extra=dict(rest))
        lb, ub = lb + dl, ub + du
    return lb, ub


def _spread(P: torch.Tensor, W: torch.Tensor, k, stride) -> torch.Tensor:
    """Patches ``(rows, B', C, k_h, k_w)`` on a max pooling's output through a line with window
    weights ``W`` ``(rows, B'', C, K, k_h, k_w)`` (``K`` the kernel's entries, row by row) to
    patches on its input: entry ``(a, b)`` of the kernel at window position ``(i, j)`` lands on
    ``(i s_h + a, j s_w + b)``."""
    r, _, c, kh, kw = P.shape
    out = P.new_zeros(r, max(P.shape[1], W.shape[1]), c, (kh - 1) * stride[0] + k[0], (kw - 1) * stride[1] + k[1])
    for e in range(W.shape[3]):
        a, b = divmod(e, k[1])
        out[..., a : a + (kh - 1) * stride[0] + 1 : stride[0], b : b + (kw - 1) * stride[1] + 1 : stride[1]] += (
            P * W[:, :, :, e]
        )
    return out


def _both(f, Pl: torch.Tensor, Pu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(Pl), f(Pu))``, computed once while the two are the same tensor."""
    if Pl is Pu:
        out = f(Pl)
        return out, out
    return f(Pl), f(Pu)


def _through_conv(P: torch.Tensor, w: torch.Tensor, stride) -> torch.Tensor:
    """Patches on a convolution's output to patches on its input (window grown by the kernel):
    the transposed convolution of every patch, as one matrix product with the transposed
    convolution's matrix on a patch (many tiny images are slow as convolutions), or as the
    convolution where that matrix would be large."""
    r, b, c, kh, kw = P.shape
    flat = P.reshape(r * b, c, kh, kw)
    n_in = c * kh * kw
    k_out = [(k - 1) * s + kc for k, s, kc in zip((kh, kw), stride, w.shape[2:], strict=True)]
    if n_in * w.shape[1] * k_out[0] * k_out[1] <= _MATRIX_ENTRIES:
        eye = torch.eye(n_in, dtype=P.dtype, device=P.device).reshape(n_in, c, kh, kw)
        T = F.conv_transpose2d(eye, w, stride=stride)
        out = (flat.reshape(flat.shape[0], n_in) @ T.reshape(n_in, -1)).reshape(-1, *T.shape[1:])
    else:
        out = F.conv_transpose2d(flat, w, stride=stride)
    return out.reshape(r, b, *out.shape[1:])

"""Patches mode (:mod:`boundflow.domains.linear.patches`): every convolution's neuron bounds
equal the matrix mode's on random CNNs (kernel sizes, strides, paddings per axis, channel
counts, odd and even grids, activations, elementwise affine ops, convolutions without an
activation between them, and the layers where it hands over to matrix mode), and CROWN's final
bounds contain sampled and corner outputs."""

from __future__ import annotations

import importlib
import itertools
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boundflow.graph import capture

crown_mod = importlib.import_module("boundflow.domains.linear.crown")
patches_mod = importlib.import_module("boundflow.domains.linear.patches")


class Affine(nn.Module):
    """An elementwise affine op with a constant operand (per channel, per entry or scalar)."""

    def __init__(self, kind: str, channels: int, grid: tuple[int, int], gen: torch.Generator):
        super().__init__()
        self.kind = kind
        shape = {"channel": (channels, 1, 1), "entry": (channels, *grid), "scalar": ()}[
            ["channel", "entry", "scalar"][int(torch.randint(3, (1,), generator=gen))]
        ]
        c = torch.randn(shape, generator=gen, dtype=torch.float64)
        self.register_buffer("c", c if kind != "div" else c.abs() + 0.5)

    def forward(self, x):
        if self.kind == "add":
            return x + self.c
        if self.kind == "rsub":
            return self.c - x
        if self.kind == "mul":
            return x * self.c
        if self.kind == "div":
            return x / self.c
        return -x


class ChannelsLast(nn.Module):
    """A channels-last stretch as TensorFlow exports it: ``permute`` to ``(B, H, W, C)``, an
    elementwise activation or affine op there (constants shaped for that layout: per channel,
    per entry or scalar), ``permute`` back; or (``"unit"``) a ReLU on a unit dimension added
    and reshaped away."""

    def __init__(self, kind: str, channels: int, grid: tuple[int, int], gen: torch.Generator):
        super().__init__()
        self.kind = kind
        shape = [(channels,), (*grid, channels), ()][int(torch.randint(3, (1,), generator=gen))]
        self.register_buffer("c", torch.randn(shape, generator=gen, dtype=torch.float64))

    def forward(self, x):
        if self.kind == "unit":  # a unit dimension and a padding by nothing, as vmapped graphs carry them
            return torch.relu(F.pad(x.unsqueeze(1), (0, 0, 0, 0))).reshape(x.shape)
        y = x.permute(0, 2, 3, 1)
        if self.kind == "sign":
            y = torch.sign(y) + self.c  # a step function, then a shift (QConv layers)
        elif self.kind == "relu":
            y = torch.relu(y * self.c)
        else:
            y = torch.tanh(y) - self.c
        return y.permute(0, 3, 1, 2)


class Residual(nn.Module):
    """``x + f(x)`` or ``x - f(x)`` with ``f`` one or two same-size convolutions (odd kernels,
    per-axis), a ReLU between them, and sometimes a ReLU after the sum: the two paths grow a
    patch's window differently."""

    def __init__(self, channels: int, gen: torch.Generator):
        super().__init__()

        def rint(lo, hi):
            return int(torch.randint(lo, hi + 1, (1,), generator=gen))

        layers: list[nn.Module] = []
        for i in range(rint(1, 2)):
            k = (2 * rint(0, 2) + 1, 2 * rint(0, 2) + 1)
            layers += ([nn.ReLU()] if i else []) + [nn.Conv2d(channels, channels, k, 1, (k[0] // 2, k[1] // 2))]
        self.f = nn.Sequential(*layers)
        self.sign = 1.0 if rint(0, 2) else -1.0
        self.post = bool(rint(0, 1))  # a ReLU after the sum (a ResNet block): the sum needs bounds

    def forward(self, x):
        y = x + self.f(x) if self.sign > 0 else x - self.f(x)
        return torch.relu(y) if self.post else y


class Downsample(nn.Module):
    """A downsampling residual block on an even grid: ``conv_1x1/2(x) + conv_3x3(relu(conv_2x2/2(x)))``
    (the paths reach ``x`` on windows of different sizes and offsets: 1 x 1 at offset 0 against
    6 x 6 at offset 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.skip = nn.Conv2d(channels, channels, 1, 2)
        self.a = nn.Conv2d(channels, channels, 2, 2)
        self.b = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return torch.relu(self.skip(x) + self.b(torch.relu(self.a(x))))


def _grid(h, w, conv: nn.Conv2d) -> tuple[int, int]:
    out = []
    for size, k, s, p, d in zip((h, w), conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True):
        out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return out[0], out[1]


def random_cnn(seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A random CNN on a random grid: 2-4 convolutions with random kernel sizes, strides and
    paddings (per axis), optional bias, activations or none between them, elementwise affine
    ops, and sometimes a layer patches mode does not follow (pooling, batch norm, a dilated or
    grouped convolution)."""
    gen = torch.Generator().manual_seed(seed)

    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    c, h, w = rint(1, 3), rint(5, 11), rint(5, 11)
    x = torch.rand(rint(1, 3), c, h, w, generator=gen, dtype=torch.float64)
    layers: list[nn.Module] = []
    for i in range(rint(2, 4)):
        while True:
            k = (rint(1, 4), rint(1, 4))
            s = (rint(1, 3), rint(1, 3))
            p = (rint(0, min(2, k[0] - 1)), rint(0, min(2, k[1] - 1)))
            special = rint(0, 9)
            dil = 2 if special == 0 and i > 0 else 1
            groups = 2 if special == 1 and i > 0 and c % 2 == 0 else 1
            out_c = rint(1, 4) * groups
            conv = nn.Conv2d(c, out_c, k, s, p, dilation=dil, groups=groups, bias=bool(rint(0, 3)))
            gh, gw = _grid(h, w, conv)
            if gh >= 1 and gw >= 1:
                break
        layers.append(conv)
        c, h, w = out_c, gh, gw
        for _ in range(rint(0, 2)):
            kind = ["relu", "leaky", "tanh", "sigmoid", "affine", "none", "nhwc", "residual"][rint(0, 7)]
            if kind == "residual" and h % 2 == 0 and w % 2 == 0 and h >= 4 and w >= 4:
                layers.append(Downsample(c))
                h, w = h // 2, w // 2
            elif kind == "residual":
                layers.append(Residual(c, gen))
            elif kind == "nhwc":
                layers.append(ChannelsLast(["sign", "relu", "tanh", "unit"][rint(0, 3)], c, (h, w), gen))
            elif kind == "relu":
                layers.append(nn.ReLU())
            elif kind == "leaky":
                layers.append(nn.LeakyReLU([0.1, -0.3, 2.0][rint(0, 2)]))
            elif kind == "tanh":
                layers.append(nn.Tanh())
            elif kind == "sigmoid":
                layers.append(nn.Sigmoid())
            elif kind == "affine":
                layers.append(Affine(["add", "rsub", "mul", "div", "neg"][rint(0, 4)], c, (h, w), gen))
        extra = rint(0, 7)
        if extra == 0 and h >= 2 and w >= 2:
            layers += [nn.MaxPool2d(2, 1), nn.ReLU()]
            h, w = h - 1, w - 1
        elif extra == 1:
            bn = nn.BatchNorm2d(c)
            bn.running_mean.normal_(generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
            layers.append(bn)
        elif extra == 2 and h >= 2 and w >= 2:
            layers.append(nn.AvgPool2d(2, 1))
            h, w = h - 1, w - 1
        elif extra == 3 and h >= 3 and w >= 3:  # padding counted as zeros, stride 2
            layers.append(nn.AvgPool2d(3, 2, 1))
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        elif extra == 5 and h >= 2 and w >= 2:  # overlapping, padded windows
            layers.append(nn.MaxPool2d(3, 2, 1))
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        elif extra == 6 and h >= 2 and w >= 2:  # disjoint windows (a remainder row dropped)
            layers.append(nn.MaxPool2d(2, 2))
            h, w = h // 2, w // 2
        elif extra == 7 and h >= 2 and w >= 2:  # a QConv block: max pool, batch norm, channels-last sign
            bn = nn.BatchNorm2d(c)
            bn.running_mean.normal_(generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
            layers += [nn.MaxPool2d(2, 2), bn, ChannelsLast("sign", c, (h // 2, w // 2), gen)]
            h, w = h // 2, w // 2
        elif extra == 4:  # zero padding, per side
            pads = [rint(0, 2) for _ in range(4)]
            layers.append(nn.ZeroPad2d(tuple(pads)))
            h, w = h + pads[2] + pads[3], w + pads[0] + pads[1]
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(c * h * w, 3)]
    torch.manual_seed(seed)
    net = nn.Sequential(*layers).double().eval()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=1.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]) ** 0.5)
    return net, x


def _compare(seed: int, kinds: set) -> int:
    """Patches against matrix mode at every convolution and residual sum with CROWN bounds;
    returns how many went through patches mode."""
    net, x = random_cnn(seed)
    eps = 0.1
    g = capture(net, x)
    state = crown_mod.prepare(g, x - eps, x + eps)
    state.tight_pool = seed % 3 == 1  # max pooling's pivot-difference upper line on some
    used = 0
    for node in g.gm.graph.nodes:
        if node not in state.needs_bounds:  # convolutions and residual sums
            continue
        steps = patches_mod.patch_chain(state, node)
        if steps is None:
            continue
        used += 1
        kinds.update(k for k, *_ in steps)
        state.patches = True
        p_lo, p_hi = crown_mod.node_bounds(state, node)
        # a small budget: one output channel at a time
        c_lo, c_hi = crown_mod.node_bounds(state, node, budget=1)
        state.patches = False
        m_lo, m_hi = crown_mod.node_bounds(state, node)
        scale = 1 + m_hi.abs().max()
        tol = 1e-10 * scale
        assert torch.allclose(p_lo, m_lo, rtol=0, atol=tol), (seed, node.name, (p_lo - m_lo).abs().max())
        assert torch.allclose(p_hi, m_hi, rtol=0, atol=tol), (seed, node.name, (p_hi - m_hi).abs().max())
        assert torch.allclose(c_lo, p_lo, rtol=0, atol=tol) and torch.allclose(c_hi, p_hi, rtol=0, atol=tol)
    # the final CROWN bounds (with patches-mode intermediate bounds) contain sampled outputs
    state.patches = True
    lb, ub, _ = crown_mod.crown(g, x - eps, x + eps, state=crown_mod.prepare(g, x - eps, x + eps))
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(256, *x.shape, generator=gen, dtype=x.dtype)
    u[:64] = u[:64].round()  # corners
    with torch.no_grad():
        ys = net((x + eps * (2 * u - 1)).reshape(-1, *x.shape[1:])).reshape(256, x.shape[0], -1)
    assert bool((ys >= lb - 1e-9).all() and (ys <= ub + 1e-9).all()), seed
    return used


@pytest.mark.parametrize("seeds", [range(0, 20), range(20, 40)])
def test_patches_equal_matrix_mode_on_random_cnns(seeds):
    kinds: set = set()
    used = sum(_compare(seed, kinds) for seed in seeds)
    assert used >= 10  # the comparison is not vacuous
    assert kinds >= {"conv", "relax", "input", "dense"}, kinds


def test_patches_cover_every_step_kind():
    """Across the random architectures, every kind of step occurs (so each is compared)."""
    kinds: set = set()
    for seed in itertools.count(40):
        _compare(seed, kinds)
        if (
            kinds >= {"conv", "relax", "affine", "input", "dense", "sum", "move", "start", "pad", "maxpool"}
            or seed > 80
        ):
            break
    assert kinds == {"conv", "relax", "affine", "input", "dense", "sum", "move", "start", "pad", "maxpool"}, kinds


def test_patches_follow_channels_last_stretches_between_convolutions():
    """A convolution behind a channels-last stretch (permute, elementwise op, permute back)
    keeps patches mode through it; the bounds equal the matrix mode's (checked in
    :func:`_compare`), and such chains occur across the random architectures."""
    through = 0
    for seed in range(60):
        net, x = random_cnn(seed)
        if not any(isinstance(m, ChannelsLast) for m in net):
            continue
        g = capture(net, x)
        state = crown_mod.prepare(g, x - 0.1, x + 0.1)
        for node in g.gm.graph.nodes:
            if node.target is torch.ops.aten.convolution.default:
                steps = patches_mod.patch_chain(state, node)
                through += bool(steps) and any(perm is not None for *_, perm in steps)
        _compare(seed, set())
    assert through >= 3, through


def test_a_padding_by_nothing_on_a_unit_dimension_is_followed():
    """vmapped graphs pad by zero entries around a unit dimension (``carvana_unet``): a copy,
    which patches mode follows instead of handing over to matrix mode there."""
    torch.manual_seed(0)
    x = torch.rand(1, 2, 7, 7, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), ChannelsLast("unit", 3, (5, 5), gen), nn.Conv2d(3, 2, 3), nn.Flatten())
    g = capture(net.double(), x)
    state = crown_mod.prepare(g, x - 0.1, x + 0.1)
    second = [n for n in g.gm.graph.nodes if n.target is torch.ops.aten.convolution.default][1]
    steps = patches_mod.patch_chain(state, second)
    assert ("move", "constant_pad_nd") in [(k, n.name) for k, n, *_ in steps]
    assert not patches_mod.uses_matrix_mode(steps)


def test_a_shift_of_a_step_function_keeps_its_exact_interval_bounds():
    """``sign(permute(conv)) + b`` read by another ``sign``: the shift of a step function needs
    no back-substitution (its interval bounds are the exact range), and the channels-last view
    of the convolution is bounded at the convolution itself (patches mode)."""
    torch.manual_seed(0)
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), ChannelsLast("sign", 3, (4, 4), torch.Generator().manual_seed(1)),
                        nn.Conv2d(3, 2, 2), nn.Flatten()).double()  # fmt: skip
    # the stretch computes sign(y) + c, then (through a second sign in QConv nets) reads it
    g = capture(net, x)
    state = crown_mod.prepare(g, x - 0.2, x + 0.2)
    aten = torch.ops.aten
    by_target = {n.target: n for n in g.gm.graph.nodes if n.op == "call_function"}
    first_conv = next(n for n in g.gm.graph.nodes if n.target is aten.convolution.default)
    assert first_conv in state.needs_bounds  # instead of its channels-last permute
    assert by_target[aten.permute.default] not in state.needs_bounds
    lb, ub, _ = crown_mod.crown(g, x - 0.2, x + 0.2, state=state)
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(300, *x.shape[1:], generator=gen, dtype=x.dtype)
    with torch.no_grad():
        ys = net(x - 0.2 + 0.4 * u)
    assert bool((ys >= lb - 1e-9).all() and (ys <= ub + 1e-9).all())


def test_max_pool_values_behind_batch_norm_are_bounded_at_the_pool_in_patches_mode():
    """A QConv block (``conv -> max pool -> batch norm -> channels-last sign``): the sign's
    input is bounded at the pool's values (batch norm and the permutation map those bounds
    exactly), in patches mode from a 1 x 1 patch there through the pool's lines; the bounds
    equal the matrix mode's and contain sampled outputs."""
    torch.manual_seed(0)
    x = torch.rand(2, 2, 9, 9, dtype=torch.float64)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(2, 2), bn, ChannelsLast("sign", 3, (3, 3), gen),
                        nn.Conv2d(3, 2, 2), nn.Flatten()).double().eval()  # fmt: skip
    g = capture(net, x)
    lo, hi = x - 0.1, x + 0.1
    state = crown_mod.prepare(g, lo, hi)
    aten = torch.ops.aten
    pool = next(
        n
        for n in g.gm.graph.nodes
        if n.target is operator.getitem and n.args[0].target is aten.max_pool2d_with_indices.default
    )
    assert pool in state.needs_bounds
    assert not any(n.target is aten.permute.default for n in state.needs_bounds)
    steps = patches_mod.patch_chain(state, pool)
    assert [k for k, *_ in steps] == ["start", "maxpool", "conv", "input"]
    state.patches = True
    p_lo, p_hi = crown_mod.node_bounds(state, pool)
    state.patches = False
    m_lo, m_hi = crown_mod.node_bounds(state, pool)
    assert torch.allclose(p_lo, m_lo, rtol=0, atol=1e-10) and torch.allclose(p_hi, m_hi, rtol=0, atol=1e-10)
    assert (m_hi - m_lo).max() > 0  # not a degenerate comparison
    lb, ub, _ = crown_mod.crown(g, lo, hi, state=state)
    u = torch.rand(300, *x.shape, generator=gen, dtype=x.dtype)
    with torch.no_grad():
        ys = net((lo + (hi - lo) * u).reshape(-1, *x.shape[1:])).reshape(300, *lb.shape)
    assert bool((ys >= lb - 1e-9).all() and (ys <= ub + 1e-9).all())


def test_patches_mode_is_not_used_where_it_does_not_apply():
    """Dilated, grouped and bounded-weight convolutions, and convolutions with an alpha-CROWN
    slope keyed to them, stay in matrix mode."""
    torch.manual_seed(0)
    x = torch.rand(2, 2, 7, 7, dtype=torch.float64)
    for conv in (nn.Conv2d(2, 2, 3, dilation=2), nn.Conv2d(2, 2, 3, groups=2)):
        net = nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU(), conv, nn.ReLU(), nn.Flatten()).double()
        g = capture(net, x)
        state = crown_mod.prepare(g, x - 0.1, x + 0.1)
        second = [n for n in g.gm.graph.nodes if n.target is torch.ops.aten.convolution.default][1]
        assert patches_mod.patch_chain(state, second) is None
    net = nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Flatten()).double()
    g = capture(net, x)
    state = crown_mod.prepare(g, x - 0.1, x + 0.1)
    second = [n for n in g.gm.graph.nodes if n.target is torch.ops.aten.convolution.default][1]
    assert patches_mod.patch_chain(state, second) is not None
    relu = next(n for n in g.gm.graph.nodes if n.target is torch.ops.aten.relu.default)
    state.alpha = {(relu, second): torch.zeros(1)}
    assert patches_mod.patch_chain(state, second) is None
    state.alpha = {}
    state.radius[second.args[1]] = torch.full_like(state.const[second.args[1]], 0.01)
    assert patches_mod.patch_chain(state, second) is None


@pytest.mark.parametrize("seeds", [range(0, 12)])
def test_masked_rows_equal_matrix_mode(seeds):
    """With a mask (one row per sample and neuron in patches mode, or rows shared by every
    sample where matrix mode takes over), the masked entries equal the matrix mode's bounds
    and the others are left unbounded."""
    checked = 0
    for seed in seeds:
        net, x = random_cnn(seed)
        g = capture(net, x)
        state = crown_mod.prepare(g, x - 0.1, x + 0.1, sparse=False)
        gen = torch.Generator().manual_seed(seed)
        for node in g.gm.graph.nodes:
            if node not in state.needs_bounds or patches_mod.patch_chain(state, node) is None:
                continue
            shape = state.lower[node].shape
            mask = torch.rand(shape[0], shape[1:].numel(), generator=gen) < 0.3
            state.patches = True
            p_lo, p_hi = (t.reshape(mask.shape) for t in crown_mod.node_bounds(state, node, mask=mask))
            state.patches = False
            m_lo, m_hi = (t.reshape(mask.shape) for t in crown_mod.node_bounds(state, node))
            d_lo, d_hi = (t.reshape(mask.shape) for t in crown_mod.node_bounds(state, node, mask=mask))
            tol = 1e-10 * (1 + m_hi.abs().max())
            for lo, hi in ((p_lo, p_hi), (d_lo, d_hi)):
                assert torch.allclose(lo[mask], m_lo[mask], rtol=0, atol=tol), seed
                assert torch.allclose(hi[mask], m_hi[mask], rtol=0, atol=tol), seed
            # entries outside the mask: unbounded, or bounded correctly where rows are shared
            for lo, hi in ((p_lo, p_hi), (d_lo, d_hi)):
                out = ~mask
                assert bool(((lo[out] == -torch.inf) | (lo[out] - m_lo[out]).abs().le(tol)).all())
                assert bool(((hi[out] == torch.inf) | (hi[out] - m_hi[out]).abs().le(tol)).all())
            checked += 1
    assert checked >= 5


def test_sparse_bounds_see_relus_through_rearrangements():
    """A convolution read by a ReLU through a view (a vmapped graph's unit dimension) gets CROWN
    bounds only where the sign is open, as when the ReLU reads it directly; a reader that is not
    a rearrangement followed by ReLUs keeps every entry bounded."""

    class Unit(nn.Module):
        def __init__(self, then):
            super().__init__()
            self.then = then

        def forward(self, x):
            return self.then(x.unsqueeze(1)).reshape(x.shape)

    torch.manual_seed(0)
    x = torch.rand(1, 2, 7, 7, dtype=torch.float64)
    for then, sparse in ((torch.relu, True), (torch.tanh, False)):
        net = nn.Sequential(nn.Conv2d(2, 3, 3), Unit(then), nn.Conv2d(3, 2, 3), nn.Flatten()).double()
        g = capture(net, x)
        state = crown_mod.prepare(g, x - 0.3, x + 0.3)
        conv = next(n for n in g.gm.graph.nodes if n.target is torch.ops.aten.convolution.default)
        mask = crown_mod._unstable(conv, state.lower[conv], state.upper[conv])
        assert (mask is not None) == sparse
        if sparse:
            assert 0 < int(mask.sum()) < mask.numel()  # some neurons of known sign are skipped
            lb, ub, _ = crown_mod.crown(g, x - 0.3, x + 0.3, state=state)
            full = crown_mod.prepare(g, x - 0.3, x + 0.3, sparse=False)
            f_lb, f_ub, _ = crown_mod.crown(g, x - 0.3, x + 0.3, state=full)
            assert torch.allclose(lb, f_lb, atol=1e-10) and torch.allclose(ub, f_ub, atol=1e-10)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_sparse_intermediate_bounds_are_sound_and_nearly_as_tight(kind):
    """``prepare(sparse=True)`` (CROWN only where a ReLU input's sign is open) against every
    entry bounded: the final bounds contain sampled and corner outputs.  They can be looser
    (a neuron of known sign keeps its interval bound, so later interval bounds, intersected
    with CROWN's, are wider): on these 12 random CNNs by 1.0% of the total width, on 12 random
    MLPs by 0.02%."""
    full_w = sparse_w = 0.0
    for seed in range(12):
        if kind == "cnn":
            net, x = random_cnn(seed)
        else:
            torch.manual_seed(seed)
            widths = [5] + [int(w) for w in torch.randint(4, 24, (3,))] + [3]
            layers = []
            for a, b in zip(widths[:-1], widths[1:]):
                layers += [nn.Linear(a, b), nn.ReLU() if seed % 3 else nn.LeakyReLU(0.2)]
            net = nn.Sequential(*layers[:-1]).double()
            x = torch.randn(4, 5, dtype=torch.float64)
        eps = 0.1
        g = capture(net, x)
        lb_s, ub_s, _ = crown_mod.crown(g, x - eps, x + eps, state=crown_mod.prepare(g, x - eps, x + eps))
        state = crown_mod.prepare(g, x - eps, x + eps, sparse=False)
        lb_f, ub_f, _ = crown_mod.crown(g, x - eps, x + eps, state=state)
        gen = torch.Generator().manual_seed(seed)
        u = torch.rand(256, *x.shape, generator=gen, dtype=x.dtype)
        u[:64] = u[:64].round()
        with torch.no_grad():
            ys = net((x + eps * (2 * u - 1)).reshape(-1, *x.shape[1:])).reshape(256, x.shape[0], -1)
        assert bool((ys >= lb_s - 1e-9).all() and (ys <= ub_s + 1e-9).all()), seed
        if seed < 3:  # the same through the domain interface
            from boundflow import compute_bounds
            from boundflow.domains.linear import CrownDomain

            for sparse, (lb, ub) in ((True, (lb_s, ub_s)), (False, (lb_f, ub_f))):
                d_lb, d_ub = compute_bounds(net, x - eps, x + eps, method=CrownDomain(sparse=sparse))
                assert torch.allclose(d_lb.reshape(lb.shape), lb) and torch.allclose(d_ub.reshape(ub.shape), ub)
        full_w += float((ub_f - lb_f).sum())
        sparse_w += float((ub_s - lb_s).sum())
    assert sparse_w <= full_w * (1.015 if kind == "cnn" else 1.001), (sparse_w, full_w)


def test_crown_domain_refuses_a_bad_sparse_flag():
    from boundflow.domains.linear import CrownDomain

    with pytest.raises(ValueError, match="sparse must be True or False"):
        CrownDomain(sparse="no")


def test_patches_hand_over_after_a_flat_layer():
    """A convolution fed by a linear layer through a view (a 2-D node before the grid): the
    chain hands over to matrix mode there, with the matrix mode's bounds."""

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2 * 5 * 5)
            self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
            self.conv2 = nn.Conv2d(3, 2, 3, stride=2)

        def forward(self, x):
            h = torch.relu(self.fc(x)).view(-1, 2, 5, 5)
            return torch.relu(self.conv2(torch.relu(self.conv1(h)))).flatten(1)

    torch.manual_seed(0)
    net, x = Up().double(), torch.randn(3, 6, dtype=torch.float64)
    g = capture(net, x)
    state = crown_mod.prepare(g, x - 0.1, x + 0.1, sparse=False)
    convs = [n for n in g.gm.graph.nodes if n.target is torch.ops.aten.convolution.default]
    for node in convs:
        steps = patches_mod.patch_chain(state, node)
        assert steps is not None and steps[-1][0] == "dense"
        p_lo, p_hi = crown_mod.node_bounds(state, node)
        state.patches = False
        m_lo, m_hi = crown_mod.node_bounds(state, node)
        state.patches = True
        assert torch.allclose(p_lo, m_lo, rtol=0, atol=1e-10) and torch.allclose(p_hi, m_hi, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seeds", [range(0, 30), range(30, 60)])
def test_skipped_intermediate_bounds_lose_nothing(seeds, monkeypatch):
    """Nodes that keep their interval bounds (a shift, scale, batch norm or rearrangement of a
    relaxation or a max pooling) or take them from the convolution behind a rearrangement: the
    final CROWN bounds equal those with back-substitution at every such node (the interval
    image there is never looser than CROWN), on random CNNs with channels-last sign and ReLU
    stretches, max pooling and batch norm."""
    changed = 0
    for seed in seeds:
        net, x = random_cnn(seed)
        g = capture(net, x)
        lo, hi = x - 0.1, x + 0.1
        state = crown_mod.prepare(g, lo, hi)
        lb, ub, _ = crown_mod.crown(g, lo, hi, state=state)
        with monkeypatch.context() as m:
            m.setattr(crown_mod, "_redirect_bounds", lambda *a: None)
            plain = crown_mod.prepare(g, lo, hi)
            p_lb, p_ub, _ = crown_mod.crown(g, lo, hi, state=plain)
        changed += plain.needs_bounds != state.needs_bounds
        tol = 1e-9 * (1 + p_ub.abs().max())
        assert torch.allclose(lb, p_lb, rtol=0, atol=tol) and torch.allclose(ub, p_ub, rtol=0, atol=tol), seed
    assert changed >= 3, changed


def test_residual_paths_meet_on_the_union_of_their_windows():
    """A downsampling residual block on a grid large enough for patches mode to follow both
    paths (1 x 1 at offset 0 against 6 x 6 at offset 2 at the block's input): the bounds at every
    convolution and residual sum equal the matrix mode's."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, 1, 1), nn.ReLU(), Downsample(3), nn.Conv2d(3, 2, 3, 1, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(2 * 8 * 8, 3),
    ).double()  # fmt: skip
    x = torch.rand(2, 2, 16, 16, dtype=torch.float64)
    g = capture(net, x)
    state = crown_mod.prepare(g, x - 0.05, x + 0.05)
    residual = 0
    for node in g.gm.graph.nodes:
        steps = patches_mod.patch_chain(state, node) if node in state.needs_bounds else None
        if steps is None:
            continue
        residual += any(kind in ("sum", "start") for kind, *_ in steps)
        state.patches = True
        p_lo, p_hi = crown_mod.node_bounds(state, node)
        state.patches = False
        m_lo, m_hi = crown_mod.node_bounds(state, node)
        tol = 1e-10 * (1 + m_hi.abs().max())
        assert torch.allclose(p_lo, m_lo, rtol=0, atol=tol) and torch.allclose(p_hi, m_hi, rtol=0, atol=tol), node.name
    assert residual >= 2, residual

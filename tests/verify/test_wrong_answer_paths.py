"""The two wrong-answer paths of the issue-30 audit, each with its reproducer and a fuzzer family
that would have found it: the ReLU-chain recogniser taking non-affine segments for affine (a
``Clip`` whose bounds random points never reach; a nonlinearity next to an output 1e12 larger),
and MILP bounds that the solver's tolerances break when activations are tiny.  No data needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import boundflow as bf
from boundflow.domains.linear.chain import extract_chain

D = torch.float64


def _reproducer_onnx(path):
    """The audit's network: ``Y = Clip(Z, -1e4, 1e4) - 0.5 Z`` with ``Z`` a ReLU spike of height
    2^20 around x = 0.3125 (``Y(0.3125) = -514288`` in onnxruntime)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c, d, a = 0.3125, 2**-20, 2.0**40
    inits = {
        "W1": np.array([[a, a, a]], dtype=np.float32),
        "B1": np.array([-a * (c - d), -a * c, -a * (c + d)], dtype=np.float32),
        "W2": np.array([[1], [-2], [1]], dtype=np.float32),
        "B2": np.array([0], dtype=np.float32),
        "lo": np.array(-1e4, dtype=np.float32),
        "hi": np.array(1e4, dtype=np.float32),
        "half": np.array(0.5, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["X", "W1", "B1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["Z"]),
        helper.make_node("Clip", ["Z", "lo", "hi"], ["cz"]),
        helper.make_node("Mul", ["Z", "half"], ["hz"]),
        helper.make_node("Sub", ["cz", "hz"], ["Y"]),
    ]
    g = helper.make_graph(
        nodes,
        "clip_spike",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_clip_spike_reproducer_answers_sat_never_unsat(tmp_path):
    from boundflow.verify import verify

    _reproducer_onnx(tmp_path / "net.onnx")
    (tmp_path / "prop.vnnlib").write_text(
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
        "(assert (>= X_0 -1.0))\n(assert (<= X_0 1.0))\n(assert (<= Y_0 -1.0))\n"
    )
    res = verify(tmp_path / "net.onnx", tmp_path / "prop.vnnlib", timeout=60)
    assert res.status in ("sat", "unknown", "timeout"), res
    assert res.status != "unsat"
    if res.status == "sat":  # the witness really violates the property in onnxruntime
        assert float(res.output[0]) <= -1.0


class _Segment(nn.Module):
    """``Linear -> ReLU -> Linear -> tail(.)`` with a tail that is or is not affine."""

    def __init__(self, n_in, hidden, n_out, tail, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(n_in, hidden).double()
        self.l2 = nn.Linear(hidden, n_out).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=D))
        self.tail = tail

    def forward(self, x):
        return self.tail(self.l2(torch.relu(self.l1(x))))


# tails with a nonlinearity a random-point test can miss: clamps whose bounds are never reached,
# and a nonlinearity on one output beside a sibling output scaled by 1e12
HIDDEN = {
    "clip-unreached": lambda z: torch.clamp(z, -1e6, 1e6),
    "clip-one-side": lambda z: torch.clamp(z, min=-1e9),
    "min-const": lambda z: torch.minimum(z, torch.full_like(z, 1e8)),
    "sigmoid-beside-huge": lambda z: torch.cat([torch.sigmoid(z[:, :1]), 1e12 * z[:, 1:]], 1),
    "tanh-tiny": lambda z: z + 1e-13 * torch.tanh(z),
    "abs-shifted": lambda z: torch.abs(z + 1e7) - 1e7,
    "square-tiny": lambda z: z + 1e-14 * z * z,
    "relu6-wide": lambda z: torch.nn.functional.hardtanh(z, -1e5, 1e5),
}


class _TrainBN(nn.Module):
    """Batch norm in training mode: its statistics come from the batch (not affine)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(2).double().train()

    def forward(self, z):
        return self.bn(z)


HIDDEN["batch-norm-training"] = _TrainBN()
AFFINE = {
    "scale-shift": lambda z: 3.0 * z - 2.0,
    "mixed-scales": lambda z: torch.cat([z[:, :1], 1e12 * z[:, 1:]], 1),
    "reshape-flip": lambda z: z.reshape(z.shape[0], -1).flip(1),
    "divide-const": lambda z: z / 7.0,
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", sorted(HIDDEN))
def test_chain_recogniser_refuses_segments_with_hidden_nonlinearities(name, seed):
    model = _Segment(3, 5, 2, HIDDEN[name], seed)
    assert extract_chain(model, 3) is None


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", sorted(AFFINE))
def test_chain_recogniser_accepts_affine_segments_and_equals_the_model(name, seed):
    model = _Segment(3, 5, 2, AFFINE[name], seed)
    chain = extract_chain(model, 3)
    assert chain is not None
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(seed), dtype=D)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(chain(x), ref, rtol=1e-10, atol=1e-10 * (1 + float(ref.abs().max())))


def test_hidden_nonlinearity_networks_get_sound_crown_bounds():
    """The general path that such networks now take bounds them soundly (attacked points too)."""
    for k, name in enumerate(sorted(set(HIDDEN) - {"batch-norm-training"})):  # (needs a batch > 1)
        model = _Segment(3, 5, 2, HIDDEN[name], k)
        g = torch.Generator().manual_seed(k)
        lo = torch.randn(1, 3, generator=g, dtype=D)
        hi = lo + 0.5
        lb, ub = bf.compute_bounds(model, lo, hi, method="crown")
        x = (lo + (hi - lo) * torch.rand(2000, 3, generator=g, dtype=D)).requires_grad_(True)
        y = model(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        corners = torch.where(grad > 0, hi, lo), torch.where(grad > 0, lo, hi)
        with torch.no_grad():
            pts = torch.cat([y, model(corners[0]), model(corners[1])])
        assert (pts >= lb - 1e-9 * (1 + lb.abs())).all(), name
        assert (pts <= ub + 1e-9 * (1 + ub.abs())).all(), name


def _tiny_activation_net(seed: int):
    """A random ReLU MLP 2-k-k-2 whose activations have scale ``10^s``, s uniform in [-8, 3],
    and a box around a random centre of that scale (the audit's failing regime: HiGHS's absolute
    tolerances against activations of 1e-7 to 1e-5)."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** float(torch.empty(1).uniform_(-8, 3, generator=g))
    widths = [2, int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g)), 2]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=False):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=D))
            lin.bias.copy_(torch.randn(b, generator=g, dtype=D) * scale)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    c = torch.randn(1, 2, generator=g, dtype=D) * scale
    lo = c - scale * 0.05 * torch.rand(1, 2, generator=g, dtype=D)
    hi = c + scale * 0.05 * torch.rand(1, 2, generator=g, dtype=D)
    return model, lo, hi, g


# seeds 16 and 106 gave lower bounds above attained values (marked exact) before the MILP's
# claim was certified; the rest of the range is the fuzzer family
@pytest.mark.parametrize("seeds", [(16, 106), tuple(range(0, 40)), tuple(range(100, 130))])
def test_milp_bounds_contain_attained_values_for_activations_from_1e_8_to_1e3(seeds):
    from boundflow.encode.network import network_bounds

    n_exact = n_all = 0
    for seed in seeds:
        model, lo, hi, g = _tiny_activation_net(seed)
        lb, ub, exact = network_bounds(model, lo, hi, "milp", return_exact=True)
        x = lo + (hi - lo) * torch.rand(20000, 2, generator=g, dtype=D)
        corners = torch.cartesian_prod(*[torch.stack([lo[0, i], hi[0, i]]) for i in range(2)])
        with torch.no_grad():
            y = model(torch.cat([x, corners]))
        tol = 1e-12 * float(y.abs().max())  # float64 evaluation of the network itself
        assert (y >= lb - tol).all(), (seed, lb, y.min(0).values)
        assert (y <= ub + tol).all(), (seed, ub, y.max(0).values)
        n_exact += int(exact.sum())
        n_all += exact.numel()
    # the certified search closes at the MIP's claim on most of them (so milp stays exact there)
    assert n_exact >= n_all // 2, (n_exact, n_all)


def test_binarised_network_counterexample_found_through_straight_through_gradients(tmp_path):
    """A Sign network has zero gradients: the attack passes them as the identity, and the
    disjuncts over one box (a classification property) are attacked together."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from boundflow.verify import verify

    # y = sign(x W + b): class 1 beats class 0 only where x_0 - x_1 > 1.99, a corner of the box
    # of volume 1.25e-5 that random points miss and zero gradients never reach
    w = np.zeros((8, 3), dtype=np.float32)
    w[0, 1], w[1, 1] = 1.0, -1.0
    b = np.array([0.0, -1.99, -0.5], dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["a"]),
        helper.make_node("Sign", ["a"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "bnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "bnn.onnx")
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(8))
    decl += "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
    box = "".join(f"(assert (>= X_{i} -1.0))\n(assert (<= X_{i} 1.0))\n" for i in range(8))
    # unsafe: class 1 or class 2 strictly above class 0
    prop = decl + box + "(assert (or (and (> Y_1 Y_0)) (and (> Y_2 Y_0))))\n"
    (tmp_path / "p.vnnlib").write_text(prop)
    res = verify(tmp_path / "bnn.onnx", tmp_path / "p.vnnlib", timeout=60)
    assert res.status == "sat", res
    y = res.output
    assert y[1] > y[0] or y[2] > y[0]


def _patch_position_onnx(path, table, value_use: bool = False):
    """cctsdb_yolo's pattern on a small scale: the network input's last coordinate, cast to an
    integer, is the start of a ``Slice``; ``Y`` is ``table[int(X_1)] + 0 * X_0`` (with
    ``value_use``, ``+ 0 * X_1`` too: ``X_1`` is then read as a value as well, which no domain
    can bound, so the network does not import)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = {
        "T": np.asarray(table, dtype=np.float32),
        "i1": np.array([1], dtype=np.int64),
        "one": np.array([1], dtype=np.int64),
        "ax": np.array([0], dtype=np.int64),
        "i0": np.array([0], dtype=np.int64),
        "zero": np.array([0.0], dtype=np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["X", "i1"], ["p"], axis=0),
        helper.make_node("Cast", ["p"], ["s"], to=TensorProto.INT64),
        helper.make_node("Add", ["s", "one"], ["e"]),
        helper.make_node("Slice", ["T", "s", "e", "ax"], ["v"]),
        helper.make_node("Gather", ["X", "i1" if value_use else "i0"], ["x0"], axis=0),
        helper.make_node("Mul", ["x0", "zero"], ["z"]),
        helper.make_node("Add", ["v", "z"], ["Y"]),
    ]
    g = helper.make_graph(
        nodes,
        "patch_position",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


_PATCH_PROPERTY = (
    "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
    "(assert (>= X_0 0.25))\n(assert (<= X_0 0.25))\n"
    "(assert (>= X_1 0.0))\n(assert (<= X_1 7.0))\n(assert (<= Y_0 -0.5))\n"
)


@pytest.mark.parametrize("bad", [None, 0, 4, 7])
def test_network_that_does_not_import_answers_sat_by_onnxruntime_or_unknown_never_unsat(tmp_path, bad):
    """A network whose index input is also read as a value does not import; the verifier still
    finds a counterexample at the one integer position where it exists (re-checked in
    onnxruntime), and answers ``unknown``, never ``unsat``, where none exists."""
    from boundflow.verify import verify

    table = np.ones(8)
    if bad is not None:
        table[bad] = -1.0
    _patch_position_onnx(tmp_path / "net.onnx", table, value_use=True)
    (tmp_path / "prop.vnnlib").write_text(_PATCH_PROPERTY)
    res = verify(tmp_path / "net.onnx", tmp_path / "prop.vnnlib", timeout=20)
    assert any("did not import" in n for n in res.notes)
    if bad is None:
        assert res.status == "unknown"
    else:
        assert res.status == "sat"
        assert int(res.counterexample[1]) == bad and res.output[0] <= -0.5


@pytest.mark.parametrize("bad", [None, 0, 4, 7])
def test_index_input_network_is_decided_case_by_case(tmp_path, bad):
    """The same network read only through the cast imports (``index_inputs``) and is decided
    exactly, one case per integer position: ``sat`` at the one bad position, ``unsat`` where the
    table has none."""
    from boundflow.verify import verify

    table = np.ones(8)
    if bad is not None:
        table[bad] = -1.0
    _patch_position_onnx(tmp_path / "net.onnx", table)
    (tmp_path / "prop.vnnlib").write_text(_PATCH_PROPERTY)
    res = verify(tmp_path / "net.onnx", tmp_path / "prop.vnnlib", timeout=20)
    if bad is None:
        assert res.status == "unsat", res
    else:
        assert res.status == "sat", res
        assert int(res.counterexample[1]) == bad and res.output[0] <= -0.5

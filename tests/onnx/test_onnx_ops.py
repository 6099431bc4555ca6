"""The importer's operators against onnxruntime, over their arguments (axes, keepdims, exponents,
negative steps, coordinate modes, broadcasting, opsets), and sound bounds through them.

Each case is a one- or two-node ONNX graph built here with ``onnx.helper``; the imported module
must match onnxruntime on random inputs (relative 1e-5), and CROWN and IBP bounds of the
imported model on a box must contain sampled outputs.  No data needed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import boundflow as bf
from boundflow.onnx.importer import OnnxModule, check_against_onnxruntime

F32 = TensorProto.FLOAT


def _model(nodes, in_shape, out_shape, inits=(), opset=13):
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, in_shape)],
        [helper.make_tensor_value_info("y", F32 if out_shape is not None else TensorProto.INT64, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _c(name, value, dtype=np.float32):
    return (name, np.asarray(value, dtype=dtype))


CASES = {
    "pow-2": ([helper.make_node("Pow", ["x", "p"], ["y"])], [1, 4], [1, 4], [_c("p", 2.0)], 13),
    "pow-3": ([helper.make_node("Pow", ["x", "p"], ["y"])], [1, 4], [1, 4], [_c("p", 3.0)], 13),
    "pow-half-of-square": (
        [helper.make_node("Mul", ["x", "x"], ["s"]), helper.make_node("Pow", ["s", "p"], ["y"])],
        [1, 4],
        [1, 4],
        [_c("p", 0.5)],
        13,
    ),
    "sin": ([helper.make_node("Sin", ["x"], ["y"])], [1, 5], [1, 5], [], 13),
    "cos-scaled": (
        [helper.make_node("Mul", ["x", "k"], ["s"]), helper.make_node("Cos", ["s"], ["y"])],
        [1, 5],
        [1, 5],
        [_c("k", 9.0)],
        13,
    ),
    "sign": ([helper.make_node("Sign", ["x"], ["y"])], [1, 5], [1, 5], [], 13),
    "abs-sqrt-exp-log-erf": (
        [
            helper.make_node("Abs", ["x"], ["a"]),
            helper.make_node("Sqrt", ["a"], ["b"]),
            helper.make_node("Exp", ["b"], ["e"]),
            helper.make_node("Log", ["e"], ["l"]),
            helper.make_node("Erf", ["l"], ["y"]),
        ],
        [1, 5],
        [1, 5],
        [],
        13,
    ),
    "floor-ceil": (
        [
            helper.make_node("Floor", ["x"], ["f"]),
            helper.make_node("Ceil", ["x"], ["c"]),
            helper.make_node("Add", ["f", "c"], ["y"]),
        ],
        [1, 5],
        [1, 5],
        [],
        13,
    ),
    "reducesum-axes-input-keep": (
        [helper.make_node("ReduceSum", ["x", "ax"], ["y"], keepdims=1)],
        [1, 2, 3],
        [1, 2, 1],
        [_c("ax", [-1], np.int64)],
        13,
    ),
    "reducesum-opset11-attr": (
        [helper.make_node("ReduceSum", ["x"], ["y"], axes=[1], keepdims=0)],
        [1, 2, 3],
        [1, 3],
        [],
        11,
    ),
    "reducemean-attr": (
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2], keepdims=0)],
        [1, 2, 3],
        [1, 2],
        [],
        13,
    ),
    "reducemax-all-but-batch": (
        [helper.make_node("ReduceMax", ["x"], ["y"], axes=[1, 2], keepdims=1)],
        [1, 2, 3],
        [1, 1, 1],
        [],
        13,
    ),
    "min-max-variadic-broadcast": (
        [helper.make_node("Max", ["x", "c", "n"], ["m"]), helper.make_node("Min", ["m", "d"], ["y"])],
        [1, 4],
        [1, 4],
        [_c("c", [0.1, -0.2, 0.3, 0.0]), _c("n", -0.5), _c("d", 0.4)],
        13,
    ),
    "where-equal-expand-constants": (
        [
            helper.make_node("Equal", ["a", "b"], ["e"]),
            helper.make_node("Where", ["e", "x", "z"], ["w"]),
            helper.make_node("Expand", ["w", "s"], ["y"]),
        ],
        [1, 4],
        [3, 4],
        [_c("a", [1, 2, 3, 4], np.int64), _c("b", [1, 0, 3, 0], np.int64), _c("z", 0.25), _c("s", [3, 1], np.int64)],
        13,
    ),
    "slice-negative-step": (
        [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
        [1, 6],
        [1, 3],
        [_c("st", [-1], np.int64), _c("en", [-7], np.int64), _c("ax", [1], np.int64), _c("sp", [-2], np.int64)],
        13,
    ),
    "shape-gather-range-tile": (
        [
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node("Gather", ["sh", "i"], ["n"], axis=0),
            helper.make_node("Range", ["zero", "n", "one"], ["r"]),
            helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "rf"], ["t"]),
            helper.make_node("Tile", ["t", "rep"], ["y"]),
        ],
        [1, 3],
        [1, 6],
        [_c("i", 1, np.int64), _c("zero", 0, np.int64), _c("one", 1, np.int64), _c("rep", [1, 2], np.int64)],
        13,
    ),
    "scatternd": (
        [helper.make_node("ScatterND", ["x", "idx", "u"], ["y"])],
        [1, 4],
        [1, 4],
        [_c("idx", [[0, 1], [0, -1]], np.int64), _c("u", [5.0, -5.0])],
        13,
    ),
    "resize-nearest-asymmetric-floor": (
        [
            helper.make_node(
                "Resize",
                ["x", "", "sc"],
                ["y"],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        ],
        [1, 1, 2, 3],
        [1, 1, 4, 6],
        [_c("sc", [1.0, 1.0, 2.0, 2.0])],
        13,
    ),
    "resize-nearest-half-pixel-default": (
        [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")],
        [1, 1, 3, 3],
        [1, 1, 5, 7],
        [_c("sc", [1.0, 1.0, 1.7, 2.5])],
        13,
    ),
    "resize-linear-half-pixel": (
        [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear")],
        [1, 1, 3, 4],
        [1, 1, 6, 8],
        [_c("sc", [1.0, 1.0, 2.0, 2.0])],
        13,
    ),
    "resize-linear-align-corners-sizes": (
        [
            helper.make_node(
                "Resize", ["x", "", "", "sz"], ["y"], mode="linear", coordinate_transformation_mode="align_corners"
            )
        ],
        [1, 1, 3, 4],
        [1, 1, 5, 7],
        [_c("sz", [1, 1, 5, 7], np.int64)],
        13,
    ),
    "layer-norm": (
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)],
        [1, 2, 4],
        [1, 2, 4],
        [_c("g", [1.0, 2.0, -1.0, 0.5]), _c("b", [0.0, 0.1, 0.2, -0.3])],
        17,
    ),
    "clip-opset11-inputs": (
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
        [1, 5],
        [1, 5],
        [_c("lo", -0.3), _c("hi", 0.2)],
        11,
    ),
    "softmax-reducemean-transformer-block": (
        [
            helper.make_node("MatMul", ["x", "xt"], ["s"]),
            helper.make_node("Softmax", ["s"], ["p"], axis=-1),
            helper.make_node("ReduceMean", ["p"], ["y"], axes=[1], keepdims=0),
        ],
        [1, 3, 2],
        [1, 3],
        [],
        13,
    ),
    # batch-first graphs for the linear domain: torch's matmul folds the batch into mm rows
    # (constant right operand) or merges it with the heads (two varying operands)
    "matmul-3d-by-constant": (
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [1, 3, 4],
        [1, 3, 2],
        [_c("w", [[0.5, -1.0], [2.0, 0.3], [-0.7, 0.0], [1.1, -0.4]])],
        13,
    ),
    "matmul-4d-by-constant": (
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [1, 2, 3, 4],
        [1, 2, 3, 2],
        [_c("w", [[0.5, -1.0], [2.0, 0.3], [-0.7, 0.0], [1.1, -0.4]])],
        13,
    ),
    "matmul-4d-by-broadcast-3d-constant": (
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [1, 2, 3, 4],
        [1, 2, 3, 1],
        [_c("w", [[[0.5], [-1.0], [2.0], [0.3]], [[-0.7], [0.0], [1.1], [-0.4]]])],
        13,
    ),
    "attention-scores-4d": (
        [helper.make_node("MatMul", ["x", "xt"], ["y"])],
        [1, 2, 3, 2],
        [1, 2, 3, 3],
        [],
        13,
    ),
    "batch-norm-3d": (
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
        [1, 3, 4],
        [1, 3, 4],
        [_c("g", [1.0, -2.0, 0.5]), _c("b", [0.1, 0.0, -0.3]), _c("m", [0.2, -0.1, 0.0]), _c("v", [0.5, 2.0, 1e-3])],
        13,
    ),
    "batch-norm-2d": (
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])],
        [1, 3],
        [1, 3],
        [_c("g", [1.0, -2.0, 0.5]), _c("b", [0.1, 0.0, -0.3]), _c("m", [0.2, -0.1, 0.0]), _c("v", [0.5, 2.0, 1e-3])],
        13,
    ),
}


def _build(name):
    nodes, i, o, inits, opset = CASES[name]
    if name == "softmax-reducemean-transformer-block":  # x @ x^T: a product of two variables
        nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1])] + nodes
    if name == "attention-scores-4d":  # queries times keys, per head
        nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2])] + nodes
    return _model(nodes, i, o, inits, opset)


@pytest.mark.parametrize("name", sorted(CASES))
def test_operator_matches_onnxruntime_and_bounds_contain_samples(name):
    m = _build(name)
    onnx.checker.check_model(m)
    data = m.SerializeToString()
    module = OnnxModule(m, name).eval()
    assert check_against_onnxruntime(module, data, n=5, atol=1e-5) <= 1e-5
    module = module.double()
    g = torch.Generator().manual_seed(0)
    shape = module.input_shape
    lo = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    hi = lo + 0.3
    x = lo + (hi - lo) * torch.rand(400, *shape[1:], generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = torch.stack([module(x[k : k + 1]).reshape(-1) for k in range(len(x))])
    try:  # batch-first models (the linear domain needs them); the others get interval bounds
        batchable = shape[0] == 1 and module(x[:2]).shape[0] == 2
    except bf.BoundFlowError:
        batchable = False
    for method in ("ibp", "crown") if batchable else ("ibp",):
        lb, ub = bf.compute_bounds(module, lo, hi, method=method)
        lb, ub = lb.reshape(-1), ub.reshape(-1)
        tol = 1e-9 * (1 + y.abs().max())
        assert (y >= lb - tol).all() and (y <= ub + tol).all(), (name, method)


def test_an_unsupported_operator_is_named_with_its_node():
    m = _model([helper.make_node("Hardmax", ["x"], ["y"])], [1, 3], [1, 3])
    with pytest.raises(bf.UnsupportedOperation, match="Hardmax"):
        OnnxModule(m, "net.onnx")


def test_a_shape_input_that_varies_with_the_network_input_is_refused_at_import():
    # a shape computed from the input's values (not only from integer casts of input elements)
    m = _model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Cast", ["r"], ["s"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["x", "s"], ["y"]),
        ],
        [1, 2],
        [1, 2],
    )
    with pytest.raises(bf.UnsupportedOperation, match="varies with the network input"):
        OnnxModule(m, "net.onnx")
    # input elements cast to integers for the shape and read as values too
    m = _model(
        [helper.make_node("Cast", ["x"], ["s"], to=TensorProto.INT64), helper.make_node("Reshape", ["x", "s"], ["y"])],
        [1, 2],
        [1, 2],
    )
    with pytest.raises(bf.UnsupportedOperation, match="both as indices"):
        OnnxModule(m, "net.onnx")


def test_batch_one_reshape_follows_the_batch_of_the_call():
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"])], [1, 2, 3], [1, 6], [_c("s", [1, -1], np.int64)])
    module = OnnxModule(m, "net.onnx").double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert torch.equal(module(x), x.reshape(4, 6))


def test_constants_are_folded_at_import_and_shape_arithmetic_is_not_traced():
    """Transpose(W) and Mul(W, 2) of initializers are evaluated once at import; Shape -> Gather
    -> Concat -> Reshape on the input's shape runs outside capture: the captured graph holds only
    ops on values that vary with the input."""
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("Mul", ["wt", "two"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["h"]),
        helper.make_node("Shape", ["h"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["y"]),
    ]
    inits = [
        _c("w", np.arange(6).reshape(3, 2)),
        _c("two", 2.0),
        _c("zero", 0, np.int64),
        _c("ax", [0], np.int64),
        _c("minus1", [-1], np.int64),
    ]
    m = _model(nodes, [1, 2], [1, 3], inits)
    module = OnnxModule(m, "folded").eval()
    assert check_against_onnxruntime(module, m.SerializeToString(), atol=1e-6) <= 1e-6
    varying = [op for op, *_rest, on_shapes in module.nodes if not on_shapes]
    shape_only = [op for op, *_rest, on_shapes in module.nodes if on_shapes]
    assert varying == ["MatMul", "Reshape"]  # Transpose and Mul were folded
    assert shape_only == ["Shape", "Gather", "Unsqueeze", "Concat"]
    from boundflow.graph import capture

    g = capture(module.double(), torch.zeros(1, 2, dtype=torch.float64))
    ops = [str(n.target) for n in g.gm.graph.nodes if n.op == "call_function"]
    assert not any("permute" in o or "transpose" in o or o.startswith("aten.mul") for o in ops), ops
    # and the batch: a batch of 4 through the shape arithmetic
    x = torch.randn(4, 2, dtype=torch.float64)
    assert module(x).shape == (4, 3)


class _BatchAtTheBack(torch.nn.Module):
    """Batchable, but not batch-first inside: the batch is moved to the back (as ``ml4acopf``'s
    transposes do) before a dense layer and a nonlinearity."""

    def __init__(self, seed: int, act: str):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W1 = torch.randn(6, 4, generator=g, dtype=torch.float64)
        self.W2 = torch.randn(3, 6, generator=g, dtype=torch.float64)
        self.act = {"relu": torch.relu, "sin": torch.sin, "sigmoid": torch.sigmoid}[act]
        self.input_shape = [1, 4]

    def forward(self, x):
        h = self.act(self.W1 @ x.t())  # (6, B): the batch in the back
        return (self.W2 @ h).t() * 0.5 + x[:, :3]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("act", ["relu", "sin", "sigmoid"])
def test_a_graph_not_batch_first_inside_gets_linear_bounds_through_its_vmapped_view(seed, act):
    from boundflow.errors import UnsupportedOperation
    from boundflow.verify.pipeline import _batched

    f = _batched(_BatchAtTheBack(seed, act))
    g = torch.Generator().manual_seed(100 + seed)
    lo = torch.randn(1, 4, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(1, 4, generator=g, dtype=torch.float64)
    with pytest.raises(UnsupportedOperation, match="batch"):
        bf.compute_bounds(f, lo, hi, method="crown")
    alt = f.vmapped_view()
    assert alt is not None
    lb, ub = bf.compute_bounds(alt, lo, hi, method="crown")
    ilb, iub = bf.compute_bounds(f, lo, hi, method="ibp")
    x = lo + (hi - lo) * torch.rand(4000, 4, generator=g, dtype=torch.float64)
    corners = torch.cartesian_prod(*[torch.stack([lo[0, i], hi[0, i]]) for i in range(4)])
    with torch.no_grad():
        y = f(torch.cat([x, corners]))
    assert (y >= lb - 1e-9).all() and (y <= ub + 1e-9).all()
    assert float((ub - lb).sum()) <= float((iub - ilb).sum()) + 1e-9  # no looser than intervals
